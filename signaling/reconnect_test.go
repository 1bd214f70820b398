package signaling_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pion/ice/v4"
	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/recordings"
	"github.com/vigil-media/vigil/sfu"
	"github.com/vigil-media/vigil/signaling/vigiltest"
	"go.uber.org/goleak"
)

// udpProxy relays UDP between one client and the server's media port. It
// can drop everything both ways (a network that goes away), and drop a
// share of packets and reorder others (a lossy link).
type udpProxy struct {
	front, back *net.UDPConn
	drop        atomic.Bool
	lossPct     atomic.Int32 // percent of packets dropped, each way
	reorderPct  atomic.Int32 // percent of packets held back behind the next one
	dropped     atomic.Int64
	client      atomic.Pointer[net.UDPAddr]
	wg          sync.WaitGroup
}

func newUDPProxy(t *testing.T, server net.Addr) *udpProxy {
	t.Helper()
	front, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	back, err := net.DialUDP("udp4", nil, server.(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	p := &udpProxy{front: front, back: back}
	relay := func(read func([]byte) (int, error), write func([]byte)) {
		defer p.wg.Done()
		rng := rand.New(rand.NewPCG(1, 2))
		var held []byte
		buf := make([]byte, 1500)
		for {
			n, err := read(buf)
			if err != nil {
				return
			}
			if p.drop.Load() || rng.Int32N(100) < p.lossPct.Load() {
				p.dropped.Add(1)
				continue
			}
			pkt := append([]byte(nil), buf[:n]...)
			if held == nil && rng.Int32N(100) < p.reorderPct.Load() {
				held = pkt // goes out after the next one
				continue
			}
			write(pkt)
			if held != nil {
				write(held)
				held = nil
			}
		}
	}
	p.wg.Add(2)
	go relay(func(b []byte) (int, error) {
		n, from, err := front.ReadFromUDP(b)
		if err == nil {
			p.client.Store(from)
		}
		return n, err
	}, func(b []byte) { _, _ = back.Write(b) })
	go relay(back.Read, func(b []byte) {
		if to := p.client.Load(); to != nil {
			_, _ = front.WriteToUDP(b, to)
		}
	})
	t.Cleanup(func() {
		_ = front.Close()
		_ = back.Close()
		p.wg.Wait()
	})
	return p
}

func (p *udpProxy) port() int { return p.front.LocalAddr().(*net.UDPAddr).Port }

var candidateRE = regexp.MustCompile(`(?m)^a=(candidate:.*|end-of-candidates)\r\n`)

// throughProxy rewrites a server description so that its only candidate
// is the proxy.
func throughProxy(sdp string, port int) string {
	sdp = candidateRE.ReplaceAllString(sdp, "")
	return strings.Replace(sdp, "a=mid:", "a=candidate:1 1 udp 2130706431 127.0.0.1 "+strconv.Itoa(port)+" typ host\r\na=mid:", 1)
}

// pxClient is a participant whose media goes through a udpProxy: the
// server's candidates are replaced by the proxy's, and the client's are
// never given to the server (it learns the proxy's address from the
// connectivity checks). Its events come over a WebSocket it can drop and
// resume from its cursor.
type pxClient struct {
	t       *testing.T
	srv     *vigiltest.Server
	px      *udpProxy
	session string
	pc      *webrtc.PeerConnection

	mu     sync.Mutex
	conn   *websocket.Conn
	events []vigiltest.Event
	done   chan struct{} // closed when the current socket's reader ends
	offers int           // server offers answered
	// dropped: the test closed the socket on purpose; a reply the reader
	// was about to send on it is not an error.
	dropped bool
}

func pxAPI(t *testing.T) *webrtc.API {
	t.Helper()
	se := webrtc.SettingEngine{}
	se.SetIncludeLoopbackCandidate(true)
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	se.SetInterfaceFilter(func(name string) bool { return name == "lo" })
	se.SetICETimeouts(time.Second, 20*time.Second, 250*time.Millisecond)
	me := &webrtc.MediaEngine{}
	if err := me.RegisterDefaultCodecs(); err != nil {
		t.Fatal(err)
	}
	return webrtc.NewAPI(webrtc.WithSettingEngine(se), webrtc.WithMediaEngine(me))
}

func dialProxied(t *testing.T, srv *vigiltest.Server, px *udpProxy, room, identity, role string) *pxClient {
	t.Helper()
	return dialProxiedWith(t, srv, px, room, identity, role, pxAPI(t))
}

func dialProxiedWith(t *testing.T, srv *vigiltest.Server, px *udpProxy, room, identity, role string, api *webrtc.API) *pxClient {
	t.Helper()
	sid, err := srv.OpenSession(t, room, srv.Token(t, room, identity, role))
	if err != nil {
		t.Fatal(err)
	}
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	c := &pxClient{t: t, srv: srv, px: px, session: sid, pc: pc}
	c.connect(0)
	t.Cleanup(func() {
		c.dropSocket()
		_ = pc.Close()
	})
	return c
}

func (c *pxClient) connect(cursor uint64) {
	conn, _, err := websocket.DefaultDialer.Dial(vigiltest.WSURL(c.srv, c.session, cursor), nil)
	if err != nil {
		c.t.Fatalf("dial ws: %v", err)
	}
	done := make(chan struct{})
	c.mu.Lock()
	c.conn, c.done, c.dropped = conn, done, false
	c.mu.Unlock()
	go func() {
		defer close(done)
		for {
			var ev vigiltest.Event
			if err := conn.ReadJSON(&ev); err != nil {
				return
			}
			c.mu.Lock()
			c.events = append(c.events, ev)
			c.mu.Unlock()
			if ev.Type == "offer" || ev.Type == "answer" {
				c.handle(ev)
			}
		}
	}()
}

// dropSocket closes the WebSocket (the signaling connection is lost too).
func (c *pxClient) dropSocket() {
	c.mu.Lock()
	conn, done := c.conn, c.done
	c.dropped = true
	c.mu.Unlock()
	if conn != nil {
		_ = conn.Close()
		<-done
	}
}

func (c *pxClient) lastSeq() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.events) == 0 {
		return 0
	}
	return c.events[len(c.events)-1].Seq
}

