package sfu

import (
	"errors"
	"io"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
	"go.uber.org/goleak"
)

// recSink records every event of a participant and hands it on to the
// peer's loop.
type recSink struct {
	ch chan Event

	mu  sync.Mutex
	evs []Event
}

func (s *recSink) Deliver(ev Event) {
	s.mu.Lock()
	s.evs = append(s.evs, ev)
	s.mu.Unlock()
	select {
	case s.ch <- ev:
	default:
		panic("test sink full")
	}
}

func (s *recSink) events() []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Event(nil), s.evs...)
}

// lpeer is a pion client whose received packets are counted per
// "identity/source", from the server's labelling of each mid.
type lpeer struct {
	*peer
	rec    *recSink
	closed sync.Once
}

// close leaves and closes the client, once.
func (c *lpeer) close() { c.closed.Do(c.peer.close) }

func joinLabelled(t *testing.T, r *Room, identity string, role Role) *lpeer {
	t.Helper()
	pc, err := newPeerAPI(t).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recSink{ch: make(chan Event, 4096)}
	c := &peer{t: t, pc: pc, sink: chanSink{ch: rec.ch}, received: map[string][]uint16{},
		byMid: map[string]TrackInfo{}, stop: make(chan struct{})}
	pc.OnTrack(func(tr *webrtc.TrackRemote, recv *webrtc.RTPReceiver) {
		mid := ""
		for _, tx := range pc.GetTransceivers() {
			if tx.Receiver() == recv {
				mid = tx.Mid()
			}
		}
		for {
			pkt, _, err := tr.ReadRTP()
			if err != nil {
				return
			}
			c.mu.Lock()
			ti := c.byMid[mid]
			key := ti.Identity + "/" + string(ti.Source)
			c.received[key] = append(c.received[key], pkt.SequenceNumber)
			c.mu.Unlock()
		}
	})
	p, err := r.Join(JoinConfig{Identity: identity, Role: role, Sink: rec})
	if err != nil {
		t.Fatal(err)
	}
	c.p = p
	c.wg.Add(1)
	go c.loop()
	return &lpeer{peer: c, rec: rec}
}

