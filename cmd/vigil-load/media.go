package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pion/webrtc/v4"
)

// The media scenarios.
const (
	scFanout    = "fanout"
	scAudio     = "audio"
	scMeeting   = "meeting"
	scLatency   = "latency"
	scJoinstorm = "joinstorm"
)

var allScenarios = []string{scFanout, scAudio, scMeeting, scLatency, scJoinstorm}

// The servers a scenario runs against.
const (
	tgVigil    = "vigil"
	tgBaseline = "baseline"
)

// mediaConfig is the flags of "vigil-load media".
type mediaConfig struct {
	Scenario    string
	Sizes       []int // subscribers (listeners; participants for meeting) per step
	Speakers    int
	Duration    time.Duration
	Bitrate     int64
	KeyEvery    time.Duration
	Storm       int
	JoinRate    float64
	MaxLoss     float64 // percent
	JoinWorkers int
	Attempts    int
	Targets     []string
	URL         string
	AdminKey    string
	ServerPID   int
	ServerUDP   int
	Spawn       bool
	VigilBin    string
	ServerCPU   int
	GenCPU      int
	GenProfile  string
	Poll        time.Duration
	Retries     int
}

func mediaFlags(c *mediaConfig, fs *flag.FlagSet) (sizes, targets *string, baseline *bool, bitrate *string) {
	fs.StringVar(&c.Scenario, "scenario", scFanout, "fanout | audio | meeting | latency | joinstorm")
	sizes = fs.String("subscribers", "", "the ramp: subscribers per step (audio: listeners; meeting: participants; joinstorm: subscribers already watching when the storm starts). Default by scenario")
	fs.IntVar(&c.Speakers, "publishers", 0, "publishers: audio speakers (default 10); meeting: unused, see -subscribers; others: 1")
	fs.DurationVar(&c.Duration, "duration", 10*time.Second, "measured window of each step")
	bitrate = fs.String("bitrate", "", "video bitrate per publisher, e.g. 1M, 500k (default: fanout and joinstorm 1M, meeting 500k, latency 9M)")
	fs.DurationVar(&c.KeyEvery, "keyframe-interval", 2*time.Second, "a keyframe every this long (and on PLI)")
	fs.IntVar(&c.Storm, "storm", 200, "joinstorm: subscribers that join during the storm")
	fs.Float64Var(&c.JoinRate, "join-rate", 50, "joinstorm: joins per second")
	fs.Float64Var(&c.MaxLoss, "max-loss", 0.5, "a step holds if the loss over every subscriber is at most this many percent")
	fs.IntVar(&c.JoinWorkers, "join-workers", 16, "concurrent joins (except in the storm)")
	fs.IntVar(&c.Attempts, "attempts", 1, "runs of a step that fails before the ramp stops; the best is reported")
	fs.IntVar(&c.Retries, "contended-retries", 1, "more runs of a failed step when other processes held more than a CPU during it (contended)")
	targets = fs.String("targets", "vigil,baseline", "servers to measure in turn at each step: vigil, baseline (the stock-pion forwarder)")
	baseline = fs.Bool("baseline", false, "measure only the stock-pion baseline forwarder (same as -targets baseline)")
	fs.StringVar(&c.URL, "url", "", "a running server on loopback (Vigil, or with -baseline a vigil-load baseline-server), instead of -spawn")
	fs.StringVar(&c.AdminKey, "admin-key", os.Getenv("VIGIL_ADMIN_KEY"), "its admin key (VIGIL_ADMIN_KEY)")
	fs.IntVar(&c.ServerPID, "server-pid", 0, "its process id, for CPU and RSS from /proc (with -url)")
	fs.IntVar(&c.ServerUDP, "server-udp-port", 0, "its media UDP port, for socket drops from /proc/net/udp (with -url)")
	fs.BoolVar(&c.Spawn, "spawn", false, "start a fresh server per step on free loopback ports (vigil is built once)")
	fs.StringVar(&c.VigilBin, "vigil-bin", "", "with -spawn: a vigil binary to run instead of building one")
	fs.IntVar(&c.ServerCPU, "server-cpu", 0, "with -spawn: the CPU servers are pinned to (-1: none)")
	fs.IntVar(&c.GenCPU, "gen-cpu", 1, "with -spawn: the CPU this generator is pinned to (-1: none)")
	fs.DurationVar(&c.Poll, "poll", time.Millisecond, "the subscribers' socket is read every this long (batches, no wakeups; adds up to this to latency); 0: block for each datagram")
	fs.StringVar(&c.GenProfile, "gen-cpuprofile", "", "write a CPU profile of this generator to this file")
	return
}

