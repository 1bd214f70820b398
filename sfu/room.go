package sfu

import (
	"fmt"
	"log/slog"
	"sort"
	"sync"
)

// Room is a set of participants whose media is forwarded to each other as
// the room kind's policy allows.
type Room struct {
	sfu  *SFU
	name string
	kind Kind
	opts RoomOptions
	log  *slog.Logger

	// mu guards what follows, and a participant's role and joinSeq
	// (written under it). It may be taken under a participant's neg.mu
	// (a player looking for its source); while holding it one may take a
	// participant's mu and what that may be taken under it, and deliver
	// to sinks (which only enqueue). See Participant for the whole order.
	mu           sync.Mutex
	participants map[string]*Participant // by identity
	watchers     []Sink                  // see everything, as admins do
	joins        uint64                  // participants joined so far
	// admitted are the candidates a proctor let in: one who reconnects
	// with a new session is not sent back to the waiting room.
	admitted map[string]bool
	closed   bool
}

func newRoom(s *SFU, name string, kind Kind, opts RoomOptions) *Room {
	return &Room{
		sfu: s, name: name, kind: kind, opts: opts,
		log:          s.log.With("room", name),
		participants: map[string]*Participant{},
	}
}

// Name is the room's name.
func (r *Room) Name() string { return r.name }

// Kind is the room's kind.
func (r *Room) Kind() Kind { return r.kind }

// Instance names this instance of the room (RoomOptions.Instance).
func (r *Room) Instance() string { return r.opts.Instance }

// Options are the room's settings.
func (r *Room) Options() RoomOptions { return r.opts }

// Participants describes everyone in the room.
func (r *Room) Participants() []ParticipantInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]ParticipantInfo, 0, len(r.participants))
	for _, p := range r.participants {
		out = append(out, p.Info())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Identity < out[j].Identity })
	return out
}

// JoinConfig is who joins.
type JoinConfig struct {
	Identity string
	Role     Role
	// Sink receives the participant's events, the JoinedEvent first.
	Sink Sink
	// Mode is how the participant negotiates; the zero value is a
	// signaled participant, to whom the server sends offers.
	Mode Mode

	relay *relayed // a ModeRelayed participant's borrowed connection (cascade.go)
}

// Join adds a participant. An identity already in the room is replaced:
// the older participant leaves with ReasonReplaced.
func (r *Room) Join(cfg JoinConfig) (*Participant, error) {
	if !ValidName(cfg.Identity) {
		return nil, fmt.Errorf("%w: identity %q", ErrInvalidName, cfg.Identity)
	}
	if !ValidRole(r.kind, cfg.Role) {
		return nil, fmt.Errorf("%w: %q in a %s room", ErrInvalidRole, cfg.Role, r.kind)
	}
	p, err := newParticipant(r, cfg)
	if err != nil {
		return nil, err
	}

	r.mu.Lock()
	old := r.participants[cfg.Identity]
	switch {
	case r.closed:
		err = ErrRoomClosed
	case old == nil && r.opts.MaxParticipants > 0 && len(r.participants) >= r.opts.MaxParticipants:
		err = ErrRoomFull
	}
	if err != nil {
		r.mu.Unlock()
		p.closePC()
		return nil, err
	}
	if old != nil {
		// The old one leaves the roster now; its connection is closed
		// below, outside the lock.
		delete(r.participants, cfg.Identity)
		r.notifyLeftLocked(old, ReasonReplaced)
	}
	if r.admitted[cfg.Identity] {
		p.mu.Lock()
		p.waiting = false
		p.mu.Unlock()
	}
	r.joins++
	p.joinSeq = r.joins
	r.participants[cfg.Identity] = p
	roster := []ParticipantInfo{}
	info := p.Info()
	var receive []*UpTrack
	for _, o := range r.participants {
		if o == p {
			continue
		}
		if CanSee(r.kind, p.role, o.role) {
			roster = append(roster, o.Info())
		}
		if CanSee(r.kind, o.role, p.role) {
			o.sink.Deliver(ParticipantJoinedEvent{Participant: info})
		}
		if p.mode == ModeSignaled && CanReceive(r.kind, p.role, o.role) {
			receive = append(receive, o.Tracks()...)
		}
	}
	r.toWatchersLocked(ParticipantJoinedEvent{Participant: info})
	sort.Slice(roster, func(i, j int) bool { return roster[i].Identity < roster[j].Identity })
	p.sink.Deliver(JoinedEvent{
		Room: r.name, Kind: r.kind, Identity: p.identity, Role: p.role,
		Permissions:  permissionsOf(r.kind, p.role),
		ICEServers:   r.sfu.ICEServersFor(r.name, p.identity),
		Participants: roster,
	})
	r.mu.Unlock()

	if p.mode == ModeSignaled {
		p.mu.Lock()
		if !p.closed { // not replaced already
			p.left.Add(1)
			go p.alloc.loop()
		}
		p.mu.Unlock()
	}
	if old != nil {
		old.leaveWith(LeftEvent{Reason: ReasonReplaced}, false)
	}
	r.log.Info("participant joined", "participant", p.identity, "role", p.role)
	p.subscribe(receive, false)
	return p, nil
}

func nonNil(s []Source) []Source {
	if s == nil {
		return []Source{}
	}
	return s
}

