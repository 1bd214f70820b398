package federation_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/rtp/codecs"
	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/cluster"
	"github.com/vigil-media/vigil/federation"
	"github.com/vigil-media/vigil/signaling"
	"github.com/vigil-media/vigil/signaling/vigiltest"
	"golang.org/x/image/vp8"
)

// cascadeNode is one node of an in-process cluster: a whole server (its
// own media port) whose cluster.Cluster advertises a URL of its own
// listener, on a private Redis.
type cascadeNode struct {
	id  string
	srv *vigiltest.Server
	cl  *cluster.Cluster
	// cut closes the listener other nodes reach this one on, and every
	// connection it accepted: to the other nodes it is gone.
	cut func()
}

// trackingListener remembers the connections it accepts.
type trackingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

func (l *trackingListener) cut() {
	_ = l.Close()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		_ = c.Close()
	}
}

func startCascadeNode(t *testing.T, redis *vigiltest.Redis, prefix, id string, edgeIdle time.Duration) *cascadeNode {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &trackingListener{Listener: inner}
	var cl *cluster.Cluster
	srv := vigiltest.StartWith(t, vigiltest.Options{NewServer: func(sc signaling.Config) (*signaling.Server, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		node, err := federation.New(ctx, federation.Config{Signaling: sc, Cluster: cluster.Config{
			RedisURL: redis.URL, NodeID: id, URL: "http://" + ln.Addr().String(), Prefix: prefix,
			Heartbeat: 100 * time.Millisecond, Lease: time.Second, Logger: slog.New(slog.DiscardHandler),
		}, EdgeViewers: 1, EdgeIdle: edgeIdle})
		if err != nil {
			return nil, err
		}
		cl = node.Cluster()
		return node.Server(), nil
	}})
	hs := &http.Server{Handler: srv.Sig.Handler(), ReadHeaderTimeout: 5 * time.Second}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = hs.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close() // before what it uses: its relays leave, its bus subscription ends
		_ = hs.Close()
		<-served
		_ = cl.Close()
	})
	return &cascadeNode{id: id, srv: srv, cl: cl, cut: ln.cut}
}

// startCascade starts a Redis and nodes with ids, and waits until each
// sees them all.
func startCascade(t *testing.T, edgeIdle time.Duration, ids ...string) []*cascadeNode {
	t.Helper()
	redis := vigiltest.StartRedis(t)
	prefix := fmt.Sprintf("cascade%d:", time.Now().UnixNano())
	var nodes []*cascadeNode
	for _, id := range ids {
		nodes = append(nodes, startCascadeNode(t, redis, prefix, id, edgeIdle))
	}
	for _, n := range nodes {
		vigiltest.WaitFor(t, 10*time.Second, "every node live at "+n.id, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			live, err := n.cl.Nodes(ctx)
			return err == nil && len(live) == len(ids)
		})
	}
	return nodes
}

// frameViewer is a viewer whose video is put back together into VP8
// frames; the first keyframe is decoded.
type frameViewer struct {
	*vigiltest.Client
	joined time.Time

	fmu       sync.Mutex
	identity  string // of the video's publisher, from the track map
	firstAt   time.Time
	width     int
	height    int
	decodedAt time.Time
	decodeErr error
}

// joinFrameViewer opens a session on srv (through whichever node the
// cluster sends it to) and decodes what it receives.
func joinFrameViewer(t *testing.T, srv *vigiltest.Server, room, identity string) *frameViewer {
	t.Helper()
	start := time.Now()
	sid, err := srv.OpenSession(t, room, srv.Token(t, room, identity, "viewer"))
	if err != nil {
		t.Fatal(err)
	}
	pc, err := vigiltest.PionAPI(t).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	v := &frameViewer{joined: start}
	c := vigiltest.NewClient(t, srv, sid, pc)
	v.Client = c
	pc.OnTrack(func(tr *webrtc.TrackRemote, recv *webrtc.RTPReceiver) {
		var mid string
		for _, tx := range pc.GetTransceivers() {
			if tx.Receiver() == recv {
				mid = tx.Mid()
			}
		}
		info := c.Track(mid)
		if tr.Kind() != webrtc.RTPCodecTypeVideo {
			for {
				if _, _, err := tr.ReadRTP(); err != nil {
					return
				}
			}
		}
		v.fmu.Lock()
		v.identity = info.Identity
		v.fmu.Unlock()
		var frame []byte
		var next uint16
		assembling := false
		for {
			pkt, _, err := tr.ReadRTP()
			if err != nil {
				return
			}
			v.fmu.Lock()
			if v.firstAt.IsZero() {
				v.firstAt = time.Now()
			}
			v.fmu.Unlock()
			var d codecs.VP8Packet
			payload, err := d.Unmarshal(pkt.Payload)
			if err != nil {
				assembling = false
				continue
			}
			switch {
			case d.S == 1 && d.PID == 0:
				frame, assembling = append(frame[:0], payload...), true
			case assembling && pkt.SequenceNumber == next:
				frame = append(frame, payload...)
			default:
				assembling = false
			}
			next = pkt.SequenceNumber + 1
			if !assembling || !pkt.Marker {
				continue
			}
			assembling = false
			if len(frame) == 0 || frame[0]&0x01 != 0 {
				continue // not a keyframe
			}
			w, h, err := decodeVP8(frame)
			v.fmu.Lock()
			if v.decodedAt.IsZero() {
				v.width, v.height, v.decodeErr, v.decodedAt = w, h, err, time.Now()
			}
			v.fmu.Unlock()
		}
	})
	pc.OnICECandidate(func(cand *webrtc.ICECandidate) {
		if cand != nil {
			c.Send("candidate", "", cand.ToJSON())
		}
	})
	c.ConnectVia("ws", 0)
	t.Cleanup(c.Close)
	return v
}