// receivedKeys lists the "identity/source" keys with at least one packet.
func (c *lpeer) receivedKeys() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for k, v := range c.received {
		if len(v) > 0 {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

func (c *lpeer) count(key string) int { return len(c.seqs(key)) }

// seen lists the identities, other than its own, that the participant's
// events have named: roster, track and mute events, and the labels of
// what it was offered.
func (c *lpeer) seen() []string {
	ids := map[string]bool{}
	for _, ev := range c.rec.events() {
		switch ev := ev.(type) {
		case JoinedEvent:
			for _, p := range ev.Participants {
				ids[p.Identity] = true
			}
		case ParticipantJoinedEvent:
			ids[ev.Participant.Identity] = true
		case ParticipantLeftEvent:
			ids[ev.Identity] = true
		case ParticipantUpdatedEvent:
			ids[ev.Participant.Identity] = true
		case TrackPublishedEvent:
			ids[ev.Track.Identity] = true
		case TrackUnpublishedEvent:
			ids[ev.Track.Identity] = true
		case TrackMutedEvent:
			ids[ev.Track.Identity] = true
		case OfferEvent:
			for _, ti := range ev.Tracks {
				ids[ti.Identity] = true
			}
		}
	}
	delete(ids, c.p.identity)
	out := []string{}
	for id := range ids {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

// avSource writes synthetic media to one track per source: VP8 for
// camera and screen (a keyframe every 30 frames), Opus for microphone.
type avSource struct {
	tracks map[Source]*webrtc.TrackLocalStaticRTP
	stop   chan struct{}
	done   chan struct{}
}

func newAVSource(t *testing.T, srcs ...Source) *avSource {
	t.Helper()
	m := &avSource{tracks: map[Source]*webrtc.TrackLocalStaticRTP{}, stop: make(chan struct{}), done: make(chan struct{})}
	for _, src := range srcs {
		c := webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000}
		if src.Audio() {
			c = webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}
		}
		tr, err := webrtc.NewTrackLocalStaticRTP(c, string(src), "s-"+string(src))
		if err != nil {
			t.Fatal(err)
		}
		m.tracks[src] = tr
	}
	go m.run()
	return m
}

func (m *avSource) locals() map[Source]webrtc.TrackLocal {
	out := map[Source]webrtc.TrackLocal{}
	for s, tr := range m.tracks {
		out[s] = tr
	}
	return out
}

func (m *avSource) run() {
	defer close(m.done)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	seq := map[Source]uint16{}
	for frame := 0; ; frame++ {
		select {
		case <-m.stop:
			return
		case <-tick.C:
		}
		for src, tr := range m.tracks {
			pkt := &rtp.Packet{Header: rtp.Header{Version: 2, SequenceNumber: seq[src], Marker: true}}
			if src.Audio() {
				pkt.Timestamp, pkt.PayloadType, pkt.Payload = uint32(frame*960), 111, make([]byte, 60)
			} else {
				hdr := byte(0x01)
				if frame%30 == 0 {
					hdr = 0x00
				}
				pkt.Timestamp, pkt.PayloadType, pkt.Payload = uint32(frame*4500), 96, append([]byte{0x10, hdr}, make([]byte, 200)...)
			}
			seq[src]++
			if err := tr.WriteRTP(pkt); err != nil && !errors.Is(err, io.ErrClosedPipe) {
				return
			}
		}
	}
}

func (m *avSource) close() {
	close(m.stop)
	<-m.done
}

var allSources = []Source{SourceCamera, SourceMicrophone, SourceScreen}

func keys(identity string, srcs ...Source) []string {
	out := make([]string, 0, len(srcs))
	for _, s := range srcs {
		out = append(out, identity+"/"+string(s))
	}
	return out
}

// expectReceives waits until each peer has packets of every key it
// should receive, then a little more, and checks that it received
// exactly those.
func expectReceives(t *testing.T, want map[*lpeer][]string) {
	t.Helper()
	for c, ks := range want {
		for _, k := range ks {
			waitFor(t, 10*time.Second, c.p.identity+" receives "+k, func() bool { return c.count(k) >= 20 })
		}
	}
	time.Sleep(500 * time.Millisecond) // anything forbidden would have arrived by now
	for c, ks := range want {
		w := append([]string{}, ks...)
		sort.Strings(w)
		if got := c.receivedKeys(); strings.Join(got, ",") != strings.Join(w, ",") {
			t.Errorf("%s (%s) received %v, want exactly %v", c.p.identity, c.p.Role(), got, w)
		}
	}
}

// expectSees checks which identities each peer's events have named.
func expectSees(t *testing.T, want map[*lpeer][]string) {
	t.Helper()
	for c, ids := range want {
		w := append([]string{}, ids...)
		sort.Strings(w)
		if got := c.seen(); strings.Join(got, ",") != strings.Join(w, ",") {
			t.Errorf("%s (%s) was told of %v, want exactly %v", c.p.identity, c.p.Role(), got, w)
		}
	}
}

// refusedPublish offers, for c's participant, to send tracks its role
// may not publish: the offer must be refused with ErrForbidden, the
// participant publishing nothing more and told nothing. The offer is
// made on a scratch PeerConnection (pion cannot roll a local offer
// back), declaring each track with its source.
func refusedPublish(t *testing.T, c *lpeer, tracks map[Source]webrtc.TrackLocal) {
	t.Helper()
	before, tracksBefore := len(c.rec.events()), len(c.p.Tracks())
	scratch, err := newPeerAPI(t).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	defer scratch.Close()
	sources := map[string]Source{}
	for _, tr := range tracks {
		if _, err := scratch.AddTransceiverFromTrack(tr, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly}); err != nil {
			t.Fatal(err)
		}
	}
	offer, err := scratch.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := scratch.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	for _, tx := range scratch.GetTransceivers() {
		for src, tr := range tracks {
			if tx.Sender().Track() == tr {
				sources[tx.Mid()] = src
			}
		}
	}
	if err := c.p.HandleOffer(offer.SDP, sources); !errors.Is(err, ErrForbidden) {
		t.Fatalf("%s (%s) publishes %v: %v, want ErrForbidden", c.p.identity, c.p.Role(), sources, err)
	}
	time.Sleep(200 * time.Millisecond)
	if n := len(c.p.Tracks()); n != tracksBefore {
		t.Errorf("%s publishes %d tracks after a refused offer, had %d", c.p.identity, n, tracksBefore)
	}
	if evs := c.rec.events()[before:]; len(evs) != 0 {
		t.Errorf("%s told %+v after a refused offer", c.p.identity, evs)
	}
}

// settle waits until no negotiation is under way with any of peers, so
// that a client offer does not cross a server offer (the harness's peer
// is not polite).
func settle(t *testing.T, peers ...*lpeer) {
	t.Helper()
	for _, c := range peers {
		waitFor(t, 10*time.Second, c.p.identity+" settled", func() bool {
			c.p.neg.mu.Lock()
			busy := c.p.neg.awaitingAnswer || c.p.neg.needOffer
			c.p.neg.mu.Unlock()
			return !busy && c.pc.SignalingState() == webrtc.SignalingStateStable
		})
	}
	time.Sleep(50 * time.Millisecond)
}

// publishSettled publishes media from c once no negotiation is under way
// with anyone in all, then waits until each of receivers gets every
// track and all have settled again: one publisher at a time, so that no
// client offer crosses a server offer.
func publishSettled(t *testing.T, c *lpeer, m *avSource, receivers []*lpeer, all ...*lpeer) {
	t.Helper()
	settle(t, all...)
	if err := c.publish(m.locals()); err != nil {
		t.Fatalf("%s (%s) publishes: %v", c.p.identity, c.p.Role(), err)
	}
	for _, r := range receivers {
		for src := range m.tracks {
			k := c.p.identity + "/" + string(src)
			waitFor(t, 10*time.Second, r.p.identity+" receives "+k, func() bool { return r.count(k) > 0 })
		}
	}
	waitFor(t, 5*time.Second, c.p.identity+"'s tracks published", func() bool { return len(c.p.Tracks()) == len(m.tracks) })
	settle(t, all...)
}

func closeAll(peers ...*lpeer) {
	for _, c := range peers {
		c.close()
	}
}

func TestPolicyConference(t *testing.T) {
	defer goleak.VerifyNone(t)
	s := newTestSFU(t)
	defer s.Close()
	room, err := s.CreateRoom("conf", KindConference, RoomOptions{})
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"alice", "bob", "carol"}
	var peers []*lpeer
	for _, n := range names {
		peers = append(peers, joinLabelled(t, room, n, RoleParticipant))
	}
	defer closeAll(peers...)
	for i, c := range peers {
		media := newAVSource(t, allSources...)
		defer media.close()
		var others []*lpeer
		for j, o := range peers {
			if j != i {
				others = append(others, o)
			}
		}
		publishSettled(t, c, media, others, peers...)
	}
	want := map[*lpeer][]string{}
	sees := map[*lpeer][]string{}
	for i, c := range peers {
		for j, n := range names {
			if i != j {
				want[c] = append(want[c], keys(n, allSources...)...)
				sees[c] = append(sees[c], n)
			}
		}
	}
	expectReceives(t, want)
	expectSees(t, sees)
}

