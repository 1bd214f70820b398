package clusterbench

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vigil-media/vigil/tools/vigil-load/internal/media"
	"github.com/vigil-media/vigil/tools/vigil-load/internal/report"
)

// perNode joins one cell per node: "a / b".
func perNode(fs []nodeFigures, cell func(f *nodeFigures) string) string {
	if len(fs) == 0 {
		return "-"
	}
	cells := make([]string, len(fs))
	for i := range fs {
		cells[i] = cell(&fs[i])
	}
	return strings.Join(cells, " / ")
}

func ownerOf(fs []nodeFigures) string {
	for _, f := range fs {
		if f.Owner {
			return f.ID
		}
	}
	return "?"
}

func clusterTable(rs []media.Result) *report.Table {
	t := &report.Table{
		Header: []string{"nodes", "N", "edge viewers", "sessions", "owner", "viewers per node", "fwd pkt/s per node", "fwd pkt/s (received)", "loss %", "max loss %", "lat p50 ms", "p99", "µs/pkt per node", "CPU % per node", "throttled % per node", "nodes' CPU busy % (softirq)", "shed pkts per node", "RSS MiB per node", "gen µs/pkt", "others CPU s", "drops srv/gen", "result"},
		Align:  []bool{false, true, true, true, false, true, true, true, true, true, true, true, true, true, true, true, true, true, true, true, true, false},
	}
	for _, r := range rs {
		result := r.ResultText()
		for _, f := range nodesOf(&r) {
			if f.MetricErr != "" {
				result += fmt.Sprintf(" (%s: no metrics: %s)", f.ID, f.MetricErr)
				break
			}
		}
		k := max(1, targetNodes(r.Target))
		win := r.Window.Seconds()
		pct := func(d time.Duration) string {
			if win <= 0 {
				return "-"
			}
			return fmt.Sprintf("%.0f", 100*d.Seconds()/win)
		}
		t.Add(strconv.Itoa(k), strconv.Itoa(r.N), strconv.Itoa(ceilDiv(r.N, k)), fmt.Sprintf("%d/%d", r.Joined, r.Sessions), ownerOf(nodesOf(&r)),
			perNode(nodesOf(&r), func(f *nodeFigures) string { return strconv.Itoa(f.Viewers) }),
			perNode(nodesOf(&r), func(f *nodeFigures) string {
				if win <= 0 {
					return "-"
				}
				return fmt.Sprintf("%.0f", float64(f.Fwd)/win)
			}),
			fmt.Sprintf("%.0f", r.PPS()), fmt.Sprintf("%.3f", r.LossAgg), fmt.Sprintf("%.2f", r.LossMax),
			report.Ms(r.Lat.Quantile(50)), report.Ms(r.Lat.Quantile(99)),
			perNode(nodesOf(&r), func(f *nodeFigures) string { return report.F2(f.usPerPkt()) }),
			perNode(nodesOf(&r), func(f *nodeFigures) string { return pct(f.CPU) }),
			perNode(nodesOf(&r), func(f *nodeFigures) string { return strings.TrimSuffix(throttledPct(*f), "%") }),
			fmt.Sprintf("%s (%s)", strings.TrimSuffix(figuresOf(&r).busyPct(r.Window), "%"), strings.TrimSuffix(figuresOf(&r).softirqPct(r.Window), "%")),
			perNode(nodesOf(&r), func(f *nodeFigures) string { return strconv.FormatUint(f.Shed, 10) }),
			perNode(nodesOf(&r), func(f *nodeFigures) string { return fmt.Sprintf("%.0f", float64(f.HWM)/1024) }),
			report.F2(r.GenUSPerPkt()), fmt.Sprintf("%.2f", r.OtherCPU.Seconds()), fmt.Sprintf("%d/%d", r.ServerDrops, r.GenDrops), result)
	}
	return t
}

// othersLine says how busy the rest of the machine was during the
// windows: the CPUs other processes took (the host's busy time less the
// nodes' and the generator's).
func othersLine(rs []media.Result) string {
	var load []float64
	contended := 0
	for _, r := range rs {
		if r.Window <= 0 {
			continue
		}
		load = append(load, r.OtherCPU.Seconds()/r.Window.Seconds())
		if r.Contended() {
			contended++
		}
	}
	if len(load) == 0 {
		return "other processes: no window measured"
	}
	slices.Sort(load)
	return fmt.Sprintf("other processes took a median %.2f CPU during the windows (max %.2f of the 2); %d of %d windows contended (over one CPU)",
		load[len(load)/2], load[len(load)-1], contended, len(load))
}

// mostHeld is the largest size up to which every step of a ramp passes,
// and whether the ramp ended before a step failed (a lower bound).
func mostHeld(rs []media.Result, pass func(r *media.Result) bool) (n int, bound, ok bool) {
	bound = true
	for i := range rs {
		if !pass(&rs[i]) {
			bound = false
			break
		}
		n, ok = rs[i].N, true
	}
	return n, bound, ok
}

