package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// SubscriberQueue is how many messages wait for one subscription's
// callback; when its queue is full, a new message is dropped (for that
// subscription only) and the drop is logged.
const SubscriberQueue = 1024

// Publish sends m on the bus (m.Origin is set to this node's id). Every
// node's subscribers get it, this node's included, in the order each node
// published; a node cut off from Redis misses what is published meanwhile.
func (c *Cluster) Publish(ctx context.Context, m Message) error {
	m.Origin = c.ID()
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("cluster: publish: %w", err)
	}
	return c.call(ctx, "publish", func(ctx context.Context) error {
		return c.rdb.Publish(ctx, c.keys.bus(), b).Err()
	})
}

// Subscribe calls fn for every Message of that type published after it
// returns; it keeps the subscription across Redis outages (messages
// published while this node is away from Redis are missed). The returned
// func unsubscribes (it may be called from fn): when it returns, fn may
// be running, or about to run for a message it was already given, and is
// not called after that.
//
// Each subscription has its own goroutine, which calls fn in order, and
// a queue of SubscriberQueue messages between the bus and it: a slow fn
// delays only its own messages, and when its queue is full the newest
// message is dropped for it and logged. fn must not call Close (Close
// waits for it). After Close, Subscribe does nothing.
func (c *Cluster) Subscribe(typ string, fn func(Message)) (cancel func()) {
	s := &subscriber{
		typ:  typ,
		fn:   fn,
		q:    make(chan Message, SubscriberQueue),
		done: make(chan struct{}),
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return func() {}
	}
	// Copy on write: the bus goroutine iterates over a list it got under
	// the lock, without it.
	c.subs[typ] = append(slices.Clip(c.subs[typ]), s)
	c.subWG.Add(1)
	c.mu.Unlock()
	go c.runSubscriber(s)
	return func() {
		c.mu.Lock()
		if list, ok := c.subs[typ]; ok {
			list = slices.DeleteFunc(slices.Clone(list), func(x *subscriber) bool { return x == s })
			if len(list) == 0 {
				delete(c.subs, typ)
			} else {
				c.subs[typ] = list
			}
		}
		c.mu.Unlock()
		s.cancel()
	}
}

type subscriber struct {
	typ  string
	fn   func(Message)
	q    chan Message
	done chan struct{}
	once sync.Once
	// Owned by the bus goroutine.
	dropped int
}

func (s *subscriber) cancel() { s.once.Do(func() { close(s.done) }) }

func (c *Cluster) runSubscriber(s *subscriber) {
	defer c.subWG.Done()
	for {
		select {
		case <-s.done:
			return
		case m := <-s.q:
			select {
			case <-s.done:
				return
			default:
			}
			s.fn(m)
		}
	}
}

// dispatch decodes one bus message and queues it for its subscribers.
// Called by the bus goroutine only.
func (c *Cluster) dispatch(payload string) {
	var m Message
	if err := json.Unmarshal([]byte(payload), &m); err != nil {
		c.log.Warn("cluster: dropping a malformed bus message", "err", err)
		return
	}
	c.mu.Lock()
	list := c.subs[m.Type]
	c.mu.Unlock()
	for _, s := range list {
		select {
		case <-s.done:
			continue
		default:
		}
		select {
		case s.q <- m:
			if s.dropped > 0 {
				c.log.Warn("cluster: subscriber caught up", "type", s.typ, "dropped", s.dropped)
				s.dropped = 0
			}
		default:
			if s.dropped == 0 {
				c.log.Warn("cluster: subscriber too slow; dropping its messages", "type", s.typ)
			}
			s.dropped++
		}
	}
}

// subscribeBus subscribes a new PubSub to the bus channel and waits for
// Redis to confirm it, so that every message published after it returns
// is delivered.
func (c *Cluster) subscribeBus(parent context.Context) (*redis.PubSub, error) {
	var ps *redis.PubSub
	err := c.call(parent, "subscribe", func(ctx context.Context) error {
		ps = c.rdb.Subscribe(ctx, c.keys.bus())
		for {
			msg, err := ps.ReceiveTimeout(ctx, opTimeout)
			if err != nil {
				return err
			}
			if _, ok := msg.(*redis.Subscription); ok {
				return nil
			}
		}
	})
	if err != nil {
		_ = ps.Close()
		return nil, err
	}
	return ps, nil
}

// busLoop reads the bus until Close. go-redis dials again and subscribes
// again by itself after a broken connection; the loop pings an idle
// connection, and replaces one that stays silent (a connection to a
// Redis that vanished without closing it).
func (c *Cluster) busLoop() {
	defer close(c.busDone)
	idle := min(max(c.hb, 50*time.Millisecond), time.Second)
	silent := 3*idle + opTimeout
	last := time.Now()
	for {
		c.mu.Lock()
		ps := c.ps
		c.mu.Unlock()
		msg, err := ps.ReceiveTimeout(c.busCtx, idle)
		select {
		case <-c.stop:
			return
		default:
		}
		switch {
		case err == nil:
			last = time.Now()
			if m, ok := msg.(*redis.Message); ok {
				c.dispatch(m.Payload)
			}
		case isTimeout(err) && time.Since(last) > silent:
			c.log.Debug("cluster: bus connection silent; subscribing again")
			c.replaceBus(ps)
			last = time.Now()
		case isTimeout(err):
			ctx, cancel := context.WithTimeout(c.busCtx, opTimeout)
			_ = ps.Ping(ctx) // the reply (or its absence) is read above
			cancel()
		default:
			// A broken connection, or none to be made: Redis is away.
			// Wait a little before the next read dials again.
			c.log.Debug("cluster: bus read failed", "err", err)
			select {
			case <-c.stop:
				return
			case <-time.After(idle):
			}
			last = time.Now()
		}
	}
}

// replaceBus subscribes a new PubSub, then closes old.
func (c *Cluster) replaceBus(old *redis.PubSub) {
	ps, err := c.subscribeBus(c.busCtx)
	if err != nil {
		return
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		_ = ps.Close()
		return
	}
	c.ps = ps
	c.mu.Unlock()
	_ = old.Close()
}
