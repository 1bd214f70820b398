// Browser tests of the web client: headless Chromium (driven with chromedp)
// with a fake camera and microphone against a whole in-process Vigil server
// (vigiltest). Each test polls the page's window.vigil debug handle and its
// DOM with deadlines; none asserts after a fixed sleep.
package web_test

import (
	"context"
	"fmt"
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
// fake camera and microphone against a server on 127.0.0.1
// (shared/TESTING.md).
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
// window.__gumCalls, keeps every WebSocket in window.__sockets, and can
// make the page's first offer cross a server offer.
const instrument = `(() => {
  window.__gumCalls = 0;
  const md = navigator.mediaDevices;
  if (md) {
    const orig = md.getUserMedia.bind(md);
    md.getUserMedia = (c) => { window.__gumCalls++; return orig(c); };
  }
  window.__sockets = [];
  // With "hold-first-offer" in the URL fragment, the page's first offer is
  // held back until a server offer arrives, then sent before the page can
  // answer: the two offers cross (glare).
  let hold = location.hash.includes('hold-first-offer');
  const held = [];
  const WS = window.WebSocket;
  window.WebSocket = class extends WS {
    constructor(...args) {
      // A socket to a URL containing window.__blockedURL fails to connect.
      if (window.__blockedURL && String(args[0]).includes(window.__blockedURL)) {
        args[0] = 'ws://127.0.0.1:9/';
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
				page.AddScriptToEvaluateOnNewDocumentParams{Source: instrument})
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
