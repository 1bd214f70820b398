// Browser tests of the proctoring pages (static/candidate.js and
// static/proctor.js): real headless Chromium pages against an in-process
// server. The candidates' camera, microphone and entire-screen share are
// Chromium's own fakes (--use-fake-ui-for-media-stream picks the screen
// the page asks for); only TestCandidatePreflightRefusesWindowShare shims
// getDisplayMedia, to play a candidate who picks a window in the picker.
package web_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	cdpbrowser "github.com/chromedp/cdproto/browser"
	"github.com/chromedp/chromedp"
	"github.com/vigil-media/vigil/signaling/vigiltest"
)

// run evaluates expr for its side effects, failing the test on an error.
func run(t *testing.T, ctx context.Context, name, expr string) {
	t.Helper()
	var ok bool
	if err := eval(ctx, "(() => { "+expr+"; return true; })()", &ok); err != nil {
		t.Fatalf("%s: %s: %v", name, expr, err)
	}
}

// click clicks the element selector names, failing if it is not there.
func click(t *testing.T, ctx context.Context, name, selector string) {
	t.Helper()
	run(t, ctx, name, fmt.Sprintf(`const el = document.querySelector(%q); if (!el) throw new Error('no ' + %[1]q); el.click()`, selector))
}

// evalString evaluates expr into a string ("" on an error).
func evalString(ctx context.Context, expr string) string {
	var s string
	if err := eval(ctx, expr, &s); err != nil {
		return "error: " + err.Error()
	}
	return s
}

// check is one pre-flight check of a candidate page.
type check struct {
	State  string `json:"state"`
	Reason string `json:"reason"`
}

func preflightOf(ctx context.Context) (map[string]check, error) {
	var c map[string]check
	err := eval(ctx, `window.vigil && window.vigil.preflight ? window.vigil.preflight : {}`, &c)
	return c, err
}

// waitCheck waits until the candidate's pre-flight check of source is in
// state want, and returns it.
func waitCheck(t *testing.T, ctx context.Context, name, source, want string) check {
	t.Helper()
	var got check
	waitFor(t, 10*time.Second, fmt.Sprintf("%s: %s check %s", name, source, want), func() (bool, string) {
		c, err := preflightOf(ctx)
		if err != nil {
			return false, err.Error()
		}
		got = c[source]
		return got.State == want, fmt.Sprintf("checks %+v", c)
	})
	return got
}

// waitPhase waits for a candidate page's phase.
func waitPhase(t *testing.T, ctx context.Context, name, want string) {
	t.Helper()
	waitFor(t, 15*time.Second, fmt.Sprintf("%s in phase %s", name, want), func() (bool, string) {
		p := evalString(ctx, `window.vigil && window.vigil.phase ? window.vigil.phase : 'none'`)
		return p == want, fmt.Sprintf("phase %s, state %s, status %q, error %q", p,
			evalString(ctx, `window.vigil.state`), evalString(ctx, `document.getElementById('status').textContent`),
			evalString(ctx, `document.getElementById('error').textContent`))
	})
}

// openCandidate opens a candidate's page, passes its pre-flight (the
// fake camera and microphone, then a share of the entire screen) and
// joins: it waits in the waiting room.
func openCandidate(t *testing.T, b *browser, srv *vigiltest.Server, room, identity string) context.Context {
	t.Helper()
	ctx := b.open(t, identity, srv.JoinURL(t, room, identity, "candidate"))
	waitCheck(t, ctx, identity, "camera", "ready")
	waitCheck(t, ctx, identity, "microphone", "ready")
	click(t, ctx, identity, "#share-screen")
	waitCheck(t, ctx, identity, "screen", "ready")
	click(t, ctx, identity, "#join-exam")
	waitState(t, ctx, identity, "joined")
	waitPhase(t, ctx, identity, "waiting")
	return ctx
}

// admit admits identity from the proctor's waiting room and waits for
// the candidate's page to enter the exam.
func admit(t *testing.T, proctor, cand context.Context, identity string) {
	t.Helper()
	sel := fmt.Sprintf(`#waiting-list [data-candidate=%q] [data-action="admit"]`, identity)
	waitElement(t, proctor, "proctor", sel)
	click(t, proctor, "proctor", sel)
	waitPhase(t, cand, identity, "exam")
	waitElement(t, proctor, "proctor", fmt.Sprintf(`#grid [data-candidate=%q][data-state="admitted"]`, identity))
}

// findSource returns the inbound stream of kind and source from identity.
func (s pageStats) findSource(kind, identity, source string) (inbound, bool) {
	for _, in := range s.Inbound {
		if in.Kind == kind && in.Identity == identity && in.Source == source {
			return in, true
		}
	}
	return inbound{}, false
}

