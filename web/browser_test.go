// Browser tests of the web client: headless Chromium (driven with chromedp)
// with a fake camera and microphone against a whole in-process Vigil server
// (vigiltest). Each test polls the page's window.vigil debug handle and its
// DOM with deadlines; none asserts after a fixed sleep.
package web_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/vigil-media/vigil/signaling/vigiltest"
)

const chromiumPath = "/usr/bin/chromium"

// chromiumFlags are the flags that make headless Chromium do WebRTC with a
// fake camera and microphone against a server on 127.0.0.1. Without
// allow-loopback-in-peer-connection Chromium gathers no 127.0.0.1
// candidates (on a host with only lo, none at all, and gathering never
// completes); the fake UI flag also keeps a receive-only page from
// hiding its host address behind an mDNS name pion cannot resolve.
func chromiumFlags() []string {
	return []string{
		"no-sandbox", "disable-gpu", "disable-quic", "no-first-run",
		"disable-background-networking", "disable-component-update", "disable-sync",
		"use-fake-device-for-media-stream", "use-fake-ui-for-media-stream",
		"allow-loopback-in-peer-connection",
		// Remote <audio> plays without a click, as it would after one.
		"autoplay-policy=no-user-gesture-required",
	}
}

// instrument runs before any page script: it counts getUserMedia calls in
// window.__gumCalls, keeps every WebSocket in window.__sockets and every
// EventSource in window.__eventSources, records every fetch in
// window.__fetches ({url, method, key: its Idempotency-Key, inm: its
// If-None-Match, status}), can block WebSockets, and can make the page's
// first offer cross a server offer.
const instrument = `(() => {
  window.__cspViolations = [];
  document.addEventListener('securitypolicyviolation', (e) => {
    window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI);
    console.error('CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI);
  });
  window.__gumCalls = 0;
  const md = navigator.mediaDevices;
  if (md) {
    const orig = md.getUserMedia.bind(md);
    md.getUserMedia = (c) => { window.__gumCalls++; return orig(c); };
  }
  window.__sockets = [];
  window.__eventSources = [];
  window.__fetches = [];
  const fetch0 = window.fetch.bind(window);
  window.fetch = (input, init = {}) => {
    const h = new Headers(init.headers || {});
    const rec = {
      url: String((input && input.url) || input), method: (init.method || 'GET').toUpperCase(),
      key: h.get('Idempotency-Key') || '', inm: h.get('If-None-Match') || '', status: 0,
    };
    window.__fetches.push(rec);
    const p = fetch0(input, init);
    p.then((r) => { rec.status = r.status; }, () => { rec.status = -1; });
    return p;
  };
  const ES = window.EventSource;
  window.EventSource = class extends ES {
    constructor(...args) {
      super(...args);
      window.__eventSources.push(this);
    }
  };
  // With "hold-first-offer" in the URL fragment, the page's first offer is
  // held back until a server offer arrives, then sent before the page can
  // answer: the two offers cross (glare).
  let hold = location.hash.includes('hold-first-offer');
  const held = [];
  const WS = window.WebSocket;
  window.WebSocket = class extends WS {
    constructor(...args) {
      // "throw-websocket" in the URL fragment: no WebSocket can be made.
      if (location.hash.includes('throw-websocket')) {
        throw new DOMException('WebSocket blocked by the test', 'SecurityError');
      }
      // A socket to a URL containing window.__blockedURL, or any socket
      // with "block-websocket" in the URL fragment, fails to connect: it
      // goes to a path of the same server that is no WebSocket (a 404 to
      // the handshake), as the page's Content-Security-Policy allows no
      // other host.
      if ((window.__blockedURL && String(args[0]).includes(window.__blockedURL)) ||
          location.hash.includes('block-websocket')) {
        args[0] = location.origin.replace(/^http/, 'ws') + '/blocked-by-the-test';
      }
      super(...args);
      window.__sockets.push(this);
      this.addEventListener('message', (ev) => {
        if (held.length > 0 && JSON.parse(ev.data).type === 'offer') {
          for (const f of held.splice(0)) super.send(f);
        }
      });
    }
    send(frame) {
      if (hold && JSON.parse(frame).type === 'offer') {
        hold = false;
        held.push(frame);
        return;
      }
      super.send(frame);
    }
  };
})();`

// browser is one headless Chromium shared by the pages of a test.
type browser struct {
	ctx context.Context // the browser's first tab; new tabs derive from it

	mu   sync.Mutex
	logs []string // console errors and uncaught exceptions, by page
}

func startBrowser(t *testing.T) *browser {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("chromium is required in CI: %v", err)
		}
		t.Skipf("no chromium at %s: %v", chromiumPath, err)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-features", "WebRtcHideLocalIpsWithMdns"),
	}
	for _, f := range chromiumFlags() {
		name, value, ok := strings.Cut(f, "=")
		if ok {
			opts = append(opts, chromedp.Flag(name, value))
		} else {
			opts = append(opts, chromedp.Flag(name, true))
		}
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	b := &browser{ctx: ctx}
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, l := range b.logs {
			t.Log(l)
		}
	})
	start := time.Now()
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	t.Logf("chromium ready in %v", time.Since(start).Round(time.Millisecond))
	return b
}

func (b *browser) logf(format string, args ...any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.logs = append(b.logs, fmt.Sprintf(format, args...))
}