func TestPolicyBroadcast(t *testing.T) {
	defer goleak.VerifyNone(t)
	s := newTestSFU(t)
	defer s.Close()
	room, err := s.CreateRoom("show", KindBroadcast, RoomOptions{})
	if err != nil {
		t.Fatal(err)
	}
	v1 := joinLabelled(t, room, "v1", RoleViewer)
	h1 := joinLabelled(t, room, "h1", RoleHost)
	h2 := joinLabelled(t, room, "h2", RoleHost)
	v2 := joinLabelled(t, room, "v2", RoleViewer)
	defer closeAll(v1, h1, h2, v2)
	// A viewer that publishes is refused, and nothing changes.
	mv := newAVSource(t, SourceCamera)
	defer mv.close()
	refusedPublish(t, v1, mv.locals())

	m1 := newAVSource(t, allSources...)
	defer m1.close()
	m2 := newAVSource(t, SourceCamera, SourceMicrophone)
	defer m2.close()
	all := []*lpeer{v1, h1, h2, v2}
	publishSettled(t, h1, m1, []*lpeer{v1, h2, v2}, all...)
	publishSettled(t, h2, m2, []*lpeer{v1, h1, v2}, all...)

	hosts := append(keys("h1", allSources...), keys("h2", SourceCamera, SourceMicrophone)...)
	expectReceives(t, map[*lpeer][]string{
		h1: keys("h2", SourceCamera, SourceMicrophone),
		h2: keys("h1", allSources...),
		v1: hosts,
		v2: hosts,
	})
	expectSees(t, map[*lpeer][]string{h1: {"h2"}, h2: {"h1"}, v1: {"h1", "h2"}, v2: {"h1", "h2"}})
}

