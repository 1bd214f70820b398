package sfu

import (
	"testing"
	"time"

	"github.com/pion/webrtc/v4"
	"go.uber.org/goleak"
)

func TestForwardVP8AndOpusToTwoSubscribers(t *testing.T) {
	defer goleak.VerifyNone(t)
	s := newTestSFU(t)
	defer s.Close()
	room, err := s.CreateRoom("forward", KindConference, RoomOptions{})
	if err != nil {
		t.Fatal(err)
	}

	pub := joinPeer(t, room, "alice", RoleParticipant)
	media := newMediaSource(t)
	if err := pub.publish(map[Source]webrtc.TrackLocal{SourceCamera: media.video, SourceMicrophone: media.audio}); err != nil {
		t.Fatal(err)
	}
	go media.run()

	subs := []*peer{joinPeer(t, room, "bob", RoleParticipant), joinPeer(t, room, "carol", RoleParticipant)}
	for _, sub := range subs {
		waitFor(t, 10*time.Second, "video and audio at "+sub.p.identity, func() bool {
			return len(sub.seqs("video")) >= 100 && len(sub.seqs("audio")) >= 40
		})
	}
	media.close()
	time.Sleep(100 * time.Millisecond) // let the last packets land

	for _, sub := range subs {
		for _, kind := range []string{"video", "audio"} {
			seqs := sub.seqs(kind)
			if !continuous(seqs) {
				t.Errorf("%s: %s sequence numbers not continuous: %v", sub.p.identity, kind, seqs)
			}
		}
		sub.mu.Lock()
		var sources []Source
		for _, ti := range sub.byMid {
			if ti.Identity != "alice" {
				t.Errorf("%s: mid labelled with identity %q", sub.p.identity, ti.Identity)
			}
			sources = append(sources, ti.Source)
		}
		sub.mu.Unlock()
		if len(sources) != 2 {
			t.Errorf("%s: offer labelled %d tracks, want 2 (%v)", sub.p.identity, len(sources), sources)
		}
	}

	if got := len(room.Participants()); got != 3 {
		t.Fatalf("participants = %d, want 3", got)
	}
	pub.close()
	// Subscribers are told, and renegotiated without the tracks.
	for _, sub := range subs {
		waitFor(t, 5*time.Second, "subscriber renegotiated", func() bool {
			sub.p.neg.mu.Lock()
			defer sub.p.neg.mu.Unlock()
			return len(sub.p.neg.trackMapLocked()) == 0
		})
		sub.close()
	}
	if got := len(room.Participants()); got != 0 {
		t.Fatalf("participants after leaving = %d, want 0", got)
	}
}
