package patterns

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
)

// ErrSlowSubscriber is the error of a Subscription that the Hub closed
// because its queue was full under the Disconnect policy.
var ErrSlowSubscriber = errors.New("patterns: slow subscriber disconnected")

// defaultQueueSize is the QueueSize used when HubConfig.QueueSize <= 0.
const defaultQueueSize = 64

// OverflowPolicy states what a Hub does when a subscriber's queue is full.
type OverflowPolicy int

const (
	// DropOldest drops the subscriber's oldest queued item to make room for
	// the new one; Subscription.Dropped counts the losses.
	DropOldest OverflowPolicy = iota
	// Disconnect closes the subscriber; its Err returns ErrSlowSubscriber.
	Disconnect
)

// String returns the policy's name.
func (p OverflowPolicy) String() string {
	switch p {
	case DropOldest:
		return "drop-oldest"
	case Disconnect:
		return "disconnect"
	}
	return "unknown"
}

// HubConfig configures a Hub.
type HubConfig struct {
	QueueSize int            // items queued per subscriber; <= 0 means 64
	Overflow  OverflowPolicy // what to do when a queue is full; default DropOldest
}

// Hub is a topic-based publish/subscribe hub. Each subscriber has a bounded
// queue; Publish never blocks on a slow subscriber and applies the configured
// OverflowPolicy instead. The subscriber list of a topic is a copy-on-write
// snapshot, so Publish holds no Hub lock while delivering. No goroutine is
// started per subscriber. A Hub is safe for concurrent use.
type Hub[T any] struct {
	cfg    HubConfig
	mu     sync.RWMutex
	topics map[string][]*Subscription[T] // slices are never modified in place
	closed bool
}

// NewHub returns an empty Hub.
func NewHub[T any](cfg HubConfig) *Hub[T] {
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = defaultQueueSize
	}
	return &Hub[T]{cfg: cfg, topics: make(map[string][]*Subscription[T])}
}

// Subscribe returns a new subscription to topic. After Close it returns a
// subscription that is already closed with ErrClosed.
func (h *Hub[T]) Subscribe(topic string) *Subscription[T] {
	s := &Subscription[T]{hub: h, topic: topic, ch: make(chan T, h.cfg.QueueSize)}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		s.closed = true
		s.err = ErrClosed
		close(s.ch)
		return s
	}
	old := h.topics[topic]
	subs := make([]*Subscription[T], len(old), len(old)+1)
	copy(subs, old)
	h.topics[topic] = append(subs, s)
	return s
}

// Publish queues v for every subscriber of topic and returns how many
// accepted it (an item accepted under DropOldest may later be dropped by a
// newer one). It never blocks on a subscriber.
func (h *Hub[T]) Publish(topic string, v T) (delivered int) {
	h.mu.RLock()
	subs := h.topics[topic]
	h.mu.RUnlock()
	for _, s := range subs {
		if s.offer(v) {
			delivered++
		}
	}
	return delivered
}

// Subscribers returns the number of current subscribers of topic.
func (h *Hub[T]) Subscribers(topic string) int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.topics[topic])
}

// Close closes every subscription with ErrClosed; later Publish calls
// deliver nothing and later Subscribe calls return closed subscriptions.
// Close is idempotent.
func (h *Hub[T]) Close() {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	h.closed = true
	topics := h.topics
	h.topics = make(map[string][]*Subscription[T])
	h.mu.Unlock()
	for _, subs := range topics {
		for _, s := range subs {
			s.close(ErrClosed)
		}
	}
}

// remove drops s from its topic's snapshot, if present.
func (h *Hub[T]) remove(s *Subscription[T]) {
	h.mu.Lock()
	defer h.mu.Unlock()
	old := h.topics[s.topic]
	i := slices.Index(old, s)
	if i < 0 {
		return
	}
	if len(old) == 1 {
		delete(h.topics, s.topic)
		return
	}
	subs := make([]*Subscription[T], 0, len(old)-1)
	subs = append(subs, old[:i]...)
	h.topics[s.topic] = append(subs, old[i+1:]...)
}

// Subscription is one subscriber's bounded queue of a Hub topic. Read it with
// C or Next. When it ends (Unsubscribe, Hub.Close, or Disconnect overflow) its
// channel is closed after the items still queued, and Err says why.
type Subscription[T any] struct {
	hub     *Hub[T]
	topic   string
	ch      chan T
	dropped atomic.Uint64

	mu     sync.Mutex // serialises senders and close of ch
	closed bool
	err    error
}

// C returns the channel the subscription's items arrive on. It is closed,
// once drained, when the subscription ends.
func (s *Subscription[T]) C() <-chan T { return s.ch }

// Next returns the next item. When the subscription has ended and its queue
// is drained it returns Err(); when ctx is done first it returns ctx.Err().
func (s *Subscription[T]) Next(ctx context.Context) (T, error) {
	select {
	case v, ok := <-s.ch:
		if !ok {
			var zero T
			return zero, s.Err()
		}
		return v, nil
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

// Dropped returns how many items this subscriber lost to the DropOldest
// policy so far.
func (s *Subscription[T]) Dropped() uint64 { return s.dropped.Load() }

// Err returns nil while the subscription is open, ErrSlowSubscriber if the
// Hub disconnected it for overflow, and ErrClosed otherwise.
func (s *Subscription[T]) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Unsubscribe ends the subscription with ErrClosed. It is idempotent and safe
// to call concurrently with Publish.
func (s *Subscription[T]) Unsubscribe() {
	if s.close(ErrClosed) {
		s.hub.remove(s)
	}
}

// offer queues v without blocking and reports whether it was accepted.
func (s *Subscription[T]) offer(v T) bool {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return false
	}
	for {
		select {
		case s.ch <- v:
			s.mu.Unlock()
			return true
		default:
		}
		if s.hub.cfg.Overflow == Disconnect {
			s.closeLocked(ErrSlowSubscriber)
			s.mu.Unlock()
			s.hub.remove(s)
			return false
		}
		// DropOldest: only senders (serialised by s.mu) add to ch, so after
		// taking one item out (or the reader doing it) the send succeeds.
		select {
		case <-s.ch:
			s.dropped.Add(1)
		default:
		}
	}
}

// close ends the subscription with err; it reports whether this call did it.
func (s *Subscription[T]) close(err error) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.closeLocked(err)
	return true
}

func (s *Subscription[T]) closeLocked(err error) {
	s.closed = true
	s.err = err
	close(s.ch)
}
