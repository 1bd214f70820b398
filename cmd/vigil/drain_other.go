//go:build !unix

package main

// notifyDrain does nothing where there is no SIGUSR1: drain with
// POST /v1/drain.
func notifyDrain(func()) (stop func()) { return func() {} }
