package signaling

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/vigil-media/vigil/patterns"
	"github.com/vigil-media/vigil/sfu"
)

// stream is what a transport drains: a session's outbox, or a room's
// feed for admins. Every transport works on any stream.
type stream interface {
	// outbox is the sequenced event log to drain from a cursor.
	outbox() *patterns.Log
	// attach registers a transport; kick asks it to close. A session has
	// one transport at a time, so attaching kicks the previous one.
	attach(transport string, kick func()) uint64
	// detach unregisters the transport of generation gen.
	detach(gen uint64)
	// accept takes a raw client frame from a push transport; false once
	// the stream no longer takes messages.
	accept(b []byte) bool
	// reject tells the client that a frame was refused.
	reject(ref string, err error)
}

// lookupFunc finds the stream a request names.
type lookupFunc func(c *gin.Context) (stream, error)

func (ss *Session) outbox() *patterns.Log { return ss.out }

func (ss *Session) accept(b []byte) bool {
	if ok, _ := ss.rate.allow(); !ok {
		m, _ := decodeMessage(b) // for its id
		ss.replyError(m.id, fmt.Errorf("%w: over %v messages a second", ErrRateLimited, ss.hub.cfg.MessageRate))
		return true
	}
	m, err := decodeMessage(b)
	if err != nil {
		ss.replyError(m.id, err)
		return true
	}
	return ss.enqueue(m)
}

func (ss *Session) reject(ref string, err error) { ss.replyError(ref, err) }

func (h *sessionHub) sessionStream(c *gin.Context) (stream, error) {
	return h.session(c.Param("session"))
}

// roomFeed is a room's event stream for admins: a snapshot of the room,
// then every roster, track and chat event, then room_closed. Any number
// of transports may drain it at once.
type roomFeed struct {
	hub  *sessionHub
	room string
	out  *patterns.Log
}

const feedCapacity = 4096

// Deliver implements sfu.Sink.
func (f *roomFeed) Deliver(ev sfu.Event) {
	data, err := json.Marshal(ev)
	if err != nil {
		return
	}
	if _, err := f.out.Append(ev.Type(), data); err != nil {
		return
	}
	if _, ok := ev.(sfu.RoomClosedEvent); ok {
		f.out.Close()
		// Keep the closed feed readable for a while, then forget it.
		time.AfterFunc(f.hub.cfg.GracePeriod, func() { f.hub.dropFeed(f) })
	}
}

func (f *roomFeed) outbox() *patterns.Log        { return f.out }
func (f *roomFeed) attach(string, func()) uint64 { return 0 }
func (f *roomFeed) detach(uint64)                {}
func (f *roomFeed) accept([]byte) bool           { return true } // read-only
func (f *roomFeed) reject(string, error)         {}

// feedStream returns the room's feed, starting it on first use.
func (h *sessionHub) feedStream(c *gin.Context) (stream, error) {
	name := c.Param("room")
	room, err := h.srv.sfu.Room(name)
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if f, ok := h.feeds[name]; ok {
		return f, nil
	}
	f := &roomFeed{hub: h, room: name, out: patterns.NewLog(patterns.LogConfig{Capacity: feedCapacity})}
	if err := room.Watch(f); err != nil {
		return nil, err
	}
	h.feeds[name] = f
	return f, nil
}

func (h *sessionHub) dropFeed(f *roomFeed) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.feeds[f.room] == f {
		delete(h.feeds, f.room)
	}
}
