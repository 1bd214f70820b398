package media

import (
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/vigil-media/vigil/tools/vigil-load/internal/report"
)

// SumRow is one line of the comparison: a figure for Vigil and for the
// stock-pion baseline measured in the same invocation.
type SumRow struct {
	Bench, Figure   string
	Vigil, Baseline string
	V, B            float64 // for the ratio; NaN: none
	Note            string  // after the ratio
}

func (r SumRow) ratio() string {
	if math.IsNaN(r.V) || math.IsNaN(r.B) || r.B == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", r.V/r.B) + r.Note
}

func SumTable(rows []SumRow) *report.Table {
	t := &report.Table{
		Header: []string{"benchmark", "figure", "Vigil", "baseline (stock pion)", "Vigil/baseline"},
		Align:  []bool{false, false, true, true, true},
	}
	for _, r := range rows {
		t.Add(r.Bench, r.Figure, r.Vigil, r.Baseline, r.ratio())
	}
	return t
}

func ByTarget(rs []Result, tg string) []Result {
	var out []Result
	for _, r := range rs {
		if r.Target == tg {
			out = append(out, r)
		}
	}
	return out
}

// heldN is the largest size that held, and whether the ramp went on past it.
func heldN(rs []Result) (n int, lower bool, ok bool) {
	lower = true
	for _, r := range rs {
		if r.OK {
			n, ok = r.N, true
		} else {
			lower = false
		}
	}
	return n, lower, ok
}

func AtN(rs []Result, n int) *Result {
	for i := range rs {
		if rs[i].N == n {
			return &rs[i]
		}
	}
	return nil
}

func durMS(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Summarize makes the comparison rows of one scenario.
func Summarize(cfg *Config, rs []Result) []SumRow {
	v, b := ByTarget(rs, TgVigil), ByTarget(rs, TgBaseline)
	name := cfg.Scenario
	var rows []SumRow
	pair := func(fig string, get func(r *Result) float64, format func(float64) string, n int) {
		rv, rb := AtN(v, n), AtN(b, n)
		row := SumRow{Bench: name, Figure: fig, Vigil: "-", Baseline: "-", V: math.NaN(), B: math.NaN()}
		if rv != nil {
			row.V = get(rv)
			row.Vigil = format(row.V)
		}
		if rb != nil {
			row.B = get(rb)
			row.Baseline = format(row.B)
		}
		rows = append(rows, row)
	}
	usF := func(x float64) string { return report.F2(x) }
	msF := func(x float64) string { return report.Ms(time.Duration(x * float64(time.Millisecond))) }
	pctF := func(x float64) string { return fmt.Sprintf("%.3f", x) }
	intF := func(x float64) string { return fmt.Sprintf("%.0f", x) }
	srvUS := func(r *Result) float64 { return r.ServerUSPerPkt() }
	genUS := func(r *Result) float64 { return r.GenUSPerPkt() }
	pps := func(r *Result) float64 { return r.PPS() }
	loss := func(r *Result) float64 { return r.LossAgg }
	q := func(p float64) func(r *Result) float64 {
		return func(r *Result) float64 { return durMS(r.Lat.Quantile(p)) }
	}
	jq := func(d func(r *Result) []time.Duration, p float64) func(r *Result) float64 {
		return func(r *Result) float64 { return durMS(report.Percentile(d(r), p)) }
	}
	join := func(r *Result) []time.Duration { return r.Join }
	key := func(r *Result) []time.Duration { return r.Key }

	switch cfg.Scenario {
	case ScFanout, ScAudio, ScMeeting:
		unit := map[string]string{ScFanout: "subscribers", ScAudio: "listeners", ScMeeting: "participants"}[cfg.Scenario]
		nv, lv, okv := heldN(v)
		nb, lb, okb := heldN(b)
		row := SumRow{Bench: name, Figure: fmt.Sprintf("most %s at <= %g%% loss", unit, cfg.MaxLoss), Vigil: "none", Baseline: "none", V: math.NaN(), B: math.NaN()}
		if okv {
			row.Vigil, row.V = strconv.Itoa(nv), float64(nv)
			if lv {
				row.Vigil = ">= " + row.Vigil
			}
		}
		if okb {
			row.Baseline, row.B = strconv.Itoa(nb), float64(nb)
			if lb {
				row.Baseline = ">= " + row.Baseline
			}
		}
		if lv || lb {
			row.Note = " (a bound: the ramp ended)"
		}
		if len(v) == 0 || len(b) == 0 {
			row.V = math.NaN()
		}
		rows = append(rows, row)
		// The figures at the largest size both held (else the largest both ran).
		n := 0
		for _, r := range v {
			if rb := AtN(b, r.N); rb != nil && (r.OK && rb.OK || n == 0) {
				n = r.N
			}
		}
		if n == 0 && len(rs) > 0 {
			n = rs[0].N
		}
		sfx := fmt.Sprintf(" at N=%d", n)
		pair("forwarded packets/s"+sfx, pps, intF, n)
		pair("server CPU µs per forwarded packet"+sfx, srvUS, usF, n)
		pair("loss %"+sfx, loss, pctF, n)
		pair("added latency p99 ms"+sfx, q(99), msF, n)
		pair("generator CPU µs per received packet"+sfx, genUS, usF, n)
	case ScLatency:
		n := cfg.Sizes[0]
		sfx := fmt.Sprintf(" at N=%d", n)
		pair("forwarded packets/s"+sfx, pps, intF, n)
		pair("added latency p50 ms", q(50), msF, n)
		pair("added latency p99 ms", q(99), msF, n)
		pair("added latency p99.9 ms", q(99.9), msF, n)
		pair("loss %", loss, pctF, n)
		pair("server CPU µs per forwarded packet", srvUS, usF, n)
		pair("generator CPU µs per received packet", genUS, usF, n)
	case ScJoinstorm:
		n := cfg.Sizes[0]
		pair("join, POST to DTLS connected, p50 ms", jq(join, 50), msF, n)
		pair("join, POST to DTLS connected, p99 ms", jq(join, 99), msF, n)
		pair("join, POST to first keyframe, p50 ms", jq(key, 50), msF, n)
		pair("join, POST to first keyframe, p99 ms", jq(key, 99), msF, n)
		pair(fmt.Sprintf("loss %% of the %d watching", n), loss, pctF, n)
		pair("server CPU µs per forwarded packet", srvUS, usF, n)
	}
	return rows
}

func summaryRows(cfg *Config, rs []Result) *report.Table {
	return SumTable(Summarize(cfg, rs))
}
