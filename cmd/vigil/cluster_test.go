package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/signaling/vigiltest"
)

// Cluster tests: three `vigil serve` processes on loopback (each with
// its own HTTP and media ports) and one private redis-server.

const (
	testHeartbeat = 200 * time.Millisecond
	testLease     = time.Second
)

// node is one vigil process of the test cluster.
type node struct {
	id string
	*proc
}

func startClusterNode(t *testing.T, rd *vigiltest.Redis, id string) *node {
	t.Helper()
	p := startVigil(t, "-redis-url", rd.URL, "-node-id", id, "-token-secret", testTokenSecret,
		"-cluster-heartbeat", testHeartbeat.String(), "-cluster-lease", testLease.String(),
		"-join-rate", "0", "-mint-rate", "0", "-grace-period", "5s")
	return &node{id: id, proc: p}
}

// try sends a request that may fail (the node may be dead): status -1
// then.
func try(method, url, bearer, body string) (int, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return -1, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func errCode(body string) string {
	var e struct{ Error struct{ Code string } }
	_ = json.Unmarshal([]byte(body), &e)
	return e.Error.Code
}

// mediaClient is a participant that keeps itself in its room the way a
// client of a cluster does: it opens a session through one node, speaks
// the wire protocol over a WebSocket with a pion connection (publishing
// Opus, or receiving), and when the session ends (a `left` event, a
// dead connection) or cannot be opened (session_not_found, a node that
// does not answer) it opens a new session through the next node. A join
// refused for good (401) stops it.
type mediaClient struct {
	t        *testing.T
	identity string
	room     string
	token    string
	nodes    []*node
	publish  bool
	api      *webrtc.API
	track    *webrtc.TrackLocalStaticRTP // publishers: written by a goroutine for the client's life

	next     atomic.Int32 // index of the node to open the next session through
	sessions atomic.Int32 // sessions opened
	packets  atomic.Int64 // RTP packets received in the current session
	total    atomic.Int64 // in all sessions
	lastRTP  atomic.Int64 // unix ns of the last packet received
	fatal    atomic.Value // string: why it stopped for good

	mu      sync.Mutex
	reasons []string // why each session ended
	session string   // the current session's id
	via     string   // the node it was opened through

	stop, done chan struct{}
}

func newMediaClient(t *testing.T, api *webrtc.API, room, identity, token string, publish bool, nodes []*node, first int) *mediaClient {
	c := &mediaClient{t: t, identity: identity, room: room, token: token, nodes: nodes, publish: publish, api: api,
		stop: make(chan struct{}), done: make(chan struct{})}
	c.next.Store(int32(first))
	if publish {
		tr, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}, "microphone", identity)
		if err != nil {
			t.Fatal(err)
		}
		c.track = tr
		go c.writeAudio()
	}
	go c.run()
	t.Cleanup(c.close)
	return c
}

func (c *mediaClient) close() {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	<-c.done
}

// writeAudio sends an Opus-sized packet every 20 ms until stop.
func (c *mediaClient) writeAudio() {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for seq := uint16(0); ; seq++ {
		select {
		case <-c.stop:
			return
		case <-tick.C:
		}
		_ = c.track.WriteRTP(&rtp.Packet{Header: rtp.Header{Version: 2, SequenceNumber: seq, Timestamp: uint32(seq) * 960}, Payload: make([]byte, 80)})
	}
}

