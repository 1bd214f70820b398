package patterns

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newTestIdempotency(maxEntries int) (*Idempotency, *fakeClock) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	return NewIdempotency(IdempotencyConfig{TTL: time.Minute, MaxEntries: maxEntries, Now: clk.Now}), clk
}

func TestIdempotencyDo(t *testing.T) {
	type call struct {
		advance      time.Duration // clock moves before the call
		scope, key   string
		fp           string
		wantBody     string // "" when an error is expected
		wantReplayed bool
		wantErr      error
	}
	tests := []struct {
		name       string
		maxEntries int
		calls      []call
		wantRuns   int
		wantLen    int
	}{
		{
			name: "first then replay",
			calls: []call{
				{scope: "s", key: "k", fp: "a", wantBody: "run1"},
				{scope: "s", key: "k", fp: "a", wantBody: "run1", wantReplayed: true},
				{advance: 59 * time.Second, scope: "s", key: "k", fp: "a", wantBody: "run1", wantReplayed: true},
			},
			wantRuns: 1, wantLen: 1,
		},
		{
			name: "key reused with other fingerprint",
			calls: []call{
				{scope: "s", key: "k", fp: "a", wantBody: "run1"},
				{scope: "s", key: "k", fp: "b", wantErr: ErrKeyReused},
				{scope: "s", key: "k", fp: "a", wantBody: "run1", wantReplayed: true},
			},
			wantRuns: 1, wantLen: 1,
		},
		{
			name: "scopes do not collide",
			calls: []call{
				{scope: "s1", key: "k", fp: "a", wantBody: "run1"},
				{scope: "s2", key: "k", fp: "b", wantBody: "run2"},
				{scope: "s1", key: "k", fp: "a", wantBody: "run1", wantReplayed: true},
				{scope: "s2", key: "k", fp: "b", wantBody: "run2", wantReplayed: true},
			},
			wantRuns: 2, wantLen: 2,
		},
		{
			name: "expires after TTL",
			calls: []call{
				{scope: "s", key: "k", fp: "a", wantBody: "run1"},
				{advance: time.Minute, scope: "s", key: "k", fp: "b", wantBody: "run2"},
				{scope: "s", key: "k", fp: "b", wantBody: "run2", wantReplayed: true},
			},
			wantRuns: 2, wantLen: 1,
		},
		{
			name:       "oldest evicted past MaxEntries",
			maxEntries: 2,
			calls: []call{
				{scope: "s", key: "k1", fp: "a", wantBody: "run1"},
				{scope: "s", key: "k2", fp: "a", wantBody: "run2"},
				{scope: "s", key: "k3", fp: "a", wantBody: "run3"},
				{scope: "s", key: "k2", fp: "a", wantBody: "run2", wantReplayed: true},
				{scope: "s", key: "k1", fp: "a", wantBody: "run4"}, // forgotten, evicts k2
				{scope: "s", key: "k3", fp: "a", wantBody: "run3", wantReplayed: true},
			},
			wantRuns: 4, wantLen: 2,
		},
		{
			name: "empty key is not stored",
			calls: []call{
				{scope: "s", key: "", fp: "a", wantBody: "run1"},
				{scope: "s", key: "", fp: "a", wantBody: "run2"},
			},
			wantRuns: 2, wantLen: 0,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, clk := newTestIdempotency(tt.maxEntries)
			runs := 0
			fn := func() Result {
				runs++
				return Result{Status: 201, Header: map[string]string{"X-Run": fmt.Sprint(runs)}, Body: []byte(fmt.Sprintf("run%d", runs))}
			}
			for i, cl := range tt.calls {
				clk.Advance(cl.advance)
				res, replayed, err := c.Do(context.Background(), cl.scope, cl.key, cl.fp, fn)
				if !errors.Is(err, cl.wantErr) || replayed != cl.wantReplayed || string(res.Body) != cl.wantBody {
					t.Fatalf("call %d: got %q replayed=%v err=%v, want %q replayed=%v err=%v",
						i, res.Body, replayed, err, cl.wantBody, cl.wantReplayed, cl.wantErr)
				}
				if err == nil && (res.Status != 201 || "run"+res.Header["X-Run"] != cl.wantBody) {
					t.Fatalf("call %d: bad result %+v", i, res)
				}
			}
			if runs != tt.wantRuns {
				t.Fatalf("fn ran %d times, want %d", runs, tt.wantRuns)
			}
			if c.Len() != tt.wantLen {
				t.Fatalf("Len() = %d, want %d", c.Len(), tt.wantLen)
			}
		})
	}
}

