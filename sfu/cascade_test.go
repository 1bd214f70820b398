package sfu

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/webrtc/v4"
	"go.uber.org/goleak"
)

// relayViewer is a viewer that also notes its video track's SSRC and
// which of its tracks ended.
type relayViewer struct {
	*peer
	videoSSRC atomic.Uint32
	ended     atomic.Int32
}

func joinRelayViewer(t *testing.T, r *Room, identity string) *relayViewer {
	t.Helper()
	v := &relayViewer{}
	v.peer = joinPeerWith(t, r, identity, RoleViewer, func(c *peer) {
		c.pc.OnTrack(func(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
			if tr.Kind() == webrtc.RTPCodecTypeVideo {
				v.videoSSRC.Store(uint32(tr.SSRC()))
			}
			defer v.ended.Add(1)
			c.read(tr, nil)
		})
	})
	return v
}

// TestRelayedParticipantForwards: a pion publisher sends VP8 and Opus to
// a relay connection of the SFU (standing for the owner's side of a
// cascade); a relayed participant publishes what it receives into a
// broadcast room; two viewers get both tracks with continuous sequence
// numbers, under the host's identity; a viewer's PLI reaches the
// original publisher; unpublishing ends the viewers' tracks; leaving
// leaves the relay connection open.
func TestRelayedParticipantForwards(t *testing.T) {
	defer goleak.VerifyNone(t)
	s := newTestSFU(t)
	defer s.Close()
	room, err := s.CreateRoom("cascade", KindBroadcast, RoomOptions{})
	if err != nil {
		t.Fatal(err)
	}

	// The publisher, on its own connection to the relay.
	pub, err := newPeerAPI(t).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	media := newMediaSource(t)
	var plis atomic.Int32
	var readers sync.WaitGroup
	for src, tr := range map[Source]webrtc.TrackLocal{SourceCamera: media.video, SourceMicrophone: media.audio} {
		tx, err := pub.AddTransceiverFromTrack(tr, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
		if err != nil {
			t.Fatal(err)
		}
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				pkts, _, err := tx.Sender().ReadRTCP()
				if err != nil {
					return
				}
				for _, p := range pkts {
					if _, ok := p.(*rtcp.PictureLossIndication); ok && src == SourceCamera {
						plis.Add(1)
					}
				}
			}
		}()
	}

	relay, err := s.NewRelayConnection()
	if err != nil {
		t.Fatal(err)
	}
	host, err := room.JoinRelayed("alice", RoleHost, relay)
	if err != nil {
		t.Fatal(err)
	}
	if !host.Relayed() {
		t.Fatal("Relayed() = false")
	}
	published := make(chan *webrtc.TrackRemote, 2)
	midSources := map[string]Source{}
	var midMu sync.Mutex
	relay.OnTrack(func(tr *webrtc.TrackRemote, recv *webrtc.RTPReceiver) {
		var mid string
		for _, tx := range relay.GetTransceivers() {
			if tx.Receiver() == recv {
				mid = tx.Mid()
			}
		}
		midMu.Lock()
		src := midSources[mid]
		midMu.Unlock()
		if _, err := host.PublishRelayed(tr, src); err != nil {
			t.Errorf("publish relayed %s: %v", src, err)
			return
		}
		published <- tr
	})

	offer, err := pub.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	g := webrtc.GatheringCompletePromise(pub)
	if err := pub.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	<-g
	midMu.Lock()
	for _, tx := range pub.GetTransceivers() {
		switch tx.Sender().Track() {
		case media.video:
			midSources[tx.Mid()] = SourceCamera
		case media.audio:
			midSources[tx.Mid()] = SourceMicrophone
		}
	}
	midMu.Unlock()
	if err := relay.SetRemoteDescription(*pub.LocalDescription()); err != nil {
		t.Fatal(err)
	}
	ans, err := relay.CreateAnswer(nil)
	if err != nil {
		t.Fatal(err)
	}
	g = webrtc.GatheringCompletePromise(relay)
	if err := relay.SetLocalDescription(ans); err != nil {
		t.Fatal(err)
	}
	<-g
	if err := pub.SetRemoteDescription(*relay.LocalDescription()); err != nil {
		t.Fatal(err)
	}
	go media.run()

	viewers := []*relayViewer{joinRelayViewer(t, room, "v1"), joinRelayViewer(t, room, "v2")}
	var tracks []*webrtc.TrackRemote
	for range 2 {
		select {
		case tr := <-published:
			tracks = append(tracks, tr)
		case <-time.After(10 * time.Second):
			t.Fatal("the relay got no track")
		}
	}
	for _, v := range viewers {
		waitFor(t, 10*time.Second, "video and audio at "+v.p.identity, func() bool {
			return len(v.seqs("video")) >= 100 && len(v.seqs("audio")) >= 40
		})
	}
	for _, v := range viewers {
		for _, kind := range []string{"video", "audio"} {
			if seqs := v.seqs(kind); !continuous(seqs) {
				t.Errorf("%s: %s sequence numbers not continuous: %v", v.p.identity, kind, seqs)
			}
		}
		v.mu.Lock()
		for mid, ti := range v.byMid {
			if ti.Identity != "alice" {
				t.Errorf("%s: mid %s labelled %q, want alice", v.p.identity, mid, ti.Identity)
			}
		}
		v.mu.Unlock()
	}
	roster := room.Participants()
	if len(roster) != 3 || roster[0].Identity != "alice" || roster[0].Role != RoleHost ||
		roster[0].Connection != ConnectionConnected || len(roster[0].Tracks) != 2 {
		t.Fatalf("roster %+v", roster)
	}

	// A viewer's keyframe request reaches the publisher, through the
	// relay connection.
	time.Sleep(300 * time.Millisecond) // past the keyframe interval of the subscriptions' own requests
	before := plis.Load()
	v := viewers[0]
	if err := v.pc.WriteRTCP([]rtcp.Packet{&rtcp.PictureLossIndication{MediaSSRC: v.videoSSRC.Load()}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the viewer's PLI at the publisher", func() bool { return plis.Load() > before })

	// Unpublishing ends the viewers' tracks.
	for _, tr := range tracks {
		host.UnpublishRelayed(tr)
	}
	for _, v := range viewers {
		waitFor(t, 5*time.Second, "tracks ended at "+v.p.identity, func() bool { return v.ended.Load() == 2 })
		if n := len(host.Tracks()); n != 0 {
			t.Fatalf("%d tracks left", n)
		}
	}
	host.Leave(ReasonLeft)
	if st := relay.ConnectionState(); st == webrtc.PeerConnectionStateClosed {
		t.Fatal("leaving closed the relay connection")
	}
	for _, v := range viewers {
		v.close()
	}
	media.close()
	_ = relay.Close()
	_ = pub.Close()
	readers.Wait()
}
