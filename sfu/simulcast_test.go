package sfu

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pion/interceptor"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v4"
	"go.uber.org/goleak"
)

// simulcastSource sends three VP8 layers q, h, f whose payloads say which
// layer they are (third byte), each with a keyframe every 15 frames (or,
// with keys, only when asked) and bigger packets for higher layers.
type simulcastSource struct {
	tracks     []*webrtc.TrackLocalStaticRTP
	keys       *keyOnRequest // nil: periodic keyframes
	midID      uint8
	ridID      uint8
	mid        string
	stop, done chan struct{}
}

var simulcastRIDs = []string{"q", "h", "f"}

func publishSimulcast(t *testing.T, c *peer) *simulcastSource {
	t.Helper()
	return publishSimulcastWith(t, c, nil)
}

// publishSimulcastWith is publishSimulcast; with keys, a layer sends a
// keyframe only when keys says so.
func publishSimulcastWith(t *testing.T, c *peer, keys *keyOnRequest) *simulcastSource {
	t.Helper()
	s := &simulcastSource{keys: keys, stop: make(chan struct{}), done: make(chan struct{})}
	for _, rid := range simulcastRIDs {
		tr, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000}, "video", "pub", webrtc.WithRTPStreamID(rid))
		if err != nil {
			t.Fatal(err)
		}
		s.tracks = append(s.tracks, tr)
	}
	tx, err := c.pc.AddTransceiverFromTrack(s.tracks[0], webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
	if err != nil {
		t.Fatal(err)
	}
	for _, tr := range s.tracks[1:] {
		if err := tx.Sender().AddEncoding(tr); err != nil {
			t.Fatal(err)
		}
	}
	for layer, rid := range simulcastRIDs {
		go keys.readRTCP(layer, func() ([]rtcp.Packet, interceptor.Attributes, error) { return tx.Sender().ReadSimulcastRTCP(rid) })
	}
	offer, err := c.pc.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	g := webrtc.GatheringCompletePromise(c.pc)
	if err := c.pc.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	<-g
	s.mid = tx.Mid()
	if err := c.p.HandleOffer(c.pc.LocalDescription().SDP, map[string]Source{s.mid: SourceCamera}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "answer applied", func() bool { return c.pc.RemoteDescription() != nil })
	for _, e := range tx.Sender().GetParameters().HeaderExtensions {
		switch e.URI {
		case sdp.SDESMidURI:
			s.midID = uint8(e.ID)
		case sdp.SDESRTPStreamIDURI:
			s.ridID = uint8(e.ID)
		}
	}
	if s.midID == 0 || s.ridID == 0 {
		t.Fatal("mid or rid extension not negotiated")
	}
	go s.run()
	t.Cleanup(s.close)
	return s
}

func (s *simulcastSource) run() {
	defer close(s.done)
	tick := time.NewTicker(33 * time.Millisecond)
	defer tick.Stop()
	seq := make([]uint16, len(s.tracks))
	for frame := 0; ; frame++ {
		select {
		case <-s.stop:
			return
		case <-tick.C:
		}
		for layer, tr := range s.tracks {
			key := (frame+layer*5)%15 == 0
			if s.keys != nil {
				key = s.keys.next(layer)
			}
			hdr := byte(0x01)
			if key {
				hdr = 0x00
			}
			payload := append([]byte{0x10, hdr, byte(layer)}, make([]byte, 100*(1+3*layer))...)
			pkt := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 96, SequenceNumber: seq[layer], Timestamp: uint32(frame * 3000), Marker: true}, Payload: payload}
			seq[layer]++
			_ = pkt.Header.SetExtension(s.midID, []byte(s.mid))
			_ = pkt.Header.SetExtension(s.ridID, []byte(tr.RID()))
			_ = tr.WriteRTP(pkt)
		}
	}
}

func (s *simulcastSource) close() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
		<-s.done
	}
}

// layerLog records what a subscriber receives: the layer, whether the
// packet starts a keyframe, and its sequence number and timestamp.
type layerLog struct {
	mu   sync.Mutex
	pkts []received
}

type received struct {
	layer int
	key   bool
	seq   uint16
	ts    uint32
}

func (l *layerLog) watch(c *peer) {
	c.pc.OnTrack(func(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
		for {
			pkt, _, err := tr.ReadRTP()
			if err != nil {
				return
			}
			if len(pkt.Payload) < 3 {
				continue
			}
			l.mu.Lock()
			l.pkts = append(l.pkts, received{layer: int(pkt.Payload[2]), key: pkt.Payload[1]&1 == 0, seq: pkt.SequenceNumber, ts: pkt.Timestamp})
			l.mu.Unlock()
		}
	})
}

func (l *layerLog) snapshot() []received {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]received(nil), l.pkts...)
}

