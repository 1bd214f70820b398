package patterns

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

func TestWaitersCap(t *testing.T) {
	tests := []struct {
		name    string
		max     int
		acquire int
		wantOK  int
		wantMax int
	}{
		{name: "under cap", max: 3, acquire: 2, wantOK: 2, wantMax: 3},
		{name: "at cap", max: 3, acquire: 3, wantOK: 3, wantMax: 3},
		{name: "over cap", max: 3, acquire: 5, wantOK: 3, wantMax: 3},
		{name: "default cap", max: 0, acquire: 1030, wantOK: 1024, wantMax: 1024},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := NewWaiters(tt.max)
			if w.Max() != tt.wantMax {
				t.Fatalf("Max() = %d", w.Max())
			}
			var releases []func()
			for i := 0; i < tt.acquire; i++ {
				rel, err := w.Acquire()
				switch {
				case i < tt.wantOK && err != nil:
					t.Fatalf("Acquire #%d: %v", i, err)
				case i >= tt.wantOK && !errors.Is(err, ErrTooManyWaiters):
					t.Fatalf("Acquire #%d over cap: %v", i, err)
				case err == nil:
					releases = append(releases, rel)
				}
			}
			if w.InUse() != tt.wantOK {
				t.Fatalf("InUse() = %d, want %d", w.InUse(), tt.wantOK)
			}
			for _, rel := range releases {
				rel()
				rel() // idempotent
			}
			if w.InUse() != 0 {
				t.Fatalf("InUse() after release = %d", w.InUse())
			}
			if _, err := w.Acquire(); err != nil {
				t.Fatalf("Acquire after release: %v", err)
			}
		})
	}
}

func TestWaitersConcurrent(t *testing.T) {
	const max = 10
	w := NewWaiters(max)
	var wg sync.WaitGroup
	for g := 0; g < 50; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				rel, err := w.Acquire()
				if err != nil {
					continue
				}
				if n := w.InUse(); n > max {
					t.Errorf("InUse() = %d > %d", n, max)
				}
				rel()
				rel()
			}
		}()
	}
	wg.Wait()
	if w.InUse() != 0 {
		t.Fatalf("InUse() = %d after all released", w.InUse())
	}
}

func TestWaitAny(t *testing.T) {
	closed := make(chan struct{})
	close(closed)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	deadline, cancelDeadline := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancelDeadline()
	tests := []struct {
		name      string
		ctx       context.Context
		timeout   time.Duration
		ch        func() <-chan struct{}
		wantFired bool
		wantErr   error
		minDur    time.Duration
	}{
		{name: "already closed", ctx: context.Background(), timeout: time.Hour, ch: func() <-chan struct{} { return closed }, wantFired: true},
		{name: "closed beats cancelled ctx", ctx: cancelled, timeout: time.Hour, ch: func() <-chan struct{} { return closed }, wantFired: true},
		{name: "closes later", ctx: context.Background(), timeout: time.Hour, ch: func() <-chan struct{} {
			c := make(chan struct{})
			time.AfterFunc(10*time.Millisecond, func() { close(c) })
			return c
		}, wantFired: true, minDur: 10 * time.Millisecond},
		{name: "timeout", ctx: context.Background(), timeout: 15 * time.Millisecond, ch: func() <-chan struct{} { return make(chan struct{}) }, minDur: 15 * time.Millisecond},
		{name: "nil channel timeout", ctx: context.Background(), timeout: time.Millisecond, ch: func() <-chan struct{} { return nil }},
		{name: "cancelled", ctx: cancelled, timeout: time.Hour, ch: func() <-chan struct{} { return make(chan struct{}) }, wantErr: context.Canceled},
		{name: "deadline, no timeout", ctx: deadline, timeout: 0, ch: func() <-chan struct{} { return make(chan struct{}) }, wantErr: context.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			fired, err := WaitAny(tt.ctx, tt.timeout, tt.ch())
			if fired != tt.wantFired || !errors.Is(err, tt.wantErr) {
				t.Fatalf("WaitAny = %v, %v, want %v, %v", fired, err, tt.wantFired, tt.wantErr)
			}
			if d := time.Since(start); d < tt.minDur {
				t.Fatalf("returned after %v, before %v", d, tt.minDur)
			}
		})
	}
}

// TestWaitAnyWithLog is the long-poll shape: acquire a slot, wait for the
// log to move past the cursor, read.
func TestWaitAnyWithLog(t *testing.T) {
	l := NewLog(LogConfig{})
	w := NewWaiters(1)
	rel, err := w.Acquire()
	if err != nil {
		t.Fatal(err)
	}
	defer rel()
	if _, err := w.Acquire(); !errors.Is(err, ErrTooManyWaiters) {
		t.Fatalf("second waiter: %v", err)
	}
	time.AfterFunc(5*time.Millisecond, func() { _, _ = l.Append("t", nil) })
	fired, err := WaitAny(context.Background(), time.Second, l.Changed(0))
	if !fired || err != nil {
		t.Fatalf("WaitAny = %v, %v", fired, err)
	}
	if evs, err := l.ReadAfter(0, 0); len(evs) != 1 || err != nil {
		t.Fatalf("ReadAfter = %v, %v", evs, err)
	}
}

func BenchmarkWaitersAcquireRelease(b *testing.B) {
	w := NewWaiters(1 << 20)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			rel, _ := w.Acquire()
			rel()
		}
	})
}