func (c *pxClient) send(typ string, data any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dropped {
		return
	}
	if err := c.conn.WriteJSON(map[string]any{"type": typ, "data": data}); err != nil {
		c.t.Errorf("send %s: %v", typ, err)
	}
}

// handle applies a server offer (the polite peer) or answer.
func (c *pxClient) handle(ev vigiltest.Event) {
	var d struct {
		SDP string `json:"sdp"`
	}
	_ = json.Unmarshal(ev.Data, &d)
	sdp := throughProxy(d.SDP, c.px.port())
	if ev.Type == "answer" {
		if err := c.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: sdp}); err != nil {
			c.t.Errorf("set remote answer: %v", err)
		}
		return
	}
	if c.pc.SignalingState() == webrtc.SignalingStateHaveLocalOffer {
		if err := c.pc.SetLocalDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeRollback}); err != nil {
			c.t.Errorf("rollback: %v", err)
		}
	}
	if err := c.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: sdp}); err != nil {
		c.t.Errorf("set remote offer: %v", err)
		return
	}
	ans, err := c.pc.CreateAnswer(nil)
	if err == nil {
		err = c.pc.SetLocalDescription(ans)
	}
	if err != nil {
		c.t.Errorf("answer: %v", err)
		return
	}
	c.mu.Lock()
	c.offers++
	c.mu.Unlock()
	c.send("answer", map[string]string{"sdp": candidateRE.ReplaceAllString(ans.SDP, "")})
}

// offer sends a client offer; sources may be nil for a renegotiation of
// what was declared before (an ICE restart).
func (c *pxClient) offer(restart bool, sources map[string]string) {
	c.t.Helper()
	offer, err := c.pc.CreateOffer(&webrtc.OfferOptions{ICERestart: restart})
	if err != nil {
		c.t.Fatal(err)
	}
	if err := c.pc.SetLocalDescription(offer); err != nil {
		c.t.Fatal(err)
	}
	data := map[string]any{"sdp": candidateRE.ReplaceAllString(offer.SDP, "")}
	if sources != nil {
		data["sources"] = sources
	}
	c.send("offer", data)
}