// open opens url in a new tab of b, instrumented (see instrument), and
// records the page's console errors and uncaught exceptions under name.
func (b *browser) open(t *testing.T, name, url string) context.Context {
	t.Helper()
	return b.openWith(t, name, url, "")
}

// openWith is open with one more script run before any page script
// (after instrument), for a test's own shims.
func (b *browser) openWith(t *testing.T, name, url, script string) context.Context {
	t.Helper()
	ctx, cancel := chromedp.NewContext(b.ctx)
	t.Cleanup(cancel)
	messages := chromedp.Console(ctx) // subscribes now, before the page loads
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			switch m.Type {
			case chromedp.ConsoleError, chromedp.ConsoleWarning, chromedp.ConsoleException:
				b.logf("[%s] %s", name, m)
			}
		}
	}()
	err := chromedp.Do(ctx,
		chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
			_, err := cdp.Call(ctx, t, page.AddScriptToEvaluateOnNewDocument,
				page.AddScriptToEvaluateOnNewDocumentParams{Source: instrument + script})
			return err
		}),
		chromedp.Navigate(url),
	)
	if err != nil {
		t.Fatalf("%s: open page: %v", name, err)
	}
	return ctx
}

// eval evaluates expr in the page, awaiting a promise, into out.
func eval[T any](ctx context.Context, expr string, out *T) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		return err
	}
	*out = v
	return nil
}

// waitFor polls cond every 100 ms until it holds, failing the test with
// cond's last explanation after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s: %s", timeout, what, why)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type inbound struct {
	Kind            string `json:"kind"`
	FramesDecoded   int    `json:"framesDecoded"`
	FrameWidth      int    `json:"frameWidth"`
	FrameHeight     int    `json:"frameHeight"`
	PacketsReceived int    `json:"packetsReceived"`
	BytesReceived   int    `json:"bytesReceived"`
	Codec           string `json:"codec"`
	Identity        string `json:"identity"`
	Source          string `json:"source"`
}

type outbound struct {
	Kind        string `json:"kind"`
	PacketsSent int    `json:"packetsSent"`
	BytesSent   int    `json:"bytesSent"`
}

type pageStats struct {
	Inbound  []inbound  `json:"inbound"`
	Outbound []outbound `json:"outbound"`
}

func stats(ctx context.Context) (pageStats, error) {
	var s pageStats
	err := eval(ctx, `window.vigil.stats()`, &s)
	return s, err
}

// find returns the inbound stream of kind from identity, if any.
func (s pageStats) find(kind, identity string) (inbound, bool) {
	for _, in := range s.Inbound {
		if in.Kind == kind && in.Identity == identity {
			return in, true
		}
	}
	return inbound{}, false
}

// waitState waits for window.vigil.state to become want.
func waitState(t *testing.T, ctx context.Context, name, want string) {
	t.Helper()
	waitFor(t, 15*time.Second, fmt.Sprintf("%s state %q", name, want), func() (bool, string) {
		var st string
		if err := eval(ctx, `window.vigil ? window.vigil.state : 'no vigil'`, &st); err != nil {
			return false, err.Error()
		}
		if st == "error" && want != "error" {
			var msg string
			_ = eval(ctx, `document.getElementById('error').textContent`, &msg)
			return false, "page error: " + msg
		}
		return st == want, "state " + st
	})
}

// waitDecoding waits until page name decodes video from identity, then
// until the decoded frame count rises, and returns the last stats.
func waitDecoding(t *testing.T, ctx context.Context, name, identity string) pageStats {
	t.Helper()
	var first int
	waitFor(t, 20*time.Second, fmt.Sprintf("%s decoding video from %s", name, identity), func() (bool, string) {
		s, err := stats(ctx)
		if err != nil {
			return false, err.Error()
		}
		in, ok := s.find("video", identity)
		if !ok {
			return false, fmt.Sprintf("no inbound video from %s in %+v; page: %s", identity, s.Inbound, debugState(ctx))
		}
		first = in.FramesDecoded
		return in.FramesDecoded > 0, fmt.Sprintf("%+v", in)
	})
	var last pageStats
	waitFor(t, 10*time.Second, fmt.Sprintf("%s frames from %s rising past %d", name, identity, first), func() (bool, string) {
		s, err := stats(ctx)
		if err != nil {
			return false, err.Error()
		}
		last = s
		in, _ := s.find("video", identity)
		return in.FramesDecoded > first, fmt.Sprintf("%+v", in)
	})
	in, _ := last.find("video", identity)
	t.Logf("%s: video from %s: %d frames decoded, %dx%d, %s", name, identity, in.FramesDecoded, in.FrameWidth, in.FrameHeight, in.Codec)
	return last
}

// debugState describes the page's negotiation for a failure message.
func debugState(ctx context.Context) string {
	var st string
	err := eval(ctx, `JSON.stringify({
		state: window.vigil.state,
		events: window.vigil.events,
		signaling: window.vigil.pc && window.vigil.pc.signalingState,
		connection: window.vigil.pc && window.vigil.pc.connectionState,
		transceivers: window.vigil.pc && window.vigil.pc.getTransceivers().map((t) => ({
			mid: t.mid, kind: t.receiver.track.kind, direction: t.direction, current: t.currentDirection,
			sending: !!t.sender.track,
		})),
		media: [...document.querySelectorAll('[data-mid]')].map((e) => e.tagName + ' ' + e.dataset.mid + ' ' + (e.dataset.identity || '')),
		error: document.getElementById('error').textContent,
	})`, &st)
	if err != nil {
		return err.Error()
	}
	return st
}

