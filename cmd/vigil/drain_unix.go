//go:build unix

package main

import (
	"os"
	"os/signal"
	"syscall"
)

// notifyDrain calls drain on every SIGUSR1 until the returned stop is
// called.
func notifyDrain(drain func()) (stop func()) {
	ch := make(chan os.Signal, 1)
	done := make(chan struct{})
	signal.Notify(ch, syscall.SIGUSR1)
	go func() {
		for {
			select {
			case <-ch:
				drain()
			case <-done:
				return
			}
		}
	}()
	return func() {
		signal.Stop(ch)
		close(done)
	}
}
