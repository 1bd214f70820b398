package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = i + 1
	}
	for _, tc := range []struct {
		name string
		in   []time.Duration
		p    float64
		want time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one", ms(7), 99, 7 * time.Millisecond},
		{"median of odd", ms(1, 2, 3, 4, 5), 50, 3 * time.Millisecond},
		{"median of even is the lower", ms(1, 2, 3, 4), 50, 2 * time.Millisecond},
		{"p99 of 100", ms(hundred...), 99, 99 * time.Millisecond},
		{"p100 is the max", ms(hundred...), 100, 100 * time.Millisecond},
		{"p99 of 10 is the max", ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 99, 10 * time.Millisecond},
		{"tiny p is the min", ms(4, 5, 6), 0.001, 4 * time.Millisecond},
	} {
		if got := percentile(tc.in, tc.p); got != tc.want {
			t.Errorf("%s: percentile(%v, %v) = %v, want %v", tc.name, tc.in, tc.p, got, tc.want)
		}
	}
}

func TestSummarizeSorts(t *testing.T) {
	l := summarize([]time.Duration{5, 1, 4, 2, 3})
	if l.N != 5 || l.P50 != 3 || l.P99 != 5 || l.Max != 5 {
		t.Fatalf("summarize = %+v", l)
	}
}

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
	s, err := readProc(0)
	if err != nil {
		t.Skipf("no /proc here: %v", err)
	}
	if s.RSSKiB <= 0 {
		t.Fatalf("own RSS %d KiB", s.RSSKiB)
	}
}

func TestScanEvents(t *testing.T) {
	type ev struct {
		seq       uint64
		typ, text string
	}
	scan := func(b string) []ev {
		var out []ev
		scanEvents([]byte(b), func(seq uint64, typ, text []byte) {
			out = append(out, ev{seq, string(typ), string(text)})
		})
		return out
	}
	ws := `{"seq":7,"type":"chat","data":{"from":"driver","text":"1700000000123456789","time":"2026-01-01T00:00:00Z"}}`
	if got := scan(ws); len(got) != 1 || got[0] != (ev{7, "chat", "1700000000123456789"}) {
		t.Fatalf("ws frame: %+v", got)
	}
	poll := `{"events":[{"seq":3,"type":"participant_joined","data":{"participant":{"identity":"c0002","role":"participant","tracks":[]}}},` +
		`{"seq":4,"type":"chat","data":{"from":"driver","text":"42","time":"x"}}],"cursor":4,"closed":false}`
	got := scan(poll)
	want := []ev{{3, "participant_joined", ""}, {4, "chat", "42"}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("poll reply: %+v, want %+v", got, want)
	}
	if cur, closed, ok := pollCursor([]byte(poll)); !ok || cur != 4 || closed {
		t.Fatalf("pollCursor = %d %v %v", cur, closed, ok)
	}
	if _, closed, _ := pollCursor([]byte(`{"events":[],"cursor":9,"closed":true}`)); !closed {
		t.Fatal("closed not seen")
	}
	if got := scan(`{"events":[],"cursor":4,"closed":false}`); len(got) != 0 {
		t.Fatalf("empty poll: %+v", got)
	}
}

func TestTableRender(t *testing.T) {
	tb := &table{header: []string{"N", "p99 ms", "result"}, align: []bool{true, true, false}}
	tb.add("50", "1.25", "ok")
	tb.add("1600", "250", "limit: p99")
	var b bytes.Buffer
	tb.render(&b)
	want := strings.Join([]string{
		"|    N | p99 ms | result     |",
		"| ---: | -----: | ---------- |",
		"|   50 |   1.25 | ok         |",
		"| 1600 |    250 | limit: p99 |",
		"",
	}, "\n")
	if b.String() != want {
		t.Fatalf("render:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestHeldAndBetter(t *testing.T) {
	steps := []stepResult{{N: 50, OK: true}, {N: 100, OK: true}, {N: 200, Why: "p99"}, {N: 400, OK: true}}
	best, failed := held(steps)
	if best == nil || best.N != 100 || failed == nil || failed.N != 200 {
		t.Fatalf("held = %v, %v", best, failed)
	}
	if best, failed := held(steps[:2]); best.N != 100 || failed != nil {
		t.Fatalf("all passed: %v, %v", best, failed)
	}
	if best, _ := held(steps[2:3]); best != nil {
		t.Fatalf("first failed: %v", best)
	}
	a := stepResult{Delivered: 10, Lat: latencies{P99: 5}}
	b := stepResult{Delivered: 10, Lat: latencies{P99: 9}}
	if !better(a, b) || better(b, a) {
		t.Fatal("lower p99 should win")
	}
	if !better(stepResult{OK: true, Lat: latencies{P99: 50}}, a) {
		t.Fatal("a pass should beat a failure")
	}
}

func TestParseFlags(t *testing.T) {
	var errs bytes.Buffer
	c, err := parseTransportsFlags([]string{"-spawn"}, &errs)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Transports) != 5 || len(c.Clients) != 6 || c.PollInterval != 100*time.Millisecond || c.MaxP99 != 100*time.Millisecond {
		t.Fatalf("defaults: %+v", c)
	}
	if c.limitFor(trPoll) != 200*time.Millisecond || c.limitFor(trWS) != 100*time.Millisecond {
		t.Fatal("limitFor")
	}
	if got := c.joinEvents(4); got != 4+6 {
		t.Fatalf("conference join events for 4 = %d, want 10", got)
	}
	for _, bad := range [][]string{
		{},
		{"-spawn", "-url", "http://127.0.0.1:1"},
		{"-url", "http://10.0.0.1:8080", "-admin-key", "k"},
		{"-url", "http://127.0.0.1:8080"},
		{"-spawn", "-transports", "ws,smoke"},
		{"-spawn", "-clients", "10,x"},
	} {
		if _, err := parseTransportsFlags(bad, &errs); err == nil {
			t.Errorf("%v: want an error", bad)
		}
	}
}