func roster(t *testing.T, ctx context.Context) []string {
	t.Helper()
	var ids []string
	if err := eval(ctx, `[...document.querySelectorAll('#roster li')].map((li) => li.dataset.identity)`, &ids); err != nil {
		t.Fatalf("read roster: %v", err)
	}
	return ids
}

func exists(ctx context.Context, selector string) (bool, error) {
	var ok bool
	err := eval(ctx, fmt.Sprintf(`document.querySelector(%q) !== null`, selector), &ok)
	return ok, err
}

func waitElement(t *testing.T, ctx context.Context, name, selector string) {
	t.Helper()
	waitFor(t, 10*time.Second, fmt.Sprintf("%s showing %s", name, selector), func() (bool, string) {
		ok, err := exists(ctx, selector)
		if err != nil {
			return false, err.Error()
		}
		return ok, "not in the page"
	})
}

func TestConferenceTwoPagesSeeEachOther(t *testing.T) {
	start := time.Now()
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "conf", "conference")
	b := startBrowser(t)

	pages := map[string]context.Context{
		"alice": b.open(t, "alice", srv.JoinURL(t, "conf", "alice", "participant")),
		"bob":   b.open(t, "bob", srv.JoinURL(t, "conf", "bob", "participant")),
	}
	for name, other := range map[string]string{"alice": "bob", "bob": "alice"} {
		ctx := pages[name]
		waitState(t, ctx, name, "joined")
		s := waitDecoding(t, ctx, name, other)
		waitFor(t, 10*time.Second, fmt.Sprintf("%s receiving audio from %s", name, other), func() (bool, string) {
			s, err := stats(ctx)
			if err != nil {
				return false, err.Error()
			}
			in, ok := s.find("audio", other)
			return ok && in.PacketsReceived > 0, fmt.Sprintf("%+v", s.Inbound)
		})
		if len(s.Outbound) == 0 {
			t.Errorf("%s sends nothing: outbound %+v", name, s.Outbound)
		}
		waitElement(t, ctx, name, fmt.Sprintf(`video[data-identity=%q][data-source="camera"]`, other))
		waitElement(t, ctx, name, fmt.Sprintf(`audio[data-identity=%q][data-source="microphone"]`, other))
		if ok, err := exists(ctx, fmt.Sprintf(`[data-identity=%q][data-source]`, name)); err != nil || ok {
			t.Errorf("%s shows its own media as remote (err %v)", name, err)
		}
		waitFor(t, 5*time.Second, fmt.Sprintf("%s's roster listing %s", name, other), func() (bool, string) {
			ids := roster(t, ctx)
			return slices.Contains(ids, other) && slices.Contains(ids, name), fmt.Sprintf("roster %v", ids)
		})
		var self bool
		if err := eval(ctx, fmt.Sprintf(`document.querySelector('#roster li.self')?.dataset.identity === %q`, name), &self); err != nil || !self {
			t.Errorf("%s's roster does not mark %s as self (err %v)", name, name, err)
		}
	}
	t.Logf("conference done in %v", time.Since(start).Round(time.Millisecond))
}

func TestBroadcastViewerReceivesHostAndSendsNothing(t *testing.T) {
	start := time.Now()
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "show", "broadcast")
	b := startBrowser(t)

	host := b.open(t, "host", srv.JoinURL(t, "show", "hanna", "host"))
	waitState(t, host, "host", "joined")
	viewer := b.open(t, "viewer", srv.JoinURL(t, "show", "victor", "viewer"))
	waitState(t, viewer, "viewer", "joined")

	s := waitDecoding(t, viewer, "viewer", "hanna")
	waitElement(t, viewer, "viewer", `video[data-identity="hanna"][data-source="camera"]`)
	if len(s.Outbound) != 0 {
		t.Errorf("viewer has outbound streams: %+v", s.Outbound)
	}
	var senderTracks int
	if err := eval(viewer, `window.vigil.pc.getSenders().filter((s) => s.track).length`, &senderTracks); err != nil || senderTracks != 0 {
		t.Errorf("viewer senders with a track: %d (err %v)", senderTracks, err)
	}
	var gum int
	if err := eval(viewer, `window.__gumCalls`, &gum); err != nil || gum != 0 {
		t.Errorf("viewer called getUserMedia %d times (err %v)", gum, err)
	}
	if err := eval(host, `window.__gumCalls`, &gum); err != nil || gum == 0 {
		t.Errorf("host called getUserMedia %d times (err %v)", gum, err)
	}
	if ids := roster(t, viewer); !slices.Contains(ids, "hanna") || !slices.Contains(ids, "victor") {
		t.Errorf("viewer roster %v, want hanna and victor (self)", ids)
	}

	// The viewer has joined and decodes by now, so a participant_joined
	// for it would have reached the host: a host sees hosts only.
	var events []string
	if err := eval(host, `window.vigil.events`, &events); err != nil {
		t.Fatal(err)
	}
	if ids := roster(t, host); !slices.Equal(ids, []string{"hanna"}) {
		t.Errorf("host roster %v, want only [hanna] (events %v)", ids, events)
	}
	if slices.Contains(events, "participant_joined") {
		t.Errorf("host got participant_joined: events %v", events)
	}
	hs, err := stats(host)
	if err != nil {
		t.Fatal(err)
	}
	if len(hs.Inbound) != 0 {
		t.Errorf("host receives %+v, want nothing", hs.Inbound)
	}
	t.Logf("broadcast done in %v", time.Since(start).Round(time.Millisecond))
}

