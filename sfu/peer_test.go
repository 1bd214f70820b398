package sfu

import (
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
)

// newTestSFU starts an SFU on a loopback port.
func newTestSFU(t *testing.T) *SFU {
	t.Helper()
	s, err := New(Config{UDPAddr: "127.0.0.1:0", IncludeLoopback: true, KeyframeInterval: 100 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// chanSink collects a participant's events.
type chanSink struct{ ch chan Event }

func (s chanSink) Deliver(ev Event) {
	select {
	case s.ch <- ev:
	default:
		panic("test sink full")
	}
}

// peer is a pion client joined to a room directly through the sfu API.
type peer struct {
	t    *testing.T
	pc   *webrtc.PeerConnection
	p    *Participant
	sink chanSink

	mu       sync.Mutex
	received map[string][]uint16 // track kind -> sequence numbers
	byMid    map[string]TrackInfo
	wg       sync.WaitGroup
	stop     chan struct{}
}

func newPeerAPI(t *testing.T) *webrtc.API {
	t.Helper()
	se := webrtc.SettingEngine{}
	se.SetIncludeLoopbackCandidate(true)
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	se.SetInterfaceFilter(func(name string) bool { return name == "lo" })
	me := &webrtc.MediaEngine{}
	if err := me.RegisterDefaultCodecs(); err != nil {
		t.Fatal(err)
	}
	return webrtc.NewAPI(webrtc.WithSettingEngine(se), webrtc.WithMediaEngine(me))
}

func joinPeer(t *testing.T, r *Room, identity string, role Role) *peer {
	t.Helper()
	return joinPeerWith(t, r, identity, role, nil)
}

// joinPeerWith is joinPeer with setup run on the client before it joins
// (to replace its OnTrack handler, say).
func joinPeerWith(t *testing.T, r *Room, identity string, role Role, setup func(*peer)) *peer {
	t.Helper()
	pc, err := newPeerAPI(t).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	c := &peer{t: t, pc: pc, sink: chanSink{ch: make(chan Event, 1024)}, received: map[string][]uint16{},
		byMid: map[string]TrackInfo{}, stop: make(chan struct{})}
	pc.OnTrack(func(tr *webrtc.TrackRemote, recv *webrtc.RTPReceiver) { c.read(tr, nil) })
	if setup != nil {
		setup(c)
	}
	p, err := r.Join(JoinConfig{Identity: identity, Role: role, Sink: c.sink})
	if err != nil {
		t.Fatal(err)
	}
	c.p = p
	c.wg.Add(1)
	go c.loop()
	return c
}

// loop answers server offers as they come.
func (c *peer) loop() {
	defer c.wg.Done()
	for {
		select {
		case <-c.stop:
			return
		case ev := <-c.sink.ch:
			switch ev := ev.(type) {
			case OfferEvent:
				c.mu.Lock()
				for mid, ti := range ev.Tracks {
					c.byMid[mid] = ti
				}
				c.mu.Unlock()
				if err := c.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: ev.SDP}); err != nil {
					c.t.Errorf("set remote offer: %v", err)
					return
				}
				ans, err := c.pc.CreateAnswer(nil)
				if err != nil {
					c.t.Errorf("create answer: %v", err)
					return
				}
				g := webrtc.GatheringCompletePromise(c.pc)
				if err := c.pc.SetLocalDescription(ans); err != nil {
					c.t.Errorf("set local answer: %v", err)
					return
				}
				<-g
				if err := c.p.HandleAnswer(c.pc.LocalDescription().SDP); err != nil && !errors.Is(err, ErrClosed) {
					c.t.Errorf("handle answer: %v", err)
				}
			case AnswerEvent:
				if err := c.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: ev.SDP}); err != nil {
					c.t.Errorf("set remote answer: %v", err)
				}
			case LeftEvent:
				return
			}
		}
	}
}

