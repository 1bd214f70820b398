package clusterbench

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

type cpuGroup struct{ dir string }

type cfsStat struct {
	periods, throttled int64
	throttledTime      time.Duration
}

// newCPUGroup makes (or reuses) the cgroup root/name with a quota of
// budget of one core per period.
func newCPUGroup(root, name string, budget float64, period time.Duration) (*cpuGroup, error) {
	g := &cpuGroup{dir: filepath.Join(root, name)}
	if err := os.Mkdir(g.dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, err
	}
	// The period first: a quota is checked against it.
	if err := g.write("cpu.cfs_period_us", strconv.FormatInt(period.Microseconds(), 10)); err != nil {
		_ = g.remove()
		return nil, err
	}
	if err := g.write("cpu.cfs_quota_us", strconv.FormatInt(cfsQuotaUS(budget, period), 10)); err != nil {
		_ = g.remove()
		return nil, err
	}
	return g, nil
}

func (g *cpuGroup) write(file, v string) error {
	return os.WriteFile(filepath.Join(g.dir, file), []byte(v+"\n"), 0o644)
}

// add moves process pid, every thread of it, into the group.
func (g *cpuGroup) add(pid int) error {
	return g.write("cgroup.procs", strconv.Itoa(pid))
}

func (g *cpuGroup) stat() (cfsStat, error) {
	b, err := os.ReadFile(filepath.Join(g.dir, "cpu.stat"))
	if err != nil {
		return cfsStat{}, err
	}
	return parseCFSStat(b), nil
}

func parseCFSStat(b []byte) cfsStat {
	var s cfsStat
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		v, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "nr_periods":
			s.periods = v
		case "nr_throttled":
			s.throttled = v
		case "throttled_time":
			s.throttledTime = time.Duration(v)
		}
	}
	return s
}

// remove deletes the group; its processes must have exited (a
// process's exit is seen by the cgroup a moment later: retry).
func (g *cpuGroup) remove() error {
	var err error
	for range 50 {
		if err = os.Remove(g.dir); err == nil || errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("removing cgroup %s: %w", g.dir, err)
}
