package sfu

import (
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/pion/interceptor"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
	"go.uber.org/goleak"
)

// keyOnRequest plays a libwebrtc encoder's keyframes for a sender's
// layers (its encodings, in order): a layer sends a keyframe only when a
// PLI asks for one, and a PLI the test says to drop goes unanswered, as
// an encoder ignores a request inside 300 ms of the last one it served.
type keyOnRequest struct {
	mu      sync.Mutex
	due     map[int]bool // layer -> its next frame is a keyframe
	drop    map[int]int  // layer -> PLIs still to leave unanswered
	dropped map[int]int  // layer -> PLIs left unanswered
}

func newKeyOnRequest() *keyOnRequest {
	return &keyOnRequest{due: map[int]bool{}, drop: map[int]int{}, dropped: map[int]int{}}
}

// dropNext makes the next n PLIs for layer go unanswered.
func (k *keyOnRequest) dropNext(layer, n int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.drop[layer] += n
}

// droppedOf is how many PLIs for layer went unanswered.
func (k *keyOnRequest) droppedOf(layer int) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.dropped[layer]
}

// next reports whether layer's next frame is a keyframe.
func (k *keyOnRequest) next(layer int) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	key := k.due[layer]
	k.due[layer] = false
	return key
}

// readRTCP reads the RTCP of one layer of a sender until it stops, from
// read (ReadRTCP, or ReadSimulcastRTCP of the layer's rid), answering
// PLIs (k nil: only drains it, so that interceptors work).
func (k *keyOnRequest) readRTCP(layer int, read func() ([]rtcp.Packet, interceptor.Attributes, error)) {
	for {
		pkts, _, err := read()
		if err != nil {
			return
		}
		if k == nil {
			continue
		}
		for _, p := range pkts {
			if _, ok := p.(*rtcp.PictureLossIndication); !ok {
				continue
			}
			k.mu.Lock()
			if k.drop[layer] > 0 {
				k.drop[layer]--
				k.dropped[layer]++
			} else {
				k.due[layer] = true
			}
			k.mu.Unlock()
		}
	}
}

// TestUnansweredKeyframeRequestIsRepeated: a subscriber waits for a
// keyframe to start on; the publisher leaves the first request for it
// unanswered (an encoder's rate limit dropped it, or the network). The
// subscriber has received nothing, so it cannot ask; the server asks
// again, and the picture starts. (web TestProctoringGridFocusAndIncidents
// saw a proctor get nothing of a candidate's screen for 25 s: its one
// request reached Chromium 300 ms after the recorder's, inside
// Chromium's window, and was never repeated.)
func TestUnansweredKeyframeRequestIsRepeated(t *testing.T) {
	defer goleak.VerifyNone(t)
	s := newTestSFU(t)
	defer s.Close()
	room, err := s.CreateRoom("kf", KindConference, RoomOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pub := joinPeer(t, room, "alice", RoleParticipant)
	video, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000}, "video", "pub")
	if err != nil {
		t.Fatal(err)
	}
	tx, err := pub.pc.AddTransceiverFromTrack(video, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
	if err != nil {
		t.Fatal(err)
	}
	keys := newKeyOnRequest()
	keys.dropNext(0, 1)
	go keys.readRTCP(0, tx.Sender().ReadRTCP)
	offer, err := pub.pc.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	g := webrtc.GatheringCompletePromise(pub.pc)
	if err := pub.pc.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	<-g
	if err := pub.p.HandleOffer(pub.pc.LocalDescription().SDP, map[string]Source{tx.Mid(): SourceCamera}); err != nil {
		t.Fatal(err)
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() { // delta frames, and a keyframe when one is asked for
		defer close(done)
		tick := time.NewTicker(33 * time.Millisecond)
		defer tick.Stop()
		for frame := 0; ; frame++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			hdr := byte(0x01)
			if keys.next(0) {
				hdr = 0x00
			}
			pkt := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 96, SequenceNumber: uint16(frame), Timestamp: uint32(frame * 3000), Marker: true},
				Payload: append([]byte{0x10, hdr, 0}, make([]byte, 200)...)}
			if err := video.WriteRTP(pkt); err != nil && !errors.Is(err, io.ErrClosedPipe) {
				return
			}
		}
	}()

	var log layerLog
	sub := joinPeerWith(t, room, "bob", RoleParticipant, log.watch)
	waitFor(t, 10*time.Second, "the subscriber's first keyframe", func() bool {
		p := log.snapshot()
		return len(p) > 0 && p[0].key && len(p) >= 10
	})
	if n := keys.droppedOf(0); n != 1 {
		t.Errorf("%d keyframe requests went unanswered, want 1: the test did not play the lost request", n)
	}
	close(stop)
	<-done
	sub.close()
	pub.close()
}

// TestUnansweredLayerKeyframeRequestIsRepeated: a proctor on the low
// simulcast layer asks for the high one; the publisher leaves the first
// request for a keyframe of the high layer unanswered. The switch waits
// for that keyframe, so the server asks again, and the switch happens.
func TestUnansweredLayerKeyframeRequestIsRepeated(t *testing.T) {
	defer goleak.VerifyNone(t)
	s := newTestSFU(t)
	defer s.Close()
	room, err := s.CreateRoom("exam", KindProctoring, RoomOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cand := joinPeer(t, room, "cand", RoleCandidate)
	keys := newKeyOnRequest()
	src := publishSimulcastWith(t, cand, keys)
	var log layerLog
	proctor := joinPeerWith(t, room, "proctor", RoleProctor, log.watch)
	waitFor(t, 10*time.Second, "the low layer at the proctor", func() bool { return log.lastRun(0, 10) })

	var trackID string
	proctor.p.mu.Lock()
	for id := range proctor.p.downs {
		trackID = id
	}
	proctor.p.mu.Unlock()
	keys.dropNext(2, 1)
	if err := proctor.p.SetLayer(trackID, "high"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the high layer at the proctor", func() bool { return log.lastRun(2, 10) })
	if n := keys.droppedOf(2); n != 1 {
		t.Errorf("%d keyframe requests for the high layer went unanswered, want 1", n)
	}
	checkSwitches(t, log.snapshot())
	src.close()
	proctor.close()
	cand.close()
}
