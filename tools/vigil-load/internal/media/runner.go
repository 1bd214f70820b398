package media

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/tools/vigil-load/internal/api"
	"github.com/vigil-media/vigil/tools/vigil-load/internal/procstat"
	"github.com/vigil-media/vigil/tools/vigil-load/internal/spawn"
)

// Runner is what every run of one invocation shares.
type Runner struct {
	cert    *thinCert
	pubAPI  *webrtc.API
	HC      *http.Client
	Out     io.Writer // the report
	ProgOut io.Writer // progress lines
	Vigil   *spawn.Spawner
	base    *spawn.Spawner
	// tokens are the join tokens minted, by target and identity/role: a
	// token is bound to the instance of the room it was minted for, so a
	// fresh server (a new instance of the room) needs its own.
	tokens map[tokenKey]string
	tokMu  sync.Mutex // guards tokens; no other lock is taken while holding it
	Room   string
	// Cluster, with vigil-load cluster: the steps' nodes (package
	// clusterbench); nil: one server per step.
	Cluster Cluster
}

// Cluster gives every step its servers: vigil-load cluster's nodes.
type Cluster interface {
	// Target starts the servers of one step of n subscribers on target tg.
	Target(ctx context.Context, tg string, n int) (*Target, error)
}

// gen is one run's generator state.
type gen struct {
	*Runner
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

// NewRunner makes a Runner that reports to out and prints progress to
// prog.
func NewRunner(ctx context.Context, out, prog io.Writer) (*Runner, error) {
	cert, err := newThinCert()
	if err != nil {
		return nil, err
	}
	papi, err := publisherAPI()
	if err != nil {
		return nil, err
	}
	return &Runner{
		cert: cert, pubAPI: papi, HC: api.NewHTTPClient(nil, 256), Out: out, ProgOut: prog,
		tokens: map[tokenKey]string{}, Room: fmt.Sprintf("load-%d", time.Now().Unix()),
	}, nil
}

// Run is "vigil-load media".
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := ParseFlags(args, stderr)
	if err != nil {
		return err
	}
	sh, err := NewRunner(ctx, stdout, stderr)
	if err != nil {
		return err
	}
	pinned, cleanup, err := sh.Setup(ctx, cfg.Spawn, cfg.VigilBin, cfg.ServerCPU, cfg.GenCPU, cfg.Targets)
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
		time.Now().UTC().Format(time.RFC3339), runtime.NumCPU(), procstat.CPUModel(), runtime.Version(), procstat.RaiseNoFile(), pinned)
	res := sh.RunScenario(ctx, cfg)
	fmt.Fprintf(stdout, "\n### %s\n\n", ScenarioTitle(cfg))
	Table(res).Render(stdout)
	fmt.Fprintln(stdout)
	summaryRows(cfg, res).Render(stdout)
	sh.ServerLogs()
	return ctx.Err()
}

// Setup builds vigil, pins this process, and prepares the spawners.
func (sh *Runner) Setup(ctx context.Context, spawned bool, vigilBin string, serverCPU, genCPU int, targets []string) (string, func(), error) {
	if !spawned {
		return "no (a running server)", func() {}, nil
	}
	if runtime.NumCPU() < 2 {
		serverCPU, genCPU = -1, -1
	}
	var err error
	if slices.Contains(targets, TgVigil) {
		if sh.Vigil, err = spawn.New(ctx, vigilBin, serverCPU); err != nil {
			return "", nil, err
		}
	}
	key := spawn.RandHex(16)
	if sh.Vigil != nil {
		key = sh.Vigil.AdminKey
	}
	if slices.Contains(targets, TgBaseline) {
		if sh.base, err = spawn.NewBaseline(serverCPU, key); err != nil {
			return "", nil, err
		}
	}
	cleanup := func() {
		if sh.Vigil != nil {
			sh.Vigil.Close()
		}
		if sh.base != nil {
			sh.base.Close()
		}
	}
	pinned := "no"
	if genCPU >= 0 {
		if err := procstat.PinProcess(0, genCPU); err != nil {
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

// ServerLogs prints what the spawned servers logged at warn and above.
func (sh *Runner) ServerLogs() {
	for _, s := range []*spawn.Spawner{sh.Vigil, sh.base} {
		if s != nil {
			s.LogSummary(sh.Out)
		}
	}
}