func (c *mediaClient) run() {
	defer close(c.done)
	for {
		select {
		case <-c.stop:
			return
		default:
		}
		n := c.nodes[int(c.next.Load())%len(c.nodes)]
		why := c.once(n)
		c.mu.Lock()
		c.reasons = append(c.reasons, n.id+": "+why)
		c.mu.Unlock()
		if c.fatal.Load() != nil {
			return
		}
		c.next.Add(1) // the next session goes through another node
		select {
		case <-c.stop:
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

type wireEvent struct {
	Type string          `json:"type"`
	Data json.RawMessage `json:"data"`
}

// once runs one session through n until it ends, and says why it ended.
func (c *mediaClient) once(n *node) string {
	code, body := try("POST", n.url+"/v1/rooms/"+c.room+"/sessions", c.token, "")
	switch {
	case code == 401:
		c.fatal.Store(errCode(body))
		return "refused: " + body
	case code != 201:
		return fmt.Sprintf("open: %d %s", code, strings.TrimSpace(body))
	}
	var opened struct {
		SessionID string `json:"session_id"`
	}
	_ = json.Unmarshal([]byte(body), &opened)
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(n.url, "http")+"/v1/sessions/"+opened.SessionID+"/ws?cursor=0", nil)
	if err != nil {
		return "ws: " + err.Error()
	}
	defer ws.Close()
	c.mu.Lock()
	c.session, c.via = opened.SessionID, n.id
	c.mu.Unlock()
	c.sessions.Add(1)
	c.packets.Store(0)
	pc, err := c.api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return "pc: " + err.Error()
	}
	defer pc.Close()
	var wmu sync.Mutex
	send := func(typ string, data any) {
		wmu.Lock()
		defer wmu.Unlock()
		_ = ws.WriteJSON(map[string]any{"type": typ, "data": data})
	}
	pc.OnTrack(func(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
		for {
			if _, _, err := tr.ReadRTP(); err != nil {
				return
			}
			c.packets.Add(1)
			c.total.Add(1)
			c.lastRTP.Store(time.Now().UnixNano())
		}
	})
	if c.publish {
		tx, err := pc.AddTransceiverFromTrack(c.track, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
		if err != nil {
			return "publish: " + err.Error()
		}
		go func() {
			for {
				if _, _, err := tx.Sender().ReadRTCP(); err != nil {
					return
				}
			}
		}()
		offer, err := pc.CreateOffer(nil)
		if err != nil {
			return "offer: " + err.Error()
		}
		if err := pc.SetLocalDescription(offer); err != nil {
			return "offer: " + err.Error()
		}
		send("offer", map[string]any{"sdp": offer.SDP, "sources": map[string]string{tx.Mid(): "microphone"}})
	}
	ended := make(chan string, 1)
	go func() {
		for {
			var ev wireEvent
			if err := ws.ReadJSON(&ev); err != nil {
				ended <- "dropped: " + err.Error()
				return
			}
			var d struct {
				SDP    string `json:"sdp"`
				Reason string `json:"reason"`
			}
			_ = json.Unmarshal(ev.Data, &d)
			switch ev.Type {
			case "left":
				ended <- "left: " + d.Reason
				return
			case "answer":
				_ = pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: d.SDP})
			case "offer":
				if pc.SignalingState() == webrtc.SignalingStateHaveLocalOffer {
					_ = pc.SetLocalDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeRollback})
				}
				if pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: d.SDP}) == nil {
					if ans, err := pc.CreateAnswer(nil); err == nil && pc.SetLocalDescription(ans) == nil {
						send("answer", map[string]string{"sdp": ans.SDP})
					}
				}
			}
		}
	}()
	select {
	case why := <-ended:
		return why
	case <-c.stop:
		return "stopped"
	}
}

func (c *mediaClient) history() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.reasons, "; ")
}

// roomView is what GET /v1/rooms/{room} says.
type roomView struct {
	Name         string
	Node         string
	Participants []struct{ Identity string }
}

func getRoom(n *node, room string) (int, roomView, string) {
	code, body := try("GET", n.url+"/v1/rooms/"+room, testAdminKey, "")
	var v roomView
	_ = json.Unmarshal([]byte(body), &v)
	return code, v, body
}

func mint(t *testing.T, n *node, room, identity, role string) string {
	t.Helper()
	code, body := try("POST", n.url+"/v1/rooms/"+room+"/tokens", testAdminKey, fmt.Sprintf(`{"identity":%q,"role":%q}`, identity, role))
	if code != 201 {
		t.Fatalf("mint %s through %s: %d %s", identity, n.id, code, body)
	}
	var tok struct{ Token string }
	_ = json.Unmarshal([]byte(body), &tok)
	return tok.Token
}

func createRoom(t *testing.T, n *node, name string) string {
	t.Helper()
	code, body := try("POST", n.url+"/v1/rooms", testAdminKey, fmt.Sprintf(`{"name":%q,"kind":"conference"}`, name))
	var r roomView
	_ = json.Unmarshal([]byte(body), &r)
	if code != 201 || r.Node == "" {
		t.Fatalf("create %s through %s: %d %s", name, n.id, code, body)
	}
	return r.Node
}

