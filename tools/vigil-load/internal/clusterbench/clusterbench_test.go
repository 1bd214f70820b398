package clusterbench

import (
	"context"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigil-media/vigil/tools/vigil-load/internal/media"
)

func TestParseClusterFlags(t *testing.T) {
	c, err := parseClusterFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.Nodes, []int{1, 2}) || !slices.Equal(c.media.Targets, []string{"1 node", "2 nodes"}) {
		t.Errorf("nodes %v, targets %v", c.Nodes, c.media.Targets)
	}
	if c.NodeCPU != 0.45 || c.media.Scenario != media.ScFanout || c.media.Bitrate != 1_000_000 || !c.media.Spawn || c.media.Attempts != 2 {
		t.Errorf("defaults: %+v %+v", c, c.media)
	}
	if c.media.Sizes[0] != 200 || slices.Max(c.media.Sizes) != 1000 {
		t.Errorf("default ramp %v", c.media.Sizes)
	}

	c, err = parseClusterFlags([]string{"-short", "-attempts", "3"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.media.Sizes, []int{100, 200}) || c.media.Duration != 3*time.Second || c.media.Attempts != 3 || c.media.Retries != 0 {
		t.Errorf("-short: sizes %v duration %s attempts %d retries %d", c.media.Sizes, c.media.Duration, c.media.Attempts, c.media.Retries)
	}

	for _, bad := range [][]string{
		{"-nodes", "0"}, {"-nodes", "1,1"}, {"-nodes", "x"},
		{"-node-cpu", "1.5"}, {"-node-cpu", "-0.1"},
		{"-node-cpu", "0.05", "-node-cpu-period", "10ms"}, // 500 µs: under the kernel's minimum
		{"-node-cpu-period", "2s"},
		{"-lease", "1s", "-heartbeat", "1s"},
		{"-subscribers", "0"},
		{"extra"},
	} {
		if _, err := parseClusterFlags(bad, io.Discard); err == nil {
			t.Errorf("%v: accepted", bad)
		}
	}
	if c, err := parseClusterFlags([]string{"-node-cpu", "0", "-nodes", "2,1,3"}, io.Discard); err != nil || c.NodeCPU != 0 || !slices.Equal(c.media.Targets, []string{"2 nodes", "1 node", "3 nodes"}) {
		t.Errorf("-node-cpu 0 -nodes 2,1,3: %v %v", c, err)
	}
}

func TestNodeTargets(t *testing.T) {
	for k := 1; k <= 8; k++ {
		if got := targetNodes(nodesTarget(k)); got != k {
			t.Errorf("targetNodes(nodesTarget(%d)) = %d", k, got)
		}
	}
	for _, s := range []string{"vigil", "baseline", "", " nodes", "0 nodes", "x nodes"} {
		if targetNodes(s) != 0 {
			t.Errorf("targetNodes(%q) != 0", s)
		}
	}
	for _, tc := range [][3]int{{1, 1, 1}, {600, 2, 300}, {601, 2, 301}, {5, 3, 2}, {100, 1, 100}} {
		if got := ceilDiv(tc[0], tc[1]); got != tc[2] {
			t.Errorf("ceilDiv(%d, %d) = %d", tc[0], tc[1], got)
		}
	}
	if q := cfsQuotaUS(0.45, 10*time.Millisecond); q != 4500 {
		t.Errorf("quota %d", q)
	}
	if q := cfsQuotaUS(0.45, 100*time.Millisecond); q != 45000 {
		t.Errorf("quota %d", q)
	}
}

func TestNodeEnv(t *testing.T) {
	env := nodeEnv("n2", "127.0.0.1:4001", "127.0.0.1:6390", 300, time.Second, 5*time.Second)
	want := []string{
		"VIGIL_REDIS_URL=redis://127.0.0.1:6390/0",
		"VIGIL_NODE_ID=n2",
		"VIGIL_NODE_URL=http://127.0.0.1:4001",
		"VIGIL_CLUSTER_HEARTBEAT=1s",
		"VIGIL_CLUSTER_LEASE=5s",
		"VIGIL_CLUSTER_EDGE_VIEWERS=300",
	}
	if !slices.Equal(env, want) {
		t.Errorf("nodeEnv = %q", env)
	}
}

