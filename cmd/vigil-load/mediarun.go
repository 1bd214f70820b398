package main

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// mediaResult is what one step against one server measured.
type mediaResult struct {
	Scenario, Target string
	N                int // the step's size
	Sessions         int // WHEP sessions
	Joined           int
	Started          int // sessions that received media (video: a keyframe)
	JoinErr          string
	Window           time.Duration
	Delivered        uint64 // packets of the window received
	Expected         uint64
	Total            uint64 // all packets received in the window (the storm's too)
	LossAgg, LossMax float64
	Lat              hist
	Join, Key        []time.Duration
	Answer           []time.Duration // POST to its reply: the signaling part of Join
	ServerCPU        time.Duration
	GenCPU           time.Duration
	OtherCPU         time.Duration
	PeakRSS          int64 // KiB, VmHWM
	ServerDrops      int64
	GenDrops         int64
	PLIs, Keyframes  int64
	Batch            float64 // datagrams per read at the generator
	HaveProc         bool
	Attempts         int
	OK               bool
	Why              string
	Cluster          *clusterFigures // vigil-load cluster: each node's share (cluster.go)
}

func (r *mediaResult) serverUSPerPkt() float64 {
	if r.Total == 0 || !r.HaveProc {
		return math.NaN()
	}
	return float64(r.ServerCPU.Microseconds()) / float64(r.Total)
}

func (r *mediaResult) genUSPerPkt() float64 {
	if r.Total == 0 {
		return math.NaN()
	}
	return float64(r.GenCPU.Microseconds()) / float64(r.Total)
}

func (r *mediaResult) pps() float64 {
	if r.Window <= 0 {
		return 0
	}
	return float64(r.Total) / r.Window.Seconds()
}

// contended: other processes took more than one CPU on average.
func (r *mediaResult) contended() bool { return r.Window > 0 && r.OtherCPU > r.Window }

// resultText is a step's verdict as the tables print it.
func (r *mediaResult) resultText() string {
	result := "ok"
	if !r.OK {
		result = "limit: " + r.Why
	} else if r.Why != "" {
		result = "ok: " + r.Why
	}
	if r.Attempts > 1 {
		result += fmt.Sprintf(" (best of %d)", r.Attempts)
	}
	if r.contended() {
		result += " (contended)"
	}
	return result
}

// runScenario runs the ramp on every target, alternating targets at each
// size, each target's ramp stopping at its first failing step.
func (sh *shared) runScenario(ctx context.Context, cfg *mediaConfig) []mediaResult {
	var out []mediaResult
	stopped := map[string]bool{}
	for _, n := range cfg.Sizes {
		for _, tg := range cfg.Targets {
			if stopped[tg] || ctx.Err() != nil {
				continue
			}
			// A failure while other processes held more than a CPU
			// (contended) is tried again, up to maxContended more times.
			var best mediaResult
			contended := 0
			for a := 1; a <= cfg.Attempts+contended && ctx.Err() == nil; a++ {
				r := sh.step(ctx, cfg, tg, n)
				r.Attempts = a
				sh.progressLine(&r)
				if a == 1 || betterMedia(r, best) {
					best = r
				}
				if best.OK {
					break
				}
				if r.contended() && contended < cfg.Retries {
					contended++
				}
			}
			out = append(out, best)
			if !best.OK {
				stopped[tg] = true
			}
		}
	}
	return out
}

func betterMedia(a, b mediaResult) bool {
	if a.OK != b.OK {
		return a.OK
	}
	return a.LossAgg < b.LossAgg
}

// target is the server of one step.
type mediaTarget struct {
	api  *api
	pid  int
	udp  int
	srv  *server
	base string
	// cluster, with vigil-load cluster: the step's nodes; its hooks do
	// nothing when nil (cluster.go).
	cluster *clusterStep
}

func (sh *shared) target(ctx context.Context, cfg *mediaConfig, tg string, n int) (*mediaTarget, error) {
	if sh.cluster != nil {
		return sh.cluster.target(ctx, tg, n)
	}
	if !cfg.Spawn {
		return &mediaTarget{api: &api{base: cfg.URL, adminKey: cfg.AdminKey, hc: sh.hc}, pid: cfg.ServerPID, udp: cfg.ServerUDP, base: cfg.URL}, nil
	}
	sp := sh.vigil
	if tg == tgBaseline {
		sp = sh.base
	}
	srv, err := sp.start(ctx)
	if err != nil {
		return nil, err
	}
	base := "http://" + srv.addr
	return &mediaTarget{api: &api{base: base, adminKey: sp.adminKey, hc: sh.hc}, pid: srv.pid, udp: srv.udp, srv: srv, base: base}, nil
}

