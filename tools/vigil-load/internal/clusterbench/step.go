package clusterbench

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vigil-media/vigil/tools/vigil-load/internal/api"
	"github.com/vigil-media/vigil/tools/vigil-load/internal/media"
	"github.com/vigil-media/vigil/tools/vigil-load/internal/procstat"
	"github.com/vigil-media/vigil/tools/vigil-load/internal/report"
)

// The hooks of a step (media.StepHooks); each does nothing on a nil
// step.

// Stop ends the step's nodes, all at once.
func (st *clusterStep) Stop() {
	if st == nil {
		return
	}
	var wg sync.WaitGroup
	for _, nd := range st.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nd.srv.Stop()
		}()
	}
	wg.Wait()
}

// Entry gives the subscribers their entry node, round-robin.
func (st *clusterStep) Entry(i int) string {
	if st == nil {
		return ""
	}
	return st.nodes[i%len(st.nodes)].base
}

// Begin reads the nodes at the window's start.
func (st *clusterStep) Begin(ctx context.Context) {
	if st != nil {
		var err error
		st.cpu0, err = procstat.ReadCPUTimes(st.cpu)
		st.haveCPU = err == nil
		st.begun = st.sample(ctx)
	}
}

// End reads the nodes at the window's end, and the room's owner.
func (st *clusterStep) End(ctx context.Context) {
	if st == nil {
		return
	}
	var err error
	st.cpu1, err = procstat.ReadCPUTimes(st.cpu)
	st.haveCPU = st.haveCPU && err == nil
	st.ended = st.sample(ctx)
	if owner, err := roomOwner(ctx, st.run.rdb, st.run.sh.Room); err == nil {
		st.owner = owner
	}
	a := &api.API{Base: st.nodes[0].base, AdminKey: st.run.nodes[0].AdminKey, HC: st.run.metrics}
	st.relays, _ = relaysIn(ctx, a, st.run.sh.Room)
}

// relaysIn counts the edges' relays in a room (GET /v1/rooms/{room},
// answered by the owner): each is a viewer there, for all of an edge's.
func relaysIn(ctx context.Context, a *api.API, room string) (int, error) {
	var out struct {
		Participants []struct {
			Identity string `json:"identity"`
		} `json:"participants"`
	}
	if err := a.Do(ctx, http.MethodGet, "/v1/rooms/"+url.PathEscape(room), a.AdminKey, nil, http.StatusOK, &out); err != nil {
		return 0, err
	}
	n := 0
	for _, p := range out.Participants {
		if strings.HasPrefix(p.Identity, "relay.") {
			n++
		}
	}
	return n, nil
}

// sample reads every node: /proc and the cgroup first (at once), then
// each one's /metrics.
func (st *clusterStep) sample(ctx context.Context) []nodeSample {
	out := make([]nodeSample, len(st.nodes))
	for i, nd := range st.nodes {
		p, _ := procstat.ReadUsage(nd.srv.PID)
		out[i].cpu, out[i].hwm = p.CPU, p.HWMKiB
		if nd.group != nil {
			out[i].cfs, _ = nd.group.stat()
		}
		out[i].drops = procstat.UDPDrops(map[int]bool{nd.srv.UDP: true})
	}
	for i, nd := range st.nodes {
		ms, err := scrape(ctx, st.run.metrics, nd.base)
		out[i].metricErr = err
		out[i].fwd = ms.sum("vigil_forwarded_packets_total", "", "")
		out[i].recv = ms.sum("vigil_received_packets_total", "", "")
		out[i].shed = ms.sum("vigil_overload_shed_packets_total", "", "")
		out[i].roles = ms.byLabel("vigil_participants", "role")
	}
	return out
}

// Fold puts the nodes' figures into the step's result: the server CPU
// is then that of every node.
func (st *clusterStep) Fold(res *media.Result) {
	if st == nil || len(st.begun) != len(st.nodes) || len(st.ended) != len(st.nodes) {
		return
	}
	cf := &clusterFigures{Nodes: foldNodes(st.nodes, st.begun, st.ended, st.owner, st.relays), HaveCPU: st.haveCPU}
	if st.haveCPU {
		cf.CPUBusy, cf.CPUSoftirq = st.cpu1.Busy-st.cpu0.Busy, st.cpu1.Softirq-st.cpu0.Softirq
	}
	res.Cluster = cf
	var cpu time.Duration
	var drops, hwm int64
	for i, f := range cf.Nodes {
		cpu += f.CPU
		drops += st.ended[i].drops - st.begun[i].drops
		hwm = max(hwm, f.HWM)
	}
	// The step took the other processes' CPU as the host's minus the
	// first node's and the generator's.
	res.OtherCPU = max(0, res.OtherCPU+res.ServerCPU-cpu)
	res.ServerCPU, res.ServerDrops, res.PeakRSS, res.HaveProc = cpu, drops, hwm, true
	var b strings.Builder
	for _, f := range cf.Nodes {
		fmt.Fprintf(&b, "  %s%s: viewers %d %s fwd %.0f pkt/s, CPU %.0f%%, %s µs/pkt, throttled %s, shed %d",
			f.ID, ownerMark(f.Owner), f.Viewers, f.Others, float64(f.Fwd)/res.Window.Seconds(),
			100*f.CPU.Seconds()/res.Window.Seconds(), report.F2(f.usPerPkt()), throttledPct(f), f.Shed)
	}
	fmt.Fprintf(st.run.sh.ProgOut, "%s %-8s N=%-4d nodes (edge viewers %d):%s  CPU %s busy %s (softirq %s)\n",
		res.Scenario, res.Target, res.N, st.edge, b.String(), cpuName(st.cpu), cf.busyPct(res.Window), cf.softirqPct(res.Window))
}

// foldNodes makes each node's figures; the owner's viewers less the
// relays are its subscribers.
func foldNodes(nodes []clusterNode, begun, ended []nodeSample, owner string, relays int) []nodeFigures {
	figs := make([]nodeFigures, len(nodes))
	for i, nd := range nodes {
		b, e := begun[i], ended[i]
		f := nodeFigures{ID: nd.id, Viewers: int(e.roles["viewer"]), CPU: e.cpu - b.cpu, HWM: e.hwm,
			Periods: e.cfs.periods - b.cfs.periods, Throttled: e.cfs.throttled - b.cfs.throttled}
		f.Owner = nd.id == owner || (owner == "" && e.roles["host"] > 0)
		roles := []string{}
		if f.Owner && relays > 0 && f.Viewers >= relays {
			f.Viewers -= relays
			roles = append(roles, fmt.Sprintf("relay %d", relays))
		}
		if e.fwd >= b.fwd {
			f.Fwd = uint64(e.fwd - b.fwd)
		}
		if e.recv >= b.recv {
			f.Recv = uint64(e.recv - b.recv)
		}
		if e.shed >= b.shed {
			f.Shed = uint64(e.shed - b.shed)
		}
		for r, v := range e.roles {
			if r != "viewer" && v > 0 {
				roles = append(roles, fmt.Sprintf("%s %.0f", r, v))
			}
		}
		sort.Strings(roles)
		if len(roles) > 0 {
			f.Others = "(" + strings.Join(roles, ", ") + ")"
		}
		if err := cmpErr(b.metricErr, e.metricErr); err != nil {
			f.MetricErr = err.Error()
		}
		figs[i] = f
	}
	return figs
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

func cpuName(cpu int) string {
	if cpu < 0 {
		return "all"
	}
	return strconv.Itoa(cpu)
}
