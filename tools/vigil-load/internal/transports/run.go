package transports

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"github.com/vigil-media/vigil/signaling"
	"github.com/vigil-media/vigil/tools/vigil-load/internal/api"
	"github.com/vigil-media/vigil/tools/vigil-load/internal/par"
	"github.com/vigil-media/vigil/tools/vigil-load/internal/procstat"
	"github.com/vigil-media/vigil/tools/vigil-load/internal/report"
	"github.com/vigil-media/vigil/tools/vigil-load/internal/spawn"
)

// stepResult is what one step measured.
type stepResult struct {
	Transport string
	N         int
	Opened    int
	Delivered int64
	Expected  int64
	Lat       report.Latencies
	Requests  int64
	Bytes     int64
	RSSBefore int64 // KiB, server before the step's sessions
	RSSIdle   int64 // KiB, with every client attached and drained
	RSSAfter  int64 // KiB, after the events
	ServerCPU time.Duration
	JoinCPU   time.Duration
	GenCPU    time.Duration
	OtherCPU  time.Duration // every other process on the host, in the window
	Window    time.Duration // first event sent to last delivered
	Join      time.Duration // first open to every client drained
	Attempts  int           // runs of this step; the best is reported
	Drops     int
	Dups      int
	Fatal     int
	FatalErr  string // the first client's
	FirstErr  string
	HaveProc  bool
	OK        bool
	Why       string
}

// maxContended is how many contended attempts of a step may be added.
const maxContended = 3

// contended reports whether other processes used more than one CPU on
// average during the window: they then took time from the server's or
// the generator's CPU.
func (r *stepResult) contended() bool {
	return r.Window > 0 && r.OtherCPU > r.Window
}

func (r *stepResult) rssPerClient() (float64, bool) {
	if !r.HaveProc || r.N == 0 {
		return 0, false
	}
	return float64(r.RSSIdle-r.RSSBefore) / float64(r.N), true
}

// runner runs the ramps of one invocation.
type runner struct {
	cfg      *transportsConfig
	out      io.Writer
	spawner  *spawn.Spawner
	room     string
	tokens   []string // tokens[i] is for identity clientName(i)
	driverTk string
	m        *api.Meter
	hc       *http.Client // metered: the clients under test
	adminHC  *http.Client
	dialer   *websocket.Dialer // metered
	adminWS  *websocket.Dialer
	roomMade bool
}

func clientName(i int) string { return fmt.Sprintf("c%04d", i+1) }

func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseTransportsFlags(args, stderr)
	if err != nil {
		return err
	}
	maxN := slices.Max(cfg.Clients)
	r := &runner{
		cfg: cfg, out: stdout, m: &api.Meter{},
		room: fmt.Sprintf("bench-%d", time.Now().Unix()),
	}
	r.hc = api.NewHTTPClient(r.m, maxN+64)
	r.adminHC = api.NewHTTPClient(nil, 2*cfg.Workers+64)
	r.dialer = &websocket.Dialer{NetDialContext: api.Dialer(r.m), HandshakeTimeout: 10 * time.Second, ReadBufferSize: 4096, WriteBufferSize: 1024}
	r.adminWS = &websocket.Dialer{NetDialContext: api.Dialer(nil), HandshakeTimeout: 10 * time.Second}

	// Each client holds one connection; the server as many again.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	if need := uint64(maxN + 256); lim.Cur < need {
		fmt.Fprintf(stdout, "warning: RLIMIT_NOFILE is %d, the largest step needs about %d\n", lim.Cur, need)
	}

	pinned := "no"
	if cfg.Spawn {
		if runtime.NumCPU() < 2 {
			cfg.ServerCPU, cfg.GenCPU = -1, -1
		}
		if cfg.GenCPU >= 0 {
			if err := procstat.PinProcess(0, cfg.GenCPU); err != nil {
				return fmt.Errorf("pinning the generator: %w", err)
			}
			runtime.GOMAXPROCS(1)
		}
		if r.spawner, err = spawn.New(ctx, cfg.VigilBin, cfg.ServerCPU); err != nil {
			return err
		}
		defer r.spawner.Close()
		if cfg.ServerCPU >= 0 && cfg.GenCPU >= 0 {
			pinned = fmt.Sprintf("server on CPU %d, generator on CPU %d", cfg.ServerCPU, cfg.GenCPU)
		}
	}

	r.header(args, lim.Cur, pinned)
	results := map[string][]stepResult{}
	for _, tr := range cfg.Transports {
		for _, n := range cfg.Clients {
			if ctx.Err() != nil {
				break
			}
			// A failure while other processes held more than a CPU is
			// not the server's: such attempts do not count, up to
			// maxContended of them.
			var res stepResult
			contended, ran := 0, 0
			for a := 1; a <= cfg.Attempts+contended && ctx.Err() == nil; a++ {
				got, err := r.step(ctx, tr, n)
				if err != nil {
					got.OK, got.Why = false, err.Error()
				}
				got.Attempts, ran = a, a
				r.progress(got)
				if a == 1 || better(got, res) {
					res = got
				}
				if res.OK {
					break
				}
				if got.contended() && contended < maxContended {
					contended++
				}
			}
			res.Attempts = ran
			results[tr] = append(results[tr], res)
			if !res.OK {
				break
			}
		}
	}
	r.report(results)
	if cfg.Spawn {
		r.serverLog()
	}
	return ctx.Err()
}

