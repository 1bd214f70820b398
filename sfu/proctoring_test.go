package sfu

import (
	"errors"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"
)

func (c *peer) count(kind string) int { return len(c.seqs(kind)) }

func TestTalkBackReachesOnlyWhomTheProctorTalksTo(t *testing.T) {
	s := newTestSFU(t)
	defer s.Close()
	room, err := s.CreateRoom("exam", KindProctoring, RoomOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c1 := joinPeer(t, room, "c1", RoleCandidate)
	c2 := joinPeer(t, room, "c2", RoleCandidate)
	p2 := joinPeer(t, room, "p2", RoleProctor)
	p1 := joinPeer(t, room, "p1", RoleProctor)
	media := newMediaSource(t)
	if err := p1.publish(map[Source]webrtc.TrackLocal{SourceMicrophone: media.audio}); err != nil {
		t.Fatal(err)
	}
	go media.run()
	defer media.close()

	// Nobody hears the proctor until it talks.
	waitFor(t, 5*time.Second, "the microphone published", func() bool { return len(p1.p.Tracks()) == 1 })
	time.Sleep(500 * time.Millisecond)
	for _, c := range []*peer{c1, c2, p1, p2} {
		if n := c.count("audio"); n != 0 {
			t.Fatalf("%s heard the proctor before it talked: %d packets", c.p.identity, n)
		}
	}

	// Private talk-back: c1 only.
	if err := p1.p.Talk("c1", true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "c1 hears p1", func() bool { return c1.count("audio") > 25 })
	if err := p1.p.Talk("c1", false); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	stopped := c1.count("audio")
	time.Sleep(500 * time.Millisecond)
	if n := c1.count("audio"); n > stopped+2 {
		t.Fatalf("c1 still hears p1 after it stopped talking: %d more packets", n-stopped)
	}
	for _, c := range []*peer{c2, p1, p2} {
		if n := c.count("audio"); n != 0 {
			t.Fatalf("%s heard talk-back meant for c1: %d packets", c.p.identity, n)
		}
	}

	// Announcement: every candidate, no proctor.
	if err := p1.p.Talk("*", true); err != nil {
		t.Fatal(err)
	}
	before := c1.count("audio")
	waitFor(t, 5*time.Second, "every candidate hears the announcement", func() bool {
		return c2.count("audio") > 25 && c1.count("audio") > before+25
	})
	for _, c := range []*peer{p1, p2} {
		if n := c.count("audio"); n != 0 {
			t.Fatalf("proctor %s heard the announcement: %d packets", c.p.identity, n)
		}
	}
	// What c1 heard is one continuous stream across the silence.
	if seqs := c1.seqs("audio"); !continuous(seqs) {
		t.Fatalf("c1's audio has gaps across talk and silence")
	}

	// Only proctors talk.
	if err := c1.p.Talk("c2", true); !errors.Is(err, ErrForbidden) {
		t.Fatalf("a candidate talking: %v, want forbidden", err)
	}
	if err := p1.p.Talk("nobody", true); !errors.Is(err, ErrParticipantNotFound) {
		t.Fatalf("talking to no one: %v", err)
	}
	for _, c := range []*peer{c1, c2, p1, p2} {
		c.close()
	}
}

func TestAdmissionAndExamEnd(t *testing.T) {
	s := newTestSFU(t)
	defer s.Close()
	room, err := s.CreateRoom("exam", KindProctoring, RoomOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// A candidate joins waiting; a proctor sees it waiting.
	var candEvents []Event
	cs := chanSink{ch: make(chan Event, 64)}
	cand, err := room.Join(JoinConfig{Identity: "c1", Role: RoleCandidate, Sink: cs})
	if err != nil {
		t.Fatal(err)
	}
	ps := chanSink{ch: make(chan Event, 64)}
	proctor, err := room.Join(JoinConfig{Identity: "p1", Role: RoleProctor, Sink: ps})
	if err != nil {
		t.Fatal(err)
	}
	joined := (<-ps.ch).(JoinedEvent)
	if len(joined.Participants) != 1 || joined.Participants[0].State != StateWaiting {
		t.Fatalf("proctor's roster %+v, want c1 waiting", joined.Participants)
	}
	if cand.Admitted() {
		t.Fatal("a candidate was admitted before a proctor let it in")
	}
	if err := room.Admit(cand, "c1"); !errors.Is(err, ErrForbidden) {
		t.Fatalf("a candidate admitting itself: %v", err)
	}
	if err := room.Admit(proctor, "c1"); err != nil {
		t.Fatal(err)
	}
	if !cand.Admitted() {
		t.Fatal("not admitted")
	}
	drain := func(ch chan Event) {
		for {
			select {
			case ev := <-ch:
				candEvents = append(candEvents, ev)
			default:
				return
			}
		}
	}
	drain(cs.ch)
	var admitted bool
	for _, ev := range candEvents {
		if a, ok := ev.(AdmissionEvent); ok && a.State == StateAdmitted && a.By == "p1" {
			admitted = true
		}
	}
	if !admitted {
		t.Fatalf("candidate events %v: no admission", candEvents)
	}
	upd := false
	for len(ps.ch) > 0 {
		if u, ok := (<-ps.ch).(ParticipantUpdatedEvent); ok && u.Participant.State == StateAdmitted {
			upd = true
		}
	}
	if !upd {
		t.Fatal("the proctor was not told the candidate was admitted")
	}

	// Reconnecting with a new session (same identity) keeps the
	// admission: no second trip through the waiting room.
	cs2 := chanSink{ch: make(chan Event, 64)}
	again, err := room.Join(JoinConfig{Identity: "c1", Role: RoleCandidate, Sink: cs2})
	if err != nil {
		t.Fatal(err)
	}
	if !again.Admitted() {
		t.Fatal("a re-joining admitted candidate was sent back to the waiting room")
	}
	cand, cs = again, cs2

	// A proctor's announcement reaches the candidate; a candidate's chat
	// to everyone reaches no one it could name.
	if err := proctor.Chat("*", "ten minutes left"); err != nil {
		t.Fatal(err)
	}
	if err := cand.Chat("*", "hello?"); !errors.Is(err, ErrForbidden) {
		t.Fatalf("candidate chat to *: %v", err)
	}
	// Ending the exam: the candidate leaves with its reason.
	if err := room.EndExam(proctor, "c1", "time is up"); err != nil {
		t.Fatal(err)
	}
	candEvents = nil
	drain(cs.ch)
	var chat, left bool
	for _, ev := range candEvents {
		switch ev := ev.(type) {
		case ChatEvent:
			chat = ev.Text == "ten minutes left"
		case LeftEvent:
			left = ev.Reason == ReasonExamEnded && ev.Message == "time is up"
		}
	}
	if !chat || !left {
		t.Fatalf("candidate events %v: announcement %v, exam ended %v", candEvents, chat, left)
	}
	// After its exam ended, the same identity waits again.
	late, err := room.Join(JoinConfig{Identity: "c1", Role: RoleCandidate, Sink: chanSink{ch: make(chan Event, 64)}})
	if err != nil {
		t.Fatal(err)
	}
	if late.Admitted() {
		t.Fatal("a candidate whose exam ended came back admitted")
	}
	late.Leave(ReasonLeft)
	proctor.Leave(ReasonLeft)
}
