package patterns

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// drain reads what is queued in s without blocking.
func drain[T any](s *Subscription[T]) (items []T, closed bool) {
	for {
		select {
		case v, ok := <-s.C():
			if !ok {
				return items, true
			}
			items = append(items, v)
		default:
			return items, false
		}
	}
}

func TestHubOverflowPolicies(t *testing.T) {
	tests := []struct {
		name      string
		policy    OverflowPolicy
		queue     int
		publish   int
		delivered int // sum of Publish results
		want      []int
		dropped   uint64
		closed    bool
		err       error
		subsAfter int
	}{
		{name: "drop-oldest under capacity", policy: DropOldest, queue: 4, publish: 3, delivered: 3, want: []int{0, 1, 2}, subsAfter: 1},
		{name: "drop-oldest overflow", policy: DropOldest, queue: 4, publish: 10, delivered: 10, want: []int{6, 7, 8, 9}, dropped: 6, subsAfter: 1},
		{name: "drop-oldest queue 1", policy: DropOldest, queue: 1, publish: 5, delivered: 5, want: []int{4}, dropped: 4, subsAfter: 1},
		{name: "disconnect under capacity", policy: Disconnect, queue: 4, publish: 4, delivered: 4, want: []int{0, 1, 2, 3}, subsAfter: 1},
		{name: "disconnect overflow", policy: Disconnect, queue: 4, publish: 10, delivered: 4, want: []int{0, 1, 2, 3}, closed: true, err: ErrSlowSubscriber, subsAfter: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := NewHub[int](HubConfig{QueueSize: tt.queue, Overflow: tt.policy})
			s := h.Subscribe("room")
			delivered := 0
			for i := 0; i < tt.publish; i++ {
				delivered += h.Publish("room", i)
			}
			if delivered != tt.delivered {
				t.Errorf("delivered %d, want %d", delivered, tt.delivered)
			}
			got, closed := drain(s)
			if fmt.Sprint(got) != fmt.Sprint(tt.want) || closed != tt.closed {
				t.Errorf("got %v closed=%v, want %v closed=%v", got, closed, tt.want, tt.closed)
			}
			if s.Dropped() != tt.dropped {
				t.Errorf("Dropped() = %d, want %d", s.Dropped(), tt.dropped)
			}
			if !errors.Is(s.Err(), tt.err) {
				t.Errorf("Err() = %v, want %v", s.Err(), tt.err)
			}
			if n := h.Subscribers("room"); n != tt.subsAfter {
				t.Errorf("Subscribers = %d, want %d", n, tt.subsAfter)
			}
			if tt.closed {
				if _, err := s.Next(context.Background()); !errors.Is(err, tt.err) {
					t.Errorf("Next after disconnect = %v", err)
				}
			}
		})
	}
}

// TestHubSlowDoesNotDelayFast checks that a subscriber that never reads
// neither blocks Publish nor costs a reading subscriber any item.
func TestHubSlowDoesNotDelayFast(t *testing.T) {
	for _, policy := range []OverflowPolicy{DropOldest, Disconnect} {
		t.Run(policy.String(), func(t *testing.T) {
			const n = 200
			h := NewHub[int](HubConfig{QueueSize: 4, Overflow: policy})
			slow := h.Subscribe("t")
			fast := h.Subscribe("t")
			ack := make(chan int)
			go func() {
				defer close(ack)
				for v := range fast.C() {
					ack <- v
				}
			}()
			for i := 0; i < n; i++ {
				h.Publish("t", i)
				select {
				case v := <-ack:
					if v != i {
						t.Fatalf("fast got %d, want %d", v, i)
					}
				case <-time.After(10 * time.Second):
					t.Fatalf("fast subscriber stalled at %d", i)
				}
			}
			if fast.Dropped() != 0 || fast.Err() != nil {
				t.Fatalf("fast: dropped %d, err %v", fast.Dropped(), fast.Err())
			}
			switch policy {
			case DropOldest:
				if slow.Dropped() != n-4 {
					t.Fatalf("slow dropped %d, want %d", slow.Dropped(), n-4)
				}
			case Disconnect:
				if !errors.Is(slow.Err(), ErrSlowSubscriber) {
					t.Fatalf("slow err = %v", slow.Err())
				}
			}
			fast.Unsubscribe()
			<-ack // the reader goroutine ends
			slow.Unsubscribe()
		})
	}
}

