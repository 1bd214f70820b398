package signaling

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"sync"
	"time"

	"github.com/vigil-media/vigil/patterns"
	"github.com/vigil-media/vigil/sfu"
)

// Session is one participant's signaling state: its outbox (a sequenced
// event log every transport drains from a cursor), its inbox of client
// messages, and one loop that applies them in order.
type Session struct {
	hub      *sessionHub
	id       string
	room     string
	identity string
	log      *slog.Logger
	out      *patterns.Log
	p        *sfu.Participant
	stop     chan struct{} // closed by release

	inbox chan clientMessage
	rate  *rateLimiter // client messages; nil: no limit

	// mu guards p, gen, kick, transport, expiry and ended. It is taken
	// under sessionHub.mu (sessionFor) and under the room's lock
	// (Deliver); nothing is locked while holding it, and kick is called
	// outside it.
	mu        sync.Mutex
	gen       uint64 // attach generation
	kick      func() // closes the attached transport
	transport string // name of the attached transport, "" when none
	expiry    *time.Timer
	ended     bool // the participant has left
	release   func()
}

const inboxSize = 32

func newSessionID() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// open joins room with the token's identity and role, and registers the
// session.
func (h *sessionHub) open(room *sfu.Room, claims *Claims) (*Session, error) {
	ss := &Session{
		hub: h, id: h.srv.newID(), room: room.Name(), identity: claims.Subject,
		log:   h.srv.log.With("room", room.Name(), "participant", claims.Subject),
		out:   patterns.NewLog(patterns.LogConfig{Capacity: h.cfg.OutboxCapacity}),
		stop:  make(chan struct{}),
		inbox: make(chan clientMessage, inboxSize),
		rate:  newRateLimiter(h.cfg.MessageRate),
	}
	var once sync.Once
	ss.release = func() { once.Do(ss.doRelease) }

	h.mu.Lock()
	if h.closing {
		h.mu.Unlock()
		return nil, ErrShuttingDown
	}
	h.sessions[ss.id] = ss
	h.mu.Unlock()

	p, err := room.Join(sfu.JoinConfig{Identity: claims.Subject, Role: sfu.Role(claims.Role), Sink: ss})
	if err != nil {
		ss.release()
		return nil, err
	}
	ss.mu.Lock()
	ss.p = p
	ss.armLocked()
	ss.mu.Unlock()
	go ss.loop()
	return ss, nil
}

// Deliver implements sfu.Sink: it only appends to the outbox.
func (ss *Session) Deliver(ev sfu.Event) {
	data, err := json.Marshal(ev)
	if err != nil {
		ss.log.Error("encode event", "type", ev.Type(), "err", err)
		return
	}
	if _, err := ss.out.Append(ev.Type(), data); err != nil {
		return // closed: the session has ended
	}
	if _, ok := ev.(sfu.LeftEvent); ok {
		ss.out.Close()
		ss.mu.Lock()
		ss.ended = true
		ss.armLocked() // keep the last events readable for a grace period
		ss.mu.Unlock()
	}
}

// armLocked (re)starts the expiry timer: a session with no transport ends
// after the grace period, and an ended one is forgotten after it.
func (ss *Session) armLocked() {
	if ss.expiry != nil {
		ss.expiry.Stop()
	}
	ss.expiry = time.AfterFunc(ss.hub.cfg.GracePeriod, ss.expire)
}

func (ss *Session) expire() {
	ss.mu.Lock()
	ended, attached := ss.ended, ss.kick != nil
	ss.mu.Unlock()
	switch {
	case ended:
		ss.release()
	case !attached:
		ss.log.Info("no transport within the grace period")
		ss.end(sfu.ReasonTimeout)
	}
}

// attach makes kick the session's one transport, closing any older one.
func (ss *Session) attach(transport string, kick func()) uint64 {
	ss.mu.Lock()
	ss.gen++
	old := ss.kick
	ss.kick = kick
	ss.transport = transport
	if ss.expiry != nil && !ss.ended {
		ss.expiry.Stop()
	}
	gen := ss.gen
	ss.mu.Unlock()
	if old != nil {
		old()
	}
	return gen
}

// detach forgets the transport of generation gen, if it is still the
// current one, and starts the grace period.
func (ss *Session) detach(gen uint64) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if gen != ss.gen {
		return
	}
	ss.kick = nil
	ss.transport = ""
	if !ss.ended {
		ss.armLocked()
	}
}

// Transport names the transport attached now, or "" when none is.
func (ss *Session) Transport() string {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.transport
}

// Participant is the session's participant.
func (ss *Session) Participant() *sfu.Participant {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.p
}

// enqueue hands a client message to the session loop; it blocks while the
// inbox is full, which pushes back on the transport.
func (ss *Session) enqueue(m clientMessage) bool {
	select {
	case ss.inbox <- m:
		return true
	case <-ss.stop:
		return false
	}
}

// loop applies client messages one at a time.
func (ss *Session) loop() {
	for {
		select {
		case <-ss.stop:
			return
		case m := <-ss.inbox:
			err := dispatch(messageEnv{p: ss.p, incidents: ss.hub.cfg.Incidents}, m)
			switch {
			case m.reply != nil:
				m.reply <- err
			case err != nil:
				ss.replyError(m.id, err)
			}
		}
	}
}

// replyError appends an error event about message ref to the outbox.
func (ss *Session) replyError(ref string, err error) {
	_, code := codeFor(err)
	if code == "internal" {
		ss.log.Error("client message failed", "err", err)
	}
	ss.Deliver(ErrorReply{Code: code, Message: err.Error(), Ref: ref})
}

// end makes the participant leave; its LeftEvent closes the outbox.
func (ss *Session) end(reason string) {
	ss.mu.Lock()
	p := ss.p
	ss.mu.Unlock()
	if p != nil {
		p.Leave(reason)
	}
}

func (ss *Session) doRelease() {
	ss.hub.forget(ss)
	ss.mu.Lock()
	if ss.expiry != nil {
		ss.expiry.Stop()
	}
	kick := ss.kick
	ss.mu.Unlock()
	close(ss.stop)
	ss.out.Close()
	if kick != nil {
		kick()
	}
}