// token mints (once per identity, for Vigil) a join token.
func (sh *shared) token(ctx context.Context, t *mediaTarget, tg, identity, role string) (string, error) {
	if tg == tgBaseline {
		return identity, nil
	}
	sh.tokMu.Lock()
	tk, ok := sh.tokens[identity+"/"+role]
	sh.tokMu.Unlock()
	if ok {
		return tk, nil
	}
	tk, err := t.api.mintToken(ctx, sh.room, identity, role)
	if err != nil {
		return "", err
	}
	sh.tokMu.Lock()
	sh.tokens[identity+"/"+role] = tk
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
func plan(cfg *mediaConfig, n int) (pubs []pubSpec) {
	kind := "broadcast"
	switch cfg.Scenario {
	case scAudio:
		for s := range cfg.Speakers {
			pubs = append(pubs, pubSpec{identity: fmt.Sprintf("spk%02d", s+1), role: "host"})
		}
	case scMeeting:
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

func subRole(cfg *mediaConfig) string {
	if cfg.Scenario == scMeeting {
		return "participant"
	}
	return "viewer"
}

func roomKind(cfg *mediaConfig) string {
	if cfg.Scenario == scMeeting {
		return "conference"
	}
	return "broadcast"
}

// subscriptions lays out the WHEP sessions of a step, once the
// publishers (and their streams) exist.
func subscriptions(cfg *mediaConfig, n int, pubs []*publisher) (subs, storm []subSpec) {
	av := []string{"video", "audio"}
	watch := func(p *publisher) []*stream {
		if p.vs != nil {
			return []*stream{p.vs, p.as}
		}
		return []*stream{p.as}
	}
	switch cfg.Scenario {
	case scAudio:
		for l := range n {
			for _, p := range pubs {
				subs = append(subs, subSpec{identity: fmt.Sprintf("l%04d-%s", l+1, p.identity), follow: p.identity, kinds: []string{"audio"}, streams: watch(p)})
			}
		}
	case scMeeting:
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
		if cfg.Scenario == scJoinstorm {
			for i := range cfg.Storm {
				storm = append(storm, subSpec{identity: fmt.Sprintf("s%04d", i+1), kinds: av, streams: watch(pubs[0])})
			}
		}
	}
	return subs, storm
}

// step runs one step of the scenario against one server.
func (sh *shared) step(ctx context.Context, cfg *mediaConfig, tg string, n int) (res mediaResult) {
	res = mediaResult{Scenario: cfg.Scenario, Target: tg, N: n}
	g := &gen{shared: sh, epoch: time.Now()}
	t, err := sh.target(ctx, cfg, tg, n)
	if err != nil {
		res.Why = "server: " + err.Error()
		return res
	}
	if t.srv != nil {
		defer t.srv.stop()
	}
	defer t.cluster.stop()
	if err := t.api.createRoom(ctx, sh.room, roomKind(cfg)); err != nil && (t.srv != nil || !isExists(err)) {
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
		if err := p.join(ctx, t.base, sh.room); err != nil {
			res.Why = "publisher " + s.identity + ": " + err.Error()
			return res
		}
		p.run(pctx)
	}
	subSpecs, stormSpecs := subscriptions(cfg, n, pubs)
	t.cluster.spread(subSpecs)
	res.Sessions = len(subSpecs)
	role := subRole(cfg)
	// Mint every token before the joins, outside what is measured.
	all := append(append([]subSpec(nil), subSpecs...), stormSpecs...)
	tokens := make([]string, len(all))
	if err := forEach(ctx, len(all), 16, func(i int) error {
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
		_ = forEach(cctx, len(ts), 32, func(i int) error {
			ts[i].close(cctx, t.base)
			return nil
		})
		sh.hc.CloseIdleConnections()
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
		if err := th.join(ctx, cmp.Or(spec.base, t.base), sh.room); err != nil {
			joinErrs.Add(1)
			firstErr.CompareAndSwap(nil, spec.identity+": "+err.Error())
		}
		return th
	}
	subs := make([]*thin, len(subSpecs))
	_ = forEach(ctx, len(subSpecs), cfg.JoinWorkers, func(i int) error {
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
	before, haveProc := sampleProc(t.pid)
	t.cluster.begin(ctx)
	res.HaveProc = haveProc
	gen0, _ := readProc(0)
	host0, _ := readHostBusy()
	genPorts := map[int]bool{tn.port: true}
	srvPorts := map[int]bool{t.udp: true}
	sDrops0, gDrops0 := udpDrops(srvPorts), udpDrops(genPorts)
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
	after, _ := sampleProc(t.pid)
	t.cluster.end(ctx)
	gen1, _ := readProc(0)
	host1, _ := readHostBusy()
	res.Total = totalPackets(subs) + totalPackets(storm) - total0
	if c := tn.calls.Load() - calls0; c > 0 {
		res.Batch = float64(tn.packets.Load()-pkts0) / float64(c)
	}
	close(progStop)
	<-progDone
	time.Sleep(500 * time.Millisecond) // packets in flight
	res.ServerDrops, res.GenDrops = udpDrops(srvPorts)-sDrops0, udpDrops(genPorts)-gDrops0
	res.ServerCPU = after.CPU - before.CPU
	res.GenCPU = gen1.CPU - gen0.CPU
	res.OtherCPU = max(0, host1-host0-res.ServerCPU-res.GenCPU)
	res.PeakRSS = after.HWMKiB
	t.cluster.fold(&res)
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
		res.Lat.merge(&st.lat)
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

type procNow struct {
	procSample
	HWMKiB int64
}

func sampleProc(pid int) (procNow, bool) {
	if pid <= 0 {
		return procNow{}, false
	}
	s, err := readProc(pid)
	if err != nil {
		return procNow{}, false
	}
	hwm, _ := readStatusKiB(pid, "VmHWM:")
	return procNow{procSample: s, HWMKiB: hwm}, true
}

// progress prints a line a second while a step runs.
func (sh *shared) progress(stop <-chan struct{}, res *mediaResult, pid int, start time.Time, thins func() []*thin) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	lastPk := totalPackets(thins())
	lastSrv, _ := sampleProc(pid)
	lastGen, _ := readProc(0)
	last := time.Now()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		ts := thins()
		pk := totalPackets(ts)
		srv, _ := sampleProc(pid)
		gn, _ := readProc(0)
		dt := time.Since(last).Seconds()
		fmt.Fprintf(sh.progOut, "  [%s %s N=%d] %4.1fs  sessions %d  %7.0f pkt/s  server CPU %3.0f%%  generator CPU %3.0f%%\n",
			res.Scenario, res.Target, res.N, time.Since(start).Seconds(), len(ts), float64(pk-lastPk)/dt,
			100*(srv.CPU-lastSrv.CPU).Seconds()/dt, 100*(gn.CPU-lastGen.CPU).Seconds()/dt)
		lastPk, lastSrv, lastGen, last = pk, srv, gn, time.Now()
	}
}

func (sh *shared) progressLine(r *mediaResult) {
	status := "ok"
	if !r.OK {
		status = "LIMIT: " + r.Why
	} else if r.Why != "" {
		status = "ok (" + r.Why + ")"
	}
	fmt.Fprintf(sh.progOut, "%s %-8s N=%-4d #%d sessions %d/%d  %.0f pkt/s  loss %.3f%% (max %.2f%%)  latency p50 %s p99 %s p99.9 %s ms  join p50 %s p99 %s ms (answer p50 %s p99 %s)  key p50 %s ms  server %.2f µs/pkt  gen %.2f µs/pkt  RSS %.0f MiB  drops srv %d gen %d  batch %.1f  %s\n",
		r.Scenario, r.Target, r.N, r.Attempts, r.Joined, r.Sessions, r.pps(), r.LossAgg, r.LossMax,
		ms(r.Lat.quantile(50)), ms(r.Lat.quantile(99)), ms(r.Lat.quantile(99.9)),
		ms(percentile(r.Join, 50)), ms(percentile(r.Join, 99)), ms(percentile(r.Answer, 50)), ms(percentile(r.Answer, 99)), ms(percentile(r.Key, 50)),
		r.serverUSPerPkt(), r.genUSPerPkt(), float64(r.PeakRSS)/1024, r.ServerDrops, r.GenDrops, r.Batch, status)
}

func f2(v float64) string {
	if math.IsNaN(v) {
		return "-"
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

func mediaTable(rs []mediaResult) *table {
	t := &table{
		header: []string{"server", "N", "sessions", "fwd pkt/s", "loss %", "max loss %", "lat p50 ms", "p99", "p99.9", "join p50 ms", "p99", "keyframe p50 ms", "p99", "server µs/pkt", "server CPU %", "peak RSS MiB", "gen µs/pkt", "gen/server", "others CPU s", "drops srv/gen", "PLI/keyframes", "result"},
		align:  []bool{false, true, true, true, true, true, true, true, true, true, true, true, true, true, true, true, true, true, true, true, true, false},
	}
	for _, r := range rs {
		result := r.resultText()
		srvPct := "-"
		if r.HaveProc && r.Window > 0 {
			srvPct = fmt.Sprintf("%.0f", 100*r.ServerCPU.Seconds()/r.Window.Seconds())
		}
		ratio := "-"
		if s, gg := r.serverUSPerPkt(), r.genUSPerPkt(); !math.IsNaN(s) && s > 0 {
			ratio = fmt.Sprintf("%.2f", gg/s)
			if gg/s > 0.5 {
				ratio += " (!)"
			}
		}
		t.add(r.Target, strconv.Itoa(r.N), fmt.Sprintf("%d/%d", r.Joined, r.Sessions), fmt.Sprintf("%.0f", r.pps()),
			fmt.Sprintf("%.3f", r.LossAgg), fmt.Sprintf("%.2f", r.LossMax),
			ms(r.Lat.quantile(50)), ms(r.Lat.quantile(99)), ms(r.Lat.quantile(99.9)),
			ms(percentile(r.Join, 50)), ms(percentile(r.Join, 99)), ms(percentile(r.Key, 50)), ms(percentile(r.Key, 99)),
			f2(r.serverUSPerPkt()), srvPct, fmt.Sprintf("%.0f", float64(r.PeakRSS)/1024), f2(r.genUSPerPkt()), ratio,
			fmt.Sprintf("%.2f", r.OtherCPU.Seconds()), fmt.Sprintf("%d/%d", r.ServerDrops, r.GenDrops),
			fmt.Sprintf("%d/%d", r.PLIs, r.Keyframes), result)
	}
	return t
}