func TestHubTopicsAndClose(t *testing.T) {
	h := NewHub[string](HubConfig{})
	a := h.Subscribe("a")
	b := h.Subscribe("b")
	if got := h.Publish("a", "x"); got != 1 {
		t.Fatalf("Publish(a) delivered %d", got)
	}
	if got := h.Publish("nobody", "x"); got != 0 {
		t.Fatalf("Publish(nobody) delivered %d", got)
	}
	if items, _ := drain(b); len(items) != 0 {
		t.Fatalf("b got %v", items)
	}
	h.Close()
	h.Close() // idempotent
	if items, closed := drain(a); fmt.Sprint(items) != "[x]" || !closed {
		t.Fatalf("a after Close: %v closed=%v", items, closed)
	}
	for _, s := range []*Subscription[string]{a, b, h.Subscribe("a")} {
		if !errors.Is(s.Err(), ErrClosed) {
			t.Fatalf("Err() = %v", s.Err())
		}
		if _, err := s.Next(context.Background()); !errors.Is(err, ErrClosed) {
			t.Fatalf("Next() = %v", err)
		}
		s.Unsubscribe() // no-op
	}
	if got := h.Publish("a", "y"); got != 0 {
		t.Fatalf("Publish after Close delivered %d", got)
	}
}

func TestSubscriptionNext(t *testing.T) {
	h := NewHub[int](HubConfig{})
	s := h.Subscribe("t")
	h.Publish("t", 7)
	ctx, cancel := context.WithCancel(context.Background())
	if v, err := s.Next(ctx); v != 7 || err != nil {
		t.Fatalf("Next = %d, %v", v, err)
	}
	cancel()
	if _, err := s.Next(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Next after cancel = %v", err)
	}
	h.Publish("t", 8)
	s.Unsubscribe()
	s.Unsubscribe()
	if v, err := s.Next(context.Background()); v != 8 || err != nil {
		t.Fatalf("Next drains after Unsubscribe = %d, %v", v, err)
	}
	if _, err := s.Next(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Next after drain = %v", err)
	}
	if h.Subscribers("t") != 0 {
		t.Fatal("unsubscribed subscriber still listed")
	}
}

// TestHubConcurrent races Publish with Subscribe, Unsubscribe (twice,
// concurrently) and Close; run it with -race.
func TestHubConcurrent(t *testing.T) {
	for _, policy := range []OverflowPolicy{DropOldest, Disconnect} {
		t.Run(policy.String(), func(t *testing.T) {
			h := NewHub[int](HubConfig{QueueSize: 2, Overflow: policy})
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for p := 0; p < 4; p++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; ; i++ {
						select {
						case <-stop:
							return
						default:
						}
						h.Publish(fmt.Sprint(i%3), i)
					}
				}()
			}
			for c := 0; c < 8; c++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < 200; i++ {
						s := h.Subscribe(fmt.Sprint(i % 3))
						drain(s)
						var uw sync.WaitGroup
						uw.Add(2)
						go func() { defer uw.Done(); s.Unsubscribe() }()
						go func() { defer uw.Done(); s.Unsubscribe() }()
						uw.Wait()
						if err := s.Err(); err == nil {
							t.Error("Err() nil after Unsubscribe")
						}
					}
				}()
			}
			time.Sleep(20 * time.Millisecond)
			h.Close()
			close(stop)
			wg.Wait()
			for i := 0; i < 3; i++ {
				if n := h.Subscribers(fmt.Sprint(i)); n != 0 {
					t.Fatalf("topic %d has %d subscribers", i, n)
				}
			}
		})
	}
}

func BenchmarkHubPublish(b *testing.B) {
	for _, n := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("subs=%d", n), func(b *testing.B) {
			h := NewHub[int](HubConfig{QueueSize: 64, Overflow: DropOldest})
			for i := 0; i < n; i++ {
				h.Subscribe("t") // never read: steady state is the drop-oldest path
			}
			b.ReportAllocs()
			for b.Loop() {
				h.Publish("t", 1)
			}
			b.StopTimer()
			h.Close()
		})
	}
}
