package signaling_test

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/incidents"
	"github.com/vigil-media/vigil/signaling"
	"github.com/vigil-media/vigil/signaling/vigiltest"
	"github.com/vigil-media/vigil/webhooks"
)

// scrapeText GETs /metrics and returns its text.
func scrapeText(t *testing.T, srv *vigiltest.Server) string {
	t.Helper()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %d %v", resp.StatusCode, err)
	}
	return string(b)
}

var httpSeriesRE = regexp.MustCompile(`(?m)^vigil_http_request_duration_seconds_count\{code="([^"]*)",method="([^"]*)",route="([^"]*)"\}`)

// httpSeries returns the label sets of the HTTP latency histogram.
func httpSeries(text string) map[[3]string]bool {
	out := map[[3]string]bool{}
	for _, m := range httpSeriesRE.FindAllStringSubmatch(text, -1) {
		out[[3]string{m[1], m[2], m[3]}] = true
	}
	return out
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// TestHTTPMetricsBoundedUnderMadeUpMethodsAndPaths is the attack of
// the metrics: anyone, without a key, sends 600 requests with made-up
// methods and 600 to random paths. The latency histogram labels methods
// from a fixed set and routes from the router's patterns, so /metrics
// gains at most a few series (route "unmatched", method "other"), not
// one per request.
func TestHTTPMetricsBoundedUnderMadeUpMethodsAndPaths(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "lobby", "broadcast")
	before := scrapeText(t, srv)
	seriesBefore := httpSeries(before)

	client := &http.Client{Timeout: 30 * time.Second}
	do := func(method, path string) {
		req, err := http.NewRequest(method, srv.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode < 400 {
			t.Errorf("%s %s: %d", method, path, resp.StatusCode)
		}
	}
	paths := []string{"/v1/rooms", "/v1/rooms/lobby", "/metrics", "/nope"}
	for i := range 600 {
		do("X"+strings.ToUpper(randomHex(6)), paths[i%len(paths)])
	}
	for range 600 {
		do(http.MethodGet, "/"+randomHex(8)+"/"+randomHex(4))
	}
	after := scrapeText(t, srv)
	seriesAfter := httpSeries(after)
	t.Logf("/metrics: %d series of vigil_http_request_duration_seconds, %d bytes before; %d series, %d bytes after 1200 hostile requests",
		len(seriesBefore), len(before), len(seriesAfter), len(after))

	fixed := map[string]bool{"GET": true, "POST": true, "PATCH": true, "DELETE": true, "OPTIONS": true, "HEAD": true, "other": true}
	added := 0
	for s := range seriesAfter {
		code, method, route := s[0], s[1], s[2]
		if !fixed[method] {
			t.Errorf("method label %q outside the fixed set", method)
		}
		if route != "unmatched" && !strings.HasPrefix(route, "/") {
			t.Errorf("route label %q is not a route pattern", route)
		}
		if strings.Contains(route, "lobby") {
			t.Errorf("route label %q carries a path, not the pattern", route)
		}
		if !seriesBefore[s] {
			added++
			t.Logf("new series: code=%s method=%s route=%s", code, method, route)
		}
	}
	// Each path, with "other" or GET, and its status: a handful.
	if added > 12 {
		t.Errorf("%d series added by 1200 hostile requests, want a handful", added)
	}
	if len(after)-len(before) > 64<<10 {
		t.Errorf("/metrics grew by %d bytes", len(after)-len(before))
	}
}

// hookSink is a real webhook receiver that keeps the events it got.
type hookSink struct {
	mu     sync.Mutex
	events []webhooks.Event
}

func (h *hookSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if err := webhooks.Verify("hook-secret", r.Header.Get(webhooks.SignatureHeader), body, time.Now(), 5*time.Minute); err != nil {
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	var ev webhooks.Event
	if err := json.Unmarshal(body, &ev); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	h.mu.Lock()
	h.events = append(h.events, ev)
	h.mu.Unlock()
}

func (h *hookSink) incidents() []incidents.Incident {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []incidents.Incident
	for _, ev := range h.events {
		if ev.Type == webhooks.IncidentCreated {
			var inc incidents.Incident
			_ = json.Unmarshal(ev.Data, &inc)
			out = append(out, inc)
		}
	}
	return out
}

// TestIncidentsReachWebhooksAndMetrics: an incident a candidate's page
// reports and one a proctor flags each reach the webhook receiver as
// incident.created (the stored incident, same id) and count in
// vigil_incidents_total by type.
func TestIncidentsReachWebhooksAndMetrics(t *testing.T) {
	sink := &hookSink{}
	rx := httptest.NewServer(sink)
	defer rx.Close()
	hooks, err := webhooks.New(webhooks.Config{URLs: []string{rx.URL}, Secret: "hook-secret"})
	if err != nil {
		t.Fatal(err)
	}
	defer hooks.Close(time.Second)
	srv := vigiltest.StartWith(t, vigiltest.Options{Webhooks: hooks})
	if m := scrapeText(t, srv); !strings.Contains(m, `vigil_incidents_total{type="tab_hidden"} 0`) {
		t.Fatalf("the incident counter is not exposed at 0 before any incident")
	}
	syn := newSynthetic(t, "cand")
	proctor, candidate := examRoom(t, srv, "exam-hooks", "cand", map[string]webrtc.TrackLocal{"camera": syn.video, "microphone": syn.audio})
	if status, body, _ := candidate.Post(vigiltest.MustJSON(map[string]any{"type": "report_incident", "data": map[string]string{"type": "tab_hidden"}}), ""); status != http.StatusOK {
		t.Fatalf("report_incident: %d %s", status, body)
	}
	if status, body, _ := proctor.Post(vigiltest.MustJSON(map[string]any{"type": "flag_incident", "data": map[string]string{"identity": "cand", "note": "look"}}), ""); status != http.StatusOK {
		t.Fatalf("flag_incident: %d %s", status, body)
	}
	reported := incidentEvent(t, proctor, 10*time.Second, func(i incidents.Incident) bool { return i.Type == incidents.TabHidden })
	flagged := incidentEvent(t, proctor, 10*time.Second, func(i incidents.Incident) bool { return i.Type == incidents.Manual })
	vigiltest.WaitFor(t, 20*time.Second, "incident.created webhooks", func() bool {
		got := map[string]bool{}
		for _, inc := range sink.incidents() {
			got[inc.ID] = inc.Room == "exam-hooks" && inc.Identity == "cand"
		}
		return got[reported.ID] && got[flagged.ID]
	})
	m := scrapeText(t, srv)
	for _, want := range []string{`vigil_incidents_total{type="tab_hidden"} 1`, `vigil_incidents_total{type="manual"} 1`} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics has no %s", want)
		}
	}
	t.Logf("webhook incident.created events: %d", len(sink.incidents()))
}