func TestSpreadRoundRobin(t *testing.T) {
	st := &clusterStep{nodes: []clusterNode{{id: "n1", base: "http://a"}, {id: "n2", base: "http://b"}}}
	for i := range 5 {
		if got, want := st.Entry(i), st.nodes[i%2].base; got != want {
			t.Errorf("spec %d enters through %q, want %q", i, got, want)
		}
	}
	// Without a cluster, every hook does nothing.
	var none *clusterStep
	none.Begin(context.Background())
	none.End(context.Background())
	none.Stop()
	var r media.Result
	none.Fold(&r)
	if none.Entry(0) != "" || r.Cluster != nil {
		t.Error("a nil clusterStep changed something")
	}
}

const metricsText = `# HELP vigil_participants Participants in rooms now, by role.
# TYPE vigil_participants gauge
vigil_participants{role="host"} 1
vigil_participants{role="viewer"} 300
vigil_participants{role="relay",room="a\"b,c"} 2
# TYPE vigil_forwarded_packets_total counter
vigil_forwarded_packets_total 1.234567e+06
vigil_received_packets_total 5400
vigil_rtt_seconds{quantile="0.5"} NaN
go_goroutines 42
malformed{
`

func TestParseMetrics(t *testing.T) {
	ms := parseMetrics([]byte(metricsText))
	if v := ms.sum("vigil_forwarded_packets_total", "", ""); v != 1234567 {
		t.Errorf("forwarded %v", v)
	}
	if v := ms.sum("vigil_participants", "role", "viewer"); v != 300 {
		t.Errorf("viewers %v", v)
	}
	if v := ms.sum("vigil_participants", "", ""); v != 303 {
		t.Errorf("participants %v", v)
	}
	roles := ms.byLabel("vigil_participants", "role")
	if roles["host"] != 1 || roles["viewer"] != 300 || roles["relay"] != 2 || len(roles) != 3 {
		t.Errorf("roles %v", roles)
	}
	for _, s := range ms {
		if s.name == "vigil_participants" && s.labels["role"] == "relay" && s.labels["room"] != `a"b,c` {
			t.Errorf("escaped label %q", s.labels["room"])
		}
	}
	if v := ms.sum("vigil_rtt_seconds", "", ""); !math.IsNaN(v) {
		t.Errorf("NaN sample read as %v", v)
	}
	if v := ms.sum("nothing", "", ""); v != 0 {
		t.Errorf("absent %v", v)
	}
}

func TestParseCFSStat(t *testing.T) {
	s := parseCFSStat([]byte("nr_periods 1000\nnr_throttled 250\nthrottled_time 123456789\nnr_bursts 0\nburst_time 0\n"))
	if s.periods != 1000 || s.throttled != 250 || s.throttledTime != 123456789*time.Nanosecond {
		t.Errorf("%+v", s)
	}
}

func TestFoldNodes(t *testing.T) {
	nodes := []clusterNode{{id: "n1"}, {id: "n2"}}
	begun := []nodeSample{
		{cpu: time.Second, fwd: 1000, cfs: cfsStat{periods: 10, throttled: 1}},
		{cpu: 2 * time.Second, fwd: 50},
	}
	ended := []nodeSample{
		{cpu: 5 * time.Second, fwd: 501000, recv: 10, shed: 7, hwm: 2048, cfs: cfsStat{periods: 1010, throttled: 201}, roles: map[string]float64{"host": 1, "viewer": 301}},
		{cpu: 6 * time.Second, fwd: 400050, roles: map[string]float64{"viewer": 299, "relay": 0}},
	}
	figs := foldNodes(nodes, begun, ended, "", 1)
	if !figs[0].Owner || figs[1].Owner {
		t.Errorf("owner by its host: %+v", figs)
	}
	// The owner's viewers less the relay.
	if figs[0].Viewers != 300 || figs[0].Others != "(host 1, relay 1)" || figs[1].Viewers != 299 || figs[1].Others != "" {
		t.Errorf("participants: %+v", figs)
	}
	if figs[0].Fwd != 500000 || figs[0].Shed != 7 || figs[1].Shed != 0 || figs[0].CPU != 4*time.Second || figs[0].usPerPkt() != 8 || figs[1].usPerPkt() != 10 {
		t.Errorf("per packet: %+v", figs)
	}
	if throttledPct(figs[0]) != "20%" || throttledPct(figs[1]) != "-" {
		t.Errorf("throttled %s %s", throttledPct(figs[0]), throttledPct(figs[1]))
	}
	if figs = foldNodes(nodes, begun, ended, "n2", 0); figs[0].Owner || !figs[1].Owner {
		t.Errorf("owner from Redis: %+v", figs)
	}
}