func decodeVP8(frame []byte) (int, int, error) {
	d := vp8.NewDecoder()
	d.Init(bytes.NewReader(frame), len(frame))
	if _, err := d.DecodeFrameHeader(); err != nil {
		return 0, 0, err
	}
	img, err := d.DecodeFrame()
	if err != nil {
		return 0, 0, err
	}
	return img.Bounds().Dx(), img.Bounds().Dy(), nil
}

// decoded waits for the first decoded keyframe and returns how long
// after the join the first video packet and that keyframe came.
func (v *frameViewer) decoded(t *testing.T) (first, decoded time.Duration) {
	t.Helper()
	vigiltest.WaitFor(t, 15*time.Second, "a decoded keyframe at "+v.Session, func() bool {
		v.fmu.Lock()
		defer v.fmu.Unlock()
		return !v.decodedAt.IsZero()
	})
	v.fmu.Lock()
	defer v.fmu.Unlock()
	if v.decodeErr != nil {
		t.Fatalf("%s: keyframe does not decode: %v", v.Session, v.decodeErr)
	}
	if v.width != 320 || v.height != 240 {
		t.Fatalf("%s: decoded %dx%d, want 320x240", v.Session, v.width, v.height)
	}
	if v.identity != "host" {
		t.Fatalf("%s: video labelled %q, want the host's identity", v.Session, v.identity)
	}
	return v.firstAt.Sub(v.joined), v.decodedAt.Sub(v.joined)
}

// hostVP8 joins "host" to room on srv as its host, publishing real VP8
// (and Opus) as camera and microphone. The keyframe requests that reach
// the camera are passed on to the player, as an encoder would answer
// them: a figure of the time to the first picture is then not the file's
// keyframe interval.
func hostVP8(t *testing.T, srv *vigiltest.Server, room string) {
	t.Helper()
	p := vigiltest.PlayVP8(t, vigiltest.VP8File(t), "host")
	c := vigiltest.Dial(t, srv, room, "host", "host")
	c.WaitEvent("joined", nil)
	for _, tr := range []webrtc.TrackLocal{p.Video, p.Audio} {
		tx, err := c.PC.AddTransceiverFromTrack(tr, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
		if err != nil {
			t.Fatal(err)
		}
		video := tr == p.Video
		go func() {
			for {
				pkts, _, err := tx.Sender().ReadRTCP()
				if err != nil {
					return
				}
				for _, pkt := range pkts {
					switch pkt.(type) {
					case *rtcp.PictureLossIndication, *rtcp.FullIntraRequest:
						if video {
							p.WantKey.Store(true)
						}
					}
				}
			}
		}()
	}
	c.Offer(map[string]webrtc.TrackLocal{"camera": p.Video, "microphone": p.Audio})
}

// relaysOf lists the relay participants in the room on a node.
func relaysOf(t *testing.T, n *cascadeNode, room string) []string {
	t.Helper()
	r, err := n.srv.SFU.Room(room)
	if err != nil {
		return nil
	}
	var out []string
	for _, p := range r.List() {
		if strings.HasPrefix(p.Identity(), "relay.") {
			out = append(out, p.Identity())
		}
	}
	return out
}

// feedEvents polls a room's admin feed from the start.
func feedEvents(t *testing.T, srv *vigiltest.Server, room string) []vigiltest.Event {
	t.Helper()
	status, body := srv.Do(t, http.MethodGet, "/v1/rooms/"+room+"/events/poll", srv.AdminKey, nil)
	if status != http.StatusOK {
		t.Fatalf("feed poll: %d %s", status, body)
	}
	var r vigiltest.PollReply
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatal(err)
	}
	return r.Events
}

