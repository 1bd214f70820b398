package sfu

import (
	"errors"
	"fmt"
	"sort"
)

// Errors of the admin operations.
var (
	ErrParticipantNotFound = errors.New("participant not found")
	ErrTrackNotFound       = errors.New("track not found")
)

// More reasons a participant leaves.
const (
	ReasonKicked  = "kicked"
	ReasonRevoked = "token_revoked"
)

// TrackMutedEvent tells that a track was muted or unmuted by the server:
// a muted track is not forwarded (it is still recorded).
type TrackMutedEvent struct {
	Track TrackInfo `json:"track"`
	By    string    `json:"by"`
}

// Type implements Event.
func (TrackMutedEvent) Type() string { return "track_muted" }

// ParticipantUpdatedEvent tells that a participant's role changed.
type ParticipantUpdatedEvent struct {
	Participant ParticipantInfo `json:"participant"`
}

// Type implements Event.
func (ParticipantUpdatedEvent) Type() string { return "participant_updated" }

// RoleChangedEvent tells a participant its own new role, what it now may
// do, and whom it now sees.
type RoleChangedEvent struct {
	Role         Role              `json:"role"`
	Permissions  Permissions       `json:"permissions"`
	Participants []ParticipantInfo `json:"participants"`
}

// Type implements Event.
func (RoleChangedEvent) Type() string { return "role_changed" }

func permissionsOf(k Kind, role Role) Permissions {
	return Permissions{Publish: nonNil(Publishable(k, role)), Subscribe: len(policies[k][role].receivesFrom) > 0}
}

// LeaveWithMessage is Leave, with free text for the participant in its
// LeftEvent (e.g. why an admin removed it). Others are told the reason
// only.
func (p *Participant) LeaveWithMessage(reason, message string) {
	p.leaveWith(LeftEvent{Reason: reason, Message: message}, true)
}

// List returns the participants, by identity.
func (r *Room) List() []*Participant {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*Participant, 0, len(r.participants))
	for _, p := range r.participants {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].identity < out[j].identity })
	return out
}

// SetMuted stops (or resumes) forwarding the participant's track of
// source src. The publisher and everyone who sees it are told. Video
// resumes on a keyframe, which is requested.
func (p *Participant) SetMuted(src Source, muted bool, by string) (TrackInfo, error) {
	var up *UpTrack
	for _, u := range p.Tracks() {
		if u.source == src {
			up = u
		}
	}
	if up == nil {
		return TrackInfo{}, fmt.Errorf("%w: %s publishes no %s", ErrTrackNotFound, p.identity, src)
	}
	p.pubs.setMuted(src, muted)
	if up.muted.Swap(muted) == muted {
		return up.Info(), nil
	}
	for _, l := range up.layers() {
		l.muted.Store(muted)
	}
	if !muted {
		up.requestKeyframe()
	}
	info := up.Info()
	ev := TrackMutedEvent{Track: info, By: by}
	r := p.room
	r.mu.Lock()
	p.sink.Deliver(ev)
	for _, o := range r.participants {
		if o != p && CanSee(r.kind, o.role, p.role) {
			o.sink.Deliver(ev)
		}
	}
	r.toWatchersLocked(ev)
	r.mu.Unlock()
	p.log.Info("track muted", "track", info.ID, "muted", muted, "by", by)
	return info, nil
}

