package transports

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/vigil-media/vigil/tools/vigil-load/internal/par"
	"github.com/vigil-media/vigil/tools/vigil-load/internal/procstat"
	"github.com/vigil-media/vigil/tools/vigil-load/internal/report"
)

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
		defer t.srv.Stop()
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
		base: t.api.Base, wsBase: "ws" + strings.TrimPrefix(t.api.Base, "http"),
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
	_ = par.ForEach(ctx, n, r.cfg.Workers, func(i int) error {
		sid, err := t.api.OpenSession(ctx, r.room, r.tokens[i])
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
		_ = par.ForEach(cctx, n, r.cfg.Workers, func(i int) error {
			if clients[i] != nil {
				_ = t.api.CloseSession(cctx, clients[i].sid)
			}
			return nil
		})
		_ = t.api.CloseSession(cctx, d.sid)
		_ = d.conn.Close()
		<-d.done
		// Idle pooled connections, some never used, would hold up the
		// server's graceful shutdown (net/http waits 5 s for a new one).
		r.hc.CloseIdleConnections()
		r.adminHC.CloseIdleConnections()
		if t.srv == nil { // a shared server: wait for the room to empty
			deadline := time.Now().Add(30 * time.Second)
			for time.Now().Before(deadline) {
				if p, err := t.api.Participants(cctx, r.room); err != nil || p == 0 {
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
	req0, bytes0 := r.m.Requests.Load(), r.m.Bytes.Load()
	gen0, _ := procstat.ReadProc(0)
	host0, _ := procstat.ReadHostBusy()
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
	gen1, _ := procstat.ReadProc(0)
	host1, _ := procstat.ReadHostBusy()
	res.RSSAfter = after.RSSKiB
	res.ServerCPU = after.CPU - idle.CPU
	res.GenCPU = gen1.CPU - gen0.CPU
	res.OtherCPU = max(0, host1-host0-res.ServerCPU-res.GenCPU)
	res.Requests = r.m.Requests.Load() - req0
	res.Bytes = r.m.Bytes.Load() - bytes0
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
	res.Lat = report.Summarize(lat)

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
		res.Why = fmt.Sprintf("p99 %s ms > %s ms", report.Ms(res.Lat.P99), report.Ms(limit))
	default:
		res.OK = true
	}
	return res, ctx.Err()
}
