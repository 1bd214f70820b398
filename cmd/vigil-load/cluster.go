package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// "vigil-load cluster": the fan-out scenario (one WHIP publisher, N thin
// WHEP subscribers, a ramp of N) against a cluster of 1, then 2, Vigil
// nodes joined through a private Redis, each node held to the same CPU
// budget by a cgroup v1 CPU quota, so that each emulates a machine of
// its own. The subscribers enter round-robin over the nodes, as behind a
// load balancer; the room's owner keeps VIGIL_CLUSTER_EDGE_VIEWERS =
// ceil(N / nodes) viewers and the rest are served by the other node (an
// edge), which pulls the publisher's tracks from the owner over a
// server-to-server relay. Everything else (spawning, thin subscribers,
// the window, loss and latency) is "vigil-load media"'s, through the
// hooks of mediaTarget.cluster.

// clusterConfig is the flags of "vigil-load cluster".
type clusterConfig struct {
	media      *mediaConfig
	Nodes      []int         // node counts, each a "target" of the ramp
	NodeCPU    float64       // share of one core each node gets; 0: no quota
	Period     time.Duration // the CFS period the quota is a share of
	RedisBin   string
	Heartbeat  time.Duration
	Lease      time.Duration
	Short      bool
	MaxP50     time.Duration // the summary's second figure: latency p50 at most this
	cgroupRoot string
}

const cgroupCPURoot = "/sys/fs/cgroup/cpu"

