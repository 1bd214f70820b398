package procstat

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
	"unsafe"
)

// PinProcess restricts every thread of process pid (0: this process) to
// one CPU with sched_setaffinity. Threads created later inherit the mask
// of the thread that creates them, so a second pass catches any thread
// that appeared during the first.
func PinProcess(pid, cpu int) error {
	if cpu < 0 || cpu >= 1024 {
		return fmt.Errorf("cpu %d out of range", cpu)
	}
	dir := "/proc/self/task"
	if pid > 0 {
		dir = "/proc/" + strconv.Itoa(pid) + "/task"
	}
	var mask [16]uint64 // 1024 CPUs
	mask[cpu/64] = 1 << (uint(cpu) % 64)
	for pass := 0; pass < 2; pass++ {
		tasks, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			_, _, errno := syscall.RawSyscall(syscall.SYS_SCHED_SETAFFINITY, uintptr(tid), unsafe.Sizeof(mask), uintptr(unsafe.Pointer(&mask)))
			if errno != 0 && errno != syscall.ESRCH {
				return fmt.Errorf("sched_setaffinity(%d): %w", tid, errno)
			}
		}
	}
	return nil
}
