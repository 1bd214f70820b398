package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

// transportsConfig is the flags of "vigil-load transports".
type transportsConfig struct {
	URL          string
	AdminKey     string
	ServerPID    int
	Spawn        bool
	VigilBin     string
	ServerCPU    int
	GenCPU       int
	Transports   []string
	Clients      []int
	Events       int
	Rate         float64
	PollInterval time.Duration
	LongPollWait time.Duration
	MaxP99       time.Duration
	Timeout      time.Duration
	Kind         string
	Workers      int
	Attempts     int
}

func parseTransportsFlags(args []string, stderr io.Writer) (*transportsConfig, error) {
	c := &transportsConfig{}
	fs := flag.NewFlagSet("vigil-load transports", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, `usage: vigil-load transports (-spawn | -url URL -admin-key KEY [-server-pid PID]) [flags]

Drives one room's event stream (chat messages from a driver session, sent
at -rate) through each transport to N idle clients per step of the ramp,
and reports delivery latency, HTTP requests and bytes per delivered event,
server memory per client and the most clients held before p99 passes
-max-p99. Loopback only.

flags:`)
		fs.PrintDefaults()
	}
	fs.StringVar(&c.URL, "url", "", "a running Vigil on loopback, e.g. http://127.0.0.1:8080 (or use -spawn)")
	fs.StringVar(&c.AdminKey, "admin-key", os.Getenv("VIGIL_ADMIN_KEY"), "its admin key (VIGIL_ADMIN_KEY)")
	fs.IntVar(&c.ServerPID, "server-pid", 0, "its process id, to read RSS and CPU from /proc (with -url)")
	fs.BoolVar(&c.Spawn, "spawn", false, "build vigil and start a fresh one per step on free loopback ports")
	fs.StringVar(&c.VigilBin, "vigil-bin", "", "with -spawn: a vigil binary to run instead of building one")
	fs.IntVar(&c.ServerCPU, "server-cpu", 0, "with -spawn: the CPU the server is pinned to (-1: none)")
	fs.IntVar(&c.GenCPU, "gen-cpu", 1, "with -spawn: the CPU this generator is pinned to (-1: none)")
	transports := fs.String("transports", strings.Join(allTransports, ","), "transports to measure, in order; none is the baseline: sessions with no transport")
	clients := fs.String("clients", "50,100,200,400,800,1600", "the ramp: idle clients per step")
	fs.IntVar(&c.Events, "events", 100, "chat events per step")
	fs.Float64Var(&c.Rate, "rate", 20, "chat events per second")
	fs.DurationVar(&c.PollInterval, "poll-interval", 100*time.Millisecond, "short polling interval")
	fs.DurationVar(&c.LongPollWait, "longpoll-wait", 25*time.Second, "how long a long poll is held (wait=)")
	fs.DurationVar(&c.MaxP99, "max-p99", 100*time.Millisecond, "latency limit: the ramp stops at the first step whose p99 passes it (short polling: this plus -poll-interval)")
	fs.DurationVar(&c.Timeout, "timeout", 10*time.Second, "how long after the last event every client must have it")
	fs.StringVar(&c.Kind, "kind", "conference", "room kind: conference (clients see each other) or broadcast (viewers see only the driver)")
	fs.IntVar(&c.Workers, "workers", 16, "concurrent session opens and closes")
	fs.IntVar(&c.Attempts, "attempts", 2, "runs of a step that fails before the ramp stops; the best attempt (lowest p99) is reported: on a shared machine one failure may be someone else's load")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	for _, t := range strings.Split(*transports, ",") {
		t = strings.TrimSpace(t)
		if !slices.Contains(allTransports, t) {
			return nil, fmt.Errorf("-transports: %q is not one of %v", t, allTransports)
		}
		c.Transports = append(c.Transports, t)
	}
	for _, s := range strings.Split(*clients, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > 9999 {
			return nil, fmt.Errorf("-clients: %q is not a count from 1 to 9999", s)
		}
		c.Clients = append(c.Clients, n)
	}
	switch {
	case c.Spawn == (c.URL != ""):
		return nil, errors.New("give either -spawn or -url")
	case c.URL != "" && c.AdminKey == "":
		return nil, errors.New("-url needs -admin-key")
	case c.Events < 1 || c.Rate <= 0 || c.PollInterval <= 0 || c.MaxP99 <= 0 || c.Timeout <= 0 || c.Workers < 1 || c.Attempts < 1:
		return nil, errors.New("-events, -rate, -poll-interval, -max-p99, -timeout and -workers must be positive")
	case c.LongPollWait <= 0 || c.LongPollWait > 30*time.Second:
		return nil, errors.New("-longpoll-wait must be in (0, 30s]")
	case c.Kind != "conference" && c.Kind != "broadcast":
		return nil, errors.New("-kind must be conference or broadcast")
	}
	if c.URL != "" {
		c.URL = strings.TrimRight(c.URL, "/")
		if !isLoopbackURL(c.URL) {
			return nil, fmt.Errorf("-url %s: only http://127.0.0.1 (or another 127.0.0.0/8 address) may be targeted", c.URL)
		}
	}
	return c, nil
}