// TestCascadeEdgeViewersDecode: a broadcast on node a, EdgeViewers 1, a
// host publishing real VP8 on a, one viewer through a. Viewers that join
// through node c are served by c from its replica, fed by one relay from
// a; they decode the host's video, labelled with the host's identity;
// a's admin feed hears of them; closing the room on a ends them.
func TestCascadeEdgeViewersDecode(t *testing.T) {
	vigiltest.LeakCheck(t)
	nodes := startCascade(t, 0, "a", "b", "c")
	a, c := nodes[0], nodes[2]
	a.srv.CreateRoom(t, "show", "broadcast")
	if _, err := a.srv.SFU.Room("show"); err != nil {
		t.Fatalf("the room is not on a: %v", err)
	}
	feedEvents(t, a.srv, "show") // the feed starts now

	hostVP8(t, a.srv, "show")
	local := joinFrameViewer(t, a.srv, "show", "v1")
	if !strings.HasPrefix(local.Session, "a.") {
		t.Fatalf("the first viewer's session %q is not a's", local.Session)
	}
	local.decoded(t)

	// Through c: the owner is full, c is the edge.
	cold := joinFrameViewer(t, c.srv, "show", "v2")
	if !strings.HasPrefix(cold.Session, "c.") {
		t.Fatalf("a viewer through c got session %q, want one of c", cold.Session)
	}
	coldFirst, coldTook := cold.decoded(t)
	relays := relaysOf(t, a, "show")
	if len(relays) != 1 || relays[0] != "relay.c" {
		t.Fatalf("relays at a: %v, want [relay.c]", relays)
	}
	relay := func() string {
		r, _ := a.srv.SFU.Room("show")
		return fmt.Sprintf("%p", r.Participant("relay.c"))
	}
	first := relay()

	var warmFirst, warm []time.Duration
	viewers := []*frameViewer{cold}
	for _, id := range []string{"v3", "v4"} {
		v := joinFrameViewer(t, c.srv, "show", id)
		if !strings.HasPrefix(v.Session, "c.") {
			t.Fatalf("%s got session %q, want one of c", id, v.Session)
		}
		f, d := v.decoded(t)
		warmFirst, warm = append(warmFirst, f), append(warm, d)
		viewers = append(viewers, v)
	}
	if got := relaysOf(t, a, "show"); len(got) != 1 || relay() != first {
		t.Fatalf("relays at a after 3 edge viewers: %v (the first replaced: %v)", got, relay() != first)
	}
	_, localTook := local.decoded(t)
	t.Logf("join to first video packet / first decoded keyframe: on the owner %v; on the edge, with a new relay %v / %v, with the relay up %v / %v",
		localTook.Round(time.Millisecond), coldFirst.Round(time.Millisecond), coldTook.Round(time.Millisecond), warmFirst, warm)

	// What the edge's viewers see: the host, never the relay.
	for _, v := range viewers {
		var joined struct {
			Participants []struct {
				Identity string `json:"identity"`
				Role     string `json:"role"`
			} `json:"participants"`
		}
		if err := json.Unmarshal(v.WaitEvent("joined", nil).Data, &joined); err != nil {
			t.Fatal(err)
		}
		if len(joined.Participants) != 1 || joined.Participants[0].Identity != "host" || joined.Participants[0].Role != "host" {
			t.Fatalf("%s: roster %+v, want the host alone", v.Session, joined.Participants)
		}
		for _, e := range v.EventsOf("track_published") {
			if !strings.Contains(string(e.Data), `"identity":"host"`) {
				t.Fatalf("%s: %s", v.Session, e.Data)
			}
		}
	}
	// The owner's admin feed hears of the edge's viewers.
	vigiltest.WaitFor(t, 5*time.Second, "the edge viewers on a's feed", func() bool {
		n := 0
		for _, e := range feedEvents(t, a.srv, "show") {
			if e.Type == "participant_joined" && strings.Contains(string(e.Data), `"node":"c"`) {
				n++
			}
		}
		return n == 3
	})

	// Closing the room on the owner ends the edge's viewers, and the
	// replica.
	if status, body := a.srv.Do(t, http.MethodDelete, "/v1/rooms/show", a.srv.AdminKey, nil); status != http.StatusNoContent {
		t.Fatalf("delete room: %d %s", status, body)
	}
	for _, v := range viewers {
		left := v.WaitEvent("left", nil)
		if !strings.Contains(string(left.Data), `"room_closed"`) {
			t.Fatalf("%s left with %s", v.Session, left.Data)
		}
	}
	vigiltest.WaitFor(t, 5*time.Second, "the replica gone from c", func() bool {
		_, err := c.srv.SFU.Room("show")
		return err != nil
	})
}