// publish sends the synthetic camera and microphone.
func (c *pxClient) publish(m *synthetic) {
	c.t.Helper()
	sources := map[string]string{}
	for src, tr := range map[string]webrtc.TrackLocal{"camera": m.video, "microphone": m.audio} {
		tx, err := c.pc.AddTransceiverFromTrack(tr, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
		if err != nil {
			c.t.Fatal(err)
		}
		go func() {
			for {
				if _, _, err := tx.Sender().ReadRTCP(); err != nil {
					return
				}
			}
		}()
		sources[strconv.Itoa(len(sources))] = src
	}
	c.offer(false, sources)
}

func (c *pxClient) eventsOf(typ string) []vigiltest.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []vigiltest.Event
	for _, e := range c.events {
		if e.Type == typ {
			out = append(out, e)
		}
	}
	return out
}

// exactlyOnce checks that the client got seq 1, 2, 3, ... with no gap
// and no repeat, across every socket it opened.
func (c *pxClient) exactlyOnce() {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, e := range c.events {
		if e.Seq != uint64(i+1) {
			c.t.Fatalf("event %d (%s) has seq %d: events lost or repeated", i, e.Type, e.Seq)
		}
	}
}

// connectionUpdates returns the connection states of identity's
// participant_updated events seen by c, in order.
func connectionUpdates(c *vigiltest.Client, identity string) []string {
	var out []string
	for _, e := range c.EventsOf("participant_updated") {
		var d struct {
			Participant sfu.ParticipantInfo `json:"participant"`
		}
		_ = json.Unmarshal(e.Data, &d)
		if d.Participant.Identity == identity && d.Participant.Connection != "" {
			out = append(out, d.Participant.Connection)
		}
	}
	return out
}

func equalStrings(a, b []string) bool { return fmt.Sprint(a) == fmt.Sprint(b) }

// reconnectServer is a server whose ICE notices a lost network in a
// second, for the reconnect tests.
func reconnectServer(t *testing.T, grace, restartDelay, mediaTimeout time.Duration) *vigiltest.Server {
	t.Helper()
	return vigiltest.StartWith(t, vigiltest.Options{GracePeriod: grace, SFU: sfu.Config{
		DisconnectTimeout: time.Second, FailedTimeout: 2 * time.Second, ICERestartDelay: restartDelay, MediaTimeout: mediaTimeout,
	}})
}