func isLoopbackURL(u string) bool {
	rest, ok := strings.CutPrefix(u, "http://")
	if !ok {
		return false
	}
	host, _, _ := strings.Cut(rest, "/")
	if h, _, ok := strings.Cut(host, ":"); ok {
		host = h
	}
	return strings.HasPrefix(host, "127.")
}

// limitFor is the p99 a step of transport tr may reach: short polling's
// floor is its interval, so it gets the interval on top.
func (c *transportsConfig) limitFor(tr string) time.Duration {
	if tr == trPoll {
		return c.MaxP99 + c.PollInterval
	}
	return c.MaxP99
}

// roles of the driver and of the clients, by room kind.
func (c *transportsConfig) roles() (driver, client string) {
	if c.Kind == "broadcast" {
		return "host", "viewer"
	}
	return "participant", "participant"
}

// joinEvents is how many events n clients receive before the first chat:
// each its joined event, and in a conference a participant_joined for
// every client that joined after it (the driver joined first).
func (c *transportsConfig) joinEvents(n int) int64 {
	if c.Kind == "broadcast" {
		return int64(n)
	}
	return int64(n) + int64(n)*int64(n-1)/2
}

// stepResult is what one step measured.
type stepResult struct {
	Transport string
	N         int
	Opened    int
	Delivered int64
	Expected  int64
	Lat       latencies
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
	spawner  *spawner
	room     string
	tokens   []string // tokens[i] is for identity clientName(i)
	driverTk string
	m        *meter
	hc       *http.Client // metered: the clients under test
	adminHC  *http.Client
	dialer   *websocket.Dialer // metered
	adminWS  *websocket.Dialer
	roomMade bool
}

func clientName(i int) string { return fmt.Sprintf("c%04d", i+1) }

