package signaling

import (
	"sync"
	"time"

	"github.com/vigil-media/vigil/patterns"
	"github.com/vigil-media/vigil/sfu"
)

// sessionHub owns the signaling sessions and the admin room feeds, and
// serves every transport that drains them: WebSocket (ws.go), Server-Sent
// Events (sse.go), long and short polling and posted messages (poll.go).
// Opening a session (POST /v1/rooms/{room}/sessions) and closing one stay
// with the rooms API (rooms.go), which calls open and session.
type sessionHub struct {
	// srv is the composition root: the hub reads its configuration and
	// logger and calls newID (federation.go) and originAllowed (limits.go),
	// none of which takes a lock.
	srv *Server
	cfg *Config

	waiters *patterns.Waiters     // long polls held at once
	idem    *patterns.Idempotency // replies to POSTed messages, by key

	// mu guards sessions, feeds and closing. Taken while holding it: a
	// Session's mu (sessionFor), and a room's lock through room.Watch
	// (feedStream). Never held while a transport writes.
	mu       sync.Mutex
	sessions map[string]*Session  // by id
	feeds    map[string]*roomFeed // admin event streams, by room
	closing  bool                 // refuse new sessions and transports
	conns    sync.WaitGroup       // attached long-lived transports
}

// maxRepliesPerSession bounds the replies kept for one session's POSTed
// messages with an Idempotency-Key: a session flooding keys evicts only
// its own oldest replies, never another session's.
const maxRepliesPerSession = 256

func newSessionHub(s *Server) *sessionHub {
	return &sessionHub{
		srv: s, cfg: &s.cfg,
		sessions: map[string]*Session{},
		feeds:    map[string]*roomFeed{},
		waiters:  patterns.NewWaiters(s.cfg.MaxLongPolls),
		idem: patterns.NewIdempotency(patterns.IdempotencyConfig{TTL: 10 * time.Minute, MaxEntries: 100000,
			MaxPerScope: maxRepliesPerSession}),
	}
}

// routes registers the transports of a session, which its id authorizes.
func (h *sessionHub) routes(g relayedRoutes) {
	g.GET("/sessions/:session/ws", h.serveWS(h.sessionStream))
	g.GET("/sessions/:session/events", h.serveSSE(h.sessionStream))
	g.GET("/sessions/:session/poll", h.servePoll(h.sessionStream))
	g.POST("/sessions/:session/messages", h.postMessage)
}

// feedRoutes registers the transports of a room's admin feed in g, the
// group /rooms/:room/events behind the admin key.
func (h *sessionHub) feedRoutes(g relayedRoutes) {
	g.GET("", h.serveSSE(h.feedStream))
	g.GET("/ws", h.serveWS(h.feedStream))
	g.GET("/poll", h.servePoll(h.feedStream))
}

// session returns the session of id, ended or not.
func (h *sessionHub) session(id string) (*Session, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ss, ok := h.sessions[id]
	if !ok {
		return nil, ErrSessionNotFound
	}
	return ss, nil
}

// sessionFor returns the live session of identity in room, or nil.
func (h *sessionHub) sessionFor(room, identity string) *Session {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, ss := range h.sessions {
		if ss.room == room && ss.identity == identity {
			ss.mu.Lock()
			ended := ss.ended
			ss.mu.Unlock()
			if !ended {
				return ss
			}
		}
	}
	return nil
}

// all is every session, ended or not.
func (h *sessionHub) all() []*Session {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*Session, 0, len(h.sessions))
	for _, ss := range h.sessions {
		out = append(out, ss)
	}
	return out
}

// forget removes ss, if it is still the session of its id, and the
// replies kept for its POSTed messages.
func (h *sessionHub) forget(ss *Session) {
	h.mu.Lock()
	ours := h.sessions[ss.id] == ss
	if ours {
		delete(h.sessions, ss.id)
	}
	h.mu.Unlock()
	if ours {
		h.idem.Forget(ss.id)
	}
}

// transports maps each participant of room (of every room if room is "")
// that has a session to the name of the transport attached to it (""
// when none is).
func (h *sessionHub) transports(room string) map[*sfu.Participant]string {
	h.mu.Lock()
	var ours []*Session
	for _, ss := range h.sessions {
		if room == "" || ss.room == room {
			ours = append(ours, ss)
		}
	}
	h.mu.Unlock()
	out := make(map[*sfu.Participant]string, len(ours))
	for _, ss := range ours {
		if p := ss.Participant(); p != nil {
			out[p] = ss.Transport()
		}
	}
	return out
}

// transportOf is transports for p alone.
func (h *sessionHub) transportOf(p *sfu.Participant) map[*sfu.Participant]string {
	out := map[*sfu.Participant]string{}
	if ss := h.sessionFor(p.Room().Name(), p.Identity()); ss != nil && ss.Participant() == p {
		out[p] = ss.Transport()
	}
	return out
}

// countTransports adds to counts the live sessions by the transport
// attached to each ("none" when none is), for the metrics.
func (h *sessionHub) countTransports(counts map[string]int) {
	for _, ss := range h.all() {
		ss.mu.Lock()
		ended, t := ss.ended, ss.transport
		ss.mu.Unlock()
		if ended {
			continue
		}
		if t == "" {
			t = "none"
		}
		counts[t]++
	}
}

// feed returns the admin feed of room if an admin has started it, or nil.
func (h *sessionHub) feed(room string) *roomFeed {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.feeds[room]
}

// trackConn counts a long-lived transport so that close can wait for it;
// false when the server is shutting down.
func (h *sessionHub) trackConn() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closing {
		return false
	}
	h.conns.Add(1)
	return true
}

// refuse makes the hub refuse new sessions and transports from now on.
func (h *sessionHub) refuse() {
	h.mu.Lock()
	h.closing = true
	h.mu.Unlock()
}

// close ends every session (each participant told reason) and waits up to
// timeout for the transports to deliver the last events, then releases
// the sessions. refuse must have been called.
func (h *sessionHub) close(reason string, timeout time.Duration) {
	sessions := h.all()
	for _, ss := range sessions {
		ss.end(reason)
	}
	done := make(chan struct{})
	go func() {
		h.conns.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(timeout):
		h.srv.log.Warn("transports still open after shutdown timeout")
	}
	for _, ss := range sessions {
		ss.release()
	}
}
