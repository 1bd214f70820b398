package sfu

import (
	"fmt"
	"time"
	"unicode/utf8"
)

// MaxChatBytes caps one chat message.
const MaxChatBytes = 4096

// ChatEvent is a chat message.
type ChatEvent struct {
	From string    `json:"from"`
	To   string    `json:"to,omitempty"` // empty: everyone who sees the sender
	Text string    `json:"text"`
	Time time.Time `json:"time"`
}

// Type implements Event.
func (ChatEvent) Type() string { return "chat" }

// Chat sends text from p. Without to, it reaches everyone who sees p in
// the roster (in proctoring: a candidate's message reaches the proctors
// only). With to, it reaches that participant alone, who must be one p
// sees: a candidate cannot name anyone, a proctor can write to one
// candidate. To "*" reaches everyone p sees: a proctor's announcement. The sender gets its own message back as confirmation, and
// room watchers see every message.
func (p *Participant) Chat(to, text string) error {
	if text == "" || len(text) > MaxChatBytes || !utf8.ValidString(text) {
		return fmt.Errorf("%w: chat text must be 1 to %d bytes of UTF-8", ErrInvalidMessage, MaxChatBytes)
	}
	r := p.room
	ev := ChatEvent{From: p.identity, To: to, Text: text, Time: time.Now().UTC()}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.participants[p.identity] != p {
		return ErrClosed
	}
	switch to {
	case "*":
		// Everyone the sender sees: a proctor's announcement to every
		// candidate (and proctor).
		n := 0
		for _, o := range r.participants {
			if o != p && CanSee(r.kind, p.role, o.role) {
				o.sink.Deliver(ev)
				n++
			}
		}
		if n == 0 {
			return fmt.Errorf("%w: no one to write to", ErrForbidden)
		}
	case "":
		for _, o := range r.participants {
			if o != p && CanSee(r.kind, o.role, p.role) {
				o.sink.Deliver(ev)
			}
		}
	default:
		o := r.participants[to]
		if o == nil || o == p || !CanSee(r.kind, p.role, o.role) {
			return fmt.Errorf("%w: no one called %q to write to", ErrForbidden, to)
		}
		o.sink.Deliver(ev)
	}
	p.sink.Deliver(ev)
	r.toWatchersLocked(ev)
	return nil
}