func TestClusterFoldTakesEveryNode(t *testing.T) {
	st := &clusterStep{
		run:   &clusterRun{sh: &media.Runner{ProgOut: io.Discard}},
		nodes: []clusterNode{{id: "n1"}, {id: "n2"}},
		begun: []nodeSample{{cpu: 0}, {cpu: 0}},
		ended: []nodeSample{{cpu: 3 * time.Second, fwd: 1}, {cpu: 2 * time.Second, fwd: 1}},
	}
	// The step saw the host busy 10 s: 3 s the first node, 1 s the generator.
	res := media.Result{Window: 10 * time.Second, ServerCPU: 3 * time.Second, GenCPU: time.Second, OtherCPU: 6 * time.Second}
	st.Fold(&res)
	if res.ServerCPU != 5*time.Second || res.OtherCPU != 4*time.Second || !res.HaveProc || len(nodesOf(&res)) != 2 {
		t.Errorf("server %s others %s nodes %d", res.ServerCPU, res.OtherCPU, len(nodesOf(&res)))
	}
}

// A real redis-server, when installed: started, asked through the
// go-redis queries the run makes, flushed, stopped.
func TestPrivateRedis(t *testing.T) {
	const bin = "/usr/bin/redis-server"
	if _, err := os.Stat(bin); err != nil {
		t.Skip("no redis-server")
	}
	ctx := context.Background()
	srv, rdb, err := startRedis(ctx, bin, -1, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	defer rdb.Close()
	if err := rdb.HSet(ctx, "vigil:room:x", "owner", "n2").Err(); err != nil {
		t.Fatal(err)
	}
	if v, err := roomOwner(ctx, rdb, "x"); err != nil || v != "n2" {
		t.Fatalf("roomOwner = %v, %v", v, err)
	}
	if v, err := roomOwner(ctx, rdb, "y"); err != nil || v != "" {
		t.Fatalf("roomOwner of a room with none = %q, %v", v, err)
	}
	if err := rdb.Set(ctx, "vigil:node:n1", "{}", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if m, err := unregistered(ctx, rdb, []string{"n1", "n2"}); err != nil || !slices.Equal(m, []string{"n2"}) {
		t.Fatalf("unregistered = %v, %v", m, err)
	}
	if v, err := rdb.FlushAll(ctx).Result(); err != nil || v != "OK" {
		t.Fatalf("FLUSHALL = %v, %v", v, err)
	}
	if n, err := rdb.Exists(ctx, "vigil:room:x").Result(); err != nil || n != 0 {
		t.Fatalf("EXISTS after FLUSHALL = %v, %v", n, err)
	}
	if m, err := unregistered(ctx, rdb, []string{"n1"}); err != nil || !slices.Equal(m, []string{"n1"}) {
		t.Fatalf("unregistered after FLUSHALL = %v, %v", m, err)
	}
}

// The cgroup files, written into a plain directory standing for the
// hierarchy.
func TestCPUGroupFiles(t *testing.T) {
	root := t.TempDir()
	g, err := newCPUGroup(root, "vigil-load-1-n1", 0.45, 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	read := func(f string) string {
		b, err := os.ReadFile(filepath.Join(root, "vigil-load-1-n1", f))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	if read("cpu.cfs_period_us") != "10000" || read("cpu.cfs_quota_us") != "4500" {
		t.Errorf("period %s quota %s", read("cpu.cfs_period_us"), read("cpu.cfs_quota_us"))
	}
	if err := g.add(4242); err != nil || read("cgroup.procs") != "4242" {
		t.Errorf("cgroup.procs %q, %v", read("cgroup.procs"), err)
	}
	if err := os.WriteFile(filepath.Join(g.dir, "cpu.stat"), []byte("nr_periods 3\nnr_throttled 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if s, err := g.stat(); err != nil || s.periods != 3 || s.throttled != 1 {
		t.Errorf("stat %+v, %v", s, err)
	}
}

func TestClusterTables(t *testing.T) {
	c, err := parseClusterFlags([]string{"-subscribers", "100,200,300"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	node := func(id string, owner bool, viewers int, cpu time.Duration, fwd uint64) nodeFigures {
		return nodeFigures{ID: id, Owner: owner, Viewers: viewers, CPU: cpu, Fwd: fwd}
	}
	w := 10 * time.Second
	rs := []media.Result{
		{Target: "1 node", N: 100, OK: true, Window: w, Total: 170000, Cluster: &clusterFigures{Nodes: []nodeFigures{node("n1", true, 100, 2*time.Second, 170000)}}},
		{Target: "2 nodes", N: 100, OK: true, Window: w, Total: 170000, Cluster: &clusterFigures{Nodes: []nodeFigures{node("n1", true, 50, time.Second, 86700), node("n2", false, 50, time.Second, 85000)}}},
		{Target: "1 node", N: 200, OK: false, Why: "loss 3% > 0.5%", Window: w, Cluster: &clusterFigures{Nodes: []nodeFigures{node("n1", true, 200, 4*time.Second, 300000)}}},
		{Target: "2 nodes", N: 200, OK: true, Window: w, Total: 340000, Cluster: &clusterFigures{Nodes: []nodeFigures{node("n1", true, 100, 2*time.Second, 171700), node("n2", false, 100, 2*time.Second, 170000)}}},
		{Target: "2 nodes", N: 300, OK: false, Why: "loss", Window: w},
	}
	rs[0].Lat.Add(2 * time.Millisecond)
	rs[1].Lat.Add(2 * time.Millisecond)
	rs[3].Lat.Add(500 * time.Millisecond) // held by loss, but saturated
	rs[0].OtherCPU, rs[1].OtherCPU, rs[3].OtherCPU = 3*time.Second, 11*time.Second, time.Second
	if got, want := othersLine(rs), "other processes took a median 0.10 CPU during the windows (max 1.10 of the 2); 1 of 5 windows contended (over one CPU)"; got != want {
		t.Errorf("othersLine = %q", got)
	}
	var b strings.Builder
	clusterTable(rs).Render(&b)
	if !strings.Contains(b.String(), " 50 / 50 |") || !strings.Contains(b.String(), "limit: loss 3% > 0.5%") {
		t.Errorf("table:\n%s", b.String())
	}
	b.Reset()
	clusterSummary(c, rs).Render(&b)
	rows := map[string][]string{}
	for _, line := range strings.Split(b.String(), "\n") {
		var cells []string
		for _, c := range strings.Split(strings.Trim(line, "|"), "|") {
			cells = append(cells, strings.TrimSpace(c))
		}
		rows[cells[0]] = cells[1:]
	}
	for fig, want := range map[string][]string{
		"most subscribers at <= 0.5% loss":                            {"100", "200", "2.00"},
		"most subscribers at <= 0.5% loss and latency p50 <= 20.0 ms": {"100", "100", "1.00"},
		"at that N: viewers per node (n1 / n2)":                       {"100", "100 / 100", "-"},
		"at that N: forwarded packets/s, received by the subscribers": {"17000", "34000", "2.00"},
	} {
		if !slices.Equal(rows[fig], want) {
			t.Errorf("%s: %q, want %q\n%s", fig, rows[fig], want, b.String())
		}
	}
}