func parseClusterFlags(args []string, stderr io.Writer) (*clusterConfig, error) {
	c := &clusterConfig{media: &mediaConfig{Scenario: scFanout, Spawn: true, JoinRate: 50, Storm: 1}, cgroupRoot: cgroupCPURoot}
	m := c.media
	flags := flag.NewFlagSet("vigil-load cluster", flag.ContinueOnError)
	flags.SetOutput(stderr)
	flags.Usage = func() {
		fmt.Fprintln(stderr, `usage: vigil-load cluster [-short] [flags]

The fan-out benchmark (1 WHIP publisher, VP8 + Opus, to N thin WHEP
subscribers in a broadcast room; a ramp of N, a step holds at <= -max-loss)
against a cluster of 1 node, and of 2 nodes, in the same invocation (the
node counts alternate at each N). A private redis-server joins the nodes
(VIGIL_REDIS_URL); every node is a fresh vigil per step, pinned to
-server-cpu and held by a cgroup v1 CPU quota to -node-cpu of one core:
each node emulates a machine with that CPU budget. The subscribers enter
round-robin over the nodes' URLs, as behind a load balancer, and
VIGIL_CLUSTER_EDGE_VIEWERS = ceil(N / nodes): the room's owner keeps its
share, the rest are served by the other node (the edge). Reports per step
the viewers, forwarded packets/s, CPU µs per forwarded packet and CPU % of
each node, loss and latency, and the most subscribers held with each node
count. Needs root (the cgroups, under /sys/fs/cgroup/cpu) unless
-node-cpu 0. Loopback only. See docs/benchmarks.md.

flags:`)
		flags.PrintDefaults()
	}
	sizes := flags.String("subscribers", "", "the ramp: subscribers per step (default 200,250,...,1000; -short: 100,200)")
	nodes := flags.String("nodes", "1,2", "node counts to measure, alternating at each step")
	flags.Float64Var(&c.NodeCPU, "node-cpu", 0.45, "the share of one core each node gets (a cgroup v1 CPU quota): each node emulates a machine with this budget; 0: no quota")
	flags.DurationVar(&c.Period, "node-cpu-period", 10*time.Millisecond, "the CFS period the quota is a share of: a node over its budget waits up to the rest of the period")
	flags.StringVar(&c.RedisBin, "redis-server", "/usr/bin/redis-server", "the redis-server binary (a private one is started on a free 127.0.0.1 port)")
	flags.DurationVar(&c.Heartbeat, "heartbeat", time.Second, "VIGIL_CLUSTER_HEARTBEAT of every node")
	flags.DurationVar(&c.Lease, "lease", 5*time.Second, "VIGIL_CLUSTER_LEASE of every node")
	flags.BoolVar(&c.Short, "short", false, "the short version: -subscribers 100,200 -duration 3s -attempts 1 -contended-retries 0 (unless given)")
	flags.DurationVar(&m.Duration, "duration", 10*time.Second, "measured window of each step")
	bitrate := flags.String("bitrate", "1M", "the publisher's video bitrate, e.g. 1M, 500k")
	flags.DurationVar(&m.KeyEvery, "keyframe-interval", 2*time.Second, "a keyframe every this long (and on PLI)")
	flags.Float64Var(&m.MaxLoss, "max-loss", 0.5, "a step holds if the loss over every subscriber is at most this many percent")
	flags.IntVar(&m.JoinWorkers, "join-workers", 16, "concurrent joins")
	flags.IntVar(&m.Attempts, "attempts", 2, "runs of a step that fails before the ramp of that node count stops; the best is reported")
	flags.IntVar(&m.Retries, "contended-retries", 1, "more runs of a failed step when other processes held more than a CPU during it (contended)")
	flags.StringVar(&m.VigilBin, "vigil-bin", "", "a vigil binary to run instead of building one")
	flags.IntVar(&m.ServerCPU, "server-cpu", 0, "the CPU every node is pinned to (-1: none)")
	flags.IntVar(&m.GenCPU, "gen-cpu", 1, "the CPU this generator (and Redis) is pinned to (-1: none)")
	flags.DurationVar(&c.MaxP50, "max-p50", 20*time.Millisecond, "the summary's second figure: the most subscribers held with latency p50 at most this too (past it a node is saturated: packets queue, and delay grows to seconds before loss does)")
	flags.DurationVar(&m.Poll, "poll", time.Millisecond, "the subscribers' socket is read every this long; 0: block for each datagram")
	if err := flags.Parse(args); err != nil {
		return nil, err
	}
	if flags.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", flags.Args())
	}
	set := map[string]bool{}
	flags.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *sizes == "" {
		*sizes = "200,250,300,350,400,450,500,550,600,650,700,750,800,850,900,950,1000"
		if c.Short {
			*sizes = "100,200"
		}
	}
	if c.Short {
		if !set["duration"] {
			m.Duration = 3 * time.Second
		}
		if !set["attempts"] {
			m.Attempts = 1
		}
		if !set["contended-retries"] {
			m.Retries = 0
		}
	}
	if err := m.finish(*sizes, tgVigil, false, *bitrate); err != nil {
		return nil, err
	}
	for _, s := range strings.Split(*nodes, ",") {
		k, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || k < 1 || k > 8 {
			return nil, fmt.Errorf("-nodes: %q is not a count from 1 to 8", s)
		}
		if slices.Contains(c.Nodes, k) {
			return nil, fmt.Errorf("-nodes: %d twice", k)
		}
		c.Nodes = append(c.Nodes, k)
	}
	m.Targets = nil
	for _, k := range c.Nodes {
		m.Targets = append(m.Targets, nodesTarget(k))
	}
	switch {
	case c.NodeCPU < 0 || c.NodeCPU > 1:
		return nil, fmt.Errorf("-node-cpu %g: a share of one core, from 0 (no quota) to 1", c.NodeCPU)
	case c.Period < time.Millisecond || c.Period > time.Second:
		return nil, fmt.Errorf("-node-cpu-period %s: from 1ms to 1s", c.Period)
	case c.NodeCPU > 0 && cfsQuotaUS(c.NodeCPU, c.Period) < 1000:
		return nil, fmt.Errorf("-node-cpu %g of -node-cpu-period %s is under the kernel's 1 ms minimum quota", c.NodeCPU, c.Period)
	case c.Heartbeat <= 0 || c.Lease <= c.Heartbeat:
		return nil, errors.New("-heartbeat must be positive and -lease longer than it")
	}
	return c, nil
}

// nodesTarget names the ramp of k nodes, as the media tables name a server.
func nodesTarget(k int) string {
	if k == 1 {
		return "1 node"
	}
	return strconv.Itoa(k) + " nodes"
}

