package incidents

import (
	"bytes"
	"errors"
	"image/jpeg"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/rtp"
	"github.com/pion/rtp/codecs"
	"github.com/pion/webrtc/v4"
	"github.com/pion/webrtc/v4/pkg/media/ivfreader"
	"github.com/vigil-media/vigil/sfu"
	"go.uber.org/goleak"
)

func testLogger() *slog.Logger {
	if os.Getenv("VIGIL_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// vp8Frames makes 2 s of real VP8 at 15 fps with ffmpeg, a keyframe
// every 15 frames, and returns its frames.
func vp8Frames(t testing.TB) [][]byte {
	t.Helper()
	if _, err := exec.LookPath("ffmpeg"); err != nil {
		t.Fatalf("ffmpeg is required (apt-get install ffmpeg): %v", err)
	}
	out := filepath.Join(t.TempDir(), "out.ivf")
	cmd := exec.Command("ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=15", "-t", "2",
		"-c:v", "libvpx", "-g", "15", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ffmpeg: %v\n%s", err, b)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, _, err := ivfreader.NewWith(f)
	if err != nil {
		t.Fatal(err)
	}
	var frames [][]byte
	for {
		fr, _, err := r.ParseNextFrame()
		if errors.Is(err, io.EOF) {
			return frames
		}
		if err != nil {
			t.Fatal(err)
		}
		frames = append(frames, fr)
	}
}

// TestGrabberKeepsLatestKeyframe packetizes real VP8 as pion does (with
// picture ids, small MTU so frames span packets) and checks that the
// grabber keeps the latest complete keyframe, which decodes to the
// picture's size, and drops a keyframe with a packet missing.
func TestGrabberKeepsLatestKeyframe(t *testing.T) {
	frames := vp8Frames(t)
	pay := rtp.NewPacketizer(300, 96, 1234, &codecs.VP8Payloader{EnablePictureID: true}, rtp.NewRandomSequencer(), 90000)
	g := &grabber{}
	var kept []*keyframe
	for i, fr := range frames {
		pkts := pay.Packetize(fr, 6000)
		if i == 15 { // the second keyframe loses a packet in the middle
			if len(pkts) < 3 {
				t.Fatalf("keyframe in %d packets: want several", len(pkts))
			}
			pkts = append(pkts[:1], pkts[2:]...)
		}
		for _, p := range pkts {
			g.WritePacket(p, false)
		}
		if k := g.keyframe(); k != nil && (len(kept) == 0 || kept[len(kept)-1] != k) {
			kept = append(kept, k)
			if i%15 != 0 {
				t.Fatalf("frame %d kept as a keyframe", i)
			}
		}
	}
	if len(kept) != 1 {
		t.Fatalf("%d keyframes kept, want 1 (the second lost a packet)", len(kept))
	}
	if !bytes.Equal(kept[0].data, frames[0]) {
		t.Fatal("the kept keyframe is not the frame sent")
	}
	b, err := kept[0].snapshot()
	if err != nil {
		t.Fatal(err)
	}
	img, err := jpeg.Decode(bytes.NewReader(b))
	if err != nil || img.Bounds().Dx() != 320 || img.Bounds().Dy() != 240 {
		t.Fatalf("snapshot: %v %v", img.Bounds(), err)
	}
	if b2, _ := kept[0].snapshot(); &b2[0] != &b[0] {
		t.Fatal("a keyframe is encoded twice")
	}
	// Garbage does not decode, and does not panic.
	for _, junk := range [][]byte{nil, {0}, {0x10, 0, 0, 0x9d, 0x01, 0x2a, 0xff, 0xff, 0xff, 0xff}, bytes.Repeat([]byte{0x50}, 100)} {
		if _, err := snapshotJPEG(junk); err == nil {
			t.Errorf("%x decoded", junk)
		}
	}
}

// collector is a proctor's sink: it keeps the incident events.
type collector struct {
	mu  sync.Mutex
	got []Incident
}

func (c *collector) Deliver(ev sfu.Event) {
	if e, ok := ev.(Event); ok {
		c.mu.Lock()
		c.got = append(c.got, e.Incident)
		c.mu.Unlock()
	}
}

func (c *collector) of(typ Type) []Incident {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Incident
	for _, i := range c.got {
		if i.Type == typ {
			out = append(out, i)
		}
	}
	return out
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type events chan sfu.Event

func (e events) Deliver(ev sfu.Event) {
	select {
	case e <- ev:
	default:
	}
}

// proxy relays UDP between one client and the server, and can drop
// everything both ways (a network that goes away and comes back).
type proxy struct {
	front, back *net.UDPConn
	drop        atomic.Bool
	client      atomic.Pointer[net.UDPAddr]
	wg          sync.WaitGroup
}

func newProxy(t *testing.T, server net.Addr) *proxy {
	t.Helper()
	front, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	back, err := net.DialUDP("udp4", nil, server.(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{front: front, back: back}
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		buf := make([]byte, 1500)
		for {
			n, from, err := front.ReadFromUDP(buf)
			if err != nil {
				return
			}
			p.client.Store(from)
			if !p.drop.Load() {
				_, _ = back.Write(buf[:n])
			}
		}
	}()
	go func() {
		defer p.wg.Done()
		buf := make([]byte, 1500)
		for {
			n, err := back.Read(buf)
			if err != nil {
				return
			}
			if to := p.client.Load(); to != nil && !p.drop.Load() {
				_, _ = front.WriteToUDP(buf[:n], to)
			}
		}
	}()
	t.Cleanup(func() {
		_ = front.Close()
		_ = back.Close()
		p.wg.Wait()
	})
	return p
}

var candidateLine = regexp.MustCompile(`(?m)^a=candidate:.*\r\n`)

// candidateThrough joins room as a candidate whose media goes through a
// proxy: the server's candidates in its answer are replaced by the
// proxy's address, and the client's are not given to the server (it
// learns the proxy's from the connectivity checks). It publishes a
// synthetic VP8 camera until the test ends.
func candidateThrough(t *testing.T, room *sfu.Room, px *proxy, identity string) (*sfu.Participant, *webrtc.PeerConnection) {
	t.Helper()
	se := webrtc.SettingEngine{}
	se.SetIncludeLoopbackCandidate(true)
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	se.SetInterfaceFilter(func(name string) bool { return name == "lo" })
	se.SetICETimeouts(2*time.Second, 30*time.Second, 500*time.Millisecond)
	me := &webrtc.MediaEngine{}
	if err := me.RegisterDefaultCodecs(); err != nil {
		t.Fatal(err)
	}
	pc, err := webrtc.NewAPI(webrtc.WithSettingEngine(se), webrtc.WithMediaEngine(me)).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	cam, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000}, "v", identity)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := pc.AddTransceiverFromTrack(cam, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
	if err != nil {
		t.Fatal(err)
	}
	ev := make(events, 64)
	p, err := room.Join(sfu.JoinConfig{Identity: identity, Role: sfu.RoleCandidate, Sink: ev})
	if err != nil {
		t.Fatal(err)
	}
	offer, err := pc.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	<-gathered
	sdp := candidateLine.ReplaceAllString(pc.LocalDescription().SDP, "")
	if err := p.HandleOffer(sdp, map[string]sfu.Source{tx.Mid(): sfu.SourceCamera}); err != nil {
		t.Fatal(err)
	}
	var answer string
	for answer == "" {
		select {
		case e := <-ev:
			if a, ok := e.(sfu.AnswerEvent); ok {
				answer = a.SDP
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no answer")
		}
	}
	port := px.front.LocalAddr().(*net.UDPAddr).Port
	answer = candidateLine.ReplaceAllString(answer, "")
	answer = strings.Replace(answer, "a=end-of-candidates\r\n", "", -1)
	answer = strings.Replace(answer, "a=mid:", "a=candidate:1 1 udp 2130706431 127.0.0.1 "+strconv.Itoa(port)+" typ host\r\na=mid:", 1)
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: answer}); err != nil {
		t.Fatal(err)
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			hdr := byte(0x01)
			if i%30 == 0 {
				hdr = 0
			}
			_ = cam.WriteRTP(&rtp.Packet{Header: rtp.Header{Version: 2, SequenceNumber: uint16(i), Timestamp: uint32(i * 1800), Marker: true},
				Payload: append([]byte{0x10, hdr}, make([]byte, 100)...)})
		}
	}()
	go func() {
		for {
			if _, _, err := tx.Sender().ReadRTCP(); err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-done
		_ = pc.Close()
	})
	waitFor(t, 10*time.Second, "connected through the proxy", func() bool {
		return p.ConnectionState() == webrtc.PeerConnectionStateConnected && len(p.Tracks()) == 1
	})
	return p, pc
}

// TestMonitorWithRealParticipant: a candidate publishes a camera only,
// through a UDP relay the test controls. Admitted, it gets track_missing
// for its microphone and screen (after a short MissingAfter); when the
// relay drops everything, connection_lost (and no video_frozen); when
// it relays again, connection_restored; when it leaves, nothing more.
func TestMonitorWithRealParticipant(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) }) // after every other cleanup
	store, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	mon, err := NewMonitor(Config{Store: store, Logger: testLogger(), MissingAfter: 1500 * time.Millisecond, Interval: 250 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer mon.Close()
	media, err := sfu.New(sfu.Config{UDPAddr: "127.0.0.1:0", IncludeLoopback: true, Logger: testLogger(), Observer: sfu.Observers{mon},
		DisconnectTimeout: 2 * time.Second, FailedTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer media.Close()
	room, err := media.CreateRoom("exam", sfu.KindProctoring, sfu.RoomOptions{})
	if err != nil {
		t.Fatal(err)
	}
	proctors := &collector{}
	proc, err := room.Join(sfu.JoinConfig{Identity: "proc", Role: sfu.RoleProctor, Sink: proctors})
	if err != nil {
		t.Fatal(err)
	}
	px := newProxy(t, media.LocalAddr())
	cand, _ := candidateThrough(t, room, px, "cand")
	if err := room.Admit(proc, "cand"); err != nil {
		t.Fatal(err)
	}
	admitted := time.Now()

	waitFor(t, 5*time.Second, "track_missing", func() bool { return len(proctors.of(TrackMissing)) == 2 })
	t.Logf("track_missing %v after admission", time.Since(admitted).Round(time.Millisecond))
	srcs := map[sfu.Source]bool{}
	for _, i := range proctors.of(TrackMissing) {
		srcs[i.Track] = true
	}
	if !srcs[sfu.SourceMicrophone] || !srcs[sfu.SourceScreen] {
		t.Fatalf("track_missing for %v, want microphone and screen", srcs)
	}

	px.drop.Store(true)
	dropped := time.Now()
	waitFor(t, 10*time.Second, "connection_lost", func() bool { return len(proctors.of(ConnectionLost)) == 1 })
	t.Logf("connection_lost %v after the network went away", time.Since(dropped).Round(time.Millisecond))
	time.Sleep(2 * time.Second)
	px.drop.Store(false)
	back := time.Now()
	waitFor(t, 10*time.Second, "connection_restored", func() bool { return len(proctors.of(ConnectionRestored)) == 1 })
	t.Logf("connection_restored %v after the network came back", time.Since(back).Round(time.Millisecond))
	time.Sleep(time.Second)
	if n := len(proctors.of(VideoFrozen)); n != 0 {
		t.Fatalf("%d video_frozen around a lost connection", n)
	}
	if n := len(proctors.of(ConnectionLost)); n != 1 {
		t.Fatalf("%d connection_lost", n)
	}

	proctors.mu.Lock()
	before := len(proctors.got)
	proctors.mu.Unlock()
	cand.Leave(sfu.ReasonLeft)
	time.Sleep(2 * time.Second)
	proctors.mu.Lock()
	after := proctors.got[before:]
	proctors.mu.Unlock()
	if len(after) != 0 {
		t.Fatalf("incidents after leaving: %+v", after)
	}
	stored, err := store.List(t.Context(), Filter{Room: "exam"})
	if err != nil || len(stored) != before {
		t.Fatalf("%d stored, %d pushed: %v", len(stored), before, err)
	}
	proc.Leave(sfu.ReasonLeft)
}

// BenchmarkGrabberDeltaPacket is the media-path cost of a delta frame's
// packet: the payload descriptor parse.
func BenchmarkGrabberDeltaPacket(b *testing.B) {
	g := &grabber{}
	pkt := &rtp.Packet{Header: rtp.Header{Marker: true}, Payload: append([]byte{0x90, 0x80, 0x12, 0x01}, make([]byte, 1100)...)}
	b.ReportAllocs()
	for b.Loop() {
		g.WritePacket(pkt, false)
	}
}

// BenchmarkGrabberKeyframePacket is the cost of one 1100-byte packet in
// the middle of a keyframe: a copy into the grabber's buffer.
func BenchmarkGrabberKeyframePacket(b *testing.B) {
	g := &grabber{}
	first := &rtp.Packet{Header: rtp.Header{SequenceNumber: 0}, Payload: append([]byte{0x90, 0x80, 0x12, 0x00}, make([]byte, 1100)...)}
	mid := &rtp.Packet{Header: rtp.Header{}, Payload: append([]byte{0x80, 0x80, 0x12}, make([]byte, 1100)...)}
	g.WritePacket(first, false)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if i%1000 == 0 { // stay under the keyframe bound
			first.SequenceNumber = uint16(i)
			g.WritePacket(first, false)
		}
		mid.SequenceNumber = g.next
		g.WritePacket(mid, false)
	}
}

// BenchmarkSnapshot320x240 decodes a real 320x240 VP8 keyframe and
// encodes the JPEG (what an incident costs, off the media path).
func BenchmarkSnapshot320x240(b *testing.B) {
	frames := vp8Frames(b)
	for b.Loop() {
		if _, err := snapshotJPEG(frames[0]); err != nil {
			b.Fatal(err)
		}
	}
}
