package patterns

import (
	"context"
	"errors"
	"sync/atomic"
	"time"
)

// ErrTooManyWaiters is returned by Waiters.Acquire when the cap is reached.
var ErrTooManyWaiters = errors.New("patterns: too many waiters")

// defaultMaxWaiters is the cap used when NewWaiters gets max <= 0.
const defaultMaxWaiters = 1024

// Waiters caps the number of concurrent long-poll waiters. It never blocks:
// Acquire either takes a slot or fails at once. It is safe for concurrent use.
type Waiters struct {
	max   int64
	inUse atomic.Int64
}

// NewWaiters returns a Waiters admitting at most max concurrent waiters;
// max <= 0 means 1024.
func NewWaiters(max int) *Waiters {
	if max <= 0 {
		max = defaultMaxWaiters
	}
	return &Waiters{max: int64(max)}
}

// Acquire takes a slot and returns the function that gives it back; release
// is idempotent. It returns ErrTooManyWaiters when all slots are taken.
func (w *Waiters) Acquire() (release func(), err error) {
	for {
		n := w.inUse.Load()
		if n >= w.max {
			return nil, ErrTooManyWaiters
		}
		if w.inUse.CompareAndSwap(n, n+1) {
			break
		}
	}
	var once atomic.Bool
	return func() {
		if once.CompareAndSwap(false, true) {
			w.inUse.Add(-1)
		}
	}, nil
}

// InUse returns the number of slots currently taken.
func (w *Waiters) InUse() int { return int(w.inUse.Load()) }

// Max returns the cap.
func (w *Waiters) Max() int { return int(w.max) }

// WaitAny blocks the calling goroutine until ch is closed (or receives)
// (fired=true), timeout passes (fired=false, err=nil), or ctx is done, e.g.
// the client went away (fired=false, err=ctx.Err()). A timeout <= 0 means no
// timeout; a nil ch never fires. A ch that is already closed wins over the
// other two. No goroutine is started and the timer is stopped on return.
func WaitAny(ctx context.Context, timeout time.Duration, ch <-chan struct{}) (fired bool, err error) {
	select {
	case <-ch:
		return true, nil
	default:
	}
	var expired <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		expired = t.C
	}
	select {
	case <-ch:
		return true, nil
	case <-expired:
		return false, nil
	case <-ctx.Done():
		return false, ctx.Err()
	}
}