// targetNodes is the node count of a target named by nodesTarget; 0 if none.
func targetNodes(tg string) int {
	s, _, ok := strings.Cut(tg, " node")
	if !ok {
		return 0
	}
	k, err := strconv.Atoi(s)
	if err != nil || k < 1 {
		return 0
	}
	return k
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

// cfsQuotaUS is the cpu.cfs_quota_us that gives budget of one core per period.
func cfsQuotaUS(budget float64, period time.Duration) int64 {
	return int64(math.Round(budget * float64(period.Microseconds())))
}

// nodeID names the i-th node (0-based).
func nodeID(i int) string { return "n" + strconv.Itoa(i+1) }

// nodeEnv is what makes a vigil a cluster node.
func nodeEnv(id, addr, redisAddr string, edgeViewers int, heartbeat, lease time.Duration) []string {
	return []string{
		"VIGIL_REDIS_URL=redis://" + redisAddr + "/0",
		"VIGIL_NODE_ID=" + id,
		"VIGIL_NODE_URL=http://" + addr,
		"VIGIL_CLUSTER_HEARTBEAT=" + heartbeat.String(),
		"VIGIL_CLUSTER_LEASE=" + lease.String(),
		"VIGIL_CLUSTER_EDGE_VIEWERS=" + strconv.Itoa(edgeViewers),
	}
}

// clusterRun is what every step of "vigil-load cluster" shares.
type clusterRun struct {
	cfg     *clusterConfig
	sh      *shared
	redis   *redisServer
	nodes   []*spawner  // one per node index: copies of sh.vigil
	groups  []*cpuGroup // one per node index; nil without a quota
	edge    int         // VIGIL_CLUSTER_EDGE_VIEWERS of the nodes being started
	warned  bool
	metrics *http.Client
}

// clusterStep is the nodes of one step.
type clusterStep struct {
	run          *clusterRun
	nodes        []clusterNode
	edge         int
	begun, ended []nodeSample
	owner        string
	relays       int      // participants relay.{edge} in the owner's room: viewers, not subscribers
	cpu          int      // the CPU the nodes are pinned to; -1: none
	cpu0, cpu1   cpuTimes // its times at the window's start and end
	haveCPU      bool
}

type clusterNode struct {
	id    string
	srv   *server
	base  string
	group *cpuGroup
}

// nodeSample is what is read of a node at the start or the end of the window.
type nodeSample struct {
	cpu       time.Duration
	hwm       int64 // KiB
	cfs       cfsStat
	drops     int64
	fwd, recv float64
	shed      float64            // video packets not forwarded: the node shed load
	roles     map[string]float64 // vigil_participants by role
	metricErr error
}

// clusterFigures is what a step measured of the cluster
// (mediaResult.Cluster).
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

func runCluster(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseClusterFlags(args, stderr)
	if err != nil {
		return err
	}
	m := cfg.media
	sh, err := newShared(ctx, stdout, stderr)
	if err != nil {
		return err
	}
	pinned, cleanup, err := sh.setup(ctx, true, m.VigilBin, m.ServerCPU, m.GenCPU, []string{tgVigil})
	if err != nil {
		return err
	}
	defer cleanup()
	run := &clusterRun{cfg: cfg, sh: sh, metrics: newHTTPClient(nil, 8)}
	defer run.close()
	genCPU := m.GenCPU
	if runtime.NumCPU() < 2 {
		genCPU = -1
	}
	if run.redis, err = startRedis(ctx, cfg.RedisBin, genCPU, sh.vigil.dir); err != nil {
		return err
	}
	maxNodes := slices.Max(cfg.Nodes)
	for i := range maxNodes {
		id := nodeID(i)
		sp := *sh.vigil
		sp.dir = filepath.Join(sh.vigil.dir, id)
		if err := os.MkdirAll(sp.dir, 0o700); err != nil {
			return err
		}
		sp.logPath = filepath.Join(sh.vigil.dir, "vigil-"+id+".log")
		sp.env = func(addr string) []string {
			return nodeEnv(id, addr, run.redis.addr, run.edge, cfg.Heartbeat, cfg.Lease)
		}
		run.nodes = append(run.nodes, &sp)
		if cfg.NodeCPU > 0 {
			g, err := newCPUGroup(cfg.cgroupRoot, fmt.Sprintf("vigil-load-%d-%s", os.Getpid(), id), cfg.NodeCPU, cfg.Period)
			if err != nil {
				return fmt.Errorf("node %s's CPU budget (run as root, or -node-cpu 0): %w", id, err)
			}
			run.groups = append(run.groups, g)
		} else {
			run.groups = append(run.groups, nil)
		}
	}
	sh.cluster = run

	fmt.Fprintf(stdout, "# vigil-load cluster %s\n", strings.Join(args, " "))
	fmt.Fprintf(stdout, "# %s, %d CPUs (%s), %s, RLIMIT_NOFILE %d; pinned: %s; redis-server on 127.0.0.1 (%s)\n",
		time.Now().UTC().Format(time.RFC3339), runtime.NumCPU(), cpuModel(), runtime.Version(), raiseNoFile(), pinned, run.redis.addr)
	fmt.Fprintf(stdout, "# %s\n", budgetLine(cfg))
	if cfg.NodeCPU*float64(maxNodes) > 1 && m.ServerCPU >= 0 {
		fmt.Fprintf(stdout, "# warning: %d nodes x %g of a core do not fit on CPU %d: they compete for it beyond their budget\n", maxNodes, cfg.NodeCPU, m.ServerCPU)
	}
	res := sh.runScenario(ctx, m)
	fmt.Fprintf(stdout, "\n### %s, on 1 to %d nodes\n\n", scenarioTitle(m), maxNodes)
	clusterTable(res).render(stdout)
	fmt.Fprintln(stdout)
	clusterSummary(cfg, res).render(stdout)
	fmt.Fprintf(stdout, "\n# %s\n", othersLine(res))
	for i, sp := range run.nodes {
		fmt.Fprintf(stdout, "\n# node %s", nodeID(i))
		(&shared{out: stdout, vigil: sp}).serverLogs()
	}
	return ctx.Err()
}

func budgetLine(cfg *clusterConfig) string {
	if cfg.NodeCPU == 0 {
		return "no CPU budget per node (-node-cpu 0): the nodes share their CPU as the scheduler decides"
	}
	return fmt.Sprintf("each node emulates a machine with %g of one core: a cgroup v1 CPU quota of %d µs per %d µs period (%s/vigil-load-%d-nN)",
		cfg.NodeCPU, cfsQuotaUS(cfg.NodeCPU, cfg.Period), cfg.Period.Microseconds(), cfg.cgroupRoot, os.Getpid())
}

func (r *clusterRun) close() {
	if r.redis != nil {
		r.redis.stop()
	}
	for _, g := range r.groups {
		if g != nil {
			if err := g.remove(); err != nil {
				fmt.Fprintf(r.sh.progOut, "vigil-load cluster: %v\n", err)
			}
		}
	}
}

// target starts the nodes of one step (mediaTarget for step): a clean
// Redis, then k fresh nodes, each in its CPU budget; the room is created,
// the publisher joins and tokens are minted through the first.
func (r *clusterRun) target(ctx context.Context, tg string, n int) (*mediaTarget, error) {
	k := targetNodes(tg)
	if k < 1 || k > len(r.nodes) {
		return nil, fmt.Errorf("no nodes for target %q", tg)
	}
	if _, err := redisDo(ctx, r.redis.addr, "FLUSHALL"); err != nil {
		return nil, err
	}
	r.edge = ceilDiv(n, k)
	st := &clusterStep{run: r, edge: r.edge, cpu: r.cfg.media.ServerCPU}
	for i := range k {
		srv, err := r.nodes[i].start(ctx)
		if err != nil {
			st.stop()
			return nil, fmt.Errorf("node %s: %w", nodeID(i), err)
		}
		node := clusterNode{id: nodeID(i), srv: srv, base: "http://" + srv.addr, group: r.groups[i]}
		st.nodes = append(st.nodes, node)
		if node.group != nil {
			if err := node.group.add(srv.pid); err != nil {
				st.stop()
				return nil, err
			}
		}
	}
	if err := r.awaitMembers(ctx, st); err != nil && !r.warned {
		r.warned = true
		fmt.Fprintf(r.sh.progOut, "vigil-load cluster: warning: %v (is the cluster mode in this vigil? see cmd/vigil/settings.go)\n", err)
	}
	n0 := st.nodes[0]
	return &mediaTarget{api: &api{base: n0.base, adminKey: r.nodes[0].adminKey, hc: r.sh.hc},
		pid: n0.srv.pid, udp: n0.srv.udp, base: n0.base, cluster: st}, nil
}

// awaitMembers waits until every node of the step is registered in Redis.
func (r *clusterRun) awaitMembers(ctx context.Context, st *clusterStep) error {
	deadline := time.Now().Add(2*r.cfg.Heartbeat + 3*time.Second)
	for {
		var missing []string
		for _, nd := range st.nodes {
			v, err := redisDo(ctx, r.redis.addr, "EXISTS", "vigil:node:"+nd.id)
			if err != nil {
				return err
			}
			if v != int64(1) {
				missing = append(missing, nd.id)
			}
		}
		if len(missing) == 0 {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("nodes %v not registered in Redis (vigil:node:ID)", missing)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The hooks of step; each does nothing without a cluster.

// stop ends the step's nodes, all at once.
func (st *clusterStep) stop() {
	if st == nil {
		return
	}
	var wg sync.WaitGroup
	for _, nd := range st.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nd.srv.stop()
		}()
	}
	wg.Wait()
}

// spread gives the subscribers their entry node, round-robin.
func (st *clusterStep) spread(specs []subSpec) {
	if st == nil {
		return
	}
	for i := range specs {
		specs[i].base = st.nodes[i%len(st.nodes)].base
	}
}

func (st *clusterStep) begin(ctx context.Context) {
	if st != nil {
		var err error
		st.cpu0, err = readCPUTimes(st.cpu)
		st.haveCPU = err == nil
		st.begun = st.sample(ctx)
	}
}

func (st *clusterStep) end(ctx context.Context) {
	if st == nil {
		return
	}
	var err error
	st.cpu1, err = readCPUTimes(st.cpu)
	st.haveCPU = st.haveCPU && err == nil
	st.ended = st.sample(ctx)
	if v, err := redisDo(ctx, st.run.redis.addr, "HGET", "vigil:room:"+st.run.sh.room, "owner"); err == nil {
		st.owner, _ = v.(string)
	}
	a := &api{base: st.nodes[0].base, adminKey: st.run.nodes[0].adminKey, hc: st.run.metrics}
	st.relays, _ = relaysIn(ctx, a, st.run.sh.room)
}

// relaysIn counts the edges' relays in a room (GET /v1/rooms/{room},
// answered by the owner): each is a viewer there, for all of an edge's.
func relaysIn(ctx context.Context, a *api, room string) (int, error) {
	var out struct {
		Participants []struct {
			Identity string `json:"identity"`
		} `json:"participants"`
	}
	if err := a.do(ctx, http.MethodGet, "/v1/rooms/"+url.PathEscape(room), a.adminKey, nil, http.StatusOK, &out); err != nil {
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
		p, _ := sampleProc(nd.srv.pid)
		out[i].cpu, out[i].hwm = p.CPU, p.HWMKiB
		if nd.group != nil {
			out[i].cfs, _ = nd.group.stat()
		}
		out[i].drops = udpDrops(map[int]bool{nd.srv.udp: true})
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

// fold puts the nodes' figures into the step's result: the server CPU
// is then that of every node.
func (st *clusterStep) fold(res *mediaResult) {
	if st == nil || len(st.begun) != len(st.nodes) || len(st.ended) != len(st.nodes) {
		return
	}
	cf := &clusterFigures{Nodes: foldNodes(st.nodes, st.begun, st.ended, st.owner, st.relays), HaveCPU: st.haveCPU}
	if st.haveCPU {
		cf.CPUBusy, cf.CPUSoftirq = st.cpu1.busy-st.cpu0.busy, st.cpu1.softirq-st.cpu0.softirq
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
			100*f.CPU.Seconds()/res.Window.Seconds(), f2(f.usPerPkt()), throttledPct(f), f.Shed)
	}
	fmt.Fprintf(st.run.sh.progOut, "%s %-8s N=%-4d nodes (edge viewers %d):%s  CPU %s busy %s (softirq %s)\n",
		res.Scenario, res.Target, res.N, st.edge, b.String(), cpuName(st.cpu), cf.busyPct(res.Window), cf.softirqPct(res.Window))
}

func (r *mediaResult) nodes() []nodeFigures {
	if r.Cluster == nil {
		return nil
	}
	return r.Cluster.Nodes
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

func cpuName(cpu int) string {
	if cpu < 0 {
		return "all"
	}
	return strconv.Itoa(cpu)
}

// cpuTimes is one CPU's line of /proc/stat (all CPUs' for -1).
type cpuTimes struct{ busy, softirq time.Duration }

func readCPUTimes(cpu int) (cpuTimes, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}, err
	}
	return parseCPUTimes(b, cpu)
}

// parseCPUTimes reads the line of cpu ("cpu" for -1, else "cpuN") of
// /proc/stat: busy is user, nice, system, irq, softirq and steal.
func parseCPUTimes(stat []byte, cpu int) (cpuTimes, error) {
	name := "cpu"
	if cpu >= 0 {
		name += strconv.Itoa(cpu)
	}
	for _, line := range strings.Split(string(stat), "\n") {
		f := strings.Fields(line)
		if len(f) < 9 || f[0] != name {
			continue
		}
		var v [9]uint64
		for i := 1; i < 9; i++ {
			var err error
			if v[i], err = strconv.ParseUint(f[i], 10, 64); err != nil {
				return cpuTimes{}, fmt.Errorf("proc stat %s field %d: %w", name, i, err)
			}
		}
		tick := func(n uint64) time.Duration { return time.Duration(n) * time.Second / clockTicks }
		return cpuTimes{busy: tick(v[1] + v[2] + v[3] + v[6] + v[7] + v[8]), softirq: tick(v[7])}, nil
	}
	return cpuTimes{}, fmt.Errorf("proc stat: no %s line", name)
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

// Prometheus text, as much as we read of it.

type metricSample struct {
	name   string
	labels map[string]string
	value  float64
}

type metricSet []metricSample

// parseMetrics reads the Prometheus text exposition format: one
// `name{label="value",...} number` per line; comments skipped.
func parseMetrics(b []byte) metricSet {
	var out metricSet
	for _, line := range bytes.Split(b, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		s := metricSample{labels: map[string]string{}}
		rest := line
		if i := bytes.IndexByte(line, '{'); i >= 0 {
			j := bytes.LastIndexByte(line, '}')
			if j < i {
				continue
			}
			s.name = string(line[:i])
			parseLabels(string(line[i+1:j]), s.labels)
			rest = line[j+1:]
		} else {
			f := bytes.Fields(line)
			if len(f) < 2 {
				continue
			}
			s.name = string(f[0])
			rest = line[len(f[0]):]
		}
		f := bytes.Fields(rest)
		if len(f) < 1 {
			continue
		}
		v, err := strconv.ParseFloat(string(f[0]), 64)
		if err != nil {
			continue
		}
		s.value = v
		out = append(out, s)
	}
	return out
}

// parseLabels reads `a="x",b="y \"q\""` into m.
func parseLabels(s string, m map[string]string) {
	for len(s) > 0 {
		eq := strings.IndexByte(s, '=')
		if eq < 0 || eq+1 >= len(s) || s[eq+1] != '"' {
			return
		}
		key := strings.TrimSpace(strings.TrimLeft(s[:eq], ", "))
		var val strings.Builder
		i := eq + 2
		for ; i < len(s) && s[i] != '"'; i++ {
			if s[i] == '\\' && i+1 < len(s) {
				i++
				switch s[i] {
				case 'n':
					val.WriteByte('\n')
				default:
					val.WriteByte(s[i])
				}
				continue
			}
			val.WriteByte(s[i])
		}
		m[key] = val.String()
		if i >= len(s) {
			return
		}
		s = s[i+1:]
	}
}

// sum adds the samples of name whose label has value (label "": all).
func (ms metricSet) sum(name, label, value string) float64 {
	var v float64
	for _, s := range ms {
		if s.name == name && (label == "" || s.labels[label] == value) {
			v += s.value
		}
	}
	return v
}

// byLabel sums the samples of name by the value of one label.
func (ms metricSet) byLabel(name, label string) map[string]float64 {
	out := map[string]float64{}
	for _, s := range ms {
		if s.name == name {
			out[s.labels[label]] += s.value
		}
	}
	return out
}

func scrape(ctx context.Context, hc *http.Client, base string) (metricSet, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return parseMetrics(b), nil
}

// cgroup v1 CPU quota.

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

// A private redis-server.

type redisServer struct {
	cmd  *exec.Cmd
	addr string
	done chan struct{}
}

func startRedis(ctx context.Context, bin string, cpu int, dir string) (*redisServer, error) {
	port, _, err := freePorts()
	if err != nil {
		return nil, err
	}
	argv := []string{bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir}
	if ts, err := exec.LookPath("taskset"); err == nil && cpu >= 0 {
		argv = append([]string{ts, "-c", strconv.Itoa(cpu)}, argv...)
	}
	logf, err := os.Create(filepath.Join(dir, "redis.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("redis-server: %w", err)
	}
	r := &redisServer{cmd: cmd, addr: "127.0.0.1:" + strconv.Itoa(port), done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(r.done)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		v, err := redisDo(ctx, r.addr, "PING")
		if err == nil && v == "PONG" {
			return r, nil
		}
		select {
		case <-r.done:
			return nil, fmt.Errorf("redis-server exited at start; see %s", logf.Name())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			r.stop()
			return nil, fmt.Errorf("redis-server did not answer within 10s: %v", err)
		}
	}
}

func (r *redisServer) stop() {
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(5 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
}

// redisDo sends one command on a connection of its own.
func redisDo(ctx context.Context, addr string, args ...string) (any, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if _, err := c.Write(respCommand(args...)); err != nil {
		return nil, err
	}
	return respRead(bufio.NewReader(c))
}

// respCommand encodes a command as a RESP array of bulk strings.
func respCommand(args ...string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	return b.Bytes()
}

// respRead reads one RESP2 reply: a string, an int64, nil, or []any; an
// error reply is an error.
func respRead(r *bufio.Reader) (any, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
	if line == "" {
		return nil, errors.New("redis: empty reply line")
	}
	switch line[0] {
	case '+':
		return line[1:], nil
	case '-':
		return nil, fmt.Errorf("redis: %s", line[1:])
	case ':':
		return strconv.ParseInt(line[1:], 10, 64)
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n > 64<<20 {
			return nil, fmt.Errorf("redis: bad bulk length %q", line)
		}
		if n < 0 {
			return nil, nil
		}
		b := make([]byte, n+2)
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, err
		}
		return string(b[:n]), nil
	case '*':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n > 1<<20 {
			return nil, fmt.Errorf("redis: bad array length %q", line)
		}
		if n < 0 {
			return nil, nil
		}
		out := make([]any, n)
		for i := range out {
			if out[i], err = respRead(r); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("redis: unknown reply %q", line)
}

// The tables.

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

func clusterTable(rs []mediaResult) *table {
	t := &table{
		header: []string{"nodes", "N", "edge viewers", "sessions", "owner", "viewers per node", "fwd pkt/s per node", "fwd pkt/s (received)", "loss %", "max loss %", "lat p50 ms", "p99", "µs/pkt per node", "CPU % per node", "throttled % per node", "nodes' CPU busy % (softirq)", "shed pkts per node", "RSS MiB per node", "gen µs/pkt", "others CPU s", "drops srv/gen", "result"},
		align:  []bool{false, true, true, true, false, true, true, true, true, true, true, true, true, true, true, true, true, true, true, true, true, false},
	}
	for _, r := range rs {
		result := r.resultText()
		for _, f := range r.nodes() {
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
		t.add(strconv.Itoa(k), strconv.Itoa(r.N), strconv.Itoa(ceilDiv(r.N, k)), fmt.Sprintf("%d/%d", r.Joined, r.Sessions), ownerOf(r.nodes()),
			perNode(r.nodes(), func(f *nodeFigures) string { return strconv.Itoa(f.Viewers) }),
			perNode(r.nodes(), func(f *nodeFigures) string {
				if win <= 0 {
					return "-"
				}
				return fmt.Sprintf("%.0f", float64(f.Fwd)/win)
			}),
			fmt.Sprintf("%.0f", r.pps()), fmt.Sprintf("%.3f", r.LossAgg), fmt.Sprintf("%.2f", r.LossMax),
			ms(r.Lat.quantile(50)), ms(r.Lat.quantile(99)),
			perNode(r.nodes(), func(f *nodeFigures) string { return f2(f.usPerPkt()) }),
			perNode(r.nodes(), func(f *nodeFigures) string { return pct(f.CPU) }),
			perNode(r.nodes(), func(f *nodeFigures) string { return strings.TrimSuffix(throttledPct(*f), "%") }),
			fmt.Sprintf("%s (%s)", strings.TrimSuffix(r.Cluster.busyPct(r.Window), "%"), strings.TrimSuffix(r.Cluster.softirqPct(r.Window), "%")),
			perNode(r.nodes(), func(f *nodeFigures) string { return strconv.FormatUint(f.Shed, 10) }),
			perNode(r.nodes(), func(f *nodeFigures) string { return fmt.Sprintf("%.0f", float64(f.HWM)/1024) }),
			f2(r.genUSPerPkt()), fmt.Sprintf("%.2f", r.OtherCPU.Seconds()), fmt.Sprintf("%d/%d", r.ServerDrops, r.GenDrops), result)
	}
	return t
}

// othersLine says how busy the rest of the machine was during the
// windows: the CPUs other processes took (the host's busy time less the
// nodes' and the generator's).
func othersLine(rs []mediaResult) string {
	var load []float64
	contended := 0
	for _, r := range rs {
		if r.Window <= 0 {
			continue
		}
		load = append(load, r.OtherCPU.Seconds()/r.Window.Seconds())
		if r.contended() {
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
func mostHeld(rs []mediaResult, pass func(r *mediaResult) bool) (n int, bound, ok bool) {
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
func clusterSummary(cfg *clusterConfig, rs []mediaResult) *table {
	t := &table{header: []string{"figure"}, align: []bool{false}}
	for _, k := range cfg.Nodes {
		t.header = append(t.header, nodesTarget(k))
		t.align = append(t.align, true)
	}
	first := nodesTarget(cfg.Nodes[0])
	for _, k := range cfg.Nodes[1:] {
		t.header = append(t.header, fmt.Sprintf("%s / %s", nodesTarget(k), first))
		t.align = append(t.align, true)
	}
	held := map[string]*mediaResult{}
	row := func(fig string, cell func(r *mediaResult) (string, float64)) {
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
		t.add(cells...)
	}
	mostRow := func(fig string, pass func(r *mediaResult) bool) {
		cells := []string{fig}
		most := map[string]int{}
		for _, k := range cfg.Nodes {
			tg := nodesTarget(k)
			n, bound, ok := mostHeld(byTarget(rs, tg), pass)
			if !ok {
				cells = append(cells, "none")
				continue
			}
			if _, seen := held[tg]; !seen {
				held[tg] = atN(byTarget(rs, tg), n)
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
		t.add(cells...)
	}
	mostRow(fmt.Sprintf("most subscribers at <= %g%% loss", cfg.media.MaxLoss), func(r *mediaResult) bool { return r.OK })
	mostRow(fmt.Sprintf("most subscribers at <= %g%% loss and latency p50 <= %s ms", cfg.media.MaxLoss, ms(cfg.MaxP50)),
		func(r *mediaResult) bool { return r.OK && r.Lat.quantile(50) <= cfg.MaxP50 })
	nf := func(format func(f *nodeFigures) string) func(r *mediaResult) (string, float64) {
		return func(r *mediaResult) (string, float64) { return perNode(r.nodes(), format), math.NaN() }
	}
	var ids []string
	for i := range slices.Max(cfg.Nodes) {
		ids = append(ids, nodeID(i))
	}
	row("at that N: viewers per node ("+strings.Join(ids, " / ")+")", nf(func(f *nodeFigures) string { return strconv.Itoa(f.Viewers) }))
	row("at that N: forwarded packets/s, received by the subscribers", func(r *mediaResult) (string, float64) {
		return fmt.Sprintf("%.0f", r.pps()), r.pps()
	})
	row("at that N: CPU µs per forwarded packet, per node", nf(func(f *nodeFigures) string { return f2(f.usPerPkt()) }))
	row("at that N: CPU µs per received packet, all nodes", func(r *mediaResult) (string, float64) {
		v := r.serverUSPerPkt()
		return f2(v), v
	})
	row("at that N: CPU % per node (of one core)", func(r *mediaResult) (string, float64) {
		return perNode(r.nodes(), func(f *nodeFigures) string {
			return fmt.Sprintf("%.0f", 100*f.CPU.Seconds()/max(r.Window.Seconds(), 1e-9))
		}), math.NaN()
	})
	row("at that N: loss %", func(r *mediaResult) (string, float64) { return fmt.Sprintf("%.3f", r.LossAgg), math.NaN() })
	row("at that N: latency p50 / p99 ms", func(r *mediaResult) (string, float64) {
		return ms(r.Lat.quantile(50)) + " / " + ms(r.Lat.quantile(99)), math.NaN()
	})
	return t
}