// waitVideo waits until page ctx decodes identity's source with frames
// rising and cond true of the stream, and returns the last sample. diag,
// if not nil, adds to the explanation of a timeout.
func waitVideo(t *testing.T, ctx context.Context, timeout time.Duration, what, identity, source string, cond func(inbound) bool, diag func() string) inbound {
	t.Helper()
	var last inbound
	first := -1
	waitFor(t, timeout, what, func() (bool, string) {
		s, err := stats(ctx)
		if err != nil {
			return false, err.Error()
		}
		in, ok := s.findSource("video", identity, source)
		if !ok {
			return false, fmt.Sprintf("no %s video from %s in %+v", source, identity, s.Inbound)
		}
		last = in
		if first < 0 && in.FramesDecoded > 0 {
			first = in.FramesDecoded
		}
		if first >= 0 && in.FramesDecoded > first && cond(in) {
			return true, ""
		}
		why := fmt.Sprintf("%+v", in)
		if diag != nil {
			why += "; " + diag()
		}
		return false, why
	})
	return last
}

// upperRID is, per source, the rid of the simulcast layer just above the
// lowest one a candidate's page sends (static/candidate.js).
var upperRID = map[string]string{"camera": "h", "screen": "f"}

// layerAbove is the width of the layer just above the lowest that a
// candidate's page sends of source: as sent now, or, while Chromium
// leaves that layer off (its bandwidth estimate dips under load, and it
// may send the lowest layer alone for a while), as it was seen sending
// it (seen, from waitLayers). A page receiving that source narrower than
// this receives the lowest layer.
func layerAbove(t *testing.T, ctx context.Context, name, source string, seen map[string]int) int {
	t.Helper()
	key := source + "/" + upperRID[source]
	w := seen[key]
	var ls []layerSent
	waitFor(t, 5*time.Second, name+" reporting what it sends", func() (bool, string) {
		if err := eval(ctx, `window.vigil.stats().then((s) => s.outbound.filter((o) => o.kind === 'video'))`, &ls); err != nil {
			return false, err.Error()
		}
		return true, ""
	})
	for _, l := range ls {
		if l.Source+"/"+l.Rid == key && l.FrameWidth > 0 {
			w = min(w, l.FrameWidth)
		}
	}
	if w == 0 {
		t.Fatalf("%s never sent its %s's layer %s", name, source, upperRID[source])
	}
	return w
}

// checkIsolated checks that a candidate's page receives nothing from
// another candidate, now or ever: no inbound stream labelled with
// another identity, no element showing one, no track ever given to it
// from one, and no video at all (only a proctor's microphone may come).
func checkIsolated(t *testing.T, ctx context.Context, name string, others ...string) {
	t.Helper()
	s, err := stats(ctx)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	for _, in := range s.Inbound {
		if slices.Contains(others, in.Identity) || in.Kind == "video" {
			t.Errorf("%s receives %s %s from %q: %+v", name, in.Kind, in.Source, in.Identity, in)
		}
	}
	var receivers []string
	if err := eval(ctx, `window.vigil.pc.getTransceivers().filter((t) => t.currentDirection === 'recvonly' || t.currentDirection === 'sendrecv').map((t) => t.receiver.track.kind)`, &receivers); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if slices.Contains(receivers, "video") {
		t.Errorf("%s has a receiving video transceiver: %v", name, receivers)
	}
	for _, o := range others {
		if ok, err := exists(ctx, fmt.Sprintf(`[data-identity=%q]`, o)); err != nil || ok {
			t.Errorf("%s shows media of %s (err %v)", name, o, err)
		}
	}
	// Nor did it ever: every track the page has been given.
	var received []struct {
		Kind     string `json:"kind"`
		Identity string `json:"identity"`
		Source   string `json:"source"`
	}
	if err := eval(ctx, `window.vigil.received`, &received); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	for _, r := range received {
		if r.Kind == "video" || slices.Contains(others, r.Identity) {
			t.Errorf("%s was given %s %s of %q", name, r.Kind, r.Source, r.Identity)
		}
	}
}

// setWindowState minimizes or restores the window of a page: a real
// blur and visibilitychange for the page.
func setWindowState(t *testing.T, ctx context.Context, state cdpbrowser.WindowState) {
	t.Helper()
	err := chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		w, err := chromedp.CallBrowser(ctx, cdpbrowser.GetWindowForTarget, cdpbrowser.GetWindowForTargetParams{TargetID: tg.TargetID})
		if err != nil {
			return err
		}
		_, err = chromedp.CallBrowser(ctx, cdpbrowser.SetWindowBounds, cdpbrowser.SetWindowBoundsParams{
			WindowID: w.WindowID, Bounds: &cdpbrowser.Bounds{WindowState: state},
		})
		return err
	}))
	if err != nil {
		t.Fatalf("set window %s: %v", state, err)
	}
}

