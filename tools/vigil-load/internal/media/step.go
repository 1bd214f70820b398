package media

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vigil-media/vigil/tools/vigil-load/internal/api"
	"github.com/vigil-media/vigil/tools/vigil-load/internal/par"
	"github.com/vigil-media/vigil/tools/vigil-load/internal/procstat"
	"github.com/vigil-media/vigil/tools/vigil-load/internal/spawn"
)

// Target is the server of one step.
type Target struct {
	api  *api.API
	pid  int
	udp  int
	srv  *spawn.Server
	base string
	// hooks, with vigil-load cluster: the step's nodes (package
	// clusterbench); nil: none.
	hooks StepHooks
}

// StepHooks is what vigil-load cluster adds to a step.
type StepHooks interface {
	// Entry is the base URL subscriber i enters through.
	Entry(i int) string
	// Begin and End read the nodes at the window's start and end.
	Begin(ctx context.Context)
	End(ctx context.Context)
	// Fold puts the nodes' figures into the step's result.
	Fold(res *Result)
	// Stop ends the step's nodes.
	Stop()
}

// NewTarget is a step's server reached through a (the first node of a
// cluster): process pid, media UDP port udp.
func NewTarget(a *api.API, pid, udp int, hooks StepHooks) *Target {
	return &Target{api: a, pid: pid, udp: udp, base: a.Base, hooks: hooks}
}

// The hooks; each does nothing without a cluster.

func (t *Target) spread(specs []subSpec) {
	if t.hooks != nil {
		for i := range specs {
			specs[i].base = t.hooks.Entry(i)
		}
	}
}

func (t *Target) begin(ctx context.Context) {
	if t.hooks != nil {
		t.hooks.Begin(ctx)
	}
}

func (t *Target) end(ctx context.Context) {
	if t.hooks != nil {
		t.hooks.End(ctx)
	}
}

func (t *Target) fold(res *Result) {
	if t.hooks != nil {
		t.hooks.Fold(res)
	}
}

func (t *Target) stop() {
	if t.hooks != nil {
		t.hooks.Stop()
	}
}

func (sh *Runner) target(ctx context.Context, cfg *Config, tg string, n int) (*Target, error) {
	if sh.Cluster != nil {
		return sh.Cluster.Target(ctx, tg, n)
	}
	if !cfg.Spawn {
		return &Target{api: &api.API{Base: cfg.URL, AdminKey: cfg.AdminKey, HC: sh.HC}, pid: cfg.ServerPID, udp: cfg.ServerUDP, base: cfg.URL}, nil
	}
	sp := sh.Vigil
	if tg == TgBaseline {
		sp = sh.base
	}
	srv, err := sp.Start(ctx)
	if err != nil {
		return nil, err
	}
	base := "http://" + srv.Addr
	return &Target{api: &api.API{Base: base, AdminKey: sp.AdminKey, HC: sh.HC}, pid: srv.PID, udp: srv.UDP, srv: srv, base: base}, nil
}

// tokenKey names a minted token: the target's room instance, identity
// and role.
type tokenKey struct {
	target         *Target
	identity, role string
}

// token mints (once per target and identity, for Vigil) a join token.
func (sh *Runner) token(ctx context.Context, t *Target, tg, identity, role string) (string, error) {
	if tg == TgBaseline {
		return identity, nil
	}
	key := tokenKey{t, identity, role}
	sh.tokMu.Lock()
	tk, ok := sh.tokens[key]
	sh.tokMu.Unlock()
	if ok {
		return tk, nil
	}
	tk, err := t.api.MintToken(ctx, sh.Room, identity, role)
	if err != nil {
		return "", err
	}
	sh.tokMu.Lock()
	sh.tokens[key] = tk
	sh.tokMu.Unlock()
	return tk, nil
}

// subSpec is one WHEP session to open.
type subSpec struct {
	identity, follow string
	kinds            []string
	streams          []*stream
	base             string // the server it enters through; "": the target's
}

// plan lays out a step's publishers.
func plan(cfg *Config, n int) (pubs []pubSpec) {
	kind := "broadcast"
	switch cfg.Scenario {
	case ScAudio:
		for s := range cfg.Speakers {
			pubs = append(pubs, pubSpec{identity: fmt.Sprintf("spk%02d", s+1), role: "host"})
		}
	case ScMeeting:
		kind = "conference"
		for s := range n {
			pubs = append(pubs, pubSpec{identity: fmt.Sprintf("m%03d", s+1), role: "participant", video: true})
		}
	default:
		pubs = []pubSpec{{identity: "pub01", role: "host", video: true}}
	}
	for i := range pubs {
		pubs[i].kind = kind
	}
	return pubs
}