// TestReconnectByICERestart: a candidate's network goes away until the
// server's ICE has failed (so that only an ICE restart brings it back),
// and its signaling socket too. Its proctor sees it "reconnecting"; it
// comes back by an ICE restart, offered by the server in one case and by
// the client in the other, and resumes its events
// from its cursor: same session, no new join, every event exactly once,
// its media flows to the proctor again on the same tracks, and its
// recording goes on in the same file.
func TestReconnectByICERestart(t *testing.T) {
	for _, who := range []string{"server", "client"} {
		t.Run(who, func(t *testing.T) {
			ignore := goleak.IgnoreCurrent()
			t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
			restartDelay := time.Hour // the server restarts when ICE fails
			if who == "client" {
				restartDelay = -1 // only the client restarts
			}
			srv := reconnectServer(t, 30*time.Second, restartDelay, 10*time.Second)
			if status, body := srv.Do(t, "POST", "/v1/rooms", srv.AdminKey, map[string]any{"name": "exam", "kind": "proctoring", "auto_record": true}); status != 201 {
				t.Fatalf("create room: %d %s", status, body)
			}
			px := newUDPProxy(t, srv.SFU.LocalAddr())
			proctor := dialQuiet(t, srv, "exam", "proc", "proctor")
			cand := dialProxied(t, srv, px, "exam", "cand", "candidate")
			media := newSynthetic(t, "cand")
			cand.publish(media)
			proctor.Send("admit", "a1", map[string]string{"identity": "cand"})
			vigiltest.WaitFor(t, 10*time.Second, "proctor receives the candidate", func() bool { return proctor.Packets("cand/camera") > 20 })
			tracksBefore := getParticipant(t, srv, "exam", "cand").Tracks
			vigiltest.WaitFor(t, 10*time.Second, "a recording", func() bool {
				return len(srv.Recordings.List(recordings.Filter{Room: "exam"})) == 1
			})

			// The network goes away, and the signaling socket with it.
			px.drop.Store(true)
			cand.dropSocket()
			lost := time.Now()
			vigiltest.WaitFor(t, 10*time.Second, "proctor sees reconnecting", func() bool {
				return equalStrings(connectionUpdates(proctor, "cand"), []string{"reconnecting"})
			})
			t.Logf("reconnecting shown %v after the network went away", time.Since(lost).Round(time.Millisecond))
			if !participant(t, srv, "exam", "cand").Reconnecting() {
				t.Errorf("not reconnecting")
			}
			candP := participant(t, srv, "exam", "cand")
			ufrag := candP.RemoteICEUfrag()
			vigiltest.WaitFor(t, 10*time.Second, "ICE failed", func() bool {
				return candP.ConnectionState() == webrtc.PeerConnectionStateFailed
			})
			stalled := proctor.Packets("cand/camera")

			// The socket comes back first, resuming from its cursor.
			cand.connect(cand.lastSeq())
			if who == "client" {
				cand.offer(true, nil)
			}
			if who == "server" {
				vigiltest.WaitFor(t, 10*time.Second, "the server's ICE restart offer", func() bool {
					cand.mu.Lock()
					defer cand.mu.Unlock()
					return cand.offers > 0
				})
			}
			px.drop.Store(false)
			restored := time.Now()
			vigiltest.WaitFor(t, 15*time.Second, "media flows again", func() bool { return proctor.Packets("cand/camera") > stalled+20 })
			t.Logf("media again %v after the network came back (ICE restart by the %s)", time.Since(restored).Round(time.Millisecond), who)
			vigiltest.WaitFor(t, 10*time.Second, "proctor sees connected", func() bool {
				return equalStrings(connectionUpdates(proctor, "cand"), []string{"reconnecting", "connected"})
			})

			if candP.RemoteICEUfrag() == ufrag {
				t.Errorf("no ICE restart: the client's ufrag is still %s", ufrag)
			}
			cand.exactlyOnce()
			if n := len(cand.eventsOf("joined")); n != 1 {
				t.Errorf("%d joined events", n)
			}
			if n := len(proctor.EventsOf("participant_left")) + len(proctor.EventsOf("track_unpublished")); n != 0 {
				t.Errorf("proctor saw %d participant_left/track_unpublished", n)
			}
			joins := 0
			for _, e := range proctor.EventsOf("participant_joined") {
				if strings.Contains(string(e.Data), `"identity":"cand"`) {
					joins++
				}
			}
			if joins != 1 {
				t.Errorf("proctor saw the candidate join %d times", joins)
			}
			after := getParticipant(t, srv, "exam", "cand")
			if trackIDs(after.Tracks) != trackIDs(tracksBefore) || after.ConnectionState != "connected" {
				t.Errorf("after reconnecting: %+v, before: %+v", after, tracksBefore)
			}
			recs := srv.Recordings.List(recordings.Filter{Room: "exam"})
			if len(recs) != 1 || len(recs[0].Segments) != 1 || recs[0].Status != "recording" {
				t.Errorf("recordings after reconnecting: %+v", recs)
			}
		})
	}
}

