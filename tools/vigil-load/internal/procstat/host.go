package procstat

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Usage is a Sample and the peak RSS.
type Usage struct {
	Sample
	HWMKiB int64
}

// ReadUsage samples process pid with its peak RSS (VmHWM); false when it
// cannot be read.
func ReadUsage(pid int) (Usage, bool) {
	if pid <= 0 {
		return Usage{}, false
	}
	s, err := ReadProc(pid)
	if err != nil {
		return Usage{}, false
	}
	hwm, _ := ReadStatusKiB(pid, "VmHWM:")
	return Usage{Sample: s, HWMKiB: hwm}, true
}

// CPUTimes is one CPU's line of /proc/stat (all CPUs' for -1).
type CPUTimes struct{ Busy, Softirq time.Duration }

func ReadCPUTimes(cpu int) (CPUTimes, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return CPUTimes{}, err
	}
	return parseCPUTimes(b, cpu)
}

// parseCPUTimes reads the line of cpu ("cpu" for -1, else "cpuN") of
// /proc/stat: busy is user, nice, system, irq, softirq and steal.
func parseCPUTimes(stat []byte, cpu int) (CPUTimes, error) {
	name := "cpu"
	if cpu >= 0 {
		name += strconv.Itoa(cpu)
	}
	for _, line := range strings.Split(string(stat), "\n") {
		f := strings.Fields(line)
		if len(f) < 9 || f[0] != name {
			continue
		}
		var v [9]uint64
		for i := 1; i < 9; i++ {
			var err error
			if v[i], err = strconv.ParseUint(f[i], 10, 64); err != nil {
				return CPUTimes{}, fmt.Errorf("proc stat %s field %d: %w", name, i, err)
			}
		}
		tick := func(n uint64) time.Duration { return time.Duration(n) * time.Second / clockTicks }
		return CPUTimes{Busy: tick(v[1] + v[2] + v[3] + v[6] + v[7] + v[8]), Softirq: tick(v[7])}, nil
	}
	return CPUTimes{}, fmt.Errorf("proc stat: no %s line", name)
}

// CPUModel is the host's CPU model name.
func CPUModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if k, v, ok := strings.Cut(s.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

// RaiseNoFile lifts RLIMIT_NOFILE to its hard limit: each session holds a
// socket here and one or more on the server.
func RaiseNoFile() uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	return lim.Cur
}