type layerSent struct {
	Source     string `json:"source"`
	Rid        string `json:"rid"`
	FrameWidth int    `json:"frameWidth"`
	BytesSent  int    `json:"bytesSent"`
}

// waitLayers waits until a candidate's page sends more than the lowest
// simulcast layer of its camera and of its screen (its encoder enables
// the higher layers as its bandwidth estimate ramps up), so that a
// proctor getting the low layer gets it because it asked for no more.
// It returns the width each layer (source/rid) was sent at then.
func waitLayers(t *testing.T, ctx context.Context, name string) map[string]int {
	t.Helper()
	prev := map[string]int{}
	widths := map[string]int{}
	waitFor(t, 45*time.Second, name+" sending its higher simulcast layers", func() (bool, string) {
		var ls []layerSent
		if err := eval(ctx, `window.vigil.stats().then((s) => s.outbound.filter((o) => o.kind === 'video'))`, &ls); err != nil {
			return false, err.Error()
		}
		rising := map[string]bool{}
		clear(widths)
		for _, l := range ls {
			k := l.Source + "/" + l.Rid
			rising[k] = l.FrameWidth > 0 && prev[k] > 0 && l.BytesSent > prev[k]
			prev[k] = l.BytesSent
			widths[k] = l.FrameWidth
		}
		return rising["camera/"+upperRID["camera"]] && rising["screen/"+upperRID["screen"]], sending(ctx)
	})
	return widths
}

// sending describes what a page sends, layer by layer.
func sending(ctx context.Context) string {
	return evalString(ctx, `Promise.all([window.vigil.stats(), window.vigil.pc.getStats()]).then(([s, r]) => {
		let bwe = 0;
		const why = [];
		r.forEach((x) => {
			if (x.type === 'candidate-pair' && x.availableOutgoingBitrate) bwe = x.availableOutgoingBitrate;
			if (x.type === 'outbound-rtp' && x.kind === 'video') why.push(x.rid + ':' + x.qualityLimitationReason);
		});
		return JSON.stringify({bwe, limited: why, layers: s.outbound.filter((o) => o.kind === 'video').map((o) => [o.source, o.rid, o.frameWidth, o.bytesSent])});
	})`)
}

type incidentSeen struct {
	ID       string `json:"id"`
	Identity string `json:"identity"`
	Type     string `json:"type"`
	Note     string `json:"note"`
	Source   string `json:"source"`
	ShownAt  int64  `json:"shownAt"`
	Live     bool   `json:"live"`
}

func proctorIncidents(ctx context.Context) ([]incidentSeen, error) {
	var out []incidentSeen
	err := eval(ctx, `window.vigil.incidents`, &out)
	return out, err
}

type reportSent struct {
	Type string `json:"type"`
	At   int64  `json:"at"`
}