type pubSpec struct {
	identity, role, kind string
	video                bool
}

func subRole(cfg *Config) string {
	if cfg.Scenario == ScMeeting {
		return "participant"
	}
	return "viewer"
}

func roomKind(cfg *Config) string {
	if cfg.Scenario == ScMeeting {
		return "conference"
	}
	return "broadcast"
}

// subscriptions lays out the WHEP sessions of a step, once the
// publishers (and their streams) exist.
func subscriptions(cfg *Config, n int, pubs []*publisher) (subs, storm []subSpec) {
	av := []string{"video", "audio"}
	watch := func(p *publisher) []*stream {
		if p.vs != nil {
			return []*stream{p.vs, p.as}
		}
		return []*stream{p.as}
	}
	switch cfg.Scenario {
	case ScAudio:
		for l := range n {
			for _, p := range pubs {
				subs = append(subs, subSpec{identity: fmt.Sprintf("l%04d-%s", l+1, p.identity), follow: p.identity, kinds: []string{"audio"}, streams: watch(p)})
			}
		}
	case ScMeeting:
		for _, r := range pubs {
			for _, p := range pubs {
				if p != r {
					subs = append(subs, subSpec{identity: r.identity + "-" + p.identity, follow: p.identity, kinds: av, streams: watch(p)})
				}
			}
		}
	default:
		for i := range n {
			subs = append(subs, subSpec{identity: fmt.Sprintf("v%04d", i+1), kinds: av, streams: watch(pubs[0])})
		}
		if cfg.Scenario == ScJoinstorm {
			for i := range cfg.Storm {
				storm = append(storm, subSpec{identity: fmt.Sprintf("s%04d", i+1), kinds: av, streams: watch(pubs[0])})
			}
		}
	}
	return subs, storm
}