func TestPolicyProctoring(t *testing.T) {
	defer goleak.VerifyNone(t)
	s := newTestSFU(t)
	defer s.Close()
	room, err := s.CreateRoom("exam", KindProctoring, RoomOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p1 := joinLabelled(t, room, "p1", RoleProctor)
	c1 := joinLabelled(t, room, "c1", RoleCandidate)
	c2 := joinLabelled(t, room, "c2", RoleCandidate)
	p2 := joinLabelled(t, room, "p2", RoleProctor)
	defer closeAll(p1, c1, c2, p2)
	mpc := newAVSource(t, SourceCamera, SourceScreen)
	defer mpc.close()
	refusedPublish(t, p2, mpc.locals())
	all := []*lpeer{p1, c1, c2, p2}
	for _, c := range []*lpeer{c1, c2} {
		m := newAVSource(t, allSources...)
		defer m.close()
		publishSettled(t, c, m, []*lpeer{p1, p2}, all...)
	}
	mp := newAVSource(t, SourceMicrophone)
	defer mp.close()
	publishSettled(t, p1, mp, nil, all...)

	candidates := append(keys("c1", allSources...), keys("c2", allSources...)...)
	expectReceives(t, map[*lpeer][]string{c1: nil, c2: nil, p1: candidates, p2: candidates})
	expectSees(t, map[*lpeer][]string{c1: {}, c2: {}, p1: {"c1", "c2", "p2"}, p2: {"c1", "c2", "p1"}})

	// A candidate that crafts subscriptions: to another candidate's
	// track, a proctor's, or one that does not exist. Each is forbidden
	// alike (no way to tell which exist), and nothing changes.
	var c2Camera, p1Mic string
	for _, u := range c2.p.Tracks() {
		if u.Source() == SourceCamera {
			c2Camera = u.Info().ID
		}
	}
	p1Mic = p1.p.Tracks()[0].Info().ID
	eventsBefore := len(c1.rec.events())
	var msgs []string
	for _, id := range []string{c2Camera, p1Mic, "TRdoesnotexist00"} {
		err := c1.p.Subscribe(id)
		if !errors.Is(err, ErrForbidden) {
			t.Fatalf("candidate subscribes to %s: %v, want ErrForbidden", id, err)
		}
		msgs = append(msgs, strings.ReplaceAll(err.Error(), id, "ID"))
	}
	if msgs[0] != msgs[1] || msgs[1] != msgs[2] {
		t.Errorf("errors tell existing tracks apart: %q", msgs)
	}
	// A proctor may not subscribe to another proctor either.
	if err := p2.p.Subscribe(p1Mic); !errors.Is(err, ErrForbidden) {
		t.Errorf("proctor subscribes to a proctor: %v, want ErrForbidden", err)
	}
	time.Sleep(time.Second)
	if got := c1.receivedKeys(); len(got) != 0 {
		t.Errorf("candidate received %v after crafted subscriptions", got)
	}
	if evs := c1.rec.events()[eventsBefore:]; len(evs) != 0 {
		t.Errorf("crafted subscriptions gave the candidate events: %+v", evs)
	}
	c1.p.neg.mu.Lock()
	n := len(c1.p.neg.trackMapLocked())
	c1.p.neg.mu.Unlock()
	if n != 0 {
		t.Errorf("candidate's connection forwards %d tracks", n)
	}
	// The proctors still receive both candidates.
	for _, p := range []*lpeer{p1, p2} {
		before := p.count("c2/camera")
		waitFor(t, 10*time.Second, p.p.identity+" still receives c2", func() bool { return p.count("c2/camera") > before+10 })
	}

	// c2 leaves: proctors are told, c1 is not.
	c2.close()
	p1.waitEvent(t, "participant_left c2", func(ev Event) bool {
		e, ok := ev.(ParticipantLeftEvent)
		return ok && e.Identity == "c2"
	})
	expectSees(t, map[*lpeer][]string{c1: {}})
}

// waitEvent waits for an event matching cond.
func (c *lpeer) waitEvent(t *testing.T, what string, cond func(Event) bool) Event {
	t.Helper()
	var found Event
	waitFor(t, 5*time.Second, what, func() bool {
		for _, ev := range c.rec.events() {
			if cond(ev) {
				found = ev
				return true
			}
		}
		return false
	})
	return found
}

// TestSetRoleDemotedHostStopsPublishing checks that a host made a viewer
// stops publishing at once and lists no tracks, and that roles cannot
// change in proctoring.
func TestSetRoleDemotedHostStopsPublishing(t *testing.T) {
	defer goleak.VerifyNone(t)
	s := newTestSFU(t)
	defer s.Close()
	room, err := s.CreateRoom("show", KindBroadcast, RoomOptions{})
	if err != nil {
		t.Fatal(err)
	}
	h := joinLabelled(t, room, "h", RoleHost)
	v := joinLabelled(t, room, "v", RoleViewer)
	defer closeAll(h, v)
	m := newAVSource(t, SourceCamera, SourceMicrophone)
	defer m.close()
	if err := h.publish(m.locals()); err != nil {
		t.Fatal(err)
	}
	expectReceives(t, map[*lpeer][]string{v: keys("h", SourceCamera, SourceMicrophone)})

	if err := room.SetRole("h", RoleViewer); err != nil {
		t.Fatal(err)
	}
	if n := len(h.p.Tracks()); n != 0 {
		t.Errorf("demoted host still lists %d tracks", n)
	}
	for _, pi := range room.Participants() {
		if len(pi.Tracks) != 0 {
			t.Errorf("roster lists %s with tracks %+v", pi.Identity, pi.Tracks)
		}
	}
	time.Sleep(time.Second)
	stopped := v.count("h/camera")
	time.Sleep(500 * time.Millisecond)
	if got := v.count("h/camera"); got != stopped {
		t.Errorf("viewer still receives the demoted host: %d then %d packets", stopped, got)
	}
	v.waitEvent(t, "participant_left h", func(ev Event) bool {
		e, ok := ev.(ParticipantLeftEvent)
		return ok && e.Identity == "h" && e.Reason == "role_changed"
	})
	h.waitEvent(t, "role_changed", func(ev Event) bool {
		e, ok := ev.(RoleChangedEvent)
		return ok && e.Role == RoleViewer && len(e.Permissions.Publish) == 0
	})
	if err := room.SetRole("v", RoleCandidate); !errors.Is(err, ErrInvalidRole) {
		t.Errorf("role of another kind: %v, want ErrInvalidRole", err)
	}

	exam, err := s.CreateRoom("exam", KindProctoring, RoomOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c := joinLabelled(t, exam, "c", RoleCandidate)
	p := joinLabelled(t, exam, "p", RoleProctor)
	defer closeAll(c, p)
	if err := exam.SetRole("c", RoleProctor); !errors.Is(err, ErrForbidden) {
		t.Errorf("candidate to proctor: %v, want ErrForbidden", err)
	}
	if err := exam.SetRole("p", RoleCandidate); !errors.Is(err, ErrForbidden) {
		t.Errorf("proctor to candidate: %v, want ErrForbidden", err)
	}
	if c.p.Role() != RoleCandidate || p.p.Role() != RoleProctor {
		t.Errorf("roles changed: %s %s", c.p.Role(), p.p.Role())
	}
	for _, ev := range c.rec.events() {
		if _, ok := ev.(RoleChangedEvent); ok {
			t.Errorf("candidate told of a role change: %+v", ev)
		}
	}
}

// TestMuteHoldsWhenRepublished checks that a source muted by the server
// stays muted when the client publishes it again on a new track: a client
// cannot lift an admin's mute by renegotiating.
func TestMuteHoldsWhenRepublished(t *testing.T) {
	defer goleak.VerifyNone(t)
	s := newTestSFU(t)
	defer s.Close()
	room, err := s.CreateRoom("conf", KindConference, RoomOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a := joinLabelled(t, room, "a", RoleParticipant)
	b := joinLabelled(t, room, "b", RoleParticipant)
	defer closeAll(a, b)
	m1 := newAVSource(t, SourceCamera)
	defer m1.close()
	publishSettled(t, a, m1, []*lpeer{b}, a, b)
	first := a.p.Tracks()[0].Info().ID
	if _, err := a.p.SetMuted(SourceCamera, true, "admin"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	stopped := b.count("a/camera")

	// The client adds a new camera track, declaring every sending mid.
	m2 := newAVSource(t, SourceCamera)
	defer m2.close()
	settle(t, a, b)
	if _, err := a.pc.AddTransceiverFromTrack(m2.tracks[SourceCamera], webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly}); err != nil {
		t.Fatal(err)
	}
	offer, err := a.pc.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	g := webrtc.GatheringCompletePromise(a.pc)
	if err := a.pc.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	<-g
	sources := map[string]Source{}
	for _, tx := range a.pc.GetTransceivers() {
		if tx.Sender() != nil && tx.Sender().Track() != nil && tx.Direction() == webrtc.RTPTransceiverDirectionSendonly {
			sources[tx.Mid()] = SourceCamera
		}
	}
	if err := a.p.HandleOffer(a.pc.LocalDescription().SDP, sources); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the new camera track", func() bool {
		ts := a.p.Tracks()
		return len(ts) == 1 && ts[0].Info().ID != first
	})
	if info := a.p.Tracks()[0].Info(); !info.Muted {
		t.Errorf("republished camera is not muted: %+v", info)
	}
	time.Sleep(time.Second)
	if got := b.count("a/camera"); got != stopped {
		t.Errorf("b received %d camera packets after the mute, republished or not", got-stopped)
	}
	// Unmuting reaches the new track.
	if _, err := a.p.SetMuted(SourceCamera, false, "admin"); err != nil {
		t.Fatal(err)
	}
	if info := a.p.Tracks()[0].Info(); info.Muted {
		t.Errorf("unmuted camera still muted: %+v", info)
	}
}