func (r *runner) header(args []string, nofile uint64, pinned string) {
	c := r.cfg
	fmt.Fprintf(r.out, "# vigil-load transports %s\n", strings.Join(args, " "))
	fmt.Fprintf(r.out, "# %s, %d CPUs (%s), %s, RLIMIT_NOFILE %d; pinned: %s\n",
		time.Now().UTC().Format(time.RFC3339), runtime.NumCPU(), procstat.CPUModel(), runtime.Version(), nofile, pinned)
	fmt.Fprintf(r.out, "# %s room; %d chat events per step at %.0f/s; short poll every %v; long poll wait %v; limit p99 <= %v (short poll: %v); timeout %v\n",
		c.Kind, c.Events, c.Rate, c.PollInterval, c.LongPollWait, c.MaxP99, c.limitFor(trPoll), c.Timeout)
}

// target is the server of one step.
type target struct {
	api *api.API
	pid int
	srv *spawn.Server
}

func (r *runner) target(ctx context.Context) (*target, error) {
	if r.spawner == nil {
		t := &target{api: &api.API{Base: r.cfg.URL, AdminKey: r.cfg.AdminKey, HC: r.adminHC}, pid: r.cfg.ServerPID}
		if !r.roomMade {
			if err := t.api.CreateRoom(ctx, r.room, r.cfg.Kind); err != nil {
				return nil, err
			}
			r.roomMade = true
		}
		return t, nil
	}
	srv, err := r.spawner.Start(ctx)
	if err != nil {
		return nil, err
	}
	t := &target{api: &api.API{Base: "http://" + srv.Addr, AdminKey: r.spawner.AdminKey, HC: r.adminHC}, pid: srv.PID, srv: srv}
	if err := t.api.CreateRoom(ctx, r.room, r.cfg.Kind); err != nil {
		srv.Stop()
		return nil, err
	}
	return t, nil
}

// ensureTokens mints join tokens up to n clients, and the driver's.
// With servers spawned here, they are minted with the servers' token
// secret and bound to no room instance (as `vigil token` without
// -instance), so that the fresh server of each step, whose room is a new
// instance, accepts the first step's tokens.
func (r *runner) ensureTokens(ctx context.Context, a *api.API, n int) error {
	driverRole, clientRole := r.cfg.roles()
	mint := func(ctx context.Context, room, identity, role string) (string, error) {
		if r.spawner != nil && r.spawner.TokenSecret != "" {
			tk, _, err := signaling.NewTokens(r.spawner.TokenSecret, nil).Mint(room, identity, role, time.Hour)
			return tk, err
		}
		return a.MintToken(ctx, room, identity, role)
	}
	if r.driverTk == "" {
		tk, err := mint(ctx, r.room, "driver", driverRole)
		if err != nil {
			return err
		}
		r.driverTk = tk
	}
	have := len(r.tokens)
	if n <= have {
		return nil
	}
	r.tokens = append(r.tokens, make([]string, n-have)...)
	return par.ForEach(ctx, n-have, r.cfg.Workers, func(i int) error {
		tk, err := mint(ctx, r.room, clientName(have+i), clientRole)
		r.tokens[have+i] = tk
		return err
	})
}

// driver is the session that sends the chat events, over a WebSocket.
type driver struct {
	sid  string
	conn *websocket.Conn
	done chan struct{}
}

func (r *runner) openDriver(ctx context.Context, t *target) (*driver, error) {
	sid, err := t.api.OpenSession(ctx, r.room, r.driverTk)
	if err != nil {
		return nil, err
	}
	d := &driver{sid: sid, done: make(chan struct{})}
	ws := "ws" + strings.TrimPrefix(t.api.Base, "http") + "/v1/sessions/" + sid + "/ws"
	d.conn, _, err = r.adminWS.DialContext(ctx, ws, nil)
	if err != nil {
		_ = t.api.CloseSession(context.WithoutCancel(ctx), sid)
		return nil, err
	}
	go func() { // drain what the driver gets: joins, its own chats
		defer close(d.done)
		for {
			_, rd, err := d.conn.NextReader()
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, rd)
		}
	}()
	return d, nil
}

func (d *driver) chat(now time.Time) error {
	msg := `{"type":"chat","data":{"text":"` + strconv.FormatInt(now.UnixNano(), 10) + `"}}`
	_ = d.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	return d.conn.WriteMessage(websocket.TextMessage, []byte(msg))
}

func (r *runner) sample(pid int) (procstat.Sample, bool) {
	if pid <= 0 {
		return procstat.Sample{}, false
	}
	s, err := procstat.ReadProc(pid)
	return s, err == nil
}