// heapInUse is the live heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// rss is the process's resident set size from /proc, or 0.
func rss() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// TestOfferMadeUpMidsBounded is the attack on declared sources: a broadcast
// viewer sends 200 offers, each declaring 2,500 made-up mids in sources.
// Each is refused (400 invalid_sdp: the offer sends on none of them) and
// nothing of it is kept, so the server's heap does not grow with them;
// the viewer's honest offer is then answered and connects.
func TestOfferMadeUpMidsBounded(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "stage", "broadcast")
	viewer := vigiltest.Dial(t, srv, "stage", "viewer", "viewer")
	viewer.WaitEvent("joined", nil)
	if _, err := viewer.PC.AddTransceiverFromKind(webrtc.RTPCodecTypeVideo, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
		t.Fatal(err)
	}
	offer, err := viewer.PC.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := viewer.PC.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	heapBefore, rssBefore := heapInUse(), rss()
	codes := map[string]int{}
	for i := range 200 {
		sources := make(map[string]string, 2500)
		for j := range 2500 {
			sources[fmt.Sprintf("%03d-%04d", i, j)] = "camera"
		}
		status, body, _ := viewer.Post(vigiltest.MustJSON(map[string]any{"type": "offer", "data": map[string]any{"sdp": offer.SDP, "sources": sources}}), "")
		if status != http.StatusBadRequest {
			t.Fatalf("offer %d with made-up mids: %d %s", i, status, body)
		}
		codes[vigiltest.ErrorCode(t, body)]++
	}
	heapAfter, rssAfter := heapInUse(), rss()
	t.Logf("200 offers x 2500 made-up mids: refusals %v; heap %d -> %d KiB (%+d KiB); RSS %d -> %d KiB (%+d KiB)",
		codes, heapBefore>>10, heapAfter>>10, (int64(heapAfter)-int64(heapBefore))>>10,
		rssBefore>>10, rssAfter>>10, (int64(rssAfter)-int64(rssBefore))>>10)
	if codes["invalid_sdp"] != 200 {
		t.Errorf("refusals %v, want 200 invalid_sdp", codes)
	}
	// Kept, 500,000 keys would be tens of MB; bound only what no
	// keeping could stay under.
	if grew := int64(heapAfter) - int64(heapBefore); grew > 16<<20 {
		t.Errorf("the heap grew by %d MiB", grew>>20)
	}

	// The server goes on serving the viewer: its honest offer is
	// answered and connects.
	if status, body, _ := viewer.Post(vigiltest.MustJSON(map[string]any{"type": "offer", "data": map[string]any{"sdp": offer.SDP, "sources": map[string]string{}}}), ""); status != http.StatusOK {
		t.Fatalf("honest offer: %d %s", status, body)
	}
	vigiltest.WaitFor(t, 20*time.Second, "the viewer connected", func() bool {
		return viewer.PC.ConnectionState() == webrtc.PeerConnectionStateConnected
	})
}

