package clusterbench

import (
	"fmt"
	"math"
	"time"

	"github.com/vigil-media/vigil/tools/vigil-load/internal/media"
)

// clusterFigures is what a step measured of the cluster
// (media.Result.Cluster).
type clusterFigures struct {
	Nodes []nodeFigures
	// The CPU the nodes are pinned to: its busy time over the window,
	// and the part of it in softirq (loopback delivery and the like, not
	// charged to any node's quota). HaveCPU: it was read.
	CPUBusy, CPUSoftirq time.Duration
	HaveCPU             bool
}

// nodeFigures is one node's share of a step.
type nodeFigures struct {
	ID        string
	Owner     bool
	Viewers   int
	Others    string // the other participants it holds, by role
	Fwd, Recv uint64 // packets over the window, from its /metrics
	Shed      uint64 // video packets it shed over the window (overload)
	CPU       time.Duration
	Periods   int64 // CFS periods in the window, and those throttled
	Throttled int64
	HWM       int64 // KiB
	MetricErr string
}

func (f *nodeFigures) usPerPkt() float64 {
	if f.Fwd == 0 {
		return math.NaN()
	}
	return float64(f.CPU.Microseconds()) / float64(f.Fwd)
}

// figuresOf is a step's cluster figures (media.Result.Cluster); nil
// without.
func figuresOf(r *media.Result) *clusterFigures {
	cf, _ := r.Cluster.(*clusterFigures)
	return cf
}

// nodesOf is each node's share of a step.
func nodesOf(r *media.Result) []nodeFigures {
	if cf := figuresOf(r); cf != nil {
		return cf.Nodes
	}
	return nil
}

func (cf *clusterFigures) pct(d, window time.Duration) string {
	if cf == nil || !cf.HaveCPU || window <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", 100*d.Seconds()/window.Seconds())
}

func (cf *clusterFigures) busyPct(window time.Duration) string {
	if cf == nil {
		return "-"
	}
	return cf.pct(cf.CPUBusy, window)
}

func (cf *clusterFigures) softirqPct(window time.Duration) string {
	if cf == nil {
		return "-"
	}
	return cf.pct(cf.CPUSoftirq, window)
}

func ownerMark(owner bool) string {
	if owner {
		return " (owner)"
	}
	return ""
}

func throttledPct(f nodeFigures) string {
	if f.Periods <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", 100*float64(f.Throttled)/float64(f.Periods))
}
