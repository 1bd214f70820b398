package sfu

import (
	"sync"
	"sync/atomic"
)

// cowList is a copy-on-write list: readers on the packet path load an
// immutable snapshot without a lock; writers copy it under a mutex.
type cowList[T comparable] struct {
	mu   sync.Mutex
	list atomic.Pointer[[]T]
}

// load returns the current snapshot; callers must not modify it.
func (c *cowList[T]) load() []T {
	if p := c.list.Load(); p != nil {
		return *p
	}
	return nil
}

func (c *cowList[T]) add(v T) {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.load()
	next := make([]T, len(old), len(old)+1)
	copy(next, old)
	next = append(next, v)
	c.list.Store(&next)
}

// remove drops v and reports whether it was there.
func (c *cowList[T]) remove(v T) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.load()
	next := make([]T, 0, len(old))
	for _, o := range old {
		if o != v {
			next = append(next, o)
		}
	}
	c.list.Store(&next)
	return len(next) != len(old)
}

// clear empties the list and returns what it held.
func (c *cowList[T]) clear() []T {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.load()
	c.list.Store(nil)
	return old
}
