package procstat

import (
	"testing"
	"time"
)

func TestParseVmRSS(t *testing.T) {
	status := "Name:\tvigil\nUmask:\t0022\nVmPeak:\t  900000 kB\nVmRSS:\t   51234 kB\nRssAnon:\t   40000 kB\n"
	got, err := parseVmRSS([]byte(status))
	if err != nil || got != 51234 {
		t.Fatalf("parseVmRSS = %d, %v; want 51234", got, err)
	}
	if _, err := parseVmRSS([]byte("Name:\tkthreadd\nState:\tS\n")); err == nil {
		t.Fatal("no VmRSS line: want an error")
	}
	if _, err := parseVmRSS([]byte("VmRSS:\t12 MB\n")); err == nil {
		t.Fatal("a unit other than kB: want an error")
	}
}

func TestParseStatCPU(t *testing.T) {
	// A command name with spaces and parentheses; utime 250, stime 50.
	stat := "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 12 0 100 1000000 500 18446744073709551615\n"
	got, err := parseStatCPU([]byte(stat))
	if err != nil || got != 3*time.Second {
		t.Fatalf("parseStatCPU = %v, %v; want 3s", got, err)
	}
	for _, bad := range []string{"", "1 (x) S 1 2", "1 (x) S 1 2 3 4 5 6 7 8 9 10 x 5 0"} {
		if _, err := parseStatCPU([]byte(bad)); err == nil {
			t.Errorf("parseStatCPU(%q): want an error", bad)
		}
	}
}

func TestParseHostBusy(t *testing.T) {
	stat := "cpu  100 20 30 5000 40 5 5 40 0 0\ncpu0 50 10 15 2500 20 2 2 20 0 0\n"
	got, err := parseHostBusy([]byte(stat))
	// user+nice+system+irq+softirq+steal = 100+20+30+5+5+40 = 200 ticks
	if err != nil || got != 2*time.Second {
		t.Fatalf("parseHostBusy = %v, %v; want 2s", got, err)
	}
	if _, err := parseHostBusy([]byte("intr 1 2 3\n")); err == nil {
		t.Fatal("no cpu line: want an error")
	}
}

func TestReadProcSelf(t *testing.T) {
	s, err := ReadProc(0)
	if err != nil {
		t.Skipf("no /proc here: %v", err)
	}
	if s.RSSKiB <= 0 {
		t.Fatalf("own RSS %d KiB", s.RSSKiB)
	}
}

func TestParseUDPDrops(t *testing.T) {
	procNetUDP := `   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 00000000:1F90 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1000 2 0000000000000000 17
  101: 0100007F:1F91 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1001 2 0000000000000000 5
  102: 0100007F:0050 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1002 2 0000000000000000 99
`
	if got := parseUDPDrops([]byte(procNetUDP), map[int]bool{8080: true, 8081: true}); got != 22 {
		t.Fatalf("drops = %d, want 22", got)
	}
	if got := parseUDPDrops([]byte(procNetUDP), map[int]bool{1: true}); got != 0 {
		t.Fatalf("drops = %d, want 0", got)
	}
}

func TestParseStatusKiB(t *testing.T) {
	status := []byte("Name:\tvigil\nVmHWM:\t  90123 kB\nVmRSS:\t   51234 kB\n")
	if got, err := parseStatusKiB(status, "VmHWM:"); err != nil || got != 90123 {
		t.Fatalf("VmHWM = %d, %v", got, err)
	}
	if _, err := parseStatusKiB(status, "VmSwap:"); err == nil {
		t.Fatal("missing key: want an error")
	}
}

func TestParseCPUTimes(t *testing.T) {
	stat := []byte("cpu  914252 55035 347169 1031526 2524 0 39834 263 0 0\ncpu0 461661 26787 184511 490831 512 0 33298 134 0 0\ncpu1 452590 28247 162657 540694 2012 0 6535 128 0 0\nintr 1\n")
	c, err := parseCPUTimes(stat, 0)
	if err != nil || c.Busy != (461661+26787+184511+33298+134)*10*time.Millisecond || c.Softirq != 33298*10*time.Millisecond {
		t.Errorf("cpu0: %+v, %v", c, err)
	}
	if c, err := parseCPUTimes(stat, -1); err != nil || c.Softirq != 39834*10*time.Millisecond {
		t.Errorf("all: %+v, %v", c, err)
	}
	if _, err := parseCPUTimes(stat, 2); err == nil {
		t.Error("cpu2 found")
	}
}