// step runs one step of the scenario against one server.
func (sh *Runner) step(ctx context.Context, cfg *Config, tg string, n int) (res Result) {
	res = Result{Scenario: cfg.Scenario, Target: tg, N: n}
	g := &gen{Runner: sh, epoch: time.Now()}
	t, err := sh.target(ctx, cfg, tg, n)
	if err != nil {
		res.Why = "server: " + err.Error()
		return res
	}
	if t.srv != nil {
		defer t.srv.Stop()
	}
	defer t.stop()
	if err := t.api.CreateRoom(ctx, sh.Room, roomKind(cfg)); err != nil && (t.srv != nil || !isExists(err)) {
		res.Why = "room: " + err.Error()
		return res
	}
	specs := plan(cfg, n)

	// Publishers first, then the watchers.
	var pubs []*publisher
	defer func() {
		cctx := context.WithoutCancel(ctx)
		for _, p := range pubs {
			p.close(cctx, t.base)
		}
	}()
	pctx, stopPubs := context.WithCancel(ctx)
	defer stopPubs()
	for _, s := range specs {
		tk, err := sh.token(ctx, t, tg, s.identity, s.role)
		if err != nil {
			res.Why = "token: " + err.Error()
			return res
		}
		p, err := newPublisher(g, s.identity, tk, s.video, cfg.Bitrate, cfg.KeyEvery)
		if err != nil {
			res.Why = "publisher: " + err.Error()
			return res
		}
		pubs = append(pubs, p)
		if err := p.join(ctx, t.base, sh.Room); err != nil {
			res.Why = "publisher " + s.identity + ": " + err.Error()
			return res
		}
		p.run(pctx)
	}
	subSpecs, stormSpecs := subscriptions(cfg, n, pubs)
	t.spread(subSpecs)
	res.Sessions = len(subSpecs)
	role := subRole(cfg)
	// Mint every token before the joins, outside what is measured.
	all := append(append([]subSpec(nil), subSpecs...), stormSpecs...)
	tokens := make([]string, len(all))
	if err := par.ForEach(ctx, len(all), 16, func(i int) error {
		tk, err := sh.token(ctx, t, tg, all[i].identity, role)
		tokens[i] = tk
		return err
	}); err != nil {
		res.Why = "tokens: " + err.Error()
		return res
	}
	time.Sleep(300 * time.Millisecond) // the publishers' first packets: tracks exist

	tn, err := newThinNet(cfg.Poll)
	if err != nil {
		res.Why = "subscribers: " + err.Error()
		return res
	}
	defer tn.close()
	var thins []*thin
	var thinMu sync.Mutex
	defer func() {
		cctx := context.WithoutCancel(ctx)
		thinMu.Lock()
		ts := slices.Clone(thins)
		thinMu.Unlock()
		_ = par.ForEach(cctx, len(ts), 32, func(i int) error {
			ts[i].close(cctx, t.base)
			return nil
		})
		sh.HC.CloseIdleConnections()
	}()
	var joinErrs atomic.Int64
	var firstErr atomic.Value
	open := func(spec subSpec, tk string) *thin {
		th, err := newThin(g, tn, tk, spec.follow, spec.kinds, spec.streams)
		if err != nil {
			joinErrs.Add(1)
			firstErr.CompareAndSwap(nil, err.Error())
			return nil
		}
		thinMu.Lock()
		thins = append(thins, th)
		thinMu.Unlock()
		if err := th.join(ctx, cmp.Or(spec.base, t.base), sh.Room); err != nil {
			joinErrs.Add(1)
			firstErr.CompareAndSwap(nil, spec.identity+": "+err.Error())
		}
		return th
	}
	subs := make([]*thin, len(subSpecs))
	_ = par.ForEach(ctx, len(subSpecs), cfg.JoinWorkers, func(i int) error {
		subs[i] = open(subSpecs[i], tokens[i])
		return nil
	})
	// Wait until every session has media flowing (video: a keyframe).
	started := func(ts []*thin) int {
		k := 0
		for _, th := range ts {
			if th == nil {
				continue
			}
			st := th.stats()
			if (slices.Contains(th.kinds, "video") && !st.firstKeyAt.IsZero()) || (!slices.Contains(th.kinds, "video") && st.total > 0) {
				k++
			}
		}
		return k
	}
	deadline := time.Now().Add(cfg.KeyEvery + 10*time.Second)
	for started(subs) < len(subs)-int(joinErrs.Load()) && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(time.Second) // settle

	// The window.
	before, haveProc := procstat.ReadUsage(t.pid)
	t.begin(ctx)
	res.HaveProc = haveProc
	gen0, _ := procstat.ReadProc(0)
	host0, _ := procstat.ReadHostBusy()
	genPorts := map[int]bool{tn.port: true}
	srvPorts := map[int]bool{t.udp: true}
	sDrops0, gDrops0 := procstat.UDPDrops(srvPorts), procstat.UDPDrops(genPorts)
	var pli0, key0 int64
	for _, p := range pubs {
		pli0 += p.plis.Load()
		key0 += p.keys.Load()
	}
	total0 := totalPackets(subs)
	calls0, pkts0 := tn.calls.Load(), tn.packets.Load()
	for _, s := range g.streams {
		s.lo.Store(s.sent.Load())
	}
	start := time.Now()
	progDone := make(chan struct{})
	progStop := make(chan struct{})
	go func() {
		defer close(progDone)
		sh.progress(progStop, &res, t.pid, start, func() []*thin {
			thinMu.Lock()
			defer thinMu.Unlock()
			return slices.Clone(thins)
		})
	}()
	var storm []*thin
	if len(stormSpecs) > 0 {
		gap := time.Duration(float64(time.Second) / cfg.JoinRate)
		storm = make([]*thin, len(stormSpecs))
		var wg sync.WaitGroup
		for i := range stormSpecs {
			if w := time.Until(start.Add(time.Duration(i) * gap)); w > 0 {
				time.Sleep(w)
			}
			if ctx.Err() != nil {
				break
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				storm[i] = open(stormSpecs[i], tokens[len(subSpecs)+i])
			}()
		}
		wg.Wait()
		deadline := time.Now().Add(cfg.KeyEvery + 5*time.Second)
		for started(storm) < len(storm) && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(time.Second)
	} else {
		select {
		case <-time.After(cfg.Duration):
		case <-ctx.Done():
		}
	}
	for _, s := range g.streams {
		s.hi.Store(s.sent.Load())
	}
	res.Window = time.Since(start)
	after, _ := procstat.ReadUsage(t.pid)
	t.end(ctx)
	gen1, _ := procstat.ReadProc(0)
	host1, _ := procstat.ReadHostBusy()
	res.Total = totalPackets(subs) + totalPackets(storm) - total0
	if c := tn.calls.Load() - calls0; c > 0 {
		res.Batch = float64(tn.packets.Load()-pkts0) / float64(c)
	}
	close(progStop)
	<-progDone
	time.Sleep(500 * time.Millisecond) // packets in flight
	res.ServerDrops, res.GenDrops = procstat.UDPDrops(srvPorts)-sDrops0, procstat.UDPDrops(genPorts)-gDrops0
	res.ServerCPU = after.CPU - before.CPU
	res.GenCPU = gen1.CPU - gen0.CPU
	res.OtherCPU = max(0, host1-host0-res.ServerCPU-res.GenCPU)
	res.PeakRSS = after.HWMKiB
	t.fold(&res)
	for _, p := range pubs {
		res.PLIs += p.plis.Load()
		res.Keyframes += p.keys.Load()
	}
	res.PLIs -= pli0
	res.Keyframes -= key0
	stopPubs()

	// What the subscribers measured.
	res.Joined = len(subs) + len(storm) - int(joinErrs.Load())
	res.Sessions = len(subs) + len(storm)
	res.Started = started(subs) + started(storm)
	if v := firstErr.Load(); v != nil {
		res.JoinErr = v.(string)
	}
	for _, th := range subs {
		if th == nil {
			continue
		}
		st := th.stats()
		var exp uint64
		for _, s := range th.streams {
			if !slices.Contains(th.kinds, "video") && s.video {
				continue
			}
			exp += s.hi.Load() - s.lo.Load()
		}
		res.Expected += exp
		res.Delivered += st.inWindow
		if exp > 0 {
			res.LossMax = max(res.LossMax, 100*(1-float64(st.inWindow)/float64(exp)))
		}
		res.Lat.Merge(&st.lat)
	}
	joinTimes := subs
	if len(storm) > 0 {
		joinTimes = storm // the storm's joins are the figure
	}
	for _, th := range joinTimes {
		if th == nil {
			continue
		}
		st := th.stats()
		if !st.connectedAt.IsZero() {
			res.Join = append(res.Join, st.connectedAt.Sub(st.joinStart))
		}
		if !st.answeredAt.IsZero() {
			res.Answer = append(res.Answer, st.answeredAt.Sub(st.joinStart))
		}
		if !st.firstKeyAt.IsZero() {
			res.Key = append(res.Key, st.firstKeyAt.Sub(st.joinStart))
		}
	}
	slices.Sort(res.Join)
	slices.Sort(res.Answer)
	slices.Sort(res.Key)
	if res.Expected > 0 {
		res.LossAgg = 100 * (1 - float64(res.Delivered)/float64(res.Expected))
	}
	genBusy := res.Window > 0 && float64(res.GenCPU)/float64(res.Window) > 0.9
	switch {
	case res.Joined < res.Sessions:
		res.Why = fmt.Sprintf("%d of %d sessions failed to join: %s", res.Sessions-res.Joined, res.Sessions, res.JoinErr)
	case res.Started < res.Sessions:
		res.Why = fmt.Sprintf("%d of %d sessions got no media", res.Sessions-res.Started, res.Sessions)
	case res.LossAgg > cfg.MaxLoss:
		res.Why = fmt.Sprintf("loss %.2f%% > %.2f%%", res.LossAgg, cfg.MaxLoss)
		if genBusy {
			res.Why += " (generator saturated: not a server figure)"
		}
	default:
		res.OK = true
	}
	if genBusy && res.OK {
		res.Why = "generator near saturation"
	}
	return res
}

