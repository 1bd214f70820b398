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

// TestIdempotencyPerScopeBound: a scope flooding keys evicts only its own
// oldest replies; another scope's stay replayable; Forget drops a
// scope's keys.
func TestIdempotencyPerScopeBound(t *testing.T) {
	c := NewIdempotency(IdempotencyConfig{MaxEntries: 1000, MaxPerScope: 8})
	ctx := context.Background()
	ran := 0
	do := func(scope, key string) bool {
		_, replayed, err := c.Do(ctx, scope, key, "fp", func() Result { ran++; return Result{Status: 200, Body: []byte(key)} })
		if err != nil {
			t.Fatal(err)
		}
		return replayed
	}
	for i := range 4 {
		do("victim", fmt.Sprint("v", i))
	}
	for i := range 10000 {
		do("flooder", fmt.Sprint("f", i))
	}
	t.Logf("after 10000 keys of one scope: %d kept in all, %d of the flooder, %d of the victim", c.Len(), c.ScopeLen("flooder"), c.ScopeLen("victim"))
	if n := c.ScopeLen("flooder"); n != 8 {
		t.Errorf("flooder keeps %d keys, want 8", n)
	}
	for i := range 4 {
		if !do("victim", fmt.Sprint("v", i)) {
			t.Errorf("the victim's key v%d was evicted by another scope", i)
		}
	}
	if do("flooder", "f0") {
		t.Error("the flooder's oldest key was kept past its bound")
	}
	if !do("flooder", "f9999") {
		t.Error("the flooder's newest key was evicted")
	}
	c.Forget("victim")
	if n := c.ScopeLen("victim"); n != 0 || c.Len() != 8 {
		t.Errorf("after Forget: %d keys of the scope, %d in all", n, c.Len())
	}
	if do("victim", "v0") {
		t.Error("a forgotten key was replayed")
	}
	// Expiry and the global bound keep the scope lists in step.
	clock := &fakeClock{t: time.Unix(0, 0)}
	c = NewIdempotency(IdempotencyConfig{MaxEntries: 5, MaxPerScope: 3, TTL: time.Minute, Now: clock.Now})
	for i := range 20 {
		do(fmt.Sprint("s", i%4), fmt.Sprint("k", i))
		if i%7 == 0 {
			clock.Advance(2 * time.Minute)
		}
	}
	if c.Len() > 5 || len(c.scopes) > 4 {
		t.Errorf("%d keys, %d scopes listed", c.Len(), len(c.scopes))
	}
	total := 0
	for _, sl := range c.scopes {
		total += sl.n
	}
	if total != c.Len() {
		t.Errorf("scope lists count %d keys, the cache has %d", total, c.Len())
	}
}