// clusterSummary: the most subscribers held with each node count, by
// loss, then also by latency, and the figures at the first size.
func clusterSummary(cfg *clusterConfig, rs []media.Result) *report.Table {
	t := &report.Table{Header: []string{"figure"}, Align: []bool{false}}
	for _, k := range cfg.Nodes {
		t.Header = append(t.Header, nodesTarget(k))
		t.Align = append(t.Align, true)
	}
	first := nodesTarget(cfg.Nodes[0])
	for _, k := range cfg.Nodes[1:] {
		t.Header = append(t.Header, fmt.Sprintf("%s / %s", nodesTarget(k), first))
		t.Align = append(t.Align, true)
	}
	held := map[string]*media.Result{}
	row := func(fig string, cell func(r *media.Result) (string, float64)) {
		cells := []string{fig}
		vals := map[string]float64{}
		for _, k := range cfg.Nodes {
			tg := nodesTarget(k)
			r := held[tg]
			if r == nil {
				cells = append(cells, "-")
				vals[tg] = math.NaN()
				continue
			}
			s, v := cell(r)
			cells = append(cells, s)
			vals[tg] = v
		}
		for _, k := range cfg.Nodes[1:] {
			a, b := vals[nodesTarget(k)], vals[first]
			if math.IsNaN(a) || math.IsNaN(b) || b == 0 {
				cells = append(cells, "-")
			} else {
				cells = append(cells, fmt.Sprintf("%.2f", a/b))
			}
		}
		t.Add(cells...)
	}
	mostRow := func(fig string, pass func(r *media.Result) bool) {
		cells := []string{fig}
		most := map[string]int{}
		for _, k := range cfg.Nodes {
			tg := nodesTarget(k)
			n, bound, ok := mostHeld(media.ByTarget(rs, tg), pass)
			if !ok {
				cells = append(cells, "none")
				continue
			}
			if _, seen := held[tg]; !seen {
				held[tg] = media.AtN(media.ByTarget(rs, tg), n)
			}
			most[tg] = n
			s := strconv.Itoa(n)
			if bound {
				s = ">= " + s
			}
			cells = append(cells, s)
		}
		for _, k := range cfg.Nodes[1:] {
			a, b := most[nodesTarget(k)], most[first]
			if b == 0 {
				cells = append(cells, "-")
			} else {
				cells = append(cells, fmt.Sprintf("%.2f", float64(a)/float64(b)))
			}
		}
		t.Add(cells...)
	}
	mostRow(fmt.Sprintf("most subscribers at <= %g%% loss", cfg.media.MaxLoss), func(r *media.Result) bool { return r.OK })
	mostRow(fmt.Sprintf("most subscribers at <= %g%% loss and latency p50 <= %s ms", cfg.media.MaxLoss, report.Ms(cfg.MaxP50)),
		func(r *media.Result) bool { return r.OK && r.Lat.Quantile(50) <= cfg.MaxP50 })
	nf := func(format func(f *nodeFigures) string) func(r *media.Result) (string, float64) {
		return func(r *media.Result) (string, float64) { return perNode(nodesOf(r), format), math.NaN() }
	}
	var ids []string
	for i := range slices.Max(cfg.Nodes) {
		ids = append(ids, nodeID(i))
	}
	row("at that N: viewers per node ("+strings.Join(ids, " / ")+")", nf(func(f *nodeFigures) string { return strconv.Itoa(f.Viewers) }))
	row("at that N: forwarded packets/s, received by the subscribers", func(r *media.Result) (string, float64) {
		return fmt.Sprintf("%.0f", r.PPS()), r.PPS()
	})
	row("at that N: CPU µs per forwarded packet, per node", nf(func(f *nodeFigures) string { return report.F2(f.usPerPkt()) }))
	row("at that N: CPU µs per received packet, all nodes", func(r *media.Result) (string, float64) {
		v := r.ServerUSPerPkt()
		return report.F2(v), v
	})
	row("at that N: CPU % per node (of one core)", func(r *media.Result) (string, float64) {
		return perNode(nodesOf(r), func(f *nodeFigures) string {
			return fmt.Sprintf("%.0f", 100*f.CPU.Seconds()/max(r.Window.Seconds(), 1e-9))
		}), math.NaN()
	})
	row("at that N: loss %", func(r *media.Result) (string, float64) { return fmt.Sprintf("%.3f", r.LossAgg), math.NaN() })
	row("at that N: latency p50 / p99 ms", func(r *media.Result) (string, float64) {
		return report.Ms(r.Lat.Quantile(50)) + " / " + report.Ms(r.Lat.Quantile(99)), math.NaN()
	})
	return t
}
