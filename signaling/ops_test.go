package signaling_test

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/interceptor"
	"github.com/pion/rtcp"
	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/signaling/vigiltest"
	"github.com/vigil-media/vigil/webhooks"
	"go.uber.org/goleak"
)

// scrape reads /metrics into "name{labels}" -> value, labels as exposed.
func scrape(t *testing.T, srv *vigiltest.Server) map[string]float64 {
	t.Helper()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("GET /metrics: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

// dialReporting is dial with a client that runs pion's default
// interceptors, so it sends receiver reports (jitter, loss, and what RTT
// is computed from) as a browser does; it also records the SSRC of each
// track it receives, by "identity/source".
func dialReporting(t *testing.T, srv *vigiltest.Server, room, identity, role string) (*vigiltest.Client, func(key string) webrtc.SSRC) {
	t.Helper()
	sid, err := srv.OpenSession(t, room, srv.Token(t, room, identity, role))
	if err != nil {
		t.Fatal(err)
	}
	me := &webrtc.MediaEngine{}
	if err := me.RegisterDefaultCodecs(); err != nil {
		t.Fatal(err)
	}
	ir := &interceptor.Registry{}
	if err := webrtc.RegisterDefaultInterceptors(me, ir); err != nil {
		t.Fatal(err)
	}
	se := webrtc.SettingEngine{}
	se.SetIncludeLoopbackCandidate(true)
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	se.SetInterfaceFilter(func(name string) bool { return name == "lo" })
	pc, err := webrtc.NewAPI(webrtc.WithSettingEngine(se), webrtc.WithMediaEngine(me), webrtc.WithInterceptorRegistry(ir)).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	c := vigiltest.NewClient(t, srv, sid, pc)
	var smu sync.Mutex
	ssrcs := map[string]webrtc.SSRC{}
	pc.OnTrack(func(tr *webrtc.TrackRemote, recv *webrtc.RTPReceiver) {
		var mid string
		for _, tx := range pc.GetTransceivers() {
			if tx.Receiver() == recv {
				mid = tx.Mid()
			}
		}
		// Reading RTCP runs it through the interceptors: the sender
		// reports then feed the receiver reports' LSR and DLSR.
		go func() {
			for {
				if _, _, err := recv.ReadRTCP(); err != nil {
					return
				}
			}
		}()
		for {
			if _, _, err := tr.ReadRTP(); err != nil {
				return
			}
			info := c.CountPacket(mid)
			key := info.Identity + "/" + info.Source
			smu.Lock()
			ssrcs[key] = tr.SSRC()
			smu.Unlock()
		}
	})
	pc.OnICECandidate(func(cand *webrtc.ICECandidate) {
		if cand != nil {
			c.Send("candidate", "", cand.ToJSON())
		}
	})
	c.Connect(0)
	t.Cleanup(c.Close)
	return c, func(key string) webrtc.SSRC {
		smu.Lock()
		defer smu.Unlock()
		return ssrcs[key]
	}
}

// TestMetricsDuringSession scrapes /metrics during a real session (pion
// peers over loopback): the gauges describe the room, and the media,
// RTCP and HTTP counters move, and never go back when a subscriber leaves.
func TestMetricsDuringSession(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t, goleak.IgnoreCurrent()) })
	srv := vigiltest.Start(t)
	before := scrape(t, srv)
	if before["vigil_rooms"] != 0 || before["vigil_forwarded_packets_total"] != 0 {
		t.Fatalf("fresh server: rooms %v, forwarded %v", before["vigil_rooms"], before["vigil_forwarded_packets_total"])
	}
	srv.CreateRoom(t, "m", "conference")
	alice := dialQuiet(t, srv, "m", "alice", "participant")
	am := newSynthetic(t, "alice")
	alice.Publish(map[string]webrtc.TrackLocal{"camera": am.video, "microphone": am.audio})
	bob, ssrcOf := dialReporting(t, srv, "m", "bob", "participant")
	vigiltest.WaitFor(t, 10*time.Second, "bob receives alice", func() bool {
		return bob.Packets("alice/camera") > 0 && bob.Packets("alice/microphone") > 0
	})
	first := scrape(t, srv)
	gauges := map[string]float64{
		"vigil_rooms":                                    1,
		`vigil_participants{role="participant"}`:         2,
		`vigil_published_tracks{kind="video"}`:           1,
		`vigil_published_tracks{kind="audio"}`:           1,
		"vigil_subscribed_tracks":                        2,
		`vigil_signaling_sessions{transport="ws"}`:       2,
		"vigil_draining":                                 0,
		`vigil_packets_lost_total{direction="upstream"}`: 0,
	}
	for k, want := range gauges {
		if got := first[k]; got != want {
			t.Errorf("%s = %v, want %v", k, got, want)
		}
	}

	// Bob asks for keyframes and retransmissions, as a browser would on
	// loss.
	ssrc := uint32(ssrcOf("alice/camera"))
	for range 3 {
		if err := bob.PC.WriteRTCP([]rtcp.Packet{&rtcp.PictureLossIndication{MediaSSRC: ssrc}}); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		if err := bob.PC.WriteRTCP([]rtcp.Packet{&rtcp.TransportLayerNack{MediaSSRC: ssrc, Nacks: []rtcp.NackPair{{PacketID: 1}}}}); err != nil {
			t.Fatal(err)
		}
	}
	var second map[string]float64
	defer func() {
		if t.Failed() {
			for _, k := range []string{"vigil_forwarded_packets_total", "vigil_received_packets_total", "vigil_rtcp_plis_total", "vigil_rtcp_nacks_total", "vigil_rtt_seconds_count", "vigil_jitter_seconds_count"} {
				t.Logf("%s: %v then %v", k, first[k], second[k])
			}
		}
	}()
	vigiltest.WaitFor(t, 15*time.Second, "counters moving", func() bool {
		second = scrape(t, srv)
		return second["vigil_forwarded_packets_total"] > first["vigil_forwarded_packets_total"] &&
			second["vigil_forwarded_bytes_total"] > first["vigil_forwarded_bytes_total"] &&
			second["vigil_received_packets_total"] > first["vigil_received_packets_total"] &&
			second["vigil_received_bytes_total"] > first["vigil_received_bytes_total"] &&
			second["vigil_rtcp_plis_total"] >= 3 && second["vigil_rtcp_nacks_total"] >= 2 &&
			second["vigil_rtt_seconds_count"] > 0 && second["vigil_jitter_seconds_count"] > 0
	})
	if rtt := second[`vigil_rtt_seconds{quantile="0.5"}`]; rtt < 0 || rtt > 1 {
		t.Errorf("median RTT over loopback %v s", rtt)
	}
	if n := second[`vigil_http_request_duration_seconds_count{code="201",method="POST",route="/v1/rooms"}`]; n != 1 {
		t.Errorf("POST /v1/rooms observed %v times, want 1", n)
	}
	if n := second[`vigil_http_request_duration_seconds_count{code="201",method="POST",route="/v1/rooms/:room/sessions"}`]; n != 2 {
		t.Errorf("session opens observed %v times, want 2", n)
	}
	t.Logf("forwarded %v packets / %v bytes, received %v, rtt p50 %v s, jitter p50 %v s",
		second["vigil_forwarded_packets_total"], second["vigil_forwarded_bytes_total"], second["vigil_received_packets_total"],
		second[`vigil_rtt_seconds{quantile="0.5"}`], second[`vigil_jitter_seconds{quantile="0.5"}`])

	// Bob leaves: his down-tracks end, the counters keep what they sent.
	if status, body := srv.Do(t, "DELETE", "/v1/sessions/"+bob.Session, "", nil); status != http.StatusNoContent {
		t.Fatalf("leave: %d %s", status, body)
	}
	vigiltest.WaitFor(t, 10*time.Second, "bob's down-tracks retired", func() bool { return scrape(t, srv)["vigil_subscribed_tracks"] == 0 })
	third := scrape(t, srv)
	for _, k := range []string{"vigil_forwarded_packets_total", "vigil_forwarded_bytes_total", "vigil_rtcp_plis_total", "vigil_rtcp_nacks_total", "vigil_rtt_seconds_count", "vigil_received_packets_total"} {
		if third[k] < second[k] {
			t.Errorf("%s went down from %v to %v", k, second[k], third[k])
		}
	}
	if third[`vigil_participants{role="participant"}`] != 1 {
		t.Errorf("participants after bob left: %v", third[`vigil_participants{role="participant"}`])
	}
}