func (c *mediaConfig) finish(sizes, targets string, baseline bool, bitrate string) error {
	if !slices.Contains(allScenarios, c.Scenario) {
		return fmt.Errorf("-scenario: %q is not one of %v", c.Scenario, allScenarios)
	}
	if sizes == "" {
		sizes = map[string]string{scFanout: "100,200,400,600,800", scAudio: "20,50,100", scMeeting: "4,8,12", scLatency: "100", scJoinstorm: "50"}[c.Scenario]
	}
	c.Sizes = nil
	for _, s := range strings.Split(sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > 5000 {
			return fmt.Errorf("-subscribers: %q is not a count from 1 to 5000", s)
		}
		c.Sizes = append(c.Sizes, n)
	}
	if c.Scenario == scMeeting && slices.Min(c.Sizes) < 2 {
		return errors.New("-subscribers: a meeting needs at least 2 participants")
	}
	if c.Speakers <= 0 {
		c.Speakers = 1
		if c.Scenario == scAudio {
			c.Speakers = 10
		}
	}
	if bitrate == "" {
		bitrate = map[string]string{scFanout: "1M", scAudio: "0", scMeeting: "500k", scLatency: "9M", scJoinstorm: "1M"}[c.Scenario]
	}
	br, err := parseBitrate(bitrate)
	if err != nil {
		return err
	}
	c.Bitrate = br
	c.Targets = nil
	if baseline {
		targets = tgBaseline
	}
	for _, t := range strings.Split(targets, ",") {
		t = strings.TrimSpace(t)
		if t != tgVigil && t != tgBaseline {
			return fmt.Errorf("-targets: %q is not vigil or baseline", t)
		}
		c.Targets = append(c.Targets, t)
	}
	switch {
	case c.Spawn == (c.URL != ""):
		return errors.New("give either -spawn or -url")
	case c.URL != "" && len(c.Targets) != 1:
		return errors.New("-url measures one server: add -targets vigil or -baseline")
	case c.URL != "" && c.Targets[0] == tgVigil && c.AdminKey == "":
		return errors.New("-url needs -admin-key")
	case c.Duration <= 0 || c.JoinWorkers < 1 || c.Attempts < 1 || c.JoinRate <= 0 || c.Storm < 1 || c.KeyEvery <= 0:
		return errors.New("-duration, -join-workers, -attempts, -join-rate, -storm and -keyframe-interval must be positive")
	}
	if c.URL != "" {
		c.URL = strings.TrimRight(c.URL, "/")
		if !isLoopbackURL(c.URL) {
			return fmt.Errorf("-url %s: only http://127.0.0.1 (or another 127.0.0.0/8 address) may be targeted", c.URL)
		}
	}
	return nil
}

