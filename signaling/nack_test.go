package signaling_test

import (
	"sync"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/signaling/vigiltest"
	"go.uber.org/goleak"
)

// TestLossyLinkNACK: a subscriber behind a link that drops 5% of the
// packets each way and reorders another 5% still gets every video packet:
// its NACKs (pion's generator) reach the server's NACK responder, which
// sends the lost packets again.
func TestLossyLinkNACK(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "class", "conference")
	px := newUDPProxy(t, srv.SFU.LocalAddr())

	se := webrtc.SettingEngine{}
	se.SetIncludeLoopbackCandidate(true)
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	se.SetInterfaceFilter(func(name string) bool { return name == "lo" })
	me := &webrtc.MediaEngine{}
	if err := me.RegisterDefaultCodecs(); err != nil {
		t.Fatal(err)
	}
	ir := &interceptor.Registry{}
	if err := webrtc.ConfigureNack(me, ir); err != nil {
		t.Fatal(err)
	}
	api := webrtc.NewAPI(webrtc.WithSettingEngine(se), webrtc.WithMediaEngine(me), webrtc.WithInterceptorRegistry(ir))

	var mu sync.Mutex
	seen := map[uint16]bool{}
	var first, last uint16
	var got, dups int
	sub := dialProxiedWith(t, srv, px, "class", "sub", "participant", api)
	sub.pc.OnTrack(func(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
		if tr.Kind() != webrtc.RTPCodecTypeVideo {
			for {
				if _, _, err := tr.ReadRTP(); err != nil {
					return
				}
			}
		}
		for {
			pkt, _, err := tr.ReadRTP()
			if err != nil {
				return
			}
			mu.Lock()
			if got == 0 {
				first = pkt.SequenceNumber
			}
			if seen[pkt.SequenceNumber] {
				dups++
			}
			seen[pkt.SequenceNumber] = true
			if int16(pkt.SequenceNumber-last) > 0 || got == 0 {
				last = pkt.SequenceNumber
			}
			got++
			mu.Unlock()
		}
	})
	pub := vigiltest.Dial(t, srv, "class", "pub", "participant")
	media := newSynthetic(t, "pub")
	pub.Publish(map[string]webrtc.TrackLocal{"camera": media.video, "microphone": media.audio})
	vigiltest.WaitFor(t, 10*time.Second, "video at the subscriber", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return got > 20
	})
	px.lossPct.Store(5)
	px.reorderPct.Store(5)
	time.Sleep(6 * time.Second) // about 300 video packets
	px.lossPct.Store(0)
	px.reorderPct.Store(0)
	time.Sleep(time.Second) // the last NACKs answered
	mu.Lock()
	defer mu.Unlock()
	span := int(last - first + 1)
	missing := 0
	for i := 0; i < span; i++ {
		if !seen[first+uint16(i)] {
			missing++
		}
	}
	t.Logf("%d video packets in sequence, %d received (%d twice), %d missing; proxy dropped %d packets both ways",
		span, got, dups, missing, px.dropped.Load())
	if px.dropped.Load() < 10 {
		t.Fatalf("the link dropped only %d packets", px.dropped.Load())
	}
	if missing != 0 {
		t.Fatalf("%d of %d video packets never arrived despite NACKs", missing, span)
	}
}