// hookReceiver is a real HTTP endpoint for webhooks: it verifies every
// signature, refuses the first attempt of every participant.joined event
// (so the dispatcher must retry), and records what it accepted.
type hookReceiver struct {
	secret string
	mu     sync.Mutex
	events []webhooks.Event
	tries  map[string]int // by event id
	bad    []string
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := webhooks.Verify(h.secret, r.Header.Get(webhooks.SignatureHeader), body, time.Now(), time.Minute); err != nil {
		h.bad = append(h.bad, err.Error())
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	var ev webhooks.Event
	if err := json.Unmarshal(body, &ev); err != nil {
		h.bad = append(h.bad, err.Error())
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	h.tries[ev.ID]++
	if ev.Type == webhooks.ParticipantJoined && h.tries[ev.ID] == 1 {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	h.events = append(h.events, ev)
	w.WriteHeader(http.StatusNoContent)
}

func (h *hookReceiver) types() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, e := range h.events {
		out = append(out, e.Type)
	}
	return out
}

// TestWebhooksEndToEnd runs a recorded session against a real receiver:
// room, participant, track and recording events arrive signed, in order
// (contiguous sequence numbers), the refused ones retried.
func TestWebhooksEndToEnd(t *testing.T) {
	rc := &hookReceiver{secret: "hook-secret", tries: map[string]int{}}
	hs := httptest.NewServer(rc)
	t.Cleanup(hs.Close)
	hooks, err := webhooks.New(webhooks.Config{URLs: []string{hs.URL + "/vigil"}, Secret: "hook-secret", MinBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hooks.Close(5 * time.Second) })
	srv := vigiltest.StartWith(t, vigiltest.Options{Webhooks: hooks})
	if status, body := admin(t, srv, "POST", "/v1/rooms", map[string]any{"name": "exam", "kind": "conference", "auto_record": true}); status != http.StatusCreated {
		t.Fatalf("create room: %d %s", status, body)
	}
	cand := dialQuiet(t, srv, "exam", "cand-1", "participant")
	media := newSynthetic(t, "cand-1")
	cand.Publish(map[string]webrtc.TrackLocal{"camera": media.video, "microphone": media.audio})
	vigiltest.WaitFor(t, 15*time.Second, "recording.started", func() bool { return slices.Contains(rc.types(), webhooks.RecordingStarted) })
	if status, body := admin(t, srv, "DELETE", "/v1/rooms/exam/recordings", nil); status != http.StatusOK {
		t.Fatalf("stop recording: %d %s", status, body)
	}
	if status, body := admin(t, srv, "DELETE", "/v1/rooms/exam", nil); status != http.StatusNoContent {
		t.Fatalf("end room: %d %s", status, body)
	}
	vigiltest.WaitFor(t, 10*time.Second, "room.closed", func() bool { return slices.Contains(rc.types(), webhooks.RoomClosed) })

	rc.mu.Lock()
	defer rc.mu.Unlock()
	if len(rc.bad) > 0 {
		t.Fatalf("receiver refused deliveries: %v", rc.bad)
	}
	pos := map[string]int{}
	for i, ev := range rc.events {
		if i > 0 && ev.Seq != rc.events[i-1].Seq+1 {
			t.Errorf("event %d (%s) has seq %d after %d: out of order or lost", i, ev.Type, ev.Seq, rc.events[i-1].Seq)
		}
		if _, ok := pos[ev.Type]; !ok {
			pos[ev.Type] = i
		}
		if ev.Type == webhooks.ParticipantJoined && rc.tries[ev.ID] != 2 {
			t.Errorf("participant.joined delivered after %d attempts, want 2", rc.tries[ev.ID])
		}
	}
	order := []string{webhooks.RoomCreated, webhooks.ParticipantJoined, webhooks.TrackPublished, webhooks.RecordingStarted,
		webhooks.RecordingCompleted, webhooks.TrackUnpublished, webhooks.ParticipantLeft, webhooks.RoomClosed}
	for i, typ := range order {
		p, ok := pos[typ]
		if !ok {
			t.Errorf("no %s event; got %v", typ, pos)
			continue
		}
		if i > 0 && p < pos[order[i-1]] {
			t.Errorf("%s (at %d) came before %s (at %d)", typ, p, order[i-1], pos[order[i-1]])
		}
	}
	var joined struct {
		Room        string `json:"room"`
		Participant struct {
			Identity string `json:"identity"`
			Role     string `json:"role"`
		} `json:"participant"`
	}
	if err := json.Unmarshal(rc.events[pos[webhooks.ParticipantJoined]].Data, &joined); err != nil ||
		joined.Room != "exam" || joined.Participant.Identity != "cand-1" || joined.Participant.Role != "participant" {
		t.Errorf("participant.joined data: %s", rc.events[pos[webhooks.ParticipantJoined]].Data)
	}
}

// TestDrainEndToEnd: once draining, the server is not ready, refuses new
// rooms with 503 draining, ends empty rooms, lets the busy one go on
// (even take a new participant), and signals drained when it ends.
func TestDrainEndToEnd(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "busy", "conference")
	srv.CreateRoom(t, "idle", "conference")
	alice := dialQuiet(t, srv, "busy", "alice", "participant")
	am := newSynthetic(t, "alice")
	alice.Publish(map[string]webrtc.TrackLocal{"camera": am.video})
	if status, _ := srv.Do(t, "GET", "/readyz", "", nil); status != 200 {
		t.Fatalf("readyz before drain: %d", status)
	}

	if status, body := srv.Do(t, "POST", "/v1/drain", "", nil); status != http.StatusUnauthorized {
		t.Fatalf("drain without the key: %d %s", status, body)
	}
	status, body := admin(t, srv, "POST", "/v1/drain", nil)
	if status != http.StatusAccepted || !strings.Contains(string(body), `"draining":true`) {
		t.Fatalf("drain: %d %s", status, body)
	}
	if status, body := srv.Do(t, "GET", "/readyz", "", nil); status != 503 || !strings.Contains(string(body), "draining") {
		t.Errorf("readyz while draining: %d %s", status, body)
	}
	if status, _ := srv.Do(t, "GET", "/healthz", "", nil); status != 200 {
		t.Errorf("healthz while draining: %d", status)
	}
	status, body = admin(t, srv, "POST", "/v1/rooms", map[string]any{"name": "new", "kind": "conference"})
	if status != http.StatusServiceUnavailable || vigiltest.ErrorCode(t, body) != "draining" {
		t.Errorf("new room while draining: %d %s", status, body)
	}
	vigiltest.WaitFor(t, 5*time.Second, "the idle room ended", func() bool {
		status, _ := admin(t, srv, "GET", "/v1/rooms/idle", nil)
		return status == http.StatusNotFound
	})

	// The busy room goes on: someone joins it and gets the media.
	bob := dialQuiet(t, srv, "busy", "bob", "participant")
	vigiltest.WaitFor(t, 10*time.Second, "bob receives alice while draining", func() bool { return bob.Packets("alice/camera") > 10 })
	select {
	case <-srv.Sig.Drained():
		t.Fatal("drained while a room is in use")
	default:
	}
	if m := scrape(t, srv); m["vigil_draining"] != 1 || m["vigil_rooms"] != 1 {
		t.Errorf("metrics while draining: draining %v rooms %v", m["vigil_draining"], m["vigil_rooms"])
	}

	for _, c := range []*vigiltest.Client{alice, bob} {
		if status, body := srv.Do(t, "DELETE", "/v1/sessions/"+c.Session, "", nil); status != http.StatusNoContent {
			t.Fatalf("leave: %d %s", status, body)
		}
	}
	select {
	case <-srv.Sig.Drained():
	case <-time.After(5 * time.Second):
		t.Fatal("not drained 5s after the last room emptied")
	}
	if status, _ := admin(t, srv, "GET", "/v1/rooms/busy", nil); status != http.StatusNotFound {
		t.Errorf("the emptied room still exists: %d", status)
	}
}