func TestBadTokenShowsError(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "right", "conference")
	srv.CreateRoom(t, "other", "conference")
	b := startBrowser(t)

	tok := srv.Token(t, "other", "mallory", "participant")
	ctx := b.open(t, "mallory", srv.URL+"/room/right#token="+tok)
	waitState(t, ctx, "mallory", "error")
	var msg string
	if err := eval(ctx, `(() => { const e = document.getElementById('error'); return e.hidden ? '' : e.textContent; })()`, &msg); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(msg, "forbidden") {
		t.Errorf("error shown %q, want the forbidden code", msg)
	}
	var noPC bool
	if err := eval(ctx, `window.vigil.pc === null && !window.vigil.events.includes('joined')`, &noPC); err != nil || !noPC {
		t.Errorf("a refused page has a peer connection or joined (err %v)", err)
	}
	var gum int
	if err := eval(ctx, `window.__gumCalls`, &gum); err != nil || gum != 0 {
		t.Errorf("refused page called getUserMedia %d times (err %v)", gum, err)
	}
}

func TestIndexCreatesRoomAndMintsJoinLinks(t *testing.T) {
	srv := vigiltest.Start(t)
	b := startBrowser(t)
	ctx := b.open(t, "index", srv.URL+"/")

	var ok bool
	fill := fmt.Sprintf(`(() => {
		document.getElementById('admin-key').value = %q;
		document.getElementById('room-name').value = 'stage-1';
		document.getElementById('room-kind').value = 'broadcast';
		document.querySelector('#create-form button[type=submit]').click();
		return true;
	})()`, srv.AdminKey)
	if err := eval(ctx, fill, &ok); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "a link form per broadcast role", func() (bool, string) {
		var roles []string
		if err := eval(ctx, `[...document.querySelectorAll('#roles form')].map((f) => f.dataset.role)`, &roles); err != nil {
			return false, err.Error()
		}
		return slices.Equal(roles, []string{"host", "viewer"}), fmt.Sprintf("roles %v", roles)
	})
	mint := `(() => {
		const f = document.querySelector('#roles form[data-role=viewer]');
		f.elements.identity.value = 'vera';
		f.querySelector('button[type=submit]').click();
		return true;
	})()`
	if err := eval(ctx, mint, &ok); err != nil {
		t.Fatal(err)
	}
	prefix := srv.URL + "/room/stage-1#token="
	var link string
	waitFor(t, 5*time.Second, "a viewer join link", func() (bool, string) {
		if err := eval(ctx, `document.querySelector('#roles form[data-role=viewer] a.join-link')?.href ?? ''`, &link); err != nil {
			return false, err.Error()
		}
		return strings.HasPrefix(link, prefix) && len(link) > len(prefix), fmt.Sprintf("link %q", link)
	})
	var stored string
	if err := eval(ctx, `localStorage.getItem('vigil.adminKey') ?? ''`, &stored); err != nil || stored != srv.AdminKey {
		t.Errorf("admin key not remembered: %q (err %v)", stored, err)
	}

	// The same name again: the API's error is shown.
	again := `(() => { document.querySelector('#create-form button[type=submit]').click(); return true; })()`
	if err := eval(ctx, again, &ok); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the room_exists error", func() (bool, string) {
		var msg string
		if err := eval(ctx, `(() => { const e = document.getElementById('error'); return e.hidden ? '' : e.textContent; })()`, &msg); err != nil {
			return false, err.Error()
		}
		return strings.Contains(msg, "room_exists"), fmt.Sprintf("error %q", msg)
	})
}