func TestIdempotencyReplayIsCopy(t *testing.T) {
	c, _ := newTestIdempotency(0)
	fn := func() Result { return Result{Status: 200, Header: map[string]string{"A": "1"}, Body: []byte("x")} }
	_, _, _ = c.Do(context.Background(), "s", "k", "f", fn)
	r1, _, _ := c.Do(context.Background(), "s", "k", "f", fn)
	r1.Header["A"] = "2"
	r1.Body[0] = 'y'
	r2, _, _ := c.Do(context.Background(), "s", "k", "f", fn)
	if r2.Header["A"] != "1" || string(r2.Body) != "x" {
		t.Fatalf("replay shares storage: %+v", r2)
	}
}

func TestIdempotencyConcurrentDuplicates(t *testing.T) {
	c, _ := newTestIdempotency(0)
	var runs atomic.Int32
	release := make(chan struct{})
	fn := func() Result {
		runs.Add(1)
		<-release // keep the first call in flight while the others arrive
		return Result{Status: 200, Body: []byte("once")}
	}
	const n = 100
	var wg, started sync.WaitGroup
	var replays atomic.Int32
	for i := 0; i < n; i++ {
		wg.Add(1)
		started.Add(1)
		go func() {
			defer wg.Done()
			started.Done()
			res, replayed, err := c.Do(context.Background(), "s", "k", "f", fn)
			if err != nil || string(res.Body) != "once" {
				t.Errorf("Do = %q, %v", res.Body, err)
			}
			if replayed {
				replays.Add(1)
			}
		}()
	}
	started.Wait()
	time.Sleep(5 * time.Millisecond) // most callers are now waiting on the first
	close(release)
	wg.Wait()
	if runs.Load() != 1 || replays.Load() != n-1 {
		t.Fatalf("fn ran %d times, %d replays", runs.Load(), replays.Load())
	}
}

func TestIdempotencyWaiterContext(t *testing.T) {
	c, _ := newTestIdempotency(0)
	release := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _, _ = c.Do(context.Background(), "s", "k", "f", func() Result { <-release; return Result{Status: 200} })
	}()
	for c.Len() == 0 {
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
	defer cancel()
	_, _, err := c.Do(ctx, "s", "k", "f", func() Result { t.Error("fn ran twice"); return Result{} })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiting Do = %v", err)
	}
	// A different fingerprint is refused even while the first is in flight.
	if _, _, err := c.Do(context.Background(), "s", "k", "other", nil); !errors.Is(err, ErrKeyReused) {
		t.Fatalf("in-flight reuse = %v", err)
	}
	close(release)
	<-done
	res, replayed, err := c.Do(context.Background(), "s", "k", "f", nil)
	if res.Status != 200 || !replayed || err != nil {
		t.Fatalf("after first finished: %+v %v %v", res, replayed, err)
	}
}

func TestIdempotencyPanicIsNotStored(t *testing.T) {
	c, _ := newTestIdempotency(0)
	entered := make(chan struct{})
	release := make(chan struct{})
	panicked := make(chan any, 1)
	go func() {
		defer func() { panicked <- recover() }()
		_, _, _ = c.Do(context.Background(), "s", "k", "f", func() Result {
			close(entered)
			<-release
			panic("boom")
		})
	}()
	<-entered
	waiter := make(chan Result, 1)
	go func() {
		res, _, _ := c.Do(context.Background(), "s", "k", "f", func() Result { return Result{Status: 202} })
		waiter <- res
	}()
	time.Sleep(5 * time.Millisecond) // the second call is (most likely) waiting on the first
	close(release)
	if p := <-panicked; p != "boom" {
		t.Fatalf("panic = %v", p)
	}
	if res := <-waiter; res.Status != 202 {
		t.Fatalf("waiter got %+v, want its own run", res)
	}
	if c.Len() != 1 {
		t.Fatalf("Len() = %d", c.Len())
	}
}

func BenchmarkIdempotencyDo(b *testing.B) {
	c := NewIdempotency(IdempotencyConfig{MaxEntries: 1000})
	res := Result{Status: 200, Body: []byte("ok")}
	fn := func() Result { return res }
	keys := make([]string, 4096)
	for i := range keys {
		keys[i] = fmt.Sprint(i)
	}
	b.Run("new", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			_, _, _ = c.Do(context.Background(), "s", keys[i%len(keys)], "f", fn)
			i++
		}
	})
	b.Run("replay", func(b *testing.B) {
		_, _, _ = c.Do(context.Background(), "s", "r", "f", fn)
		b.ReportAllocs()
		for b.Loop() {
			_, _, _ = c.Do(context.Background(), "s", "r", "f", fn)
		}
	})
}
