package sfu

import (
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
	"go.uber.org/goleak"
)

func TestPacketCacheGetPut(t *testing.T) {
	c := newPacketCache()
	put := func(seq uint16, b byte) {
		buf := c.buffer()
		buf[0], buf[1] = b, byte(seq)
		c.put(seq, 2)
	}
	for seq := uint16(65000); seq != 100; seq++ { // wraps
		put(seq, 7)
	}
	if got := c.get(99, nil); len(got) != 2 || got[0] != 7 || got[1] != 99 {
		t.Fatalf("get(99) = %v", got)
	}
	if got := c.get(65000, nil); got != nil {
		t.Fatalf("get(65000), evicted, = %v", got)
	}
	if got := c.get(100, nil); got != nil {
		t.Fatalf("get(100), never put, = %v", got)
	}
	// A buffer handed out again is one no slot holds any more.
	held := map[*byte]bool{}
	for i := range c.slots {
		if s := c.slots[i].buf; s != nil {
			held[&s[0]] = true
		}
	}
	if held[&c.buffer()[0]] {
		t.Fatal("the next read buffer is still cached")
	}
}

// dropConn is a subscriber's socket that loses, once armed, the first
// video-sized RTP datagram it reads.
type dropConn struct {
	net.PacketConn
	armed   atomic.Bool
	dropped atomic.Bool
}

func (c *dropConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		n, addr, err := c.PacketConn.ReadFrom(p)
		if err == nil && n > 250 && p[0]>>6 == 2 && (p[1] < 192 || p[1] > 223) &&
			c.armed.Load() && c.dropped.CompareAndSwap(false, true) {
			continue
		}
		return n, addr, err
	}
}

// TestNACKAnsweredFromCache: a packet lost between the SFU and a
// subscriber is asked for again with a NACK, and comes back from the
// up-track's packet cache with the subscriber's sequence number and the
// payload first sent under it.
func TestNACKAnsweredFromCache(t *testing.T) {
	defer goleak.VerifyNone(t)
	s := newTestSFU(t)
	defer s.Close()
	room, err := s.CreateRoom("nack", KindBroadcast, RoomOptions{})
	if err != nil {
		t.Fatal(err)
	}

	// The publisher's video carries its own sequence number in the
	// payload, after the VP8 descriptor.
	video, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000}, "video", "pub")
	if err != nil {
		t.Fatal(err)
	}
	pub := joinPeer(t, room, "pub", RoleHost)
	if err := pub.publish(map[Source]webrtc.TrackLocal{SourceCamera: video}); err != nil {
		t.Fatal(err)
	}
	stop, sent := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sent)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		var seq uint16 = 1000
		for frame := 0; ; frame++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			for i := 0; i < 2; i++ {
				payload := make([]byte, 400)
				if i == 0 {
					payload[0] = 0x10 // S, partition 0
				}
				if frame%50 != 0 {
					payload[1] = 0x01 // an interframe
				}
				binary.BigEndian.PutUint16(payload[2:], seq)
				pkt := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 96, SequenceNumber: seq, Timestamp: uint32(frame * 900), Marker: i == 1}, Payload: payload}
				seq++
				if err := video.WriteRTP(pkt); err != nil && !errors.Is(err, io.ErrClosedPipe) {
					return
				}
			}
		}
	}()
	defer func() { close(stop); <-sent }()

	// The subscriber: a pion peer with no interceptors on a lossy socket.
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lossy := &dropConn{PacketConn: conn}
	quiet := pionLogs{log: slog.New(slog.DiscardHandler)}
	se := webrtc.SettingEngine{LoggerFactory: quiet}
	se.SetICEUDPMux(webrtc.NewICEUDPMux(quiet.NewLogger("udpmux"), lossy))
	se.SetIncludeLoopbackCandidate(true)
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	me := &webrtc.MediaEngine{}
	if err := me.RegisterDefaultCodecs(); err != nil {
		t.Fatal(err)
	}
	api := webrtc.NewAPI(webrtc.WithSettingEngine(se), webrtc.WithMediaEngine(me))
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	origin := map[uint16][]uint16{} // the subscriber's seq -> the publisher's, each time received
	var ssrc atomic.Uint32
	pc.OnTrack(func(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
		if tr.Kind() != webrtc.RTPCodecTypeVideo {
			return
		}
		ssrc.Store(uint32(tr.SSRC()))
		for {
			pkt, _, err := tr.ReadRTP()
			if err != nil {
				return
			}
			if len(pkt.Payload) < 4 {
				continue
			}
			mu.Lock()
			origin[pkt.SequenceNumber] = append(origin[pkt.SequenceNumber], binary.BigEndian.Uint16(pkt.Payload[2:]))
			mu.Unlock()
		}
	})
	sub := &peer{t: t, pc: pc, sink: chanSink{ch: make(chan Event, 1024)}, received: map[string][]uint16{},
		byMid: map[string]TrackInfo{}, stop: make(chan struct{})}
	sub.p, err = room.Join(JoinConfig{Identity: "sub", Role: RoleViewer, Sink: sub.sink})
	if err != nil {
		t.Fatal(err)
	}
	sub.wg.Add(1)
	go sub.loop()
	defer func() {
		sub.close()
		_ = conn.Close()
	}()

	waitFor(t, 10*time.Second, "video at the subscriber", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(origin) >= 20
	})
	lossy.armed.Store(true)
	// The lost packet is the gap below the highest sequence number.
	var lost uint16
	waitFor(t, 10*time.Second, "a packet lost", func() bool {
		if !lossy.dropped.Load() {
			return false
		}
		mu.Lock()
		defer mu.Unlock()
		for out := range origin {
			if _, ok := origin[out-1]; !ok {
				if _, ok := origin[out-2]; ok {
					lost = out - 1
					return true
				}
			}
		}
		return false
	})
	nack := &rtcp.TransportLayerNack{MediaSSRC: ssrc.Load(), Nacks: rtcp.NackPairsFromSequenceNumbers([]uint16{lost})}
	if err := pc.WriteRTCP([]rtcp.Packet{nack}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the lost packet sent again", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(origin[lost]) > 0
	})
	mu.Lock()
	defer mu.Unlock()
	// Sequence numbers are continuous from the first keyframe on: the
	// publisher's number is the subscriber's plus a constant.
	before, after := origin[lost-1], origin[lost+1]
	if len(before) == 0 || len(after) == 0 {
		t.Fatalf("neighbours of %d not received: %v %v", lost, before, after)
	}
	if got, want := origin[lost][0], before[0]+1; got != want || after[0] != want+1 {
		t.Fatalf("packet %d carried the publisher's %d, want %d (neighbours %d, %d)", lost, got, want, before[0], after[0])
	}
	var rtx uint64
	sub.p.mu.Lock()
	for _, d := range sub.p.downs {
		rtx += d.retransmits.Load()
	}
	sub.p.mu.Unlock()
	if rtx != 1 {
		t.Fatalf("retransmissions = %d, want 1", rtx)
	}
}
