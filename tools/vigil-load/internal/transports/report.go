package transports

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/vigil-media/vigil/tools/vigil-load/internal/report"
)

func (r *runner) progress(s stepResult) {
	status := "ok"
	if !s.OK {
		status = "LIMIT: " + s.Why
	}
	kib := "n/a"
	if v, ok := s.rssPerClient(); ok {
		kib = fmt.Sprintf("%.0f KiB/client", v)
	}
	fmt.Fprintf(r.out, "%-8s N=%-5d #%d join %5.1fs (server CPU %.1fs)  delivered %d/%d  p50 %s p99 %s max %s ms  %s req/ev  %s B/ev  %s  server CPU %.2fs gen CPU %.2fs others %.2fs over %.1fs  drops %d dups %d  %s\n",
		s.Transport, s.N, s.Attempts, s.Join.Seconds(), s.JoinCPU.Seconds(), s.Delivered, s.Expected,
		report.Ms(s.Lat.P50), report.Ms(s.Lat.P99), report.Ms(s.Lat.Max), report.Ratio(s.Requests, s.Delivered, 2), report.Ratio(s.Bytes, s.Delivered, 0),
		kib, s.ServerCPU.Seconds(), s.GenCPU.Seconds(), s.OtherCPU.Seconds(), s.Window.Seconds(), s.Drops, s.Dups, status)
}

// report prints one table per transport, then the summary.
func (r *runner) report(results map[string][]stepResult) {
	for _, tr := range r.cfg.Transports {
		steps := results[tr]
		if len(steps) == 0 {
			continue
		}
		fmt.Fprintf(r.out, "\n### %s\n\n", transportTitle(tr, r.cfg))
		stepTable(steps).Render(r.out)
	}
	fmt.Fprintf(r.out, "\n### Summary (limit: p99 <= %v; short polling %v)\n\n", r.cfg.MaxP99, r.cfg.limitFor(trPoll))
	summaryTable(r.cfg, results).Render(r.out)
}

func transportTitle(tr string, c *transportsConfig) string {
	switch tr {
	case trNone:
		return "none (baseline: sessions open, no transport attached)"
	case trWS:
		return "ws (WebSocket)"
	case trSSE:
		return "sse (Server-Sent Events, client messages by POST)"
	case trLongPoll:
		return fmt.Sprintf("longpoll (GET .../poll?wait=%g)", c.LongPollWait.Seconds())
	case trPoll:
		return fmt.Sprintf("poll (short polling every %v, If-None-Match)", c.PollInterval)
	}
	return tr
}

func stepTable(steps []stepResult) *report.Table {
	t := &report.Table{
		Header: []string{"N", "delivered", "p50 ms", "p99 ms", "req/event", "bytes/event", "server KiB/client", "server CPU s", "gen CPU s", "others CPU s", "window s", "result"},
		Align:  []bool{true, true, true, true, true, true, true, true, true, true, true, false},
	}
	for _, s := range steps {
		kib := "n/a"
		if v, ok := s.rssPerClient(); ok {
			kib = fmt.Sprintf("%.0f", v)
		}
		result := "ok"
		if !s.OK {
			result = "limit: " + s.Why
		}
		if s.Attempts > 1 {
			result += fmt.Sprintf(" (best of %d)", s.Attempts)
		}
		if s.contended() {
			result += " (contended)"
		}
		delivered := fmt.Sprintf("%d/%d", s.Delivered, s.Expected)
		p50, p99, reqs, bytes := report.Ms(s.Lat.P50), report.Ms(s.Lat.P99), report.Ratio(s.Requests, s.Delivered, 2), report.Ratio(s.Bytes, s.Delivered, 0)
		if s.Transport == trNone {
			delivered, p50, p99, reqs, bytes = "-", "-", "-", "-", "-"
		}
		t.Add(strconv.Itoa(s.N), delivered, p50, p99, reqs, bytes, kib,
			fmt.Sprintf("%.2f", s.ServerCPU.Seconds()), fmt.Sprintf("%.2f", s.GenCPU.Seconds()),
			fmt.Sprintf("%.2f", s.OtherCPU.Seconds()), fmt.Sprintf("%.1f", s.Window.Seconds()), result)
	}
	return t
}

// better reports whether attempt a beats b: it passed where b did not,
// or delivered more, or had the lower p99.
func better(a, b stepResult) bool {
	switch {
	case a.OK != b.OK:
		return a.OK
	case a.Delivered != b.Delivered:
		return a.Delivered > b.Delivered
	}
	return a.Lat.P99 < b.Lat.P99
}

// held is the largest N of a ramp that passed, and the step that did not.
func held(steps []stepResult) (best *stepResult, failed *stepResult) {
	for i := range steps {
		if steps[i].OK {
			best = &steps[i]
		} else {
			return best, &steps[i]
		}
	}
	return best, nil
}

func summaryTable(c *transportsConfig, results map[string][]stepResult) *report.Table {
	t := &report.Table{
		Header: []string{"transport", "most clients held", "at that N: p50 ms", "p99 ms", "req/event", "bytes/event", "server KiB/client", "over baseline", "ramp stopped by"},
		Align:  []bool{false, true, true, true, true, true, true, true, false},
	}
	base := map[int]float64{}
	for _, s := range results[trNone] {
		if v, ok := s.rssPerClient(); ok {
			base[s.N] = v
		}
	}
	for _, tr := range c.Transports {
		steps := results[tr]
		if len(steps) == 0 {
			continue
		}
		best, failed := held(steps)
		stop := "nothing: every step passed"
		if failed != nil {
			stop = fmt.Sprintf("N=%d: %s", failed.N, failed.Why)
		}
		if best == nil {
			t.Add(tr, "none", "-", "-", "-", "-", "-", "-", stop)
			continue
		}
		heldN := strconv.Itoa(best.N)
		if failed == nil {
			heldN = ">= " + heldN
		}
		kib, over := "n/a", "n/a"
		if v, ok := best.rssPerClient(); ok {
			kib = fmt.Sprintf("%.0f", v)
			if b, ok := base[best.N]; ok && tr != trNone {
				over = fmt.Sprintf("%+.0f", v-b)
			}
		}
		if tr == trNone {
			t.Add(tr, heldN, "-", "-", "-", "-", kib, "-", stop)
			continue
		}
		t.Add(tr, heldN, report.Ms(best.Lat.P50), report.Ms(best.Lat.P99), report.Ratio(best.Requests, best.Delivered, 2),
			report.Ratio(best.Bytes, best.Delivered, 0), kib, over, stop)
	}
	return t
}

// serverLog prints the warnings and errors the spawned servers logged.
func (r *runner) serverLog() {
	b, err := os.ReadFile(r.spawner.LogPath)
	if err != nil {
		return
	}
	counts := map[string]int{}
	var order []string
	for _, line := range bytes.Split(b, []byte("\n")) {
		s := string(line)
		if !strings.Contains(s, "level=WARN") && !strings.Contains(s, "level=ERROR") {
			continue
		}
		key := s
		if i := strings.Index(s, "level="); i >= 0 {
			key = s[i:]
		}
		if len(key) > 160 {
			key = key[:160]
		}
		if counts[key] == 0 {
			order = append(order, key)
		}
		counts[key]++
	}
	fmt.Fprintf(r.out, "\n# server log (level warn): %d distinct warnings/errors\n", len(order))
	for _, k := range order {
		fmt.Fprintf(r.out, "#   %6dx %s\n", counts[k], k)
	}
}