// TestProctoringGridFocusAndIncidents: two candidates and a proctor. The
// proctor's page decodes both candidates' camera and screen at the low
// simulcast layer (narrower than what the candidate sends); focusing one
// switches its camera and screen to the high layer; neither candidate's
// page ever receives the other's media; a candidate that hides its page
// raises a tab_hidden incident that the proctor's page shows within a
// second of the page hiding (and that a proctor's page opened later reads
// from the room's history); ending the exam for everyone ends both.
func TestProctoringGridFocusAndIncidents(t *testing.T) {
	start := time.Now()
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "exam", "proctoring")
	b := startBrowser(t)

	proctor := b.open(t, "proctor", srv.JoinURL(t, "exam", "pat", "proctor"))
	waitState(t, proctor, "proctor", "joined")
	cands := map[string]context.Context{}
	for _, id := range []string{"cand-a", "cand-b"} {
		cands[id] = openCandidate(t, b, srv, "exam", id)
	}
	for _, id := range []string{"cand-a", "cand-b"} {
		admit(t, proctor, cands[id], id)
	}
	t.Logf("both candidates admitted in %v", time.Since(start).Round(time.Millisecond))
	sentAt := map[string]map[string]int{} // identity -> the widths its layers were sent at
	for id, ctx := range cands {
		sentAt[id] = waitLayers(t, ctx, id)
	}
	t.Logf("both candidates sending their higher layers in %v", time.Since(start).Round(time.Millisecond))

	// The grid: every camera and screen at the low layer.
	type key struct{ id, source string }
	low := map[key]int{}
	for _, id := range []string{"cand-a", "cand-b"} {
		for _, source := range []string{"camera", "screen"} {
			above := layerAbove(t, cands[id], id, source, sentAt[id])
			in := waitVideo(t, proctor, 25*time.Second, fmt.Sprintf("proctor decoding %s's %s below %d wide", id, source, above), id, source,
				func(in inbound) bool { return in.FrameWidth > 0 && in.FrameWidth < above }, nil)
			low[key{id, source}] = in.FrameWidth
			t.Logf("proctor: %s %s at %dx%d (layer above sent %d wide), %d frames", id, source, in.FrameWidth, in.FrameHeight, above, in.FramesDecoded)
			waitElement(t, proctor, "proctor", fmt.Sprintf(`#grid [data-candidate=%q] [data-slot=%q] video[data-identity=%[1]q][data-source=%[2]q]`, id, source))
		}
	}
	waitFor(t, 10*time.Second, "the proctor's connection badges", func() (bool, string) {
		s := evalString(proctor, `[...document.querySelectorAll('[data-badge="connection"]')].map((b) => b.textContent).join(',')`)
		return s == "connected,connected", s
	})
	checkIsolated(t, cands["cand-a"], "cand-a", "cand-b")
	checkIsolated(t, cands["cand-b"], "cand-b", "cand-a")
	t.Logf("grid at the low layer in %v", time.Since(start).Round(time.Millisecond))

	// Focus cand-a: its camera and screen go to the high layer.
	focusAt := time.Now()
	click(t, proctor, "proctor", `[data-candidate="cand-a"] [data-action="focus"]`)
	waitElement(t, proctor, "proctor", `#focus:not([hidden]) #focus-media [data-candidate="cand-a"].focused`)
	for _, source := range []string{"camera", "screen"} {
		lo := low[key{"cand-a", source}]
		in := waitVideo(t, proctor, 30*time.Second, fmt.Sprintf("proctor decoding cand-a's %s above the low layer's %d", source, lo), "cand-a", source,
			func(in inbound) bool { return in.FrameWidth > lo },
			func() string {
				return fmt.Sprintf("cand-a sends %s; proctor: layers %s, last events %s, error %q", sending(cands["cand-a"]),
					evalString(proctor, `JSON.stringify(window.vigil.layers)`),
					evalString(proctor, `JSON.stringify(window.vigil.events.slice(-8))`),
					evalString(proctor, `document.getElementById('error').textContent`))
			})
		t.Logf("proctor, focused: cand-a %s at %dx%d (low was %d wide) %v after the click", source, in.FrameWidth, in.FrameHeight, lo, time.Since(focusAt).Round(time.Millisecond))
	}
	var layers map[string]struct {
		Identity string `json:"identity"`
		Layer    string `json:"layer"`
	}
	if err := eval(proctor, `window.vigil.layers`, &layers); err != nil {
		t.Fatal(err)
	}
	for id, l := range layers {
		want := "low"
		if l.Identity == "cand-a" {
			want = "high"
		}
		if l.Layer != want {
			t.Errorf("layer of %s (%s): %q, want %q", id, l.Identity, l.Layer, want)
		}
	}
	if len(layers) != 4 {
		t.Errorf("layers %+v, want 4 simulcast videos", layers)
	}
	if s, err := stats(proctor); err == nil {
		if in, ok := s.findSource("video", "cand-b", "camera"); !ok || in.FrameWidth >= layerAbove(t, cands["cand-b"], "cand-b", "camera", sentAt["cand-b"]) {
			t.Errorf("cand-b's camera left the low layer: %+v", in)
		}
	}
	t.Logf("focus at the high layer in %v", time.Since(start).Round(time.Millisecond))

	// cand-b hides its page: the proctor sees tab_hidden within a second.
	setWindowState(t, cands["cand-b"], cdpbrowser.WindowStateMinimized)
	var sent reportSent
	waitFor(t, 5*time.Second, "cand-b reporting tab_hidden", func() (bool, string) {
		var rs []reportSent
		if err := eval(cands["cand-b"], `window.vigil.reported`, &rs); err != nil {
			return false, err.Error()
		}
		for _, r := range rs {
			if r.Type == "tab_hidden" {
				sent = r
				return true, ""
			}
		}
		return false, fmt.Sprintf("reported %+v, visibility %s", rs, evalString(cands["cand-b"], `document.visibilityState`))
	})
	var seen incidentSeen
	waitFor(t, 5*time.Second, "the proctor showing cand-b's tab_hidden", func() (bool, string) {
		incs, err := proctorIncidents(proctor)
		if err != nil {
			return false, err.Error()
		}
		for _, in := range incs {
			if in.Identity == "cand-b" && in.Type == "tab_hidden" {
				seen = in
				return true, ""
			}
		}
		return false, fmt.Sprintf("incidents %+v", incs)
	})
	latency := time.Duration(seen.ShownAt-sent.At) * time.Millisecond
	t.Logf("tab_hidden: hidden page to the proctor's page in %v", latency)
	if latency > time.Second || !seen.Live {
		t.Errorf("the proctor showed tab_hidden %v after the page hid (live %v), want within 1s", latency, seen.Live)
	}
	waitElement(t, proctor, "proctor", `#incident-list li[data-identity="cand-b"][data-type="tab_hidden"]`)
	waitElement(t, proctor, "proctor", `[data-candidate="cand-b"] [data-badge="incidents"][data-count]`)
	if text := evalString(proctor, `document.querySelector('[data-candidate="cand-b"] .last-incident').textContent`); !strings.Contains(text, "Left the exam tab") && !strings.Contains(text, "window") {
		t.Errorf("cand-b's card shows the last incident as %q", text)
	}
	setWindowState(t, cands["cand-b"], cdpbrowser.WindowStateNormal)

	// A proctor's page opened later reads the room's earlier incidents
	// (with its own join token) into its feed and the candidates' counts.
	late := b.open(t, "proctor-2", srv.JoinURL(t, "exam", "pia", "proctor"))
	waitState(t, late, "proctor-2", "joined")
	waitFor(t, 10*time.Second, "the later proctor showing cand-b's earlier tab_hidden", func() (bool, string) {
		incs, err := proctorIncidents(late)
		if err != nil {
			return false, err.Error()
		}
		for _, in := range incs {
			if in.Identity == "cand-b" && in.Type == "tab_hidden" && !in.Live && in.ID == seen.ID {
				return true, ""
			}
		}
		return false, fmt.Sprintf("incidents %+v", incs)
	})
	waitElement(t, late, "proctor-2", `#grid [data-candidate="cand-b"] [data-badge="incidents"][data-count]`)

	// Still no candidate media at the other candidate, after all that.
	checkIsolated(t, cands["cand-a"], "cand-a", "cand-b")
	checkIsolated(t, cands["cand-b"], "cand-b", "cand-a")

	// The whole exam ends.
	click(t, proctor, "proctor", "#end-all")
	run(t, proctor, "proctor", `document.getElementById('end-all-message').value = 'Time is up'`)
	click(t, proctor, "proctor", "#end-all-confirm-button")
	for id, ctx := range cands {
		waitPhase(t, ctx, id, "ended")
		if text := evalString(ctx, `document.getElementById('exam-over').textContent`); !strings.Contains(text, "exam has ended") || !strings.Contains(text, "Time is up") {
			t.Errorf("%s's page says %q at the end", id, text)
		}
	}
	waitFor(t, 10*time.Second, "the proctor's grid emptied", func() (bool, string) {
		n := evalString(proctor, `String(document.querySelectorAll('#grid [data-candidate]').length)`)
		return n == "0", n + " cards"
	})
	t.Logf("proctoring done in %v", time.Since(start).Round(time.Millisecond))
}