func TestSocketDropResumesAndLeaveCleansUp(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "resume", "conference")
	b := startBrowser(t)

	alice := b.open(t, "alice", srv.JoinURL(t, "resume", "alice", "participant"))
	bob := b.open(t, "bob", srv.JoinURL(t, "resume", "bob", "participant"))
	waitDecoding(t, alice, "alice", "bob")

	// Drop alice's socket: the page reconnects from its last seq.
	var ok bool
	if err := eval(alice, `(() => { window.__sockets.at(-1).close(); return true; })()`, &ok); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "alice's second socket open", func() (bool, string) {
		var n []int
		if err := eval(alice, `window.__sockets.map((s) => s.readyState)`, &n); err != nil {
			return false, err.Error()
		}
		return len(n) == 2 && n[1] == 1, fmt.Sprintf("socket states %v", n)
	})
	var url string
	if err := eval(alice, `window.__sockets[1].url`, &url); err != nil || !strings.Contains(url, "cursor=") || strings.HasSuffix(url, "cursor=0") {
		t.Errorf("reconnect URL %q does not resume from a cursor (err %v)", url, err)
	}

	// What happens next reaches alice over the new socket, once.
	b.open(t, "carol", srv.JoinURL(t, "resume", "carol", "participant"))
	waitDecoding(t, alice, "alice", "carol")
	waitElement(t, alice, "alice", `video[data-identity="carol"][data-source="camera"]`)
	var events []string
	if err := eval(alice, `window.vigil.events`, &events); err != nil {
		t.Fatal(err)
	}
	if n := countOf(events, "joined"); n != 1 {
		t.Errorf("alice got %d joined events: %v", n, events)
	}
	if ids := roster(t, alice); !slices.Equal(ids, []string{"alice", "bob", "carol"}) {
		t.Errorf("alice's roster %v, want [alice bob carol]", ids)
	}

	// Bob leaves: his page says so, and alice drops his tiles and name.
	if err := eval(bob, `(() => { document.getElementById('leave').click(); return true; })()`, &ok); err != nil {
		t.Fatal(err)
	}
	waitState(t, bob, "bob", "left")
	var status string
	if err := eval(bob, `document.getElementById('status').textContent`, &status); err != nil || !strings.Contains(status, "You left") {
		t.Errorf("bob's status %q after leaving (err %v)", status, err)
	}
	var pcGone bool
	if err := eval(bob, `window.vigil.pc === null`, &pcGone); err != nil || !pcGone {
		t.Errorf("bob's peer connection not closed after leaving (err %v)", err)
	}
	waitFor(t, 10*time.Second, "alice dropping bob", func() (bool, string) {
		ids := roster(t, alice)
		present, err := exists(alice, `[data-identity="bob"][data-source]`)
		if err != nil {
			return false, err.Error()
		}
		return !slices.Contains(ids, "bob") && !present, fmt.Sprintf("roster %v, bob's media shown %v", ids, present)
	})
	if present, err := exists(alice, `video[data-identity="carol"]`); err != nil || !present {
		t.Errorf("alice lost carol's video when bob left (err %v)", err)
	}
}

func countOf(xs []string, x string) int {
	n := 0
	for _, v := range xs {
		if v == x {
			n++
		}
	}
	return n
}

func TestCrossingOffersAreResolved(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "glare", "conference")
	b := startBrowser(t)

	// Bob's first offer is held until the server offers him alice's
	// tracks, then sent before his answer: the server refuses it with
	// glare, and bob, the polite peer, answers and offers again.
	bob := b.open(t, "bob", srv.JoinURL(t, "glare", "bob", "participant")+"&hold-first-offer")
	waitState(t, bob, "bob", "joined")
	alice := b.open(t, "alice", srv.JoinURL(t, "glare", "alice", "participant"))
	waitDecoding(t, bob, "bob", "alice")
	waitDecoding(t, alice, "alice", "bob")

	var events []string
	if err := eval(bob, `window.vigil.events`, &events); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(events, "error") {
		t.Errorf("bob's offers did not cross the server's (no glare error): events %v", events)
	}
	if n := countOf(events, "joined"); n != 1 {
		// Starting over with a new session is the page's last resort
		// when a negotiation step fails; glare must not need it.
		t.Errorf("bob started over %d time(s): events %v", n-1, events)
	}
	var shown string
	if err := eval(bob, `(() => { const e = document.getElementById('error'); return e.hidden ? '' : e.textContent; })()`, &shown); err != nil || shown != "" {
		t.Errorf("bob shows an error after glare: %q (err %v)", shown, err)
	}
}

func TestLostSessionStartsOver(t *testing.T) {
	srv := vigiltest.StartWith(t, vigiltest.Options{GracePeriod: 500 * time.Millisecond})
	srv.CreateRoom(t, "again", "conference")
	b := startBrowser(t)

	alice := b.open(t, "alice", srv.JoinURL(t, "again", "alice", "participant"))
	bob := b.open(t, "bob", srv.JoinURL(t, "again", "bob", "participant"))
	waitDecoding(t, alice, "alice", "bob")

	// Cut alice off from her session until the server forgets it: her
	// page must notice (404) and join again with a new session.
	var old string
	if err := eval(alice, `(() => {
		const url = new URL(window.__sockets.at(-1).url);
		window.__blockedURL = url.pathname;
		window.__sockets.at(-1).close();
		return url.pathname;
	})()`, &old); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "alice joined again", func() (bool, string) {
		var events []string
		if err := eval(alice, `window.vigil.events`, &events); err != nil {
			return false, err.Error()
		}
		var state string
		if err := eval(alice, `window.vigil.state`, &state); err != nil {
			return false, err.Error()
		}
		return countOf(events, "joined") == 2 && state == "joined", fmt.Sprintf("state %s, events %v", state, events)
	})
	var now string
	if err := eval(alice, `new URL(window.__sockets.at(-1).url).pathname`, &now); err != nil || now == old {
		t.Errorf("alice's socket %q after starting over, old %q (err %v)", now, old, err)
	}
	// The new session's connection carries media both ways again.
	waitDecoding(t, alice, "alice", "bob")
	waitDecoding(t, bob, "bob", "alice")
	waitElement(t, bob, "bob", `video[data-identity="alice"][data-source="camera"]`)
	var tiles int
	if err := eval(alice, `document.querySelectorAll('video[data-identity="bob"]').length`, &tiles); err != nil || tiles != 1 {
		t.Errorf("alice shows %d videos of bob, want 1 (err %v)", tiles, err)
	}
}

// forceTransport puts ?transport=name into a join URL, before its fragment.
func forceTransport(joinURL, name string) string {
	path, frag, _ := strings.Cut(joinURL, "#")
	return path + "?transport=" + name + "#" + frag
}

// participantView is what the admin API says of a participant.
type participantView struct {
	Transport string // attached now, "" for none
	Tracks    int
}