// parseBitrate reads 1M, 500k, 2.5M or a plain number of bits/s.
func parseBitrate(s string) (int64, error) {
	mult := 1.0
	switch {
	case strings.HasSuffix(s, "M"), strings.HasSuffix(s, "m"):
		mult, s = 1e6, s[:len(s)-1]
	case strings.HasSuffix(s, "k"), strings.HasSuffix(s, "K"):
		mult, s = 1e3, s[:len(s)-1]
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v < 0 || v*mult > 1e9 {
		return 0, fmt.Errorf("bitrate %q: want e.g. 1M, 500k or 250000", s)
	}
	return int64(v * mult), nil
}

func parseMediaFlags(args []string, stderr io.Writer) (*mediaConfig, error) {
	c := &mediaConfig{}
	fs := flag.NewFlagSet("vigil-load media", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, `usage: vigil-load media (-spawn | -url URL ...) -scenario S [flags]

Synthetic WHIP publishers (VP8 with a keyframe every -keyframe-interval,
Opus at 50 packets/s) and thin WHEP subscribers against Vigil and, in the
same invocation, the stock-pion baseline forwarder; per step: forwarded
packets/s, loss, SFU-added latency, join times, the server's CPU per
forwarded packet and peak RSS, and the generator's own CPU per received
packet. Loopback only. See docs/benchmarks.md.

scenarios:
  fanout     1 publisher (video+audio) to N subscribers; the ramp stops at loss > -max-loss
  audio      -publishers speakers (audio only) to N listeners, each receiving every speaker
  meeting    N participants each publishing audio+video, each receiving all others
  latency    1 publisher at a high bitrate (9M: ~100k forwarded packets/s at N=100)
  joinstorm  N subscribers watching, then -storm more join at -join-rate per second

flags:`)
		fs.PrintDefaults()
	}
	sizes, targets, baseline, bitrate := mediaFlags(c, fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if err := c.finish(*sizes, *targets, *baseline, *bitrate); err != nil {
		return nil, err
	}
	return c, nil
}

// shared is what every run of one invocation shares.
type shared struct {
	cert    *thinCert
	pubAPI  *webrtc.API
	hc      *http.Client
	out     io.Writer
	progOut io.Writer
	vigil   *spawner
	base    *spawner
	tokens  map[string]string // identity -> Vigil token (valid on every fresh Vigil)
	tokMu   sync.Mutex
	room    string
	cluster *clusterRun // vigil-load cluster: the steps' nodes (cluster.go)
}

// gen is one run's generator state.
type gen struct {
	*shared
	epoch   time.Time
	streams []*stream
}

func (g *gen) newStream(video bool) *stream {
	s := &stream{id: uint32(len(g.streams)), video: video}
	// Nothing is in the window until it opens.
	s.lo.Store(math.MaxUint64)
	s.hi.Store(math.MaxUint64)
	g.streams = append(g.streams, s)
	return s
}

func newShared(ctx context.Context, out, prog io.Writer) (*shared, error) {
	cert, err := newThinCert()
	if err != nil {
		return nil, err
	}
	papi, err := publisherAPI()
	if err != nil {
		return nil, err
	}
	return &shared{
		cert: cert, pubAPI: papi, hc: newHTTPClient(nil, 256), out: out, progOut: prog,
		tokens: map[string]string{}, room: fmt.Sprintf("load-%d", time.Now().Unix()),
	}, nil
}

// raiseNoFile lifts RLIMIT_NOFILE to its hard limit: each session holds a
// socket here and one or more on the server.
func raiseNoFile() uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	return lim.Cur
}