// shareSurface makes getDisplayMedia ask for window.__shareSurface
// instead of what the page asks for, which Chromium's fake picker then
// gives: a test-only way to play a candidate who picks a window.
const shareSurface = `(() => {
  const md = navigator.mediaDevices;
  const orig = md.getDisplayMedia.bind(md);
  window.__shareSurface = 'window';
  md.getDisplayMedia = (c = {}) => {
    const video = Object.assign({}, typeof c.video === 'object' ? c.video : {}, { displaySurface: window.__shareSurface });
    return orig(Object.assign({}, c, { video }));
  };
})();`

// TestCandidatePreflightRefusesWindowShare: a candidate who shares a
// window, not the entire screen, sees the screen check failed with a
// plain reason and cannot join; sharing the entire screen fixes it; a
// proctor then rejects the candidate, whose page says so.
func TestCandidatePreflightRefusesWindowShare(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "exam", "proctoring")
	b := startBrowser(t)

	cand := b.openWith(t, "cand", srv.JoinURL(t, "exam", "cara", "candidate"), shareSurface)
	waitCheck(t, cand, "cara", "camera", "ready")
	waitCheck(t, cand, "cara", "microphone", "ready")
	click(t, cand, "cara", "#share-screen")
	c := waitCheck(t, cand, "cara", "screen", "failed")
	if !strings.Contains(c.Reason, "window") || !strings.Contains(c.Reason, "entire screen") {
		t.Errorf("screen check reason %q, want it to say a window was shared, not the entire screen", c.Reason)
	}
	shown := evalString(cand, `document.querySelector('[data-check="screen"]').textContent`)
	if !strings.Contains(shown, "Failed") || !strings.Contains(shown, c.Reason) {
		t.Errorf("screen check shown as %q", shown)
	}
	var disabled bool
	if err := eval(cand, `document.getElementById('join-exam').disabled`, &disabled); err != nil || !disabled {
		t.Errorf("join button enabled with a window share (err %v)", err)
	}
	// Clicking anyway does nothing: no session is opened.
	click(t, cand, "cara", "#join-exam")
	time.Sleep(300 * time.Millisecond)
	var sessions int
	if err := eval(cand, `window.__fetches.filter((f) => f.url.includes('/sessions')).length`, &sessions); err != nil || sessions != 0 {
		t.Errorf("the page opened %d sessions before passing its pre-flight (err %v)", sessions, err)
	}
	if p := evalString(cand, `window.vigil.phase`); p != "preflight" {
		t.Errorf("phase %q after clicking a disabled join", p)
	}

	// The candidate shares the entire screen: ready, and it can join.
	run(t, cand, "cara", `window.__shareSurface = 'monitor'`)
	click(t, cand, "cara", "#share-screen")
	waitCheck(t, cand, "cara", "screen", "ready")
	if err := eval(cand, `document.getElementById('join-exam').disabled`, &disabled); err != nil || disabled {
		t.Errorf("join button disabled with every check ready (err %v)", err)
	}
	click(t, cand, "cara", "#join-exam")
	waitState(t, cand, "cara", "joined")
	waitPhase(t, cand, "cara", "waiting")

	// A proctor turns the candidate away with a reason.
	proctor := b.open(t, "proctor", srv.JoinURL(t, "exam", "pat", "proctor"))
	waitState(t, proctor, "proctor", "joined")
	waitElement(t, proctor, "proctor", `#waiting-list [data-candidate="cara"][data-state="waiting"]`)
	click(t, proctor, "proctor", `[data-candidate="cara"] [data-action="reject"]`)
	run(t, proctor, "proctor", `document.getElementById('msg-cara').value = 'Your ID was not visible'`)
	click(t, proctor, "proctor", `[data-candidate="cara"] .confirm button[type="submit"]`)
	waitPhase(t, cand, "cara", "ended")
	waitState(t, cand, "cara", "left")
	if text := evalString(cand, `document.getElementById('exam-over').textContent`); !strings.Contains(text, "did not admit") || !strings.Contains(text, "Your ID was not visible") {
		t.Errorf("the rejected page says %q", text)
	}
	waitFor(t, 10*time.Second, "the proctor's waiting room emptied", func() (bool, string) {
		ok, err := exists(proctor, `[data-candidate="cara"]`)
		return err == nil && !ok, fmt.Sprintf("card still there (err %v)", err)
	})
}