// lastLayerRun reports whether the last n packets are all of layer.
func (l *layerLog) lastRun(layer, n int) bool {
	p := l.snapshot()
	if len(p) < n {
		return false
	}
	for _, r := range p[len(p)-n:] {
		if r.layer != layer {
			return false
		}
	}
	return true
}

// checkSwitches fails unless sequence numbers are continuous and every
// change of layer starts on a keyframe of the new layer.
func checkSwitches(t *testing.T, pkts []received) {
	t.Helper()
	for i := 1; i < len(pkts); i++ {
		if pkts[i].seq != pkts[i-1].seq+1 {
			t.Fatalf("packet %d: seq %d after %d: a gap", i, pkts[i].seq, pkts[i-1].seq)
		}
		if pkts[i].layer != pkts[i-1].layer && !pkts[i].key {
			t.Fatalf("packet %d: switched from layer %d to %d on a delta frame", i, pkts[i-1].layer, pkts[i].layer)
		}
		if int32(pkts[i].ts-pkts[i-1].ts) < 0 {
			t.Fatalf("packet %d: timestamp went back from %d to %d", i, pkts[i-1].ts, pkts[i].ts)
		}
	}
}

type fixedBudget int

func (b fixedBudget) GetTargetBitrate() int { return int(b) }

func TestSimulcastLayersSwitchOnKeyframes(t *testing.T) {
	defer goleak.VerifyNone(t)
	s := newTestSFU(t)
	defer s.Close()
	room, err := s.CreateRoom("sim", KindConference, RoomOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pub := joinPeer(t, room, "alice", RoleParticipant)
	src := publishSimulcast(t, pub)

	var log layerLog
	sub := joinPeerWith(t, room, "bob", RoleParticipant, log.watch)
	// A participant gets the highest layer by default.
	waitFor(t, 10*time.Second, "the high layer", func() bool { return log.lastRun(2, 20) })

	var trackID string
	sub.p.mu.Lock()
	for id := range sub.p.downs {
		trackID = id
	}
	sub.p.mu.Unlock()
	if err := sub.p.SetLayer(trackID, "low"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the low layer", func() bool { return log.lastRun(0, 20) })
	if err := sub.p.SetLayer(trackID, "h"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the middle layer by rid", func() bool { return log.lastRun(1, 20) })
	if err := sub.p.SetLayer(trackID, "x"); err == nil {
		t.Fatal("an unknown layer was accepted")
	}

	// The bandwidth estimate caps the layer: with room for the low layer
	// only, the subscriber gets the low layer though it asked for high.
	if err := sub.p.SetLayer(trackID, "high"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the high layer again", func() bool { return log.lastRun(2, 20) })
	sub.p.alloc.mu.Lock()
	sub.p.alloc.bwe = fixedBudget(60_000)
	sub.p.alloc.mu.Unlock()
	waitFor(t, 5*time.Second, "the low layer under a small budget", func() bool { return log.lastRun(0, 20) })

	checkSwitches(t, log.snapshot())
	src.close()
	pub.close()
	sub.close()
}

func TestProctorGetsTheLowLayerByDefault(t *testing.T) {
	s := newTestSFU(t)
	defer s.Close()
	room, err := s.CreateRoom("exam", KindProctoring, RoomOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cand := joinPeer(t, room, "cand", RoleCandidate)
	publishSimulcast(t, cand)
	var log layerLog
	proctor := joinPeerWith(t, room, "proctor", RoleProctor, log.watch)
	waitFor(t, 10*time.Second, "the low layer at the proctor", func() bool { return log.lastRun(0, 30) })
	checkSwitches(t, log.snapshot())
	proctor.close()
	cand.close()
}

// TestLiveLayers: a layer silent for layerSilence is not chosen, unless
// every layer is.
func TestLiveLayers(t *testing.T) {
	now := time.Now()
	layer := func(rid string, silent time.Duration) *UpTrack {
		u := &UpTrack{rid: rid}
		if silent >= 0 {
			u.lastPacket.Store(now.Add(-silent).UnixNano())
		}
		return u
	}
	rids := func(ls []*UpTrack) (out []string) {
		for _, l := range ls {
			out = append(out, l.rid)
		}
		return out
	}
	q, h := layer("q", 10*time.Millisecond), layer("h", time.Second)
	off, never := layer("f", 3*time.Second), layer("f", -1)
	for _, tc := range []struct {
		name string
		in   []*UpTrack
		want []string
	}{
		{"all live", []*UpTrack{q, h}, []string{"q", "h"}},
		{"top layer turned off", []*UpTrack{q, h, off}, []string{"q", "h"}},
		{"top layer never sent", []*UpTrack{q, h, never}, []string{"q", "h"}},
		{"all silent", []*UpTrack{off, never}, []string{"f", "f"}},
	} {
		if got := rids(liveLayers(tc.in, now)); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