// TestCascadeIdleReplicaCloses: a viewer joining through the full owner
// itself is sent to the least loaded other node; the replica of an edge
// whose viewers left closes after EdgeIdle, and its relay leaves the
// owner's room; the next viewer through the edge gets a new one, and a
// WHEP player is cascaded as well.
func TestCascadeIdleReplicaCloses(t *testing.T) {
	vigiltest.LeakCheck(t)
	nodes := startCascade(t, time.Second, "a", "b")
	a, b := nodes[0], nodes[1]
	a.srv.CreateRoom(t, "talk", "broadcast")
	feedEvents(t, a.srv, "talk") // the feed starts now
	hostVP8(t, a.srv, "talk")
	vigiltest.Dial(t, a.srv, "talk", "v1", "viewer").WaitEvent("joined", nil)

	// Through a itself: a, full, sends the viewer to the least loaded
	// other node, b.
	v := joinFrameViewer(t, a.srv, "talk", "v2")
	if !strings.HasPrefix(v.Session, "b.") {
		t.Fatalf("session %q, want one of b", v.Session)
	}
	v.decoded(t)
	if got := relaysOf(t, a, "talk"); len(got) != 1 || got[0] != "relay.b" {
		t.Fatalf("relays at a: %v", got)
	}
	if status, body := a.srv.Do(t, http.MethodDelete, "/v1/sessions/"+v.Session, "", nil); status != http.StatusNoContent {
		t.Fatalf("leave: %d %s", status, body)
	}
	vigiltest.WaitFor(t, 5*time.Second, "the idle replica closed and its relay gone", func() bool {
		_, err := b.srv.SFU.Room("talk")
		return err != nil && len(relaysOf(t, a, "talk")) == 0
	})
	var edgeEvents []string
	for _, e := range feedEvents(t, a.srv, "talk") {
		if strings.Contains(string(e.Data), `"node":"b"`) {
			edgeEvents = append(edgeEvents, e.Type+" "+string(e.Data))
		}
	}
	if len(edgeEvents) != 2 || !strings.HasPrefix(edgeEvents[0], "participant_joined") || !strings.Contains(edgeEvents[0], `"v2"`) ||
		!strings.HasPrefix(edgeEvents[1], "participant_left") || !strings.Contains(edgeEvents[1], `"v2"`) {
		t.Fatalf("a's feed of b's viewers: %v", edgeEvents)
	}
	again := joinFrameViewer(t, b.srv, "talk", "v3")
	if !strings.HasPrefix(again.Session, "b.") {
		t.Fatalf("session %q, want one of b", again.Session)
	}
	again.decoded(t)

	// A WHEP player through a is sent to b too, and plays.
	w := vigiltest.PlayWHEP(t, a.srv, "talk", "w1", "")
	if !strings.HasPrefix(w.Location, "/whep/talk/b.") {
		t.Fatalf("WHEP resource %q, want one of b", w.Location)
	}
	vigiltest.WaitFor(t, 10*time.Second, "WHEP video through b", func() bool { return w.Packets("video") > 30 })
	if got := relaysOf(t, a, "talk"); len(got) != 1 {
		t.Fatalf("relays at a: %v", got)
	}
}

// TestCascadeOwnerLostMovesViewers: when the edge loses its relay's
// signaling to the owner for good (the owner's node cannot be reached),
// the replica closes and its viewers leave with room_moved, to come back
// through the routing.
func TestCascadeOwnerLostMovesViewers(t *testing.T) {
	vigiltest.LeakCheck(t)
	nodes := startCascade(t, 0, "a", "b")
	a, b := nodes[0], nodes[1]
	a.srv.CreateRoom(t, "gone", "broadcast")
	hostVP8(t, a.srv, "gone")
	vigiltest.Dial(t, a.srv, "gone", "v1", "viewer").WaitEvent("joined", nil)
	v := joinFrameViewer(t, b.srv, "gone", "v2")
	if !strings.HasPrefix(v.Session, "b.") {
		t.Fatalf("session %q, want one of b", v.Session)
	}
	v.decoded(t)
	start := time.Now()
	a.cut()
	left := v.WaitEvent("left", nil)
	if !strings.Contains(string(left.Data), `"room_moved"`) {
		t.Fatalf("left with %s, want room_moved", left.Data)
	}
	t.Logf("owner cut off: edge viewers told room_moved after %v", time.Since(start).Round(time.Millisecond))
	vigiltest.WaitFor(t, 5*time.Second, "the replica gone from b", func() bool {
		_, err := b.srv.SFU.Room("gone")
		return err != nil
	})
}