// audioFrom returns the packets a page has received of identity's
// microphone (-1 for no such inbound stream).
func audioFrom(t *testing.T, ctx context.Context, name, identity string) int {
	t.Helper()
	s, err := stats(ctx)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	in, ok := s.find("audio", identity)
	if !ok {
		return -1
	}
	return in.PacketsReceived
}

// pressTalk presses (or releases) a push-to-talk button of the proctor.
func pressTalk(t *testing.T, proctor context.Context, selector string, down bool) {
	t.Helper()
	ev := "pointerup"
	if down {
		ev = "pointerdown"
	}
	run(t, proctor, "proctor", fmt.Sprintf(`document.querySelector(%q).dispatchEvent(new PointerEvent(%q, {bubbles: true, pointerId: 1}))`, selector, ev))
}

// TestProctorTalksToOneCandidate: a candidate's page receives the
// proctor's microphone only while the proctor holds its push-to-talk
// button, and the other candidate does not; talking to everyone reaches
// both; an announcement reaches both, a private message one; a flag with
// a note lands in the focused candidate's timeline; ending one
// candidate's exam leaves the other in it.
func TestProctorTalksToOneCandidate(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "exam", "proctoring")
	b := startBrowser(t)

	proctor := b.open(t, "proctor", srv.JoinURL(t, "exam", "pat", "proctor"))
	waitState(t, proctor, "proctor", "joined")
	a := openCandidate(t, b, srv, "exam", "cand-a")
	bb := openCandidate(t, b, srv, "exam", "cand-b")
	admit(t, proctor, a, "cand-a")
	admit(t, proctor, bb, "cand-b")
	waitFor(t, 10*time.Second, "the proctor's talk buttons enabled", func() (bool, string) {
		s := evalString(proctor, `String(!document.querySelector('[data-candidate="cand-a"] [data-action="talk"]').disabled)`)
		return s == "true", evalString(proctor, `document.getElementById('mic-state').textContent`)
	})
	if n := audioFrom(t, a, "cand-a", "pat"); n > 0 {
		t.Errorf("cand-a got %d packets of the proctor's microphone before any talk", n)
	}

	// Hold to talk to cand-a.
	talkA := `[data-candidate="cand-a"] [data-action="talk"]`
	pressTalk(t, proctor, talkA, true)
	first := -1
	waitFor(t, 15*time.Second, "cand-a receiving the proctor's microphone", func() (bool, string) {
		n := audioFrom(t, a, "cand-a", "pat")
		if first < 0 && n > 0 {
			first = n
		}
		return first > 0 && n > first+10, fmt.Sprintf("packets %d (first %d); %s", n, first, debugState(a))
	})
	waitElement(t, a, "cand-a", `#talk-indicator:not([hidden])`)
	waitElement(t, a, "cand-a", `audio[data-identity="pat"][data-source="microphone"]`)
	waitElement(t, proctor, "proctor", `[data-candidate="cand-a"] [data-badge="talking"]:not([hidden])`)
	time.Sleep(time.Second) // while cand-a hears the proctor, cand-b must not
	if n := audioFrom(t, bb, "cand-b", "pat"); n > 0 {
		t.Errorf("cand-b got %d packets of the proctor talking to cand-a", n)
	}

	// Release: the packets stop.
	pressTalk(t, proctor, talkA, false)
	var stopped int
	waitFor(t, 5*time.Second, "cand-a's proctor audio stopping", func() (bool, string) {
		before := audioFrom(t, a, "cand-a", "pat")
		time.Sleep(400 * time.Millisecond)
		stopped = audioFrom(t, a, "cand-a", "pat")
		return stopped == before, fmt.Sprintf("packets %d then %d", before, stopped)
	})
	time.Sleep(1500 * time.Millisecond)
	if n := audioFrom(t, a, "cand-a", "pat"); n != stopped {
		t.Errorf("cand-a still receives the proctor's microphone after the release: %d then %d packets", stopped, n)
	}
	waitElement(t, a, "cand-a", `#talk-indicator[hidden]`)
	if n := audioFrom(t, bb, "cand-b", "pat"); n > 0 {
		t.Errorf("cand-b got %d packets of the proctor's microphone", n)
	}

	// Hold to talk to everyone: both hear the proctor, until released.
	pressTalk(t, proctor, "#talk-all", true)
	for id, ctx := range map[string]context.Context{"cand-a": a, "cand-b": bb} {
		from := -1
		waitFor(t, 15*time.Second, id+" hearing the proctor talk to everyone", func() (bool, string) {
			n := audioFrom(t, ctx, id, "pat")
			if from < 0 {
				from = max(n, 0)
			}
			return n > from+10, fmt.Sprintf("packets %d (from %d)", n, from)
		})
	}
	pressTalk(t, proctor, "#talk-all", false)
	waitFor(t, 5*time.Second, "cand-b's proctor audio stopping", func() (bool, string) {
		before := audioFrom(t, bb, "cand-b", "pat")
		time.Sleep(400 * time.Millisecond)
		after := audioFrom(t, bb, "cand-b", "pat")
		return after == before, fmt.Sprintf("packets %d then %d", before, after)
	})

	// An announcement reaches both; a private message only cand-a.
	run(t, proctor, "proctor", `document.getElementById('announce-text').value = 'Ten minutes left'`)
	click(t, proctor, "proctor", `#announce-form button[type="submit"]`)
	click(t, proctor, "proctor", `[data-candidate="cand-a"] [data-action="focus"]`)
	run(t, proctor, "proctor", `document.getElementById('chat-text').value = 'Please face the camera'`)
	click(t, proctor, "proctor", `#chat-form button[type="submit"]`)
	for id, ctx := range map[string]context.Context{"cand-a": a, "cand-b": bb} {
		waitFor(t, 5*time.Second, id+" showing the announcement", func() (bool, string) {
			text := evalString(ctx, `document.getElementById('messages').textContent`)
			return strings.Contains(text, "Ten minutes left") && strings.Contains(text, "to everyone"), text
		})
	}
	waitFor(t, 5*time.Second, "cand-a showing the private message", func() (bool, string) {
		text := evalString(a, `document.getElementById('messages').textContent`)
		return strings.Contains(text, "Please face the camera"), text
	})
	if text := evalString(bb, `document.getElementById('messages').textContent`); strings.Contains(text, "Please face the camera") {
		t.Errorf("cand-b got cand-a's private message: %q", text)
	}

	// A flag with a note, on the focused candidate.
	run(t, proctor, "proctor", `document.getElementById('flag-note').value = 'Looked off screen for 20 s'`)
	click(t, proctor, "proctor", `#flag-form button[type="submit"]`)
	waitFor(t, 5*time.Second, "the flag in cand-a's timeline", func() (bool, string) {
		text := evalString(proctor, `[...document.querySelectorAll('#timeline li[data-type="manual"]')].map((li) => li.textContent).join('|')`)
		return strings.Contains(text, "Looked off screen for 20 s") && strings.Contains(text, "pat"), text
	})
	incs, err := proctorIncidents(proctor)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, in := range incs {
		if in.Type == "manual" && in.Identity == "cand-a" && in.Note == "Looked off screen for 20 s" && in.Source == "proctor" {
			found = true
		}
	}
	if !found {
		t.Errorf("no manual incident of cand-a in %+v", incs)
	}
	checkPlayFromHere(t, proctor, "cand-a")
	checkIsolated(t, bb, "cand-b", "cand-a")

	// Ending cand-a's exam ends it alone.
	click(t, proctor, "proctor", `[data-candidate="cand-a"] [data-action="end"]`)
	run(t, proctor, "proctor", `document.getElementById('msg-cand-a').value = 'Phone on the desk'`)
	click(t, proctor, "proctor", `[data-candidate="cand-a"] .confirm button[type="submit"]`)
	waitPhase(t, a, "cand-a", "ended")
	if text := evalString(a, `document.getElementById('exam-over').textContent`); !strings.Contains(text, "Phone on the desk") {
		t.Errorf("cand-a's page says %q at the end", text)
	}
	waitFor(t, 5*time.Second, "the proctor dropping cand-a", func() (bool, string) {
		gone, err := exists(proctor, `[data-candidate="cand-a"]`)
		return err == nil && !gone, "cand-a still shown"
	})
	if p := evalString(bb, `window.vigil.phase`); p != "exam" {
		t.Errorf("cand-b in phase %q after cand-a's exam ended", p)
	}
}

