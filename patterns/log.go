package patterns

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"
)

// Errors returned by Log.
var (
	// ErrClosed is returned by operations on a closed Log, Hub or Subscription.
	ErrClosed = errors.New("patterns: closed")
	// ErrCursorTooOld is returned by ReadAfter when an event after the cursor
	// was already evicted from the ring: the reader missed events and must
	// resynchronise from a snapshot.
	ErrCursorTooOld = errors.New("patterns: cursor too old")
	// ErrCursorAhead is returned by ReadAfter when the cursor is beyond the
	// last sequence number ever appended.
	ErrCursorAhead = errors.New("patterns: cursor ahead of log")
)

// defaultLogCapacity is the Capacity used when LogConfig.Capacity <= 0.
const defaultLogCapacity = 1024

// Event is one entry of a Log.
type Event struct {
	Seq  uint64          `json:"seq"`
	Type string          `json:"type"`
	Data json.RawMessage `json:"data,omitempty"`
	Time time.Time       `json:"-"`
}

// LogConfig configures a Log.
type LogConfig struct {
	Capacity int // most events retained; <= 0 means 1024
}

// Log is a sequenced, bounded event log read by cursors. A cursor is the
// sequence number of the last event a reader has seen (0 before the first).
// Sequence numbers start at 1 and never repeat. The log keeps the newest
// Capacity events in a ring buffer; older ones are evicted.
//
// Append stores data as is: the caller must not modify it afterwards, and
// readers must treat Event.Data as read-only. A Log is safe for concurrent use.
type Log struct {
	mu     sync.RWMutex
	cap    int
	buf    []Event // ring; event seq s lives at buf[(s-1)%cap]; grows up to cap
	last   uint64
	closed bool
	// gen is closed and reset on the next Append or on Close. It is created
	// lazily by Changed, so Append allocates nothing when nobody waits.
	gen  chan struct{}
	done chan struct{} // always closed; returned when Changed has nothing to wait for
}

// NewLog returns an empty Log.
func NewLog(cfg LogConfig) *Log {
	c := cfg.Capacity
	if c <= 0 {
		c = defaultLogCapacity
	}
	done := make(chan struct{})
	close(done)
	return &Log{cap: c, done: done}
}

// Append adds an event of type typ and returns its sequence number.
// It returns ErrClosed after Close.
func (l *Log) Append(typ string, data json.RawMessage) (uint64, error) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return 0, ErrClosed
	}
	l.last++
	e := Event{Seq: l.last, Type: typ, Data: data, Time: now}
	if len(l.buf) < l.cap {
		l.buf = append(l.buf, e)
	} else {
		l.buf[(l.last-1)%uint64(l.cap)] = e
	}
	if l.gen != nil {
		close(l.gen)
		l.gen = nil
	}
	return l.last, nil
}

// ReadAfter returns the retained events with Seq > cursor, oldest first, at
// most max of them (max <= 0: all). It returns nil, nil when there is nothing
// new, ErrCursorTooOld when an event after cursor was already evicted, and
// ErrCursorAhead when cursor > Last(). The slice is a fresh copy the caller
// owns. ReadAfter keeps working after Close.
func (l *Log) ReadAfter(cursor uint64, max int) ([]Event, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	switch {
	case cursor > l.last:
		return nil, ErrCursorAhead
	case cursor == l.last:
		return nil, nil
	case cursor+1 < l.firstLocked():
		return nil, ErrCursorTooOld
	}
	n := l.last - cursor
	if max > 0 && n > uint64(max) {
		n = uint64(max)
	}
	out := make([]Event, n)
	c := uint64(l.cap)
	start := cursor % c // index of seq cursor+1
	k := copy(out, l.buf[start:min(uint64(len(l.buf)), start+n)])
	copy(out[k:], l.buf) // wrapped part, if any
	return out, nil
}

// Changed returns a channel that is closed as soon as Last() > cursor or the
// log is closed; it is already closed if that holds now. All callers waiting
// on the same generation share one channel; no goroutine is started.
func (l *Log) Changed(cursor uint64) <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.changedLocked(cursor)
}

func (l *Log) changedLocked(cursor uint64) chan struct{} {
	if l.last > cursor || l.closed {
		return l.done
	}
	if l.gen == nil {
		l.gen = make(chan struct{})
	}
	return l.gen
}

// Wait blocks until Last() > cursor (returning nil), ctx is done (returning
// ctx.Err()), or the log is closed with nothing after cursor (returning
// ErrClosed).
func (l *Log) Wait(ctx context.Context, cursor uint64) error {
	for {
		l.mu.Lock()
		switch {
		case l.last > cursor:
			l.mu.Unlock()
			return nil
		case l.closed:
			l.mu.Unlock()
			return ErrClosed
		}
		ch := l.changedLocked(cursor)
		l.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Last returns the sequence number of the newest event, 0 when none.
func (l *Log) Last() uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.last
}

// First returns the sequence number of the oldest retained event, 0 when empty.
func (l *Log) First() uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.firstLocked()
}

func (l *Log) firstLocked() uint64 {
	if l.last == 0 {
		return 0
	}
	return l.last - uint64(len(l.buf)) + 1
}

// Close closes the log: Append fails with ErrClosed and waiters are woken.
// Retained events can still be read. Close is idempotent.
func (l *Log) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.closed = true
	if l.gen != nil {
		close(l.gen)
		l.gen = nil
	}
}

// Closed reports whether Close has been called.
func (l *Log) Closed() bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.closed
}