// SetRole changes a participant's role: what it may publish, receive and
// see is re-evaluated at once. Tracks it may no longer publish are
// unpublished; subscriptions the new role forbids are dropped and those it
// allows are made; others' rosters are told.
func (r *Room) SetRole(identity string, role Role) error {
	if !ValidRole(r.kind, role) {
		return fmt.Errorf("%w: %q in a %s room", ErrInvalidRole, role, r.kind)
	}
	r.mu.Lock()
	p := r.participants[identity]
	if p == nil {
		r.mu.Unlock()
		return fmt.Errorf("%w: %q", ErrParticipantNotFound, identity)
	}
	old := p.role
	if old == role {
		r.mu.Unlock()
		return nil
	}
	if !CanChangeRole(r.kind, old, role) {
		r.mu.Unlock()
		return fmt.Errorf("%w: a %s may not become a %s in a %s room", ErrForbidden, old, role, r.kind)
	}
	p.mu.Lock()
	p.role = role
	p.mu.Unlock()
	info := p.Info()

	var (
		stopUps   []*UpTrack
		keepUps   []*UpTrack
		dropDowns []*DownTrack // down-tracks to remove, wherever they are
		receive   []*UpTrack   // what p may now receive
		roster    = []ParticipantInfo{}
		subsAdd   = map[*Participant][]*UpTrack{}
	)
	for _, u := range p.Tracks() {
		if CanPublish(r.kind, role, u.source) {
			keepUps = append(keepUps, u)
		} else {
			stopUps = append(stopUps, u)
		}
	}
	p.mu.Lock()
	for _, d := range p.downs {
		if up := d.source(); up != nil && !CanReceive(r.kind, role, up.publisher.role) {
			dropDowns = append(dropDowns, d)
		}
	}
	p.mu.Unlock()
	for _, o := range r.participants {
		if o == p {
			continue
		}
		before, after := CanSee(r.kind, o.role, old), CanSee(r.kind, o.role, role)
		switch {
		case before && !after:
			o.sink.Deliver(ParticipantLeftEvent{Identity: p.identity, Reason: "role_changed"})
		case !before && after:
			o.sink.Deliver(ParticipantJoinedEvent{Participant: info})
		case before && after:
			o.sink.Deliver(ParticipantUpdatedEvent{Participant: info})
		}
		if CanSee(r.kind, role, o.role) {
			roster = append(roster, o.Info())
		}
		if !CanReceive(r.kind, old, o.role) && CanReceive(r.kind, role, o.role) {
			receive = append(receive, o.Tracks()...)
		}
		canNow := CanReceive(r.kind, o.role, role)
		for _, u := range keepUps {
			if !canNow {
				for _, d := range u.downs.load() {
					if d.sub == o {
						dropDowns = append(dropDowns, d)
					}
				}
			} else if !CanReceive(r.kind, o.role, old) {
				subsAdd[o] = append(subsAdd[o], u)
			}
		}
	}
	r.toWatchersLocked(ParticipantUpdatedEvent{Participant: info})
	sort.Slice(roster, func(i, j int) bool { return roster[i].Identity < roster[j].Identity })
	p.sink.Deliver(RoleChangedEvent{Role: role, Permissions: permissionsOf(r.kind, role), Participants: roster})
	r.mu.Unlock()

	for _, u := range stopUps {
		u.stop()
	}
	for _, d := range dropDowns {
		d.detach()
		d.sub.removeDownTrack(d)
	}
	p.subscribe(receive, false)
	for o, ups := range subsAdd {
		o.subscribe(ups, false)
	}
	r.log.Info("role changed", "participant", identity, "from", old, "to", role)
	return nil
}

// CanChangeRole reports whether a participant of role from may be given
// role to in a room of kind k. Roles are fixed in proctoring: a candidate
// must never become a proctor (and see other candidates), nor a proctor
// become a candidate.
func CanChangeRole(k Kind, from, to Role) bool {
	return ValidRole(k, from) && ValidRole(k, to) && (from == to || k != KindProctoring)
}

// findTrack returns the up-track with id in the room, if any.
func (r *Room) findTrack(id string) *UpTrack {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, o := range r.participants {
		if u := o.pubs.get(id); u != nil {
			return u
		}
	}
	return nil
}

// Subscribe makes the participant receive one track by id (tracks it may
// receive are subscribed automatically; this restores one it
// unsubscribed). A track the role may not receive is ErrForbidden, and
// so is an unknown one unless the role may receive from every role that
// publishes in this kind of room: a proctoring candidate cannot learn
// whether another candidate's track exists.
func (p *Participant) Subscribe(trackID string) error {
	r := p.room
	up := r.findTrack(trackID)
	role := p.Role()
	if up == nil || up.publisher == p || !CanReceive(r.kind, role, up.publisher.Role()) {
		if up == nil && receivesEveryPublisher(r.kind, role) {
			return fmt.Errorf("%w: %q", ErrTrackNotFound, trackID)
		}
		return fmt.Errorf("%w: track %q", ErrForbidden, trackID)
	}
	p.subscribe([]*UpTrack{up}, false)
	return nil
}

// Unsubscribe stops forwarding one track to the participant.
func (p *Participant) Unsubscribe(trackID string) error {
	p.mu.Lock()
	d := p.downs[trackID]
	p.mu.Unlock()
	if d == nil {
		return fmt.Errorf("%w: not subscribed to %q", ErrTrackNotFound, trackID)
	}
	d.detach()
	p.removeDownTrack(d)
	return nil
}

// receivesEveryPublisher reports whether role receives media from every
// role that may publish in rooms of kind k.
func receivesEveryPublisher(k Kind, role Role) bool {
	for other, pol := range policies[k] {
		if len(pol.publish) > 0 && !policies[k][role].receivesFrom[other] {
			return false
		}
	}
	return true
}