// playbackSeen is the proctor page's window.vigil.playback.
type playbackSeen struct {
	Identity    string  `json:"identity"`
	Incident    string  `json:"incident"`
	Recording   string  `json:"recording"`
	File        string  `json:"file"`
	Offset      float64 `json:"offset"`
	State       string  `json:"state"`
	Error       string  `json:"error"`
	Src         string  `json:"src"`
	CurrentTime float64 `json:"currentTime"`
	Duration    float64 `json:"duration"` // -1: infinite
	ReadyState  int     `json:"readyState"`
	MediaError  int     `json:"mediaError"`
	Loads       int     `json:"loads"`
}

// checkPlayFromHere clicks "Play from here" on the focused identity's
// manual incident in the proctor's timeline: the playback video loads
// the incident's recording file through its signed URL, seeks to the
// incident's offset and plays on, with no media error, while the live
// camera of the candidate goes on decoding.
func checkPlayFromHere(t *testing.T, proctor context.Context, identity string) {
	t.Helper()
	start := time.Now()
	var inc struct {
		ID            string  `json:"id"`
		RecordingID   *string `json:"recording_id"`
		RecordingFile *string `json:"recording_file"`
		OffsetMs      *int64  `json:"offset_ms"`
	}
	if err := eval(proctor, fmt.Sprintf(`window.vigil.incidents.filter((i) => i.identity === %q && i.type === 'manual').pop()`, identity), &inc); err != nil {
		t.Fatal(err)
	}
	if inc.RecordingID == nil || inc.RecordingFile == nil || inc.OffsetMs == nil {
		t.Fatalf("the manual incident of %s is not placed in a recording: %+v", identity, inc)
	}
	btn := fmt.Sprintf(`#timeline li[data-incident-id=%q] [data-action="play-from"]`, inc.ID)
	waitElement(t, proctor, "proctor", btn)
	click(t, proctor, "proctor", btn)
	want := float64(*inc.OffsetMs) / 1000
	var pb playbackSeen
	waitFor(t, 10*time.Second, "the proctor playing the recording from the incident", func() (bool, string) {
		if err := eval(proctor, `window.vigil.playback`, &pb); err != nil {
			return false, err.Error()
		}
		ok := pb.State == "playing" && pb.ReadyState >= 2 && pb.MediaError == 0 && pb.Duration != 0 &&
			pb.CurrentTime >= want-0.25 && pb.CurrentTime <= want+3
		return ok, fmt.Sprintf("%+v (offset %.3f s); %s", pb, want, evalString(proctor, `document.getElementById('playback-state').textContent`))
	})
	if pb.Identity != identity || pb.Incident != inc.ID || pb.Recording != *inc.RecordingID || pb.File != *inc.RecordingFile {
		t.Errorf("playback %+v, want incident %s of %s", pb, inc.ID, identity)
	}
	if ok, err := exists(proctor, `#focus #playback:not([hidden]) video[data-playback][controls]`); err != nil || !ok {
		t.Errorf("no visible playback video in the focus view (err %v)", err)
	}
	t.Logf("playback of %s at %.2f s (incident at %.3f s, duration %.2f, %d loads) %v after the click", pb.File, pb.CurrentTime, want, pb.Duration, pb.Loads, time.Since(start).Round(time.Millisecond))
	// It plays on, and the live camera goes on.
	at := pb.CurrentTime
	waitFor(t, 5*time.Second, "the playback advancing", func() (bool, string) {
		if err := eval(proctor, `window.vigil.playback`, &pb); err != nil {
			return false, err.Error()
		}
		return pb.CurrentTime > at+0.3 && pb.MediaError == 0, fmt.Sprintf("%+v", pb)
	})
	waitVideo(t, proctor, 5*time.Second, "the proctor still decoding "+identity+"'s live camera", identity, "camera",
		func(inbound) bool { return true }, nil)
}