// Participant returns the participant with that identity, or nil.
func (r *Room) Participant(identity string) *Participant {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.participants[identity]
}

// notifyLeftLocked tells everyone who could see p that it left.
func (r *Room) notifyLeftLocked(p *Participant, reason string) {
	for _, o := range r.participants {
		if o != p && CanSee(r.kind, o.role, p.role) {
			o.sink.Deliver(ParticipantLeftEvent{Identity: p.identity, Reason: reason})
		}
	}
	r.toWatchersLocked(ParticipantLeftEvent{Identity: p.identity, Reason: reason})
}

// RoomSnapshotEvent is the first event a watcher gets: the room as it is.
type RoomSnapshotEvent struct {
	Room         string            `json:"room"`
	Kind         Kind              `json:"kind"`
	Participants []ParticipantInfo `json:"participants"`
}

// Type implements Event.
func (RoomSnapshotEvent) Type() string { return "room_snapshot" }

// RoomClosedEvent is the last event a watcher gets.
type RoomClosedEvent struct {
	Reason string `json:"reason"`
}

// Type implements Event.
func (RoomClosedEvent) Type() string { return "room_closed" }

// Watch makes s receive every roster and track event of the room, as a
// participant who sees everyone would, starting with a RoomSnapshotEvent
// and ending with a RoomClosedEvent. It returns ErrRoomClosed if the
// room has ended.
func (r *Room) Watch(s Sink) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrRoomClosed
	}
	snap := RoomSnapshotEvent{Room: r.name, Kind: r.kind, Participants: []ParticipantInfo{}}
	for _, p := range r.participants {
		snap.Participants = append(snap.Participants, p.Info())
	}
	sort.Slice(snap.Participants, func(i, j int) bool { return snap.Participants[i].Identity < snap.Participants[j].Identity })
	s.Deliver(snap)
	r.watchers = append(r.watchers, s)
	return nil
}

func (r *Room) toWatchersLocked(ev Event) {
	for _, w := range r.watchers {
		w.Deliver(ev)
	}
}

// remove takes p out of the room, if it is still there.
func (r *Room) remove(p *Participant, reason string) {
	r.mu.Lock()
	if r.participants[p.identity] == p {
		delete(r.participants, p.identity)
		r.notifyLeftLocked(p, reason)
	}
	r.mu.Unlock()
}

// publish forwards a new up-track to everyone allowed to receive it.
func (r *Room) publish(up *UpTrack) {
	pub := up.publisher
	r.mu.Lock()
	if r.participants[pub.identity] != pub {
		r.mu.Unlock()
		return
	}
	var subs, players []*Participant
	r.toWatchersLocked(TrackPublishedEvent{Track: up.Info()})
	for _, o := range r.participants {
		if o == pub {
			continue
		}
		if CanSee(r.kind, o.role, pub.role) {
			o.sink.Deliver(TrackPublishedEvent{Track: up.Info()})
		}
		if CanReceive(r.kind, o.role, pub.role) {
			switch o.mode {
			case ModeSignaled:
				subs = append(subs, o)
			case ModeWHEP:
				players = append(players, o)
			}
		}
	}
	r.mu.Unlock()
	// Observers (recorders) first: subscribing renegotiates with every
	// subscriber, one after another, and recording must not wait for it.
	if obs := r.sfu.cfg.Observer; obs != nil {
		obs.TrackPublished(r, up)
	}
	for _, s := range subs {
		s.subscribe([]*UpTrack{up}, false)
	}
	for _, p := range players {
		p.player.offerSource(up)
	}
	if r.kind == KindProctoring && pub.Role() == RoleProctor && up.source == SourceMicrophone {
		// A proctor who talks while (re)publishing its microphone.
		var listeners []*Participant
		r.mu.Lock()
		for _, o := range r.participants {
			if o.role == RoleCandidate && pub.talk.hears(o) {
				listeners = append(listeners, o)
			}
		}
		r.mu.Unlock()
		pub.talk.apply(up, listeners)
	}
}

// unpublished tells those who could see the publisher that a track ended.
// The down-tracks themselves are removed by the up-track.
func (r *Room) unpublished(up *UpTrack) {
	pub := up.publisher
	r.mu.Lock()
	for _, o := range r.participants {
		if o != pub && CanSee(r.kind, o.role, pub.role) {
			o.sink.Deliver(TrackUnpublishedEvent{Track: up.info})
		}
	}
	r.toWatchersLocked(TrackUnpublishedEvent{Track: up.info})
	r.mu.Unlock()
	if obs := r.sfu.cfg.Observer; obs != nil {
		obs.TrackUnpublished(r, up)
	}
}

// Close ends the room: every participant leaves with reason.
func (r *Room) Close(reason string) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.closed = true
	ps := make([]*Participant, 0, len(r.participants))
	for _, p := range r.participants {
		ps = append(ps, p)
	}
	r.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.Leave(reason)
		}()
	}
	wg.Wait()
	r.mu.Lock()
	r.toWatchersLocked(RoomClosedEvent{Reason: reason})
	r.watchers = nil
	r.mu.Unlock()
	r.sfu.removeRoom(r)
	r.log.Info("room closed", "reason", reason)
}