func runTransports(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseTransportsFlags(args, stderr)
	if err != nil {
		return err
	}
	maxN := slices.Max(cfg.Clients)
	r := &runner{
		cfg: cfg, out: stdout, m: &meter{},
		room: fmt.Sprintf("bench-%d", time.Now().Unix()),
	}
	r.hc = newHTTPClient(r.m, maxN+64)
	r.adminHC = newHTTPClient(nil, 2*cfg.Workers+64)
	r.dialer = &websocket.Dialer{NetDialContext: dialer(r.m), HandshakeTimeout: 10 * time.Second, ReadBufferSize: 4096, WriteBufferSize: 1024}
	r.adminWS = &websocket.Dialer{NetDialContext: dialer(nil), HandshakeTimeout: 10 * time.Second}

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
			if err := pinProcess(0, cfg.GenCPU); err != nil {
				return fmt.Errorf("pinning the generator: %w", err)
			}
			runtime.GOMAXPROCS(1)
		}
		if r.spawner, err = newSpawner(ctx, cfg.VigilBin, cfg.ServerCPU); err != nil {
			return err
		}
		defer r.spawner.close()
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
		time.Now().UTC().Format(time.RFC3339), runtime.NumCPU(), cpuModel(), runtime.Version(), nofile, pinned)
	fmt.Fprintf(r.out, "# %s room; %d chat events per step at %.0f/s; short poll every %v; long poll wait %v; limit p99 <= %v (short poll: %v); timeout %v\n",
		c.Kind, c.Events, c.Rate, c.PollInterval, c.LongPollWait, c.MaxP99, c.limitFor(trPoll), c.Timeout)
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if k, v, ok := strings.Cut(s.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

// target is the server of one step.
type target struct {
	api *api
	pid int
	srv *server
}

func (r *runner) target(ctx context.Context) (*target, error) {
	if r.spawner == nil {
		t := &target{api: &api{base: r.cfg.URL, adminKey: r.cfg.AdminKey, hc: r.adminHC}, pid: r.cfg.ServerPID}
		if !r.roomMade {
			if err := t.api.createRoom(ctx, r.room, r.cfg.Kind); err != nil {
				return nil, err
			}
			r.roomMade = true
		}
		return t, nil
	}
	srv, err := r.spawner.start(ctx)
	if err != nil {
		return nil, err
	}
	t := &target{api: &api{base: "http://" + srv.addr, adminKey: r.spawner.adminKey, hc: r.adminHC}, pid: srv.pid, srv: srv}
	if err := t.api.createRoom(ctx, r.room, r.cfg.Kind); err != nil {
		srv.stop()
		return nil, err
	}
	return t, nil
}

// ensureTokens mints join tokens up to n clients, and the driver's. A
// token is valid on every server with the same admin key and room, so
// the fresh server of each step accepts the first step's tokens.
func (r *runner) ensureTokens(ctx context.Context, a *api, n int) error {
	driverRole, clientRole := r.cfg.roles()
	if r.driverTk == "" {
		tk, err := a.mintToken(ctx, r.room, "driver", driverRole)
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
	return forEach(ctx, n-have, r.cfg.Workers, func(i int) error {
		tk, err := a.mintToken(ctx, r.room, clientName(have+i), clientRole)
		r.tokens[have+i] = tk
		return err
	})
}

// forEach runs f(0..n-1) on workers goroutines; the first error wins.
func forEach(ctx context.Context, n, workers int, f func(i int) error) error {
	var (
		mu    sync.Mutex
		first error
		next  int
		wg    sync.WaitGroup
	)
	for range min(workers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				stop := first != nil || ctx.Err() != nil
				mu.Unlock()
				if i >= n || stop {
					return
				}
				if err := f(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}

// driver is the session that sends the chat events, over a WebSocket.
type driver struct {
	sid  string
	conn *websocket.Conn
	done chan struct{}
}

func (r *runner) openDriver(ctx context.Context, t *target) (*driver, error) {
	sid, err := t.api.openSession(ctx, r.room, r.driverTk)
	if err != nil {
		return nil, err
	}
	d := &driver{sid: sid, done: make(chan struct{})}
	ws := "ws" + strings.TrimPrefix(t.api.base, "http") + "/v1/sessions/" + sid + "/ws"
	d.conn, _, err = r.adminWS.DialContext(ctx, ws, nil)
	if err != nil {
		_ = t.api.closeSession(context.WithoutCancel(ctx), sid)
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

func (r *runner) sample(pid int) (procSample, bool) {
	if pid <= 0 {
		return procSample{}, false
	}
	s, err := readProc(pid)
	return s, err == nil
}

// step runs one step of one transport's ramp: n clients open sessions
// and attach, drain their join events, then receive cfg.Events chats.
func (r *runner) step(ctx context.Context, tr string, n int) (res stepResult, err error) {
	res = stepResult{Transport: tr, N: n, Expected: int64(n) * int64(r.cfg.Events)}
	if tr == trNone {
		res.Expected = 0
	}
	t, err := r.target(ctx)
	if err != nil {
		return res, err
	}
	if t.srv != nil {
		defer t.srv.stop()
	}
	if err := r.ensureTokens(ctx, t.api, n); err != nil {
		return res, fmt.Errorf("minting tokens: %w", err)
	}
	time.Sleep(200 * time.Millisecond) // let the fresh server settle
	before, haveProc := r.sample(t.pid)
	res.HaveProc = haveProc
	res.RSSBefore = before.RSSKiB

	d, err := r.openDriver(ctx, t)
	if err != nil {
		return res, fmt.Errorf("driver: %w", err)
	}
	st := &stepState{
		base: t.api.base, wsBase: "ws" + strings.TrimPrefix(t.api.base, "http"),
		hc: r.hc, keepHC: r.adminHC, dialer: r.dialer, m: r.m,
		pollInterval: r.cfg.PollInterval, longPollWait: r.cfg.LongPollWait,
		want: res.Expected, done: make(chan struct{}),
	}
	cctx, cancel := context.WithCancel(ctx)
	clients := make([]*client, n)
	var wg sync.WaitGroup
	var openErrs []error
	var mu sync.Mutex
	joinStart := time.Now()
	_ = forEach(ctx, n, r.cfg.Workers, func(i int) error {
		sid, err := t.api.openSession(ctx, r.room, r.tokens[i])
		if err != nil {
			mu.Lock()
			openErrs = append(openErrs, err)
			mu.Unlock()
			return nil
		}
		c := &client{st: st, sid: sid}
		clients[i] = c
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.run(cctx, tr)
		}()
		return nil
	})

	// Cleanup runs whatever happened: every session we opened is closed.
	defer func() {
		cancel()
		wg.Wait()
		cctx := context.WithoutCancel(ctx)
		_ = forEach(cctx, n, r.cfg.Workers, func(i int) error {
			if clients[i] != nil {
				_ = t.api.closeSession(cctx, clients[i].sid)
			}
			return nil
		})
		_ = t.api.closeSession(cctx, d.sid)
		_ = d.conn.Close()
		<-d.done
		// Idle pooled connections, some never used, would hold up the
		// server's graceful shutdown (net/http waits 5 s for a new one).
		r.hc.CloseIdleConnections()
		r.adminHC.CloseIdleConnections()
		if t.srv == nil { // a shared server: wait for the room to empty
			deadline := time.Now().Add(30 * time.Second)
			for time.Now().Before(deadline) {
				if p, err := t.api.participants(cctx, r.room); err != nil || p == 0 {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}()

	res.Opened = n - len(openErrs)
	if len(openErrs) > 0 {
		res.FirstErr = openErrs[0].Error()
	}

	// Wait until every client has drained its join events (or they stop
	// coming), so that the measurement starts on a quiet server.
	if tr != trNone {
		want := r.cfg.joinEvents(res.Opened)
		last, lastChange := int64(-1), time.Now()
		for {
			got := st.joinEvents.Load()
			if got >= want || ctx.Err() != nil {
				break
			}
			if got != last {
				last, lastChange = got, time.Now()
			} else if time.Since(lastChange) > 5*time.Second {
				if res.FirstErr == "" {
					res.FirstErr = fmt.Sprintf("join events stalled at %d of %d", got, want)
				}
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	res.Join = time.Since(joinStart)
	time.Sleep(500 * time.Millisecond)
	idle, _ := r.sample(t.pid)
	res.RSSIdle = idle.RSSKiB
	res.JoinCPU = idle.CPU - before.CPU

	// The measured window: the chat events, until every client has all.
	req0, bytes0 := r.m.requests.Load(), r.m.bytes.Load()
	gen0, _ := readProc(0)
	host0, _ := readHostBusy()
	start := time.Now()
	gap := time.Duration(float64(time.Second) / r.cfg.Rate)
	var sendErr error
	for i := 0; i < r.cfg.Events && ctx.Err() == nil; i++ {
		if w := time.Until(start.Add(time.Duration(i) * gap)); w > 0 {
			time.Sleep(w)
		}
		if sendErr = d.chat(time.Now()); sendErr != nil {
			break
		}
	}
	if tr == trNone {
		time.Sleep(500 * time.Millisecond)
	} else {
		timer := time.NewTimer(r.cfg.Timeout)
		select {
		case <-st.done:
		case <-timer.C:
		case <-ctx.Done():
		}
		timer.Stop()
	}
	res.Window = time.Since(start)
	after, _ := r.sample(t.pid)
	gen1, _ := readProc(0)
	host1, _ := readHostBusy()
	res.RSSAfter = after.RSSKiB
	res.ServerCPU = after.CPU - idle.CPU
	res.GenCPU = gen1.CPU - gen0.CPU
	res.OtherCPU = max(0, host1-host0-res.ServerCPU-res.GenCPU)
	res.Requests = r.m.requests.Load() - req0
	res.Bytes = r.m.bytes.Load() - bytes0
	res.Delivered = st.chats.Load()

	// Stop the clients before reading what they measured.
	cancel()
	wg.Wait()
	var lat []time.Duration
	for _, c := range clients {
		if c == nil {
			continue
		}
		lat = append(lat, c.lat...)
		res.Drops += c.drops
		res.Dups += c.dups
		if c.fatal != nil {
			res.Fatal++
			if res.FatalErr == "" {
				res.FatalErr = c.fatal.Error()
			}
		}
	}
	res.Lat = summarize(lat)

	limit := r.cfg.limitFor(tr)
	switch {
	case sendErr != nil:
		res.Why = "driver: " + sendErr.Error()
	case res.Opened < n:
		res.Why = fmt.Sprintf("%d of %d sessions failed to open: %s", n-res.Opened, n, res.FirstErr)
	case res.Fatal > 0:
		res.Why = fmt.Sprintf("%d clients lost their session: %s", res.Fatal, res.FatalErr)
	case res.Delivered < res.Expected:
		res.Why = fmt.Sprintf("incomplete: %d of %d events within %v", res.Delivered, res.Expected, r.cfg.Timeout)
		if res.FirstErr != "" {
			res.Why += " (" + res.FirstErr + ")"
		}
	case res.Lat.P99 > limit:
		res.Why = fmt.Sprintf("p99 %s ms > %s ms", ms(res.Lat.P99), ms(limit))
	default:
		res.OK = true
	}
	return res, ctx.Err()
}

func (r *runner) progress(s stepResult) {
	status := "ok"
	if !s.OK {
		status = "LIMIT: " + s.Why
	}
	kib := "n/a"
	if v, ok := s.rssPerClient(); ok {
		kib = fmt.Sprintf("%.0f KiB/client", v)
	}
	fmt.Fprintf(r.out, "%-8s N=%-5d #%d join %5.1fs (server CPU %.1fs)  delivered %d/%d  p50 %s p99 %s max %s ms  %s req/ev  %s B/ev  %s  server CPU %.2fs gen CPU %.2fs others %.2fs over %.1fs  drops %d dups %d  %s\n",
		s.Transport, s.N, s.Attempts, s.Join.Seconds(), s.JoinCPU.Seconds(), s.Delivered, s.Expected,
		ms(s.Lat.P50), ms(s.Lat.P99), ms(s.Lat.Max), ratio(s.Requests, s.Delivered, 2), ratio(s.Bytes, s.Delivered, 0),
		kib, s.ServerCPU.Seconds(), s.GenCPU.Seconds(), s.OtherCPU.Seconds(), s.Window.Seconds(), s.Drops, s.Dups, status)
}

// report prints one table per transport, then the summary.
func (r *runner) report(results map[string][]stepResult) {
	for _, tr := range r.cfg.Transports {
		steps := results[tr]
		if len(steps) == 0 {
			continue
		}
		fmt.Fprintf(r.out, "\n### %s\n\n", transportTitle(tr, r.cfg))
		stepTable(steps).render(r.out)
	}
	fmt.Fprintf(r.out, "\n### Summary (limit: p99 <= %v; short polling %v)\n\n", r.cfg.MaxP99, r.cfg.limitFor(trPoll))
	summaryTable(r.cfg, results).render(r.out)
}

func transportTitle(tr string, c *transportsConfig) string {
	switch tr {
	case trNone:
		return "none (baseline: sessions open, no transport attached)"
	case trWS:
		return "ws (WebSocket)"
	case trSSE:
		return "sse (Server-Sent Events, client messages by POST)"
	case trLongPoll:
		return fmt.Sprintf("longpoll (GET .../poll?wait=%g)", c.LongPollWait.Seconds())
	case trPoll:
		return fmt.Sprintf("poll (short polling every %v, If-None-Match)", c.PollInterval)
	}
	return tr
}

func stepTable(steps []stepResult) *table {
	t := &table{
		header: []string{"N", "delivered", "p50 ms", "p99 ms", "req/event", "bytes/event", "server KiB/client", "server CPU s", "gen CPU s", "others CPU s", "window s", "result"},
		align:  []bool{true, true, true, true, true, true, true, true, true, true, true, false},
	}
	for _, s := range steps {
		kib := "n/a"
		if v, ok := s.rssPerClient(); ok {
			kib = fmt.Sprintf("%.0f", v)
		}
		result := "ok"
		if !s.OK {
			result = "limit: " + s.Why
		}
		if s.Attempts > 1 {
			result += fmt.Sprintf(" (best of %d)", s.Attempts)
		}
		if s.contended() {
			result += " (contended)"
		}
		delivered := fmt.Sprintf("%d/%d", s.Delivered, s.Expected)
		p50, p99, reqs, bytes := ms(s.Lat.P50), ms(s.Lat.P99), ratio(s.Requests, s.Delivered, 2), ratio(s.Bytes, s.Delivered, 0)
		if s.Transport == trNone {
			delivered, p50, p99, reqs, bytes = "-", "-", "-", "-", "-"
		}
		t.add(strconv.Itoa(s.N), delivered, p50, p99, reqs, bytes, kib,
			fmt.Sprintf("%.2f", s.ServerCPU.Seconds()), fmt.Sprintf("%.2f", s.GenCPU.Seconds()),
			fmt.Sprintf("%.2f", s.OtherCPU.Seconds()), fmt.Sprintf("%.1f", s.Window.Seconds()), result)
	}
	return t
}

// better reports whether attempt a beats b: it passed where b did not,
// or delivered more, or had the lower p99.
func better(a, b stepResult) bool {
	switch {
	case a.OK != b.OK:
		return a.OK
	case a.Delivered != b.Delivered:
		return a.Delivered > b.Delivered
	}
	return a.Lat.P99 < b.Lat.P99
}

// held is the largest N of a ramp that passed, and the step that did not.
func held(steps []stepResult) (best *stepResult, failed *stepResult) {
	for i := range steps {
		if steps[i].OK {
			best = &steps[i]
		} else {
			return best, &steps[i]
		}
	}
	return best, nil
}

func summaryTable(c *transportsConfig, results map[string][]stepResult) *table {
	t := &table{
		header: []string{"transport", "most clients held", "at that N: p50 ms", "p99 ms", "req/event", "bytes/event", "server KiB/client", "over baseline", "ramp stopped by"},
		align:  []bool{false, true, true, true, true, true, true, true, false},
	}
	base := map[int]float64{}
	for _, s := range results[trNone] {
		if v, ok := s.rssPerClient(); ok {
			base[s.N] = v
		}
	}
	for _, tr := range c.Transports {
		steps := results[tr]
		if len(steps) == 0 {
			continue
		}
		best, failed := held(steps)
		stop := "nothing: every step passed"
		if failed != nil {
			stop = fmt.Sprintf("N=%d: %s", failed.N, failed.Why)
		}
		if best == nil {
			t.add(tr, "none", "-", "-", "-", "-", "-", "-", stop)
			continue
		}
		heldN := strconv.Itoa(best.N)
		if failed == nil {
			heldN = ">= " + heldN
		}
		kib, over := "n/a", "n/a"
		if v, ok := best.rssPerClient(); ok {
			kib = fmt.Sprintf("%.0f", v)
			if b, ok := base[best.N]; ok && tr != trNone {
				over = fmt.Sprintf("%+.0f", v-b)
			}
		}
		if tr == trNone {
			t.add(tr, heldN, "-", "-", "-", "-", kib, "-", stop)
			continue
		}
		t.add(tr, heldN, ms(best.Lat.P50), ms(best.Lat.P99), ratio(best.Requests, best.Delivered, 2),
			ratio(best.Bytes, best.Delivered, 0), kib, over, stop)
	}
	return t
}

// serverLog prints the warnings and errors the spawned servers logged.
func (r *runner) serverLog() {
	b, err := os.ReadFile(r.spawner.logPath)
	if err != nil {
		return
	}
	counts := map[string]int{}
	var order []string
	for _, line := range bytes.Split(b, []byte("\n")) {
		s := string(line)
		if !strings.Contains(s, "level=WARN") && !strings.Contains(s, "level=ERROR") {
			continue
		}
		key := s
		if i := strings.Index(s, "level="); i >= 0 {
			key = s[i:]
		}
		if len(key) > 160 {
			key = key[:160]
		}
		if counts[key] == 0 {
			order = append(order, key)
		}
		counts[key]++
	}
	fmt.Fprintf(r.out, "\n# server log (level warn): %d distinct warnings/errors\n", len(order))
	for _, k := range order {
		fmt.Fprintf(r.out, "#   %6dx %s\n", counts[k], k)
	}
}