func runMedia(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseMediaFlags(args, stderr)
	if err != nil {
		return err
	}
	sh, err := newShared(ctx, stdout, stderr)
	if err != nil {
		return err
	}
	pinned, cleanup, err := sh.setup(ctx, cfg.Spawn, cfg.VigilBin, cfg.ServerCPU, cfg.GenCPU, cfg.Targets)
	if err != nil {
		return err
	}
	defer cleanup()
	if cfg.GenProfile != "" {
		f, err := os.Create(cfg.GenProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() {
			pprof.StopCPUProfile()
			_ = f.Close()
		}()
	}
	fmt.Fprintf(stdout, "# vigil-load media %s\n", strings.Join(args, " "))
	fmt.Fprintf(stdout, "# %s, %d CPUs (%s), %s, RLIMIT_NOFILE %d; pinned: %s\n",
		time.Now().UTC().Format(time.RFC3339), runtime.NumCPU(), cpuModel(), runtime.Version(), raiseNoFile(), pinned)
	res := sh.runScenario(ctx, cfg)
	fmt.Fprintf(stdout, "\n### %s\n\n", scenarioTitle(cfg))
	mediaTable(res).render(stdout)
	fmt.Fprintln(stdout)
	summaryRows(cfg, res).render(stdout)
	sh.serverLogs()
	return ctx.Err()
}

// setup builds vigil, pins this process, and prepares the spawners.
func (sh *shared) setup(ctx context.Context, spawn bool, vigilBin string, serverCPU, genCPU int, targets []string) (string, func(), error) {
	if !spawn {
		return "no (a running server)", func() {}, nil
	}
	if runtime.NumCPU() < 2 {
		serverCPU, genCPU = -1, -1
	}
	var err error
	if slices.Contains(targets, tgVigil) {
		if sh.vigil, err = newSpawner(ctx, vigilBin, serverCPU); err != nil {
			return "", nil, err
		}
	}
	key := randHex(16)
	if sh.vigil != nil {
		key = sh.vigil.adminKey
	}
	if slices.Contains(targets, tgBaseline) {
		if sh.base, err = newBaselineSpawner(serverCPU, key); err != nil {
			return "", nil, err
		}
	}
	cleanup := func() {
		if sh.vigil != nil {
			sh.vigil.close()
		}
		if sh.base != nil {
			sh.base.close()
		}
	}
	pinned := "no"
	if genCPU >= 0 {
		if err := pinProcess(0, genCPU); err != nil {
			cleanup()
			return "", nil, fmt.Errorf("pinning the generator: %w", err)
		}
		runtime.GOMAXPROCS(1)
		pinned = fmt.Sprintf("generator on CPU %d", genCPU)
	}
	if serverCPU >= 0 {
		pinned = fmt.Sprintf("server on CPU %d, %s", serverCPU, pinned)
	}
	return pinned, cleanup, nil
}

// serverLogs prints what the spawned servers logged at warn and above.
func (sh *shared) serverLogs() {
	for _, s := range []*spawner{sh.vigil, sh.base} {
		if s == nil {
			continue
		}
		b, err := os.ReadFile(s.logPath)
		if err != nil {
			continue
		}
		counts := map[string]int{}
		var order []string
		for _, line := range strings.Split(string(b), "\n") {
			if !strings.Contains(line, "level=WARN") && !strings.Contains(line, "level=ERROR") && !strings.Contains(line, "panic") {
				continue
			}
			key := line
			if i := strings.Index(line, "level="); i >= 0 {
				key = line[i:]
			}
			if len(key) > 160 {
				key = key[:160]
			}
			if counts[key] == 0 {
				order = append(order, key)
			}
			counts[key]++
		}
		name := tgVigil
		if s.baseline {
			name = tgBaseline
		}
		fmt.Fprintf(sh.out, "\n# %s server log (warn and above): %d distinct lines\n", name, len(order))
		for i, k := range order {
			if i == 20 {
				fmt.Fprintf(sh.out, "#   ... %d more\n", len(order)-20)
				break
			}
			fmt.Fprintf(sh.out, "#   %6dx %s\n", counts[k], k)
		}
	}
}

func scenarioTitle(c *mediaConfig) string {
	switch c.Scenario {
	case scFanout:
		return fmt.Sprintf("fanout: 1 publisher (VP8 %s + Opus) to N subscribers", fmtBitrate(c.Bitrate))
	case scAudio:
		return fmt.Sprintf("audio: %d speakers (Opus) to N listeners, each receiving every speaker", c.Speakers)
	case scMeeting:
		return fmt.Sprintf("meeting: N participants each publishing VP8 %s + Opus, each receiving all others", fmtBitrate(c.Bitrate))
	case scLatency:
		return fmt.Sprintf("latency: 1 publisher (VP8 %s + Opus) to N subscribers", fmtBitrate(c.Bitrate))
	case scJoinstorm:
		return fmt.Sprintf("joinstorm: N subscribers watching 1 publisher (VP8 %s + Opus), then %d join at %.0f/s", fmtBitrate(c.Bitrate), c.Storm, c.JoinRate)
	}
	return c.Scenario
}

func fmtBitrate(b int64) string {
	switch {
	case b >= 1e6:
		return strconv.FormatFloat(float64(b)/1e6, 'f', -1, 64) + " Mbit/s"
	case b >= 1e3:
		return strconv.FormatFloat(float64(b)/1e3, 'f', -1, 64) + " kbit/s"
	}
	return strconv.FormatInt(b, 10) + " bit/s"
}
