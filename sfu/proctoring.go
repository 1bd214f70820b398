package sfu

import (
	"fmt"
	"sync"
	"time"
)

// Proctoring: a candidate waits until a proctor admits it (or rejects
// it); a proctor ends one candidate's exam or everyone's; and a proctor
// talks to one candidate, or to every candidate, over its microphone:
// only those it talks to receive it, and only while it talks.

// More reasons a participant leaves.
const (
	ReasonRejected  = "rejected"
	ReasonExamEnded = "exam_ended"
)

// Candidate states.
const (
	StateWaiting  = "waiting"
	StateAdmitted = "admitted"
)

// AdmissionEvent tells a candidate it was admitted.
type AdmissionEvent struct {
	State string `json:"state"`
	By    string `json:"by"`
}

// Type implements Event.
func (AdmissionEvent) Type() string { return "admission" }

// TalkEvent tells that a proctor started or stopped talking; it goes to
// those it talks to, to the proctors, and to room watchers.
type TalkEvent struct {
	From   string    `json:"from"`
	To     string    `json:"to"` // an identity, or "*" for every candidate
	Active bool      `json:"active"`
	Time   time.Time `json:"time"`
}

// Type implements Event.
func (TalkEvent) Type() string { return "talk" }

// AdmissionObserver, if the SFU's Observer also implements it, hears of
// each candidate admitted (recordings of proctored exams start there).
type AdmissionObserver interface {
	Admitted(r *Room, p *Participant)
}

func (p *Participant) stateLocked() string {
	if p.room.kind != KindProctoring || p.role != RoleCandidate {
		return ""
	}
	if p.waiting {
		return StateWaiting
	}
	return StateAdmitted
}

// Admitted reports whether the participant is past the waiting room
// (always true outside proctoring and for proctors).
func (p *Participant) Admitted() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.waiting
}

// proctorAct checks that by is a proctor of r (nil: an admin) and that
// identity names a candidate.
func (r *Room) proctorAct(by *Participant, identity string) (*Participant, error) {
	if r.kind != KindProctoring || (by != nil && by.Role() != RoleProctor) {
		return nil, fmt.Errorf("%w: only a proctor may do this", ErrForbidden)
	}
	r.mu.Lock()
	c := r.participants[identity]
	r.mu.Unlock()
	if c == nil || c.Role() != RoleCandidate {
		return nil, fmt.Errorf("%w: no candidate %q", ErrParticipantNotFound, identity)
	}
	return c, nil
}

// Admit lets a waiting candidate into the exam; by is the proctor, or
// nil for an admin. Admitting an admitted candidate does nothing.
func (r *Room) Admit(by *Participant, identity string) error {
	c, err := r.proctorAct(by, identity)
	if err != nil {
		return err
	}
	who := "admin"
	if by != nil {
		who = by.identity
	}
	r.mu.Lock()
	if r.admitted == nil {
		r.admitted = map[string]bool{}
	}
	r.admitted[identity] = true
	c.mu.Lock()
	was := c.waiting
	c.waiting = false
	c.mu.Unlock()
	if was {
		info := c.Info()
		c.sink.Deliver(AdmissionEvent{State: StateAdmitted, By: who})
		for _, o := range r.participants {
			if o != c && CanSee(r.kind, o.role, c.role) {
				o.sink.Deliver(ParticipantUpdatedEvent{Participant: info})
			}
		}
		r.toWatchersLocked(ParticipantUpdatedEvent{Participant: info})
	}
	r.mu.Unlock()
	if !was {
		return nil
	}
	r.log.Info("candidate admitted", "participant", identity, "by", who)
	if obs, ok := r.sfu.cfg.Observer.(AdmissionObserver); ok {
		obs.Admitted(r, c)
	}
	return nil
}

// Reject turns a candidate away: it leaves with ReasonRejected and the
// proctor's message.
func (r *Room) Reject(by *Participant, identity, message string) error {
	c, err := r.proctorAct(by, identity)
	if err != nil {
		return err
	}
	r.forgetAdmission(identity)
	c.LeaveWithMessage(ReasonRejected, message)
	return nil
}

// forgetAdmission sends the identity back to the waiting room should it
// join again.
func (r *Room) forgetAdmission(identity string) {
	r.mu.Lock()
	delete(r.admitted, identity)
	r.mu.Unlock()
}