// serverParticipants asks the admin API about the participants of room.
func serverParticipants(t *testing.T, srv *vigiltest.Server, room string) map[string]participantView {
	t.Helper()
	status, body := srv.Do(t, http.MethodGet, "/v1/rooms/"+room, srv.AdminKey, nil)
	if status != http.StatusOK {
		t.Fatalf("get room %s: %d %s", room, status, body)
	}
	var r struct {
		Participants []struct {
			Identity  string            `json:"identity"`
			Transport *string           `json:"transport"`
			Tracks    []json.RawMessage `json:"tracks"`
		} `json:"participants"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatal(err)
	}
	out := map[string]participantView{}
	for _, p := range r.Participants {
		v := participantView{Tracks: len(p.Tracks)}
		if p.Transport != nil {
			v.Transport = *p.Transport
		}
		out[p.Identity] = v
	}
	return out
}

// waitServerTransport waits until the server has identity's session
// attached to transport want.
func waitServerTransport(t *testing.T, srv *vigiltest.Server, room, identity, want string) {
	t.Helper()
	waitFor(t, 10*time.Second, fmt.Sprintf("the server seeing %s on %s", identity, want), func() (bool, string) {
		got := serverParticipants(t, srv, room)
		return got[identity].Transport == want, fmt.Sprintf("participants %+v", got)
	})
}

// transportUse is what a page did on the network, from the instrument.
type transportUse struct {
	Transport    string   `json:"transport"`
	Tried        []string `json:"tried"`
	Shown        string   `json:"shown"` // data-transport of the page's status text
	Sockets      int      `json:"sockets"`
	EventSources int      `json:"eventSources"`
	Polls        int      `json:"polls"`
	LongPolls    int      `json:"longPolls"`
	NotModified  int      `json:"notModified"`
	Posts        []struct {
		Key    string `json:"key"`
		Status int    `json:"status"`
	} `json:"posts"`
	Joined int   `json:"joined"`
	Seqs   []int `json:"seqs"`
}

func readTransportUse(ctx context.Context) (transportUse, error) {
	var u transportUse
	err := eval(ctx, `(() => {
		const f = window.__fetches;
		const polls = f.filter((x) => x.url.includes('/poll?'));
		return {
			transport: window.vigil.transport,
			tried: window.vigil.transports,
			shown: document.getElementById('transport').dataset.transport || '',
			sockets: window.__sockets.length,
			eventSources: window.__eventSources.length,
			polls: polls.length,
			longPolls: polls.filter((x) => x.url.includes('wait=')).length,
			notModified: polls.filter((x) => x.status === 304 && x.inm !== '').length,
			posts: f.filter((x) => x.method === 'POST' && x.url.endsWith('/messages'))
				.map((x) => ({ key: x.key, status: x.status })),
			joined: window.vigil.events.filter((e) => e === 'joined').length,
			seqs: window.vigil.seqs,
		};
	})()`, &u)
	return u, err
}

// checkExactlyOnce checks that page name joined once and got every event
// of its session once and in order: seqs 1, 2, 3, ...
func checkExactlyOnce(t *testing.T, name string, u transportUse) {
	t.Helper()
	if u.Joined != 1 {
		t.Errorf("%s: %d joined events, want 1", name, u.Joined)
	}
	for i, seq := range u.Seqs {
		if seq != i+1 {
			t.Errorf("%s: delivered seqs %v, want 1, 2, 3, ... once each", name, u.Seqs)
			break
		}
	}
}

// checkTransportUse checks that page name signaled over transport want
// alone, and sent its messages the way that transport does.
func checkTransportUse(t *testing.T, ctx context.Context, name, want string) {
	t.Helper()
	u, err := readTransportUse(ctx)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if u.Transport != want || !slices.Equal(u.Tried, []string{want}) || u.Shown != want {
		t.Errorf("%s: transport %q, tried %v, shown %q; want %s only", name, u.Transport, u.Tried, u.Shown, want)
	}
	checkExactlyOnce(t, name, u)
	wantSockets, wantES := 0, 0
	switch want {
	case "ws":
		wantSockets = 1
	case "sse":
		wantES = 1 // one EventSource, however often it reconnects itself
	}
	if u.Sockets != wantSockets || u.EventSources != wantES {
		t.Errorf("%s: %d WebSockets and %d EventSources over %s, want %d and %d", name, u.Sockets, u.EventSources, want, wantSockets, wantES)
	}
	switch want {
	case "ws", "sse":
		if u.Polls != 0 {
			t.Errorf("%s: %d polls over %s", name, u.Polls, want)
		}
	case "longpoll":
		if u.LongPolls == 0 || u.LongPolls != u.Polls {
			t.Errorf("%s: %d polls of which %d long, want only long polls", name, u.Polls, u.LongPolls)
		}
	case "poll":
		if u.Polls == 0 || u.LongPolls != 0 {
			t.Errorf("%s: %d polls of which %d long, want only short polls", name, u.Polls, u.LongPolls)
		}
	}
	if want == "ws" {
		if len(u.Posts) != 0 {
			t.Errorf("%s: %d messages POSTed over ws", name, len(u.Posts))
		}
		return
	}
	// An offer and candidates at least, each with its own key.
	if len(u.Posts) < 2 {
		t.Errorf("%s: %d messages POSTed over %s, want the offer and candidates", name, len(u.Posts), want)
	}
	keys := map[string]bool{}
	for _, p := range u.Posts {
		if p.Key == "" || keys[p.Key] {
			t.Errorf("%s: POST with a missing or repeated Idempotency-Key %q", name, p.Key)
		}
		keys[p.Key] = true
		if p.Status != http.StatusOK && p.Status != 0 {
			t.Errorf("%s: a POSTed message answered %d", name, p.Status)
		}
	}
}

// sessionOf reads a page's session id from the URL of its POSTed messages.
func sessionOf(t *testing.T, ctx context.Context, name string) string {
	t.Helper()
	var id string
	err := eval(ctx, `(() => {
		const f = window.__fetches.find((x) => x.method === 'POST' && x.url.endsWith('/messages'));
		return f ? new URL(f.url, location.href).pathname.split('/')[3] : '';
	})()`, &id)
	if err != nil || id == "" {
		t.Fatalf("%s: no session id in its POSTs (err %v)", name, err)
	}
	return id
}

// checkResume takes bob's session away from its transport on the server
// (a poll from the test attaches to it, which ends an event stream or a
// held poll), then has alice chat: bob must get the chat once, with no
// event lost or repeated, still over transport tr (an EventSource resumes
// by itself with Last-Event-ID).
func checkResume(t *testing.T, srv *vigiltest.Server, room string, alice, bob context.Context, tr string) {
	t.Helper()
	if status, body := srv.Do(t, http.MethodGet, "/v1/sessions/"+sessionOf(t, bob, "bob")+"/poll?cursor=0", "", nil); status != http.StatusOK {
		t.Fatalf("poll bob's session: %d %s", status, body)
	}
	chat := map[string]any{"type": "chat", "data": map[string]any{"text": "after the drop"}}
	if status, body := srv.Do(t, http.MethodPost, "/v1/sessions/"+sessionOf(t, alice, "alice")+"/messages", "", chat); status != http.StatusOK {
		t.Fatalf("alice's chat: %d %s", status, body)
	}
	waitFor(t, 10*time.Second, "bob getting alice's chat", func() (bool, string) {
		var events []string
		if err := eval(bob, `window.vigil.events`, &events); err != nil {
			return false, err.Error()
		}
		return slices.Contains(events, "chat"), fmt.Sprintf("events %v", events)
	})
	checkTransportUse(t, bob, "bob", tr)
	if tr != "poll" {
		waitServerTransport(t, srv, room, "bob", tr)
	}
	var events []string
	if err := eval(bob, `window.vigil.events`, &events); err != nil || countOf(events, "chat") != 1 {
		t.Errorf("bob got %d chats, want 1 (err %v): %v", countOf(events, "chat"), err, events)
	}
}

func TestEveryTransportDecodes(t *testing.T) {
	srv := vigiltest.Start(t)
	b := startBrowser(t)
	// One pair at a time: each page runs a fake camera, and the machine
	// has two cores.
	for _, tr := range []string{"ws", "sse", "longpoll", "poll"} {
		t.Run(tr, func(t *testing.T) {
			start := time.Now()
			room := "conf-" + tr
			srv.CreateRoom(t, room, "conference")
			pages := map[string]context.Context{}
			pages["alice"] = b.open(t, "alice/"+tr, forceTransport(srv.JoinURL(t, room, "alice", "participant"), tr))
			// Bob comes once alice publishes, so that the server offers
			// him both her tracks at once: this test is about transports,
			// not about offers crossing (TestCrossingOffersAreResolved).
			waitFor(t, 15*time.Second, "alice publishing", func() (bool, string) {
				ps := serverParticipants(t, srv, room)
				return ps["alice"].Tracks == 2, fmt.Sprintf("participants %+v", ps)
			})
			pages["bob"] = b.open(t, "bob/"+tr, forceTransport(srv.JoinURL(t, room, "bob", "participant"), tr))
			for name, other := range map[string]string{"alice": "bob", "bob": "alice"} {
				ctx := pages[name]
				waitState(t, ctx, name, "joined")
				waitDecoding(t, ctx, name, other)
				waitElement(t, ctx, name, fmt.Sprintf(`video[data-identity=%q][data-source="camera"]`, other))
				checkTransportUse(t, ctx, name, tr)
				if tr == "poll" {
					// A short poll is attached only while it is answered;
					// once nothing is new, If-None-Match gets 304s.
					waitFor(t, 10*time.Second, name+" getting a 304 to If-None-Match", func() (bool, string) {
						u, err := readTransportUse(ctx)
						if err != nil {
							return false, err.Error()
						}
						return u.NotModified > 0, fmt.Sprintf("%d polls, no 304", u.Polls)
					})
				} else {
					waitServerTransport(t, srv, room, name, tr)
				}
			}
			t.Logf("%s: both pages decoding in %v", tr, time.Since(start).Round(time.Millisecond))
			if tr != "ws" { // TestSocketDropResumesAndLeaveCleansUp drops a WebSocket
				checkResume(t, srv, room, pages["alice"], pages["bob"], tr)
			}
		})
	}
}

func TestFallsBackWhenWebSocketIsBlocked(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "blocked", "conference")
	b := startBrowser(t)

	// carl's sockets fail to connect; dora cannot even make one. Both try
	// ws first, then settle on sse and decode each other.
	start := time.Now()
	pages := map[string]context.Context{}
	pages["carl"] = b.open(t, "carl", srv.JoinURL(t, "blocked", "carl", "participant")+"&block-websocket")
	waitFor(t, 15*time.Second, "carl publishing", func() (bool, string) {
		ps := serverParticipants(t, srv, "blocked")
		return ps["carl"].Tracks == 2, fmt.Sprintf("participants %+v", ps)
	})
	pages["dora"] = b.open(t, "dora", srv.JoinURL(t, "blocked", "dora", "participant")+"&throw-websocket")
	for name, other := range map[string]string{"carl": "dora", "dora": "carl"} {
		ctx := pages[name]
		waitState(t, ctx, name, "joined")
		waitDecoding(t, ctx, name, other)
		u, err := readTransportUse(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if u.Transport != "sse" || !slices.Equal(u.Tried, []string{"ws", "sse"}) || u.Shown != "sse" {
			t.Errorf("%s: transport %q, tried %v, shown %q; want ws then sse", name, u.Transport, u.Tried, u.Shown)
		}
		if u.EventSources != 1 || u.Polls != 0 || len(u.Posts) < 2 {
			t.Errorf("%s: %d EventSources, %d polls, %d POSTs", name, u.EventSources, u.Polls, len(u.Posts))
		}
		checkExactlyOnce(t, name, u)
		waitServerTransport(t, srv, "blocked", name, "sse")
	}
	var sockets int
	if err := eval(pages["carl"], `window.__sockets.length`, &sockets); err != nil || sockets != 1 {
		t.Errorf("carl tried %d WebSockets, want 1 (err %v)", sockets, err)
	}
	t.Logf("fallback done in %v", time.Since(start).Round(time.Millisecond))
}

func TestWHIPPublishWHEPPlay(t *testing.T) {
	start := time.Now()
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "stage", "broadcast")
	// The plain pages come from another origin: WHIP and WHEP answer CORS.
	fixtures := httptest.NewServer(http.FileServer(http.Dir("testdata")))
	t.Cleanup(fixtures.Close)
	b := startBrowser(t)
	params := func(identity, role string) string {
		return "#vigil=" + url.QueryEscape(srv.URL) + "&room=stage&token=" + srv.Token(t, "stage", identity, role)
	}
	// waitPage waits for window[obj].state to become want.
	waitPage := func(ctx context.Context, obj, want string) {
		t.Helper()
		waitFor(t, 15*time.Second, fmt.Sprintf("%s %s", obj, want), func() (bool, string) {
			var st struct {
				State string `json:"state"`
				Error string `json:"error"`
			}
			if err := eval(ctx, fmt.Sprintf(`window.%s ? {state: window.%[1]s.state, error: window.%[1]s.error} : {state: 'no page'}`, obj), &st); err != nil {
				return false, err.Error()
			}
			if st.State == "error" {
				t.Fatalf("%s page: %s", obj, st.Error)
			}
			return st.State == want, "state " + st.State
		})
		var loc string
		if err := eval(ctx, fmt.Sprintf(`window.%s.location`, obj), &loc); err != nil || !strings.HasPrefix(loc, "/"+obj+"/stage/") {
			t.Errorf("%s Location %q, want /%s/stage/{id} (exposed to another origin) (err %v)", obj, loc, obj, err)
		}
	}

	whip := b.open(t, "whip", fixtures.URL+"/whip.html"+params("obs", "host"))
	waitPage(whip, "whip", "published")

	whep := b.open(t, "whep", fixtures.URL+"/whep.html"+params("player", "viewer"))
	waitPage(whep, "whep", "playing")
	type stream struct {
		Kind            string `json:"kind"`
		FramesDecoded   int    `json:"framesDecoded"`
		PacketsReceived int    `json:"packetsReceived"`
	}
	find := func(kind string) (stream, string) {
		var ss []stream
		if err := eval(whep, `window.whep.stats()`, &ss); err != nil {
			return stream{}, err.Error()
		}
		for _, s := range ss {
			if s.Kind == kind {
				return s, fmt.Sprintf("%+v", ss)
			}
		}
		return stream{}, fmt.Sprintf("%+v", ss)
	}
	var first int
	waitFor(t, 20*time.Second, "the WHEP player decoding video", func() (bool, string) {
		s, why := find("video")
		first = s.FramesDecoded
		return first > 0, why
	})
	waitFor(t, 10*time.Second, fmt.Sprintf("WHEP frames rising past %d", first), func() (bool, string) {
		s, why := find("video")
		return s.FramesDecoded > first, why
	})
	waitFor(t, 10*time.Second, "the WHEP player receiving audio", func() (bool, string) {
		s, why := find("audio")
		return s.PacketsReceived > 0, why
	})
	v, _ := find("video")
	t.Logf("whep: %d frames decoded", v.FramesDecoded)

	// The web client, as a viewer of the same broadcast, decodes the WHIP
	// publisher like any host.
	viewer := b.open(t, "viewer", srv.JoinURL(t, "stage", "vera", "viewer"))
	waitState(t, viewer, "vera", "joined")
	waitDecoding(t, viewer, "vera", "obs")
	waitElement(t, viewer, "vera", `video[data-identity="obs"][data-source="camera"]`)
	if ids := roster(t, viewer); !slices.Contains(ids, "obs") {
		t.Errorf("vera's roster %v lacks the WHIP host obs", ids)
	}
	t.Logf("WHIP/WHEP done in %v", time.Since(start).Round(time.Millisecond))
}
