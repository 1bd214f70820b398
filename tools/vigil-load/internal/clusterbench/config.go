package clusterbench

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vigil-media/vigil/tools/vigil-load/internal/media"
)

// clusterConfig is the flags of "vigil-load cluster".
type clusterConfig struct {
	media      *media.Config
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
	c := &clusterConfig{media: &media.Config{Scenario: media.ScFanout, Spawn: true, JoinRate: 50, Storm: 1}, cgroupRoot: cgroupCPURoot}
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
	if err := m.Finish(*sizes, media.TgVigil, false, *bitrate); err != nil {
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

func budgetLine(cfg *clusterConfig) string {
	if cfg.NodeCPU == 0 {
		return "no CPU budget per node (-node-cpu 0): the nodes share their CPU as the scheduler decides"
	}
	return fmt.Sprintf("each node emulates a machine with %g of one core: a cgroup v1 CPU quota of %d µs per %d µs period (%s/vigil-load-%d-nN)",
		cfg.NodeCPU, cfsQuotaUS(cfg.NodeCPU, cfg.Period), cfg.Period.Microseconds(), cfg.cgroupRoot, os.Getpid())
}