// TestVanishedPublisher: a publisher whose network goes away without a
// word (no leave, no close, every packet dropped). Within 10 seconds its
// tracks are unpublished (subscribers and recordings let go); it stays in
// the room, "reconnecting", until the grace period ends, then leaves
// with reason timeout and everyone is told. With the defaults: the ICE
// disconnect timeout and MediaTimeout are 5 s each.
func TestVanishedPublisher(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	const grace = 12 * time.Second
	srv := vigiltest.StartWith(t, vigiltest.Options{GracePeriod: grace})
	srv.CreateRoom(t, "class", "conference")
	px := newUDPProxy(t, srv.SFU.LocalAddr())
	sub := dialQuiet(t, srv, "class", "sub", "participant")
	pub := dialProxied(t, srv, px, "class", "pub", "participant")
	media := newSynthetic(t, "pub")
	pub.publish(media)
	vigiltest.WaitFor(t, 10*time.Second, "subscriber receives", func() bool { return sub.Packets("pub/camera") > 20 })

	px.drop.Store(true)
	vanished := time.Now()
	vigiltest.WaitFor(t, 10*time.Second, "both tracks unpublished", func() bool { return len(sub.EventsOf("track_unpublished")) == 2 })
	cleaned := time.Since(vanished)
	t.Logf("tracks unpublished %v after the publisher vanished", cleaned.Round(time.Millisecond))
	if p := participant(t, srv, "class", "pub"); !p.Reconnecting() || len(p.Tracks()) != 0 {
		t.Errorf("vanished publisher: %+v", p.Info())
	}
	if n := len(sub.EventsOf("participant_left")); n != 0 {
		t.Fatalf("left before the grace period ended")
	}
	e := sub.WaitEventWithin(grace+5*time.Second, "participant_left", nil)
	gone := time.Since(vanished)
	t.Logf("participant_left %v after the publisher vanished: %s", gone.Round(time.Millisecond), e.Data)
	if !strings.Contains(string(e.Data), `"reason":"timeout"`) {
		t.Errorf("participant_left: %s", e.Data)
	}
	if gone < grace {
		t.Errorf("left %v after vanishing, before the %v grace period", gone, grace)
	}
}

// TestSilentTrackComesBack: a network lost for longer than MediaTimeout:
// the tracks are unpublished, and published again (new ids) when the
// network returns, without the client doing anything; the recording
// continues in a second segment of the same recording.
func TestSilentTrackComesBack(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	srv := reconnectServer(t, 30*time.Second, time.Hour, 1500*time.Millisecond)
	if status, body := srv.Do(t, "POST", "/v1/rooms", srv.AdminKey, map[string]any{"name": "class", "kind": "conference", "auto_record": true}); status != 201 {
		t.Fatalf("create room: %d %s", status, body)
	}
	px := newUDPProxy(t, srv.SFU.LocalAddr())
	sub := dialQuiet(t, srv, "class", "sub", "participant")
	pub := dialProxied(t, srv, px, "class", "pub", "participant")
	media := newSynthetic(t, "pub")
	pub.publish(media)
	vigiltest.WaitFor(t, 10*time.Second, "subscriber receives", func() bool { return sub.Packets("pub/camera") > 20 })
	vigiltest.WaitFor(t, 10*time.Second, "a recording", func() bool {
		return len(srv.Recordings.List(recordings.Filter{Room: "class"})) == 1
	})

	px.drop.Store(true)
	vigiltest.WaitFor(t, 10*time.Second, "tracks unpublished", func() bool { return len(sub.EventsOf("track_unpublished")) == 2 })
	before := sub.Packets("pub/camera")
	px.drop.Store(false)
	vigiltest.WaitFor(t, 15*time.Second, "tracks published again", func() bool { return len(sub.EventsOf("track_published")) == 4 })
	vigiltest.WaitFor(t, 10*time.Second, "media again", func() bool { return sub.Packets("pub/camera") > before+20 })
	if n := len(sub.EventsOf("participant_left")); n != 0 {
		t.Errorf("%d participant_left", n)
	}
	vigiltest.WaitFor(t, 10*time.Second, "a second segment", func() bool {
		recs := srv.Recordings.List(recordings.Filter{Room: "class"})
		return len(recs) == 1 && len(recs[0].Segments) == 2
	})
}

func participant(t *testing.T, srv *vigiltest.Server, room, identity string) *sfu.Participant {
	t.Helper()
	r, err := srv.SFU.Room(room)
	if err != nil {
		t.Fatal(err)
	}
	p := r.Participant(identity)
	if p == nil {
		t.Fatalf("no participant %s", identity)
	}
	return p
}

func trackIDs(ts []apiTrack) string {
	var ids []string
	for _, tr := range ts {
		ids = append(ids, tr.ID)
	}
	return strings.Join(ids, ",")
}
