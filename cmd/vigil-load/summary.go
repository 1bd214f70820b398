package main

import (
	"fmt"
	"math"
	"strconv"
	"time"
)

// sumRow is one line of the comparison: a figure for Vigil and for the
// stock-pion baseline measured in the same invocation.
type sumRow struct {
	Bench, Figure   string
	Vigil, Baseline string
	v, b            float64 // for the ratio; NaN: none
	note            string
}

func (r sumRow) ratio() string {
	if math.IsNaN(r.v) || math.IsNaN(r.b) || r.b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", r.v/r.b) + r.note
}

func sumTable(rows []sumRow) *table {
	t := &table{
		header: []string{"benchmark", "figure", "Vigil", "baseline (stock pion)", "Vigil/baseline"},
		align:  []bool{false, false, true, true, true},
	}
	for _, r := range rows {
		t.add(r.Bench, r.Figure, r.Vigil, r.Baseline, r.ratio())
	}
	return t
}

func byTarget(rs []mediaResult, tg string) []mediaResult {
	var out []mediaResult
	for _, r := range rs {
		if r.Target == tg {
			out = append(out, r)
		}
	}
	return out
}

// heldN is the largest size that held, and whether the ramp went on past it.
func heldN(rs []mediaResult) (n int, lower bool, ok bool) {
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

func atN(rs []mediaResult, n int) *mediaResult {
	for i := range rs {
		if rs[i].N == n {
			return &rs[i]
		}
	}
	return nil
}

func durMS(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// summarizeMedia makes the comparison rows of one scenario.
func summarizeMedia(cfg *mediaConfig, rs []mediaResult) []sumRow {
	v, b := byTarget(rs, tgVigil), byTarget(rs, tgBaseline)
	name := cfg.Scenario
	var rows []sumRow
	pair := func(fig string, get func(r *mediaResult) float64, format func(float64) string, n int) {
		rv, rb := atN(v, n), atN(b, n)
		row := sumRow{Bench: name, Figure: fig, Vigil: "-", Baseline: "-", v: math.NaN(), b: math.NaN()}
		if rv != nil {
			row.v = get(rv)
			row.Vigil = format(row.v)
		}
		if rb != nil {
			row.b = get(rb)
			row.Baseline = format(row.b)
		}
		rows = append(rows, row)
	}
	usF := func(x float64) string { return f2(x) }
	msF := func(x float64) string { return ms(time.Duration(x * float64(time.Millisecond))) }
	pctF := func(x float64) string { return fmt.Sprintf("%.3f", x) }
	intF := func(x float64) string { return fmt.Sprintf("%.0f", x) }
	srvUS := func(r *mediaResult) float64 { return r.serverUSPerPkt() }
	genUS := func(r *mediaResult) float64 { return r.genUSPerPkt() }
	pps := func(r *mediaResult) float64 { return r.pps() }
	loss := func(r *mediaResult) float64 { return r.LossAgg }
	q := func(p float64) func(r *mediaResult) float64 {
		return func(r *mediaResult) float64 { return durMS(r.Lat.quantile(p)) }
	}
	jq := func(d func(r *mediaResult) []time.Duration, p float64) func(r *mediaResult) float64 {
		return func(r *mediaResult) float64 { return durMS(percentile(d(r), p)) }
	}
	join := func(r *mediaResult) []time.Duration { return r.Join }
	key := func(r *mediaResult) []time.Duration { return r.Key }

	switch cfg.Scenario {
	case scFanout, scAudio, scMeeting:
		unit := map[string]string{scFanout: "subscribers", scAudio: "listeners", scMeeting: "participants"}[cfg.Scenario]
		nv, lv, okv := heldN(v)
		nb, lb, okb := heldN(b)
		row := sumRow{Bench: name, Figure: fmt.Sprintf("most %s at <= %g%% loss", unit, cfg.MaxLoss), Vigil: "none", Baseline: "none", v: math.NaN(), b: math.NaN()}
		if okv {
			row.Vigil, row.v = strconv.Itoa(nv), float64(nv)
			if lv {
				row.Vigil = ">= " + row.Vigil
			}
		}
		if okb {
			row.Baseline, row.b = strconv.Itoa(nb), float64(nb)
			if lb {
				row.Baseline = ">= " + row.Baseline
			}
		}
		if lv || lb {
			row.note = " (a bound: the ramp ended)"
		}
		if len(v) == 0 || len(b) == 0 {
			row.v = math.NaN()
		}
		rows = append(rows, row)
		// The figures at the largest size both held (else the largest both ran).
		n := 0
		for _, r := range v {
			if rb := atN(b, r.N); rb != nil && (r.OK && rb.OK || n == 0) {
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
	case scLatency:
		n := cfg.Sizes[0]
		sfx := fmt.Sprintf(" at N=%d", n)
		pair("forwarded packets/s"+sfx, pps, intF, n)
		pair("added latency p50 ms", q(50), msF, n)
		pair("added latency p99 ms", q(99), msF, n)
		pair("added latency p99.9 ms", q(99.9), msF, n)
		pair("loss %", loss, pctF, n)
		pair("server CPU µs per forwarded packet", srvUS, usF, n)
		pair("generator CPU µs per received packet", genUS, usF, n)
	case scJoinstorm:
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

func summaryRows(cfg *mediaConfig, rs []mediaResult) *table {
	return sumTable(summarizeMedia(cfg, rs))
}
