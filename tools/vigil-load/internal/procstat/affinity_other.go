//go:build !linux

package procstat

import "errors"

func PinProcess(pid, cpu int) error {
	return errors.New("pinning to a CPU needs Linux")
}
