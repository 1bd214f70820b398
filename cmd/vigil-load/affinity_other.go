//go:build !linux

package main

import "errors"

func pinProcess(pid, cpu int) error {
	return errors.New("pinning to a CPU needs Linux")
}
