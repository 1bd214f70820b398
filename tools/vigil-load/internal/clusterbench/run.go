// Package clusterbench is "vigil-load cluster": the fan-out scenario
// (one WHIP publisher, N thin WHEP subscribers, a ramp of N) against a
// cluster of 1, then 2, Vigil nodes joined through a private Redis, each
// node held to the same CPU budget by a cgroup v1 CPU quota, so that
// each emulates a machine of its own. The subscribers enter round-robin
// over the nodes, as behind a load balancer; the room's owner keeps
// VIGIL_CLUSTER_EDGE_VIEWERS = ceil(N / nodes) viewers and the rest are
// served by the other node (an edge), which pulls the publisher's tracks
// from the owner over a server-to-server relay. Everything else
// (spawning, thin subscribers, the window, loss and latency) is package
// media's, through its hooks (media.Cluster, media.StepHooks).
package clusterbench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/vigil-media/vigil/internal/redisserver"
	"github.com/vigil-media/vigil/tools/vigil-load/internal/api"
	"github.com/vigil-media/vigil/tools/vigil-load/internal/media"
	"github.com/vigil-media/vigil/tools/vigil-load/internal/procstat"
	"github.com/vigil-media/vigil/tools/vigil-load/internal/spawn"
)

// clusterRun is what every step of "vigil-load cluster" shares.
type clusterRun struct {
	cfg     *clusterConfig
	sh      *media.Runner
	redis   *redisserver.Server
	rdb     *redis.Client    // the nodes' Redis, to read what they wrote
	nodes   []*spawn.Spawner // one per node index: copies of sh.Vigil
	groups  []*cpuGroup      // one per node index; nil without a quota
	edge    int              // VIGIL_CLUSTER_EDGE_VIEWERS of the nodes being started
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
	relays       int               // participants relay.{edge} in the owner's room: viewers, not subscribers
	cpu          int               // the CPU the nodes are pinned to; -1: none
	cpu0, cpu1   procstat.CPUTimes // its times at the window's start and end
	haveCPU      bool
}

type clusterNode struct {
	id    string
	srv   *spawn.Server
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

// Run is "vigil-load cluster".
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseClusterFlags(args, stderr)
	if err != nil {
		return err
	}
	m := cfg.media
	sh, err := media.NewRunner(ctx, stdout, stderr)
	if err != nil {
		return err
	}
	pinned, cleanup, err := sh.Setup(ctx, true, m.VigilBin, m.ServerCPU, m.GenCPU, []string{media.TgVigil})
	if err != nil {
		return err
	}
	defer cleanup()
	run := &clusterRun{cfg: cfg, sh: sh, metrics: api.NewHTTPClient(nil, 8)}
	defer run.close()
	genCPU := m.GenCPU
	if runtime.NumCPU() < 2 {
		genCPU = -1
	}
	if run.redis, run.rdb, err = startRedis(ctx, cfg.RedisBin, genCPU, sh.Vigil.Dir); err != nil {
		return err
	}
	maxNodes := slices.Max(cfg.Nodes)
	for i := range maxNodes {
		id := nodeID(i)
		sp := *sh.Vigil
		sp.Dir = filepath.Join(sh.Vigil.Dir, id)
		if err := os.MkdirAll(sp.Dir, 0o700); err != nil {
			return err
		}
		sp.LogPath = filepath.Join(sh.Vigil.Dir, "vigil-"+id+".log")
		sp.Env = func(addr string) []string {
			return nodeEnv(id, addr, run.redis.Addr(), run.edge, cfg.Heartbeat, cfg.Lease)
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
	sh.Cluster = run

	fmt.Fprintf(stdout, "# vigil-load cluster %s\n", strings.Join(args, " "))
	fmt.Fprintf(stdout, "# %s, %d CPUs (%s), %s, RLIMIT_NOFILE %d; pinned: %s; redis-server on 127.0.0.1 (%s)\n",
		time.Now().UTC().Format(time.RFC3339), runtime.NumCPU(), procstat.CPUModel(), runtime.Version(), procstat.RaiseNoFile(), pinned, run.redis.Addr())
	fmt.Fprintf(stdout, "# %s\n", budgetLine(cfg))
	if cfg.NodeCPU*float64(maxNodes) > 1 && m.ServerCPU >= 0 {
		fmt.Fprintf(stdout, "# warning: %d nodes x %g of a core do not fit on CPU %d: they compete for it beyond their budget\n", maxNodes, cfg.NodeCPU, m.ServerCPU)
	}
	res := sh.RunScenario(ctx, m)
	fmt.Fprintf(stdout, "\n### %s, on 1 to %d nodes\n\n", media.ScenarioTitle(m), maxNodes)
	clusterTable(res).Render(stdout)
	fmt.Fprintln(stdout)
	clusterSummary(cfg, res).Render(stdout)
	fmt.Fprintf(stdout, "\n# %s\n", othersLine(res))
	for i, sp := range run.nodes {
		fmt.Fprintf(stdout, "\n# node %s", nodeID(i))
		sp.LogSummary(stdout)
	}
	return ctx.Err()
}

func (r *clusterRun) close() {
	if r.rdb != nil {
		_ = r.rdb.Close()
	}
	if r.redis != nil {
		r.redis.Stop()
	}
	for _, g := range r.groups {
		if g != nil {
			if err := g.remove(); err != nil {
				fmt.Fprintf(r.sh.ProgOut, "vigil-load cluster: %v\n", err)
			}
		}
	}
}

// Target starts the nodes of one step (media.Cluster): a clean
// Redis, then k fresh nodes, each in its CPU budget; the room is created,
// the publisher joins and tokens are minted through the first.
func (r *clusterRun) Target(ctx context.Context, tg string, n int) (*media.Target, error) {
	k := targetNodes(tg)
	if k < 1 || k > len(r.nodes) {
		return nil, fmt.Errorf("no nodes for target %q", tg)
	}
	if err := r.rdb.FlushAll(ctx).Err(); err != nil {
		return nil, err
	}
	r.edge = ceilDiv(n, k)
	st := &clusterStep{run: r, edge: r.edge, cpu: r.cfg.media.ServerCPU}
	for i := range k {
		srv, err := r.nodes[i].Start(ctx)
		if err != nil {
			st.Stop()
			return nil, fmt.Errorf("node %s: %w", nodeID(i), err)
		}
		node := clusterNode{id: nodeID(i), srv: srv, base: "http://" + srv.Addr, group: r.groups[i]}
		st.nodes = append(st.nodes, node)
		if node.group != nil {
			if err := node.group.add(srv.PID); err != nil {
				st.Stop()
				return nil, err
			}
		}
	}
	if err := r.awaitMembers(ctx, st); err != nil && !r.warned {
		r.warned = true
		fmt.Fprintf(r.sh.ProgOut, "vigil-load cluster: warning: %v (is the cluster mode in this vigil? see cmd/vigil/settings.go)\n", err)
	}
	n0 := st.nodes[0]
	return media.NewTarget(&api.API{Base: n0.base, AdminKey: r.nodes[0].AdminKey, HC: r.sh.HC},
		n0.srv.PID, n0.srv.UDP, st), nil
}

// awaitMembers waits until every node of the step is registered in Redis.
func (r *clusterRun) awaitMembers(ctx context.Context, st *clusterStep) error {
	deadline := time.Now().Add(2*r.cfg.Heartbeat + 3*time.Second)
	for {
		ids := make([]string, len(st.nodes))
		for i, nd := range st.nodes {
			ids[i] = nd.id
		}
		missing, err := unregistered(ctx, r.rdb, ids)
		if err != nil {
			return err
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