func isExists(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "room_exists") || strings.Contains(err.Error(), "already exists"))
}

func totalPackets(ts []*thin) uint64 {
	var n uint64
	for _, th := range ts {
		if th != nil {
			n += th.stats().total
		}
	}
	return n
}

// progress prints a line a second while a step runs.
func (sh *Runner) progress(stop <-chan struct{}, res *Result, pid int, start time.Time, thins func() []*thin) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	lastPk := totalPackets(thins())
	lastSrv, _ := procstat.ReadUsage(pid)
	lastGen, _ := procstat.ReadProc(0)
	last := time.Now()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		ts := thins()
		pk := totalPackets(ts)
		srv, _ := procstat.ReadUsage(pid)
		gn, _ := procstat.ReadProc(0)
		dt := time.Since(last).Seconds()
		fmt.Fprintf(sh.ProgOut, "  [%s %s N=%d] %4.1fs  sessions %d  %7.0f pkt/s  server CPU %3.0f%%  generator CPU %3.0f%%\n",
			res.Scenario, res.Target, res.N, time.Since(start).Seconds(), len(ts), float64(pk-lastPk)/dt,
			100*(srv.CPU-lastSrv.CPU).Seconds()/dt, 100*(gn.CPU-lastGen.CPU).Seconds()/dt)
		lastPk, lastSrv, lastGen, last = pk, srv, gn, time.Now()
	}
}