// publish offers the given local tracks with their sources.
func (c *peer) publish(tracks map[Source]webrtc.TrackLocal) error {
	sources := map[string]Source{}
	for src, tr := range tracks {
		tx, err := c.pc.AddTransceiverFromTrack(tr, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
		if err != nil {
			return err
		}
		go func() { // drain RTCP so interceptors work
			for {
				if _, _, err := tx.Sender().ReadRTCP(); err != nil {
					return
				}
			}
		}()
		_ = src
	}
	offer, err := c.pc.CreateOffer(nil)
	if err != nil {
		return err
	}
	g := webrtc.GatheringCompletePromise(c.pc)
	if err := c.pc.SetLocalDescription(offer); err != nil {
		return err
	}
	<-g
	for _, tx := range c.pc.GetTransceivers() {
		for src, tr := range tracks {
			if tx.Sender() != nil && tx.Sender().Track() == tr {
				sources[tx.Mid()] = src
			}
		}
	}
	return c.p.HandleOffer(c.pc.LocalDescription().SDP, sources)
}

func (c *peer) seqs(kind string) []uint16 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]uint16(nil), c.received[kind]...)
}

func (c *peer) close() {
	close(c.stop)
	c.wg.Wait()
	c.p.Leave(ReasonLeft)
	_ = c.pc.Close()
}

// waitFor polls cond until it holds or d passes.
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

// mediaSource writes synthetic VP8 (a keyframe every 30 frames) and Opus
// packets with continuous sequence numbers until stopped.
type mediaSource struct {
	video, audio *webrtc.TrackLocalStaticRTP
	stop         chan struct{}
	done         chan struct{}
}

func newMediaSource(t *testing.T) *mediaSource {
	t.Helper()
	v, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000}, "video", "pub")
	if err != nil {
		t.Fatal(err)
	}
	a, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}, "audio", "pub")
	if err != nil {
		t.Fatal(err)
	}
	return &mediaSource{video: v, audio: a, stop: make(chan struct{}), done: make(chan struct{})}
}

func (m *mediaSource) run() {
	defer close(m.done)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var vseq, aseq uint16
	for frame := 0; ; frame++ {
		select {
		case <-m.stop:
			return
		case <-tick.C:
		}
		// A VP8 frame in 3 packets; descriptor S bit on the first.
		key := frame%30 == 0
		for i := 0; i < 3; i++ {
			desc := byte(0x00)
			if i == 0 {
				desc = 0x10
			}
			hdr := byte(0x01)
			if key {
				hdr = 0x00
			}
			payload := append([]byte{desc, hdr}, make([]byte, 300)...)
			pkt := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 96, SequenceNumber: vseq, Timestamp: uint32(frame * 4500), Marker: i == 2}, Payload: payload}
			vseq++
			if err := m.video.WriteRTP(pkt); err != nil && !errors.Is(err, io.ErrClosedPipe) {
				return
			}
		}
		pkt := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SequenceNumber: aseq, Timestamp: uint32(frame * 960)}, Payload: make([]byte, 80)}
		aseq++
		if err := m.audio.WriteRTP(pkt); err != nil && !errors.Is(err, io.ErrClosedPipe) {
			return
		}
	}
}

func (m *mediaSource) close() {
	close(m.stop)
	<-m.done
}

// continuous reports whether seqs increase by exactly one each step.
func continuous(seqs []uint16) bool {
	for i := 1; i < len(seqs); i++ {
		if seqs[i] != seqs[i-1]+1 {
			return false
		}
	}
	return true
}

// read records the sequence number of every packet of tr in c.received
// until the track ends, and hands each packet to each, if set.
func (c *peer) read(tr *webrtc.TrackRemote, each func(kind string, pkt *rtp.Packet)) {
	kind := tr.Kind().String()
	for {
		pkt, _, err := tr.ReadRTP()
		if err != nil {
			return
		}
		c.mu.Lock()
		c.received[kind] = append(c.received[kind], pkt.SequenceNumber)
		c.mu.Unlock()
		if each != nil {
			each(kind, pkt)
		}
	}
}
