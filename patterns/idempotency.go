package patterns

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"sync"
	"time"
)

// ErrKeyReused is returned by Idempotency.Do when a key is reused, within its
// scope and TTL, for a request with a different fingerprint.
var ErrKeyReused = errors.New("patterns: idempotency key reused with a different request")

// Defaults used when IdempotencyConfig fields are <= 0.
const (
	defaultIdempotencyTTL        = time.Hour
	defaultIdempotencyMaxEntries = 10000
)

// Result is a stored response of an idempotent request.
type Result struct {
	Status int
	Header map[string]string
	Body   []byte
}

func (r Result) clone() Result {
	r.Header = maps.Clone(r.Header)
	r.Body = bytes.Clone(r.Body)
	return r
}

// IdempotencyConfig configures an Idempotency cache.
type IdempotencyConfig struct {
	TTL        time.Duration // how long a key is remembered from its first call; <= 0 means 1h
	MaxEntries int           // most keys remembered, oldest evicted first; <= 0 means 10000
	// MaxPerScope is the most keys remembered for one scope: a new key
	// beyond it evicts that scope's oldest, never another scope's, so
	// one client flooding keys cannot push out another's replies. <= 0
	// means no bound but MaxEntries.
	MaxPerScope int
	Now         func() time.Time // clock; nil means time.Now
}

// Idempotency runs a request's handler at most once per (scope, key) and
// replays the stored Result to retries, so a client whose reply was lost can
// safely retry a mutating call. It is bounded by TTL, MaxEntries and
// MaxPerScope and is safe for concurrent use.
type Idempotency struct {
	ttl      time.Duration
	max      int
	maxScope int
	now      func() time.Time

	// mu guards what follows; nothing is locked while holding it.
	mu         sync.Mutex
	m          map[idemKey]*idemEntry
	head, tail *idemEntry // insertion order: head is oldest, so expires first
	// scopes lists each scope's entries in insertion order (with
	// MaxPerScope).
	scopes map[string]*scopeList
}

// scopeList is one scope's entries, oldest first.
type scopeList struct {
	head, tail *idemEntry
	n          int
}

type idemKey struct{ scope, key string }

type idemEntry struct {
	k          idemKey
	fp         string
	expires    time.Time
	prev, next *idemEntry
	// sprev and snext link the entries of one scope (with MaxPerScope).
	sprev, snext *idemEntry
	linked       bool

	done chan struct{} // closed when fn returned (ok) or panicked (!ok)
	ok   bool          // written before done is closed
	res  Result        // written before done is closed
}

// NewIdempotency returns an empty cache.
func NewIdempotency(cfg IdempotencyConfig) *Idempotency {
	c := &Idempotency{ttl: cfg.TTL, max: cfg.MaxEntries, maxScope: cfg.MaxPerScope, now: cfg.Now,
		m: make(map[idemKey]*idemEntry), scopes: map[string]*scopeList{}}
	if c.ttl <= 0 {
		c.ttl = defaultIdempotencyTTL
	}
	if c.max <= 0 {
		c.max = defaultIdempotencyMaxEntries
	}
	if c.now == nil {
		c.now = time.Now
	}
	return c
}

// Do runs fn once for (scope, key) and stores its Result. A later call with
// the same (scope, key) and fingerprint gets the stored Result with
// replayed=true without running fn; if the first call is still running it
// waits for it (or for ctx, returning ctx.Err()). A call with the same
// (scope, key) but another fingerprint gets ErrKeyReused. An empty key runs
// fn without storing anything. Keys are forgotten TTL after their first
// call or when MaxEntries newer keys (or MaxPerScope newer keys of the
// same scope) push them out, even if that first call is still running.
//
// The first caller receives fn's Result itself and must not modify it;
// replays receive copies. If fn panics nothing is stored, the panic
// propagates, and calls waiting on it start over (one of them runs fn).
func (c *Idempotency) Do(ctx context.Context, scope, key, fingerprint string, fn func() Result) (res Result, replayed bool, err error) {
	if key == "" {
		return fn(), false, nil
	}
	k := idemKey{scope, key}
	var e *idemEntry
	for e == nil {
		c.mu.Lock()
		now := c.now()
		c.expireLocked(now)
		prev := c.m[k]
		if prev == nil {
			e = &idemEntry{k: k, fp: fingerprint, expires: now.Add(c.ttl), done: make(chan struct{})}
			c.insertLocked(e)
			c.mu.Unlock()
			break
		}
		c.mu.Unlock()
		if prev.fp != fingerprint {
			return Result{}, false, ErrKeyReused
		}
		select {
		case <-prev.done:
		case <-ctx.Done():
			return Result{}, false, ctx.Err()
		}
		if prev.ok {
			return prev.res.clone(), true, nil
		}
		// The first call panicked and was removed; start over.
	}

	defer func() {
		if !e.ok { // fn panicked
			c.mu.Lock()
			c.removeLocked(e)
			c.mu.Unlock()
			close(e.done)
		}
	}()
	res = fn()
	e.res = res
	e.ok = true
	close(e.done)
	return res, false, nil
}

// Len returns the number of keys currently remembered, including expired
// ones not yet swept.
func (c *Idempotency) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

func (c *Idempotency) insertLocked(e *idemEntry) {
	c.m[e.k] = e
	e.linked = true
	e.prev = c.tail
	if c.tail != nil {
		c.tail.next = e
	} else {
		c.head = e
	}
	c.tail = e
	if c.maxScope > 0 {
		sl := c.scopes[e.k.scope]
		if sl == nil {
			sl = &scopeList{}
			c.scopes[e.k.scope] = sl
		}
		e.sprev = sl.tail
		if sl.tail != nil {
			sl.tail.snext = e
		} else {
			sl.head = e
		}
		sl.tail = e
		sl.n++
		for sl.n > c.maxScope {
			c.removeLocked(sl.head)
		}
	}
	for len(c.m) > c.max {
		c.removeLocked(c.head)
	}
}

// expireLocked removes expired entries; they are all at the head because
// every entry gets the same TTL from its insertion.
func (c *Idempotency) expireLocked(now time.Time) {
	for c.head != nil && !now.Before(c.head.expires) {
		c.removeLocked(c.head)
	}
}

func (c *Idempotency) removeLocked(e *idemEntry) {
	if !e.linked {
		return
	}
	e.linked = false
	delete(c.m, e.k)
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		c.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		c.tail = e.prev
	}
	e.prev, e.next = nil, nil
	if c.maxScope > 0 {
		sl := c.scopes[e.k.scope]
		if e.sprev != nil {
			e.sprev.snext = e.snext
		} else {
			sl.head = e.snext
		}
		if e.snext != nil {
			e.snext.sprev = e.sprev
		} else {
			sl.tail = e.sprev
		}
		e.sprev, e.snext = nil, nil
		if sl.n--; sl.n == 0 {
			delete(c.scopes, e.k.scope)
		}
	}
}

// Forget drops every key of scope (a session that ended).
func (c *Idempotency) Forget(scope string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if sl := c.scopes[scope]; sl != nil {
		for sl.head != nil && sl.n > 0 {
			c.removeLocked(sl.head)
		}
		return
	}
	for k, e := range c.m { // without MaxPerScope, entries are not listed by scope
		if k.scope == scope {
			c.removeLocked(e)
		}
	}
}

// ScopeLen returns the number of keys remembered for scope.
func (c *Idempotency) ScopeLen(scope string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for k := range c.m {
		if k.scope == scope {
			n++
		}
	}
	return n
}
