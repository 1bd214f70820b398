package sfu

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/pion/dtls/v3"
	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
)

// BenchmarkForward measures the forwarding hot path, per forwarded
// packet: one 1200-byte VP8 packet of an up-track written to N
// down-tracks, each through pion's WriteRTP (Vigil's interceptors, SRTP
// AES-128-GCM) and a sendto on the SFU's UDP socket to a real pion
// subscriber on loopback. The loop is UpTrack.run's fan-out (keyframe
// check, then DownTrack.writeRTP on every down-track), called directly so
// that only forwarding is timed. The same is measured for the stock-pion
// way, the baseline: one TrackLocalStaticRTP bound to N peer connections
// with pion's default interceptors.
//
// Subscribers stop reading their socket while the loop runs (their
// packets are dropped by the kernel once its buffer fills, at the same
// cost to the sender), so that their decryption does not share the CPU
// with what is measured. ICE timeouts are long enough that no one notices.
//
// Reported per forwarded packet: ns/fwd (wall time of the loop divided by
// packets forwarded), allocs/fwd and B/fwd; ns/op, B/op and allocs/op are
// per up-track packet, so N forwards.
//
//	go test -run '^$' -bench '^BenchmarkForward$' -benchmem ./sfu/
//	go test -run '^$' -bench '^BenchmarkForward$/vigil/subs=100' -cpuprofile cpu.out ./sfu/
func BenchmarkForward(b *testing.B) {
	for _, n := range []int{10, 100} {
		b.Run(fmt.Sprintf("vigil/subs=%d", n), func(b *testing.B) { benchVigilForward(b, n) })
		b.Run(fmt.Sprintf("pion/subs=%d", n), func(b *testing.B) { benchPionForward(b, n) })
	}
}

// gatedConn is a subscriber's socket whose reads can be paused.
type gatedConn struct {
	net.PacketConn
	mu     sync.Mutex
	cond   sync.Cond
	paused bool
}

func (g *gatedConn) ReadFrom(p []byte) (int, net.Addr, error) {
	g.mu.Lock()
	for g.paused {
		g.cond.Wait()
	}
	g.mu.Unlock()
	return g.PacketConn.ReadFrom(p)
}

func (g *gatedConn) pause(on bool) {
	g.mu.Lock()
	g.paused = on
	g.mu.Unlock()
	g.cond.Broadcast()
}

// benchSub is a pion subscriber with no interceptors.
type benchSub struct {
	pc   *webrtc.PeerConnection
	conn *gatedConn
}

func newBenchSub(tb testing.TB) *benchSub {
	tb.Helper()
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	g := &gatedConn{PacketConn: c}
	g.cond.L = &g.mu
	quiet := pionLogs{log: slog.New(slog.DiscardHandler)}
	se := webrtc.SettingEngine{LoggerFactory: quiet}
	se.SetICEUDPMux(webrtc.NewICEUDPMux(quiet.NewLogger("udpmux"), g))
	se.SetIncludeLoopbackCandidate(true)
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	se.SetICETimeouts(time.Minute, 2*time.Minute, 2*time.Second)
	me := &webrtc.MediaEngine{}
	if err := me.RegisterDefaultCodecs(); err != nil {
		tb.Fatal(err)
	}
	api := webrtc.NewAPI(webrtc.WithSettingEngine(se), webrtc.WithMediaEngine(me), webrtc.WithInterceptorRegistry(&interceptor.Registry{}))
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		tb.Fatal(err)
	}
	pc.OnTrack(func(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
		buf := make([]byte, 1500)
		for {
			if _, _, err := tr.Read(buf); err != nil {
				return
			}
		}
	})
	return &benchSub{pc: pc, conn: g}
}

// answer applies an offer and returns the answer with its candidates.
func (s *benchSub) answer(offer string) (string, error) {
	if err := s.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
		return "", err
	}
	ans, err := s.pc.CreateAnswer(nil)
	if err != nil {
		return "", err
	}
	g := webrtc.GatheringCompletePromise(s.pc)
	if err := s.pc.SetLocalDescription(ans); err != nil {
		return "", err
	}
	<-g
	return s.pc.LocalDescription().SDP, nil
}

func (s *benchSub) close() {
	_ = s.pc.Close()
	_ = s.conn.Close()
}