// EndExam ends one candidate's exam ("*": every candidate's): it leaves
// with ReasonExamEnded. by is the proctor, or nil for an admin.
func (r *Room) EndExam(by *Participant, identity, message string) error {
	if identity != "*" {
		c, err := r.proctorAct(by, identity)
		if err != nil {
			return err
		}
		r.forgetAdmission(identity)
		c.LeaveWithMessage(ReasonExamEnded, message)
		return nil
	}
	if r.kind != KindProctoring || (by != nil && by.Role() != RoleProctor) {
		return fmt.Errorf("%w: only a proctor may do this", ErrForbidden)
	}
	for _, c := range r.List() {
		if c.Role() == RoleCandidate {
			r.forgetAdmission(c.identity)
			c.LeaveWithMessage(ReasonExamEnded, message)
		}
	}
	return nil
}

// Talk starts or stops the proctor p talking to one candidate, or to
// every candidate with "*". While it talks, they receive its microphone;
// when it stops, they do not (the track stays negotiated, silent, so the
// next time starts at once).
func (p *Participant) Talk(to string, on bool) error {
	r := p.room
	if r.kind != KindProctoring || p.Role() != RoleProctor {
		return fmt.Errorf("%w: only a proctor may talk to candidates", ErrForbidden)
	}
	if to != "*" {
		if _, err := r.proctorAct(p, to); err != nil {
			return err
		}
	}
	p.talk.set(to, on)

	var mic *UpTrack
	for _, u := range p.Tracks() {
		if u.source == SourceMicrophone {
			mic = u
		}
	}
	ev := TalkEvent{From: p.identity, To: to, Active: on, Time: time.Now().UTC()}
	var listeners []*Participant
	r.mu.Lock()
	for _, o := range r.participants {
		switch {
		case o == p:
		case o.role == RoleCandidate && (to == "*" || o.identity == to):
			listeners = append(listeners, o)
			o.sink.Deliver(ev)
		case o.role == RoleProctor:
			o.sink.Deliver(ev)
		}
	}
	p.sink.Deliver(ev)
	r.toWatchersLocked(ev)
	r.mu.Unlock()
	if mic != nil {
		p.talk.apply(mic, listeners)
	}
	return nil
}

// NotifyProctors delivers ev to every proctor of the room and to the
// room's watchers, never to a candidate (an incident is one such event).
func (r *Room) NotifyProctors(ev Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, o := range r.participants {
		if o.role == RoleProctor {
			o.sink.Deliver(ev)
		}
	}
	r.toWatchersLocked(ev)
}

// talkGate is whom a proctor talks to now: candidates by identity, or
// "*" for every candidate. Its microphone's down-track to a candidate is
// open only while the candidate is talked to.
type talkGate struct {
	// mu guards to. It is taken alone or under the room's mu; no lock
	// is taken while holding it.
	mu sync.Mutex
	to map[string]bool
}

// set starts or stops talking to to.
func (g *talkGate) set(to string, on bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if on {
		g.to[to] = true
	} else {
		delete(g.to, to)
	}
}

// hears reports whether candidate c hears the proctor now.
func (g *talkGate) hears(c *Participant) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.to["*"] || g.to[c.identity]
}

// apply opens the gate of mic's down-track to each candidate talked to,
// adding the down-track on first use (outside the policy table: only a
// proctor's talking does this), and closes the others. A new
// down-track starts gated.
func (g *talkGate) apply(mic *UpTrack, candidates []*Participant) {
	for _, c := range candidates {
		c.mu.Lock()
		_, has := c.downs[mic.info.ID]
		c.mu.Unlock()
		if !has {
			c.subscribe([]*UpTrack{mic}, true)
		}
	}
	for _, d := range mic.downs.load() {
		d.gated.Store(!g.hears(d.sub))
	}
}

// Observers is a TrackObserver that tells each of its members, and, for
// those that implement it, AdmissionObserver.
type Observers []TrackObserver

// TrackPublished implements TrackObserver.
func (obs Observers) TrackPublished(r *Room, t *UpTrack) {
	for _, o := range obs {
		o.TrackPublished(r, t)
	}
}

// TrackUnpublished implements TrackObserver.
func (obs Observers) TrackUnpublished(r *Room, t *UpTrack) {
	for _, o := range obs {
		o.TrackUnpublished(r, t)
	}
}

// Admitted implements AdmissionObserver.
func (obs Observers) Admitted(r *Room, p *Participant) {
	for _, o := range obs {
		if a, ok := o.(AdmissionObserver); ok {
			a.Admitted(r, p)
		}
	}
}
