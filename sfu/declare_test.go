package sfu

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"
)

// offerOf makes c's next offer, ICE gathered, and the sources of its
// sending transceivers.
func (c *peer) offerOf(tracks map[Source]webrtc.TrackLocal) (string, map[string]Source) {
	c.t.Helper()
	offer, err := c.pc.CreateOffer(nil)
	if err != nil {
		c.t.Fatal(err)
	}
	g := webrtc.GatheringCompletePromise(c.pc)
	if err := c.pc.SetLocalDescription(offer); err != nil {
		c.t.Fatal(err)
	}
	<-g
	sources := map[string]Source{}
	for _, tx := range c.pc.GetTransceivers() {
		for src, tr := range tracks {
			if tx.Sender() != nil && tx.Sender().Track() == tr && tx.Direction() == webrtc.RTPTransceiverDirectionSendonly {
				sources[tx.Mid()] = src
			}
		}
	}
	return c.pc.LocalDescription().SDP, sources
}

// TestDeclaredSourcesBounded: an offer's sources are kept only for the
// mids the same SDP sends on; made-up mids are refused with
// ErrInvalidSDP and nothing is kept; an offer refused by
// SetRemoteDescription keeps nothing either; a mid that stops sending is
// forgotten at the next offer.
func TestDeclaredSourcesBounded(t *testing.T) {
	s := newTestSFU(t)
	defer s.Close()
	r, err := s.CreateRoom("bounds", KindConference, RoomOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pub := joinPeer(t, r, "pub", RoleParticipant)
	defer pub.close()
	media := newMediaSource(t)
	go media.run()
	defer media.close()
	tracks := map[Source]webrtc.TrackLocal{SourceCamera: media.video, SourceMicrophone: media.audio}
	if err := pub.publish(tracks); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the answer applied", func() bool { return pub.pc.SignalingState() == webrtc.SignalingStateStable })
	if n, _ := pub.p.pubs.declaredLen(); n != 2 {
		t.Fatalf("%d sources kept after publishing camera and microphone", n)
	}

	// Made-up mids beside the real ones: refused, nothing kept.
	sdpText, sources := pub.offerOf(tracks)
	madeUp := map[string]Source{}
	for mid, src := range sources {
		madeUp[mid] = src
	}
	for i := range 2500 {
		madeUp[fmt.Sprintf("made-up-%d", i)] = SourceCamera
	}
	if err := pub.p.HandleOffer(sdpText, madeUp); !errors.Is(err, ErrInvalidSDP) {
		t.Fatalf("offer with 2500 made-up mids: %v, want ErrInvalidSDP", err)
	}
	if n, sc := pub.p.pubs.declaredLen(); n != 2 || sc != 0 {
		t.Fatalf("after a refused offer: %d sources, %d simulcast mids kept", n, sc)
	}
	// The same offer, declared honestly, is applied.
	if err := pub.p.HandleOffer(sdpText, sources); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the answer applied", func() bool { return pub.pc.SignalingState() == webrtc.SignalingStateStable })

	// The camera stops sending: its mid is forgotten.
	for _, tx := range pub.pc.GetTransceivers() {
		if tx.Sender() != nil && tx.Sender().Track() == media.video {
			if err := pub.pc.RemoveTrack(tx.Sender()); err != nil {
				t.Fatal(err)
			}
		}
	}
	sdpText, sources = pub.offerOf(tracks)
	if len(sources) != 1 {
		t.Fatalf("the client declares %v after removing its camera", sources)
	}
	if err := pub.p.HandleOffer(sdpText, sources); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the answer applied", func() bool { return pub.pc.SignalingState() == webrtc.SignalingStateStable })
	n, sc := pub.p.pubs.declaredLen()
	t.Logf("kept after the camera stopped: %d sources, %d simulcast mids", n, sc)
	if n != 1 {
		t.Fatalf("%d sources kept after the camera stopped sending, want 1", n)
	}
	for mid := range sources {
		if src, ok := pub.p.pubs.declared(mid); !ok || src != SourceMicrophone {
			t.Fatalf("kept %q %v for the microphone's mid", src, ok)
		}
	}
	// An offer SetRemoteDescription refuses (it parses and passes the
	// checks, but has no ICE credentials) keeps nothing. (Last: pion
	// leaves the connection unusable after it.)
	bad := "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:x\r\na=recvonly\r\na=rtpmap:96 VP8/90000\r\n"
	if err := pub.p.HandleOffer(bad, nil); !errors.Is(err, ErrInvalidSDP) {
		t.Fatalf("offer without ICE credentials: %v, want ErrInvalidSDP", err)
	}
	if n, _ := pub.p.pubs.declaredLen(); n != 1 {
		t.Fatalf("after an offer SetRemoteDescription refused: %d sources kept", n)
	}
}