// vp8Packet is a 1200-byte VP8 packet; the first is a keyframe.
func vp8Packet(key bool) *rtp.Packet {
	payload := make([]byte, 1200)
	payload[0] = 0x10 // S, partition 0
	if !key {
		payload[1] = 0x01 // P: an interframe
	}
	return &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 96, SSRC: 1234, SequenceNumber: 1, Timestamp: 3000}, Payload: payload}
}

// measure runs the timed loop: write(pkt) b.N times, after a keyframe.
func measure(b *testing.B, subs []*benchSub, n int, write func(pkt *rtp.Packet)) {
	write(vp8Packet(true)) // down-tracks wait for a keyframe
	time.Sleep(50 * time.Millisecond)
	for _, s := range subs {
		s.conn.pause(true)
	}
	defer func() {
		for _, s := range subs {
			s.conn.pause(false)
		}
	}()
	pkt := vp8Packet(false)
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		pkt.SequenceNumber++
		pkt.Timestamp += 3000
		write(pkt)
	}
	b.StopTimer()
	runtime.ReadMemStats(&m1)
	fwd := float64(b.N) * float64(n)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/fwd, "ns/fwd")
	b.ReportMetric(float64(m1.Mallocs-m0.Mallocs)/fwd, "allocs/fwd")
	b.ReportMetric(float64(m1.TotalAlloc-m0.TotalAlloc)/fwd, "B/fwd")
}

func waitUntil(tb testing.TB, d time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// benchVigilForward forwards through Vigil's UpTrack and DownTracks.
func benchVigilForward(b *testing.B, n int) {
	s, err := New(Config{UDPAddr: "127.0.0.1:0", IncludeLoopback: true, KeyframeInterval: 100 * time.Millisecond,
		DisconnectTimeout: time.Minute, FailedTimeout: 2 * time.Minute, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	room, err := s.CreateRoom("bench", KindBroadcast, RoomOptions{})
	if err != nil {
		b.Fatal(err)
	}

	// The publisher: a pion peer whose VP8 track makes the up-track.
	pub := newBenchSub(b)
	defer pub.close()
	pubSink := chanSink{ch: make(chan Event, 64)}
	pp, err := room.Join(JoinConfig{Identity: "pub", Role: RoleHost, Sink: pubSink})
	if err != nil {
		b.Fatal(err)
	}
	video, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000}, "video", "pub")
	if err != nil {
		b.Fatal(err)
	}
	tx, err := pub.pc.AddTransceiverFromTrack(video, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
	if err != nil {
		b.Fatal(err)
	}
	offer, err := pub.pc.CreateOffer(nil)
	if err != nil {
		b.Fatal(err)
	}
	g := webrtc.GatheringCompletePromise(pub.pc)
	if err := pub.pc.SetLocalDescription(offer); err != nil {
		b.Fatal(err)
	}
	<-g
	if err := pp.HandleOffer(pub.pc.LocalDescription().SDP, map[string]Source{tx.Mid(): SourceCamera}); err != nil {
		b.Fatal(err)
	}
	go func() {
		for ev := range pubSink.ch {
			if a, ok := ev.(AnswerEvent); ok {
				_ = pub.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: a.SDP})
			}
		}
	}()
	// A few packets, until the SFU has the track.
	waitUntil(b, 10*time.Second, "the up-track", func() bool {
		_ = video.WriteRTP(vp8Packet(true))
		return len(pp.Tracks()) == 1
	})
	up := pp.Tracks()[0]

	// The subscribers: viewers, answering the server's offers.
	subs := make([]*benchSub, n)
	parts := make([]*Participant, n)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	defer func() {
		close(stop)
		for i, sub := range subs {
			if parts[i] != nil {
				parts[i].Leave(ReasonLeft)
			}
			sub.close()
		}
		wg.Wait()
	}()
	for i := range n {
		sub := newBenchSub(b)
		subs[i] = sub
		sink := chanSink{ch: make(chan Event, 64)}
		p, err := room.Join(JoinConfig{Identity: fmt.Sprintf("v%03d", i), Role: RoleViewer, Sink: sink})
		if err != nil {
			b.Fatal(err)
		}
		parts[i] = p
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				case ev := <-sink.ch:
					if o, ok := ev.(OfferEvent); ok {
						ans, err := sub.answer(o.SDP)
						if err == nil {
							err = p.HandleAnswer(ans)
						}
						if err != nil && !errors.Is(err, ErrClosed) {
							b.Errorf("answer: %v", err)
						}
					}
				}
			}
		}()
	}
	waitUntil(b, 30*time.Second, "every subscriber connected and bound", func() bool {
		downs := up.downs.load()
		if len(downs) != n {
			return false
		}
		for _, d := range downs {
			if d.binding.Load() == nil {
				return false
			}
		}
		for i := range n {
			if subs[i].pc.ConnectionState() != webrtc.PeerConnectionStateConnected ||
				parts[i].ConnectionState() != webrtc.PeerConnectionStateConnected {
				return false
			}
		}
		return true
	})
	measure(b, subs, n, func(pkt *rtp.Packet) {
		// UpTrack.run's fan-out of one packet.
		key := isKeyframe(up.codec.MimeType, pkt.Payload)
		now := time.Now()
		for _, d := range up.downs.load() {
			d.writeRTP(up, pkt, key, now)
		}
	})
}

