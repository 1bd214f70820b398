package media

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/vigil-media/vigil/tools/vigil-load/internal/report"
)

// Result is what one step against one server measured.
type Result struct {
	Scenario, Target string
	N                int // the step's size
	Sessions         int // WHEP sessions
	Joined           int
	Started          int // sessions that received media (video: a keyframe)
	JoinErr          string
	Window           time.Duration
	Delivered        uint64 // packets of the window received
	Expected         uint64
	Total            uint64 // all packets received in the window (the storm's too)
	LossAgg, LossMax float64
	Lat              report.Hist
	Join, Key        []time.Duration
	Answer           []time.Duration // POST to its reply: the signaling part of Join
	ServerCPU        time.Duration
	GenCPU           time.Duration
	OtherCPU         time.Duration
	PeakRSS          int64 // KiB, VmHWM
	ServerDrops      int64
	GenDrops         int64
	PLIs, Keyframes  int64
	Batch            float64 // datagrams per read at the generator
	HaveProc         bool
	Attempts         int
	OK               bool
	Why              string
	// Cluster, with vigil-load cluster: each node's share of the step
	// (package clusterbench's figures); nil otherwise.
	Cluster any
}

func (r *Result) ServerUSPerPkt() float64 {
	if r.Total == 0 || !r.HaveProc {
		return math.NaN()
	}
	return float64(r.ServerCPU.Microseconds()) / float64(r.Total)
}

func (r *Result) GenUSPerPkt() float64 {
	if r.Total == 0 {
		return math.NaN()
	}
	return float64(r.GenCPU.Microseconds()) / float64(r.Total)
}

func (r *Result) PPS() float64 {
	if r.Window <= 0 {
		return 0
	}
	return float64(r.Total) / r.Window.Seconds()
}

// contended: other processes took more than one CPU on average.
func (r *Result) Contended() bool { return r.Window > 0 && r.OtherCPU > r.Window }

// resultText is a step's verdict as the tables print it.
func (r *Result) ResultText() string {
	result := "ok"
	if !r.OK {
		result = "limit: " + r.Why
	} else if r.Why != "" {
		result = "ok: " + r.Why
	}
	if r.Attempts > 1 {
		result += fmt.Sprintf(" (best of %d)", r.Attempts)
	}
	if r.Contended() {
		result += " (contended)"
	}
	return result
}

// runScenario runs the ramp on every target, alternating targets at each
// size, each target's ramp stopping at its first failing step.
func (sh *Runner) RunScenario(ctx context.Context, cfg *Config) []Result {
	var out []Result
	stopped := map[string]bool{}
	for _, n := range cfg.Sizes {
		for _, tg := range cfg.Targets {
			if stopped[tg] || ctx.Err() != nil {
				continue
			}
			// A failure while other processes held more than a CPU
			// (contended) is tried again, up to maxContended more times.
			var best Result
			contended := 0
			for a := 1; a <= cfg.Attempts+contended && ctx.Err() == nil; a++ {
				r := sh.step(ctx, cfg, tg, n)
				r.Attempts = a
				sh.progressLine(&r)
				if a == 1 || betterMedia(r, best) {
					best = r
				}
				if best.OK {
					break
				}
				if r.Contended() && contended < cfg.Retries {
					contended++
				}
			}
			out = append(out, best)
			if !best.OK {
				stopped[tg] = true
			}
		}
	}
	return out
}

func betterMedia(a, b Result) bool {
	if a.OK != b.OK {
		return a.OK
	}
	return a.LossAgg < b.LossAgg
}

func (sh *Runner) progressLine(r *Result) {
	status := "ok"
	if !r.OK {
		status = "LIMIT: " + r.Why
	} else if r.Why != "" {
		status = "ok (" + r.Why + ")"
	}
	fmt.Fprintf(sh.ProgOut, "%s %-8s N=%-4d #%d sessions %d/%d  %.0f pkt/s  loss %.3f%% (max %.2f%%)  latency p50 %s p99 %s p99.9 %s ms  join p50 %s p99 %s ms (answer p50 %s p99 %s)  key p50 %s ms  server %.2f µs/pkt  gen %.2f µs/pkt  RSS %.0f MiB  drops srv %d gen %d  batch %.1f  %s\n",
		r.Scenario, r.Target, r.N, r.Attempts, r.Joined, r.Sessions, r.PPS(), r.LossAgg, r.LossMax,
		report.Ms(r.Lat.Quantile(50)), report.Ms(r.Lat.Quantile(99)), report.Ms(r.Lat.Quantile(99.9)),
		report.Ms(report.Percentile(r.Join, 50)), report.Ms(report.Percentile(r.Join, 99)), report.Ms(report.Percentile(r.Answer, 50)), report.Ms(report.Percentile(r.Answer, 99)), report.Ms(report.Percentile(r.Key, 50)),
		r.ServerUSPerPkt(), r.GenUSPerPkt(), float64(r.PeakRSS)/1024, r.ServerDrops, r.GenDrops, r.Batch, status)
}

func Table(rs []Result) *report.Table {
	t := &report.Table{
		Header: []string{"server", "N", "sessions", "fwd pkt/s", "loss %", "max loss %", "lat p50 ms", "p99", "p99.9", "join p50 ms", "p99", "keyframe p50 ms", "p99", "server µs/pkt", "server CPU %", "peak RSS MiB", "gen µs/pkt", "gen/server", "others CPU s", "drops srv/gen", "PLI/keyframes", "result"},
		Align:  []bool{false, true, true, true, true, true, true, true, true, true, true, true, true, true, true, true, true, true, true, true, true, false},
	}
	for _, r := range rs {
		result := r.ResultText()
		srvPct := "-"
		if r.HaveProc && r.Window > 0 {
			srvPct = fmt.Sprintf("%.0f", 100*r.ServerCPU.Seconds()/r.Window.Seconds())
		}
		ratio := "-"
		if s, gg := r.ServerUSPerPkt(), r.GenUSPerPkt(); !math.IsNaN(s) && s > 0 {
			ratio = fmt.Sprintf("%.2f", gg/s)
			if gg/s > 0.5 {
				ratio += " (!)"
			}
		}
		t.Add(r.Target, strconv.Itoa(r.N), fmt.Sprintf("%d/%d", r.Joined, r.Sessions), fmt.Sprintf("%.0f", r.PPS()),
			fmt.Sprintf("%.3f", r.LossAgg), fmt.Sprintf("%.2f", r.LossMax),
			report.Ms(r.Lat.Quantile(50)), report.Ms(r.Lat.Quantile(99)), report.Ms(r.Lat.Quantile(99.9)),
			report.Ms(report.Percentile(r.Join, 50)), report.Ms(report.Percentile(r.Join, 99)), report.Ms(report.Percentile(r.Key, 50)), report.Ms(report.Percentile(r.Key, 99)),
			report.F2(r.ServerUSPerPkt()), srvPct, fmt.Sprintf("%.0f", float64(r.PeakRSS)/1024), report.F2(r.GenUSPerPkt()), ratio,
			fmt.Sprintf("%.2f", r.OtherCPU.Seconds()), fmt.Sprintf("%d/%d", r.ServerDrops, r.GenDrops),
			fmt.Sprintf("%d/%d", r.PLIs, r.Keyframes), result)
	}
	return t
}