// TestRateLimitIPv6PerPrefix: behind a trusted proxy, IPv6 clients are
// limited per /64, so one subscriber cannot get a fresh bucket by
// picking another address of its prefix; a flood of clients from other
// prefixes each gets its own bucket (no shared overflow bucket that one
// flood could exhaust for everyone), and the spent prefix stays spent.
func TestRateLimitIPv6PerPrefix(t *testing.T) {
	srv := vigiltest.StartWith(t, vigiltest.Options{Configure: func(c *signaling.Config) {
		c.MintRate = 0.01 // a burst of 1, then one token per 100 s
		c.TrustedProxies = []string{"127.0.0.1"}
	}})
	srv.CreateRoom(t, "class", "conference")
	mint := func(from string) (*http.Response, []byte) {
		return request(t, srv, "POST", "/v1/rooms/class/tokens",
			map[string]string{"Authorization": "Bearer " + srv.AdminKey, "X-Forwarded-For": from},
			`{"identity":"p","role":"participant"}`)
	}
	if resp, body := mint("2001:db8:a:b::1"); resp.StatusCode != http.StatusCreated {
		t.Fatalf("first mint: %d %s", resp.StatusCode, body)
	}
	resp, body := mint("2001:db8:a:b:ffff::2")
	wantRateLimited(t, "another address of the same /64", resp, body)

	const others = 2000
	allowed := 0
	for i := range others {
		if resp, _ := mint(fmt.Sprintf("2001:db8:%x:%x::1", 0x100+i/256, i%256)); resp.StatusCode == http.StatusCreated {
			allowed++
		}
	}
	resp, body = mint("2001:db8:a:b::3")
	t.Logf("%d clients of other /64s: %d allowed; the spent /64 afterwards: %d", others, allowed, resp.StatusCode)
	if allowed != others {
		t.Errorf("%d of %d clients from other /64s allowed: they share a bucket", allowed, others)
	}
	wantRateLimited(t, "the spent /64 after the flood", resp, body)
}

// TestIdempotencyBoundedPerSession: a session POSTing messages with
// 1000 fresh Idempotency-Keys keeps only its latest replies (its oldest
// key runs again), and another session's reply is still replayed.
func TestIdempotencyBoundedPerSession(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "r", "conference")
	a := vigiltest.DialVia(t, srv, "r", "alice", "participant", "longpoll")
	b := vigiltest.DialVia(t, srv, "r", "bob", "participant", "longpoll")
	a.WaitEvent("joined", nil)
	b.WaitEvent("joined", nil)
	bad := []byte(`{"type":"answer","data":{"sdp":"v=0"}}`) // invalid_state: cheap, and changes nothing
	if s, body, _ := a.Post(bad, "alice-key"); s != http.StatusConflict {
		t.Fatalf("alice: %d %s", s, body)
	}
	const flood = 1000
	for i := range flood {
		if s, body, replayed := b.Post(bad, fmt.Sprint("bob-", i)); s != http.StatusConflict || replayed {
			t.Fatalf("bob's key %d: %d %s replayed=%v", i, s, body, replayed)
		}
	}
	_, _, aliceReplayed := a.Post(bad, "alice-key")
	_, _, bobOldest := b.Post(bad, "bob-0")
	_, _, bobNewest := b.Post(bad, fmt.Sprint("bob-", flood-1))
	t.Logf("after %d keys of bob: alice's reply replayed=%v, bob's oldest replayed=%v, bob's newest replayed=%v", flood, aliceReplayed, bobOldest, bobNewest)
	if !aliceReplayed {
		t.Error("another session's flood evicted alice's reply")
	}
	if bobOldest {
		t.Error("bob's oldest reply is kept after 1000 newer keys: no per-session bound")
	}
	if !bobNewest {
		t.Error("bob's newest reply is not kept")
	}
}