// benchPionForward forwards the stock-pion way: one TrackLocalStaticRTP.
func benchPionForward(b *testing.B, n int) {
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	quiet := pionLogs{log: slog.New(slog.DiscardHandler)}
	mux := webrtc.NewICEUDPMux(quiet.NewLogger("udpmux"), c)
	defer mux.Close()
	se := webrtc.SettingEngine{LoggerFactory: quiet}
	se.SetICEUDPMux(mux)
	se.SetIncludeLoopbackCandidate(true)
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	se.SetSRTPProtectionProfiles(dtls.SRTP_AEAD_AES_128_GCM, dtls.SRTP_AES128_CM_HMAC_SHA1_80)
	se.SetICETimeouts(time.Minute, 2*time.Minute, 2*time.Second)
	me := &webrtc.MediaEngine{}
	if err := me.RegisterDefaultCodecs(); err != nil {
		b.Fatal(err)
	}
	ir := &interceptor.Registry{}
	if err := webrtc.RegisterDefaultInterceptors(me, ir); err != nil {
		b.Fatal(err)
	}
	api := webrtc.NewAPI(webrtc.WithSettingEngine(se), webrtc.WithMediaEngine(me), webrtc.WithInterceptorRegistry(ir))
	track, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000}, "video", "pub")
	if err != nil {
		b.Fatal(err)
	}
	subs := make([]*benchSub, n)
	pcs := make([]*webrtc.PeerConnection, n)
	defer func() {
		for i := range n {
			if pcs[i] != nil {
				_ = pcs[i].Close()
			}
			if subs[i] != nil {
				subs[i].close()
			}
		}
	}()
	for i := range n {
		pc, err := api.NewPeerConnection(webrtc.Configuration{})
		if err != nil {
			b.Fatal(err)
		}
		pcs[i] = pc
		sender, err := pc.AddTrack(track)
		if err != nil {
			b.Fatal(err)
		}
		go func() { // the interceptors need the sender's RTCP read
			buf := make([]byte, 1500)
			for {
				if _, _, err := sender.Read(buf); err != nil {
					return
				}
			}
		}()
		offer, err := pc.CreateOffer(nil)
		if err != nil {
			b.Fatal(err)
		}
		g := webrtc.GatheringCompletePromise(pc)
		if err := pc.SetLocalDescription(offer); err != nil {
			b.Fatal(err)
		}
		<-g
		sub := newBenchSub(b)
		subs[i] = sub
		ans, err := sub.answer(pc.LocalDescription().SDP)
		if err != nil {
			b.Fatal(err)
		}
		if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: ans}); err != nil {
			b.Fatal(err)
		}
	}
	waitUntil(b, 30*time.Second, "every subscriber connected", func() bool {
		for i := range n {
			if subs[i].pc.ConnectionState() != webrtc.PeerConnectionStateConnected || pcs[i].ConnectionState() != webrtc.PeerConnectionStateConnected {
				return false
			}
		}
		return true
	})
	measure(b, subs, n, func(pkt *rtp.Packet) {
		if err := track.WriteRTP(pkt); err != nil {
			b.Fatal(err)
		}
	})
}