// receiving waits until c receives packets in its current session.
func receiving(t *testing.T, c *mediaClient, d time.Duration, what string) {
	t.Helper()
	waitUntil(t, d, what, func() bool { return c.packets.Load() > 10 }, c.history)
}

// TestClusterThreeNodes runs three vigil processes and one Redis:
// (a) a room created through one node is joined through the two others
// by a publisher and a subscriber, media flows, and every node describes
// the room with both; (d) a revocation through one node disconnects the
// participant whose room is on another, and its token is refused
// through every node; (b) kill -9 of the room's node: the room is
// re-homed within lease + heartbeat and the clients, opening new
// sessions through the live nodes, get media flowing again (the time is
// logged); (c) Redis stopped: the room goes on forwarding, a new room is
// refused at once with cluster_unavailable; Redis restarted empty: within
// a few heartbeats rooms are created and joined across nodes again and
// the running room is back in the map.
func TestClusterThreeNodes(t *testing.T) {
	rd := vigiltest.StartRedis(t)
	nodes := make([]*node, 3)
	var wg sync.WaitGroup
	for i, id := range []string{"a", "b", "c"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nodes[i] = startClusterNode(t, rd, id)
		}()
	}
	wg.Wait()
	for _, n := range nodes {
		if n == nil {
			t.FailNow()
		}
	}
	byID := map[string]*node{}
	for _, n := range nodes {
		byID[n.id] = n
	}
	api := vigiltest.PionAPI(t)

	// (a) Create through a, join through b (publisher) and c (subscriber).
	owner := createRoom(t, nodes[0], "live")
	t.Logf("room live created through a, placed on %s", owner)
	pub := newMediaClient(t, api, "live", "alice", mint(t, nodes[1], "live", "alice", "participant"), true, nodes, 1)
	sub := newMediaClient(t, api, "live", "bob", mint(t, nodes[2], "live", "bob", "participant"), false, nodes, 2)
	receiving(t, sub, 15*time.Second, "media from alice (through b) at bob (through c)")
	for _, n := range nodes {
		code, v, body := getRoom(n, "live")
		ids := map[string]bool{}
		for _, p := range v.Participants {
			ids[p.Identity] = true
		}
		if code != 200 || v.Node != owner || !ids["alice"] || !ids["bob"] {
			t.Errorf("(a) GET the room through %s: %d %s, want both participants on %s", n.id, code, body, owner)
		}
	}
	pub.mu.Lock()
	if !strings.HasPrefix(pub.session, owner+".") {
		t.Errorf("(a) alice's session %q through %s: want it issued by %s", pub.session, pub.via, owner)
	}
	pub.mu.Unlock()

	// (d) A revocation through a node that does not hold the room.
	revokeVia := nodes[0]
	for _, n := range nodes {
		if n.id != owner {
			revokeVia = n
		}
	}
	carol := newMediaClient(t, api, "live", "carol", mint(t, byID[owner], "live", "carol", "participant"), false, []*node{byID[owner]}, 0)
	waitUntil(t, 10*time.Second, "carol in the room", func() bool { return carol.sessions.Load() > 0 && carol.total.Load() > 0 }, carol.history)
	code, body := try("POST", revokeVia.url+"/v1/rooms/live/tokens/revoke", testAdminKey, `{"identity":"carol"}`)
	if code != 200 || !strings.Contains(body, `"disconnected":true`) {
		t.Fatalf("(d) revoke carol through %s: %d %s", revokeVia.id, code, body)
	}
	waitUntil(t, 5*time.Second, "carol stopped for good", func() bool { return carol.fatal.Load() != nil }, carol.history)
	if h := carol.history(); !strings.Contains(h, "left: token_revoked") || carol.fatal.Load() != "token_revoked" {
		t.Errorf("(d) carol: %s (fatal %v), want left with token_revoked, then her token refused", h, carol.fatal.Load())
	}
	for _, n := range nodes {
		if code, body := try("POST", n.url+"/v1/rooms/live/sessions", mint(t, n, "live", "carol", "participant"), ""); code != 201 {
			t.Errorf("(d) a token minted after the revocation, through %s: %d %s", n.id, code, body)
		}
	}

	// (b) kill -9 the room's node.
	var live []*node
	for _, n := range nodes {
		if n.id != owner {
			live = append(live, n)
		}
	}
	pubGen, subGen := pub.sessions.Load(), sub.sessions.Load()
	killed := time.Now()
	if err := byID[owner].cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	var newOwner string
	waitUntil(t, testLease+5*testHeartbeat+2*time.Second, "the room re-homed", func() bool {
		for _, n := range live {
			if code, v, _ := getRoom(n, "live"); code == 200 && v.Node != owner && v.Node != "" {
				newOwner = v.Node
				return true
			}
		}
		return false
	}, func() string { _, _, b := getRoom(live[0], "live"); return b })
	rehomed := time.Since(killed)
	waitUntil(t, 20*time.Second, "media again after the kill", func() bool {
		return pub.sessions.Load() > pubGen && sub.sessions.Load() > subGen && sub.packets.Load() > 0 && sub.lastRTP.Load() > killed.UnixNano()
	}, func() string { return "alice: " + pub.history() + " | bob: " + sub.history() })
	flowing := time.Since(killed)
	t.Logf("(b) kill -9 of %s: room re-homed to %s (seen through the API) %v after the kill; media flowing again %v after it (lease %v, heartbeat %v)",
		owner, newOwner, rehomed.Round(10*time.Millisecond), flowing.Round(10*time.Millisecond), testLease, testHeartbeat)
	if rehomed > testLease+3*testHeartbeat+time.Second {
		t.Errorf("(b) re-homed after %v, want within lease + heartbeat (and a second for the test's polling)", rehomed)
	}

	// (c) Redis stopped.
	rd.Stop()
	before := sub.total.Load()
	time.Sleep(1500 * time.Millisecond) // a lease: no node may re-home anything meanwhile
	if got := sub.total.Load() - before; got < 25 {
		t.Errorf("(c) %d packets in 1.5 s without Redis, want media to go on", got)
	}
	start := time.Now()
	code, body = try("POST", live[0].url+"/v1/rooms", testAdminKey, `{"name":"later","kind":"conference"}`)
	if took := time.Since(start); code != 503 || errCode(body) != "cluster_unavailable" || took > 3*time.Second {
		t.Errorf("(c) create a room without Redis: %d %s in %v, want 503 cluster_unavailable in < 3 s", code, body, took)
	}
	rd.Start()
	restarted := time.Now()
	var created string
	waitUntil(t, 10*time.Second, "a room created after Redis is back", func() bool {
		code, body := try("POST", live[0].url+"/v1/rooms", testAdminKey, `{"name":"later","kind":"conference"}`)
		var r roomView
		_ = json.Unmarshal([]byte(body), &r)
		created = r.Node
		return code == 201
	}, func() string { return "" })
	createdAfter := time.Since(restarted)
	waitUntil(t, 10*time.Second, "every node back on Redis", func() bool {
		for _, n := range live {
			if _, body := try("GET", n.url+"/healthz", "", ""); !strings.Contains(body, `"redis":true`) {
				return false
			}
		}
		return true
	}, func() string { return "" })
	t.Logf("(c) Redis restarted empty: a room created again %v after, every node back on Redis %v after",
		createdAfter.Round(10*time.Millisecond), time.Since(restarted).Round(10*time.Millisecond))
	waitUntil(t, 10*time.Second, "the running room back in the map", func() bool {
		code, body := try("GET", live[0].url+"/v1/rooms", testAdminKey, "")
		return code == 200 && strings.Contains(body, `"name":"live"`) && strings.Contains(body, `"node":"`+newOwner+`"`)
	}, func() string { _, b := try("GET", live[0].url+"/v1/rooms", testAdminKey, ""); return b })
	// A cross-node join into the new room.
	via := live[0]
	if via.id == created {
		via = live[1]
	}
	dave := newMediaClient(t, api, "later", "dave", mint(t, via, "later", "dave", "participant"), false, []*node{via}, 0)
	waitUntil(t, 10*time.Second, "dave joined through "+via.id, func() bool { return dave.sessions.Load() > 0 }, dave.history)
	if _, v, body := getRoom(via, "later"); v.Node != created || len(v.Participants) != 1 {
		t.Errorf("(c) the new room through %s: %s", via.id, body)
	}
	before = sub.total.Load()
	waitUntil(t, 10*time.Second, "(c) media after Redis came back", func() bool { return sub.total.Load() > before }, sub.history)
	if f := pub.fatal.Load(); f != nil {
		t.Errorf("alice stopped: %v", f)
	}
}
