package sfu

import (
	"sync"
	"time"

	"github.com/pion/webrtc/v4"
)

// Reconnecting. A participant whose media connection is lost (ICE
// disconnected or failed) does not leave at once: it turns "reconnecting"
// (everyone who sees it gets a participant_updated) and has
// Config.ReconnectGrace to come back, with the same identity, tracks,
// subscriptions and recordings, by an ICE restart from either side:
//
//   - the client offers with iceRestart (an ordinary client offer, which
//     need not declare its sources again);
//   - the server offers an ICE restart ICERestartDelay after the
//     connection went disconnected, or at once when it goes failed (it
//     stays the impolite peer: a client offer crossing it is refused with
//     glare, the client answers the server's offer instead).
//
// If it is not connected again within the grace period it leaves with
// ReasonTimeout. Meanwhile each of its tracks that carries nothing for
// MediaTimeout is unpublished, so that subscribers and recordings are not
// held by a publisher that vanished (that is the rule for a publisher
// that disappears without a word: its tracks are gone after the ICE
// disconnect timeout or MediaTimeout, whichever is later, 5s with the
// defaults; the participant itself leaves when the grace period ends).
// When that track's packets come back it is published again under a new
// id, and recordings continue (a new segment of the same recording).

// link is the state of a participant's media connection: connected
// once it first connects; while reconnecting, grace ends the
// participant, restart offers an ICE restart, and back is closed when it
// is connected again.
type link struct {
	p *Participant

	// mu guards what follows. It is taken alone or under the
	// participant's mu (leaving stops the timers); no lock is taken
	// while holding it.
	mu                      sync.Mutex
	connected, reconnecting bool
	grace, restart          *time.Timer
	back                    chan struct{}
	stopped                 bool // the participant is leaving
}

// changed acts on the connection's current state.
func (l *link) changed() {
	p := l.p
	state := p.pc.ConnectionState()
	cfg := p.room.sfu.cfg
	announce := false
	l.mu.Lock()
	if l.stopped {
		l.mu.Unlock()
		return
	}
	switch state {
	case webrtc.PeerConnectionStateConnected:
		l.connected = true
		if l.reconnecting {
			l.reconnecting = false
			l.stopTimersLocked()
			close(l.back)
			announce = true
			p.log.Info("participant reconnected")
		}
	case webrtc.PeerConnectionStateDisconnected, webrtc.PeerConnectionStateFailed:
		if !l.reconnecting {
			l.reconnecting = true
			announce = true
			l.back = make(chan struct{})
			l.grace = time.AfterFunc(cfg.ReconnectGrace, func() {
				p.log.Info("not reconnected within the grace period", "grace", cfg.ReconnectGrace)
				p.Leave(ReasonTimeout)
			})
			p.left.Add(1)
			go l.watchSilence(l.back)
			p.log.Info("participant reconnecting", "state", state.String())
		}
		if l.restart != nil {
			l.restart.Stop()
			l.restart = nil
		}
		if delay := cfg.ICERestartDelay; delay >= 0 {
			if state == webrtc.PeerConnectionStateFailed {
				delay = 0
			}
			l.restart = time.AfterFunc(delay, p.neg.restartICE)
		}
	}
	l.mu.Unlock()
	if announce {
		p.room.announce(p)
	}
}

// state reports whether the connection ever connected, and whether it
// is lost and in its grace period.
func (l *link) state() (connected, reconnecting bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.connected, l.reconnecting
}

// stop ends the link's timers for good: the participant is leaving.
func (l *link) stop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stopped = true
	l.stopTimersLocked()
}

// stopTimersLocked stops the grace and restart timers; l.mu is held.
func (l *link) stopTimersLocked() {
	if l.grace != nil {
		l.grace.Stop()
		l.grace = nil
	}
	if l.restart != nil {
		l.restart.Stop()
		l.restart = nil
	}
}

// announce tells everyone who sees p, and the room's watchers, how p is
// now.
func (r *Room) announce(p *Participant) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.participants[p.identity] != p {
		return
	}
	ev := ParticipantUpdatedEvent{Participant: p.Info()}
	for _, o := range r.participants {
		if o != p && CanSee(r.kind, o.role, p.role) {
			o.sink.Deliver(ev)
		}
	}
	r.toWatchersLocked(ev)
}

// Reconnecting reports whether the participant's media connection is
// lost and it is in its grace period.
func (p *Participant) Reconnecting() bool {
	_, reconnecting := p.link.state()
	return reconnecting
}

// watchSilence unpublishes, while the connection is lost, each track
// silent for MediaTimeout. It ends when the connection is back or the
// participant leaves.
func (l *link) watchSilence(back <-chan struct{}) {
	p := l.p
	defer p.left.Done()
	timeout := p.room.sfu.cfg.MediaTimeout
	every := min(max(timeout/10, 50*time.Millisecond), time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-p.quit:
			return
		case <-back:
			return
		case <-t.C:
		}
		now := time.Now()
		for _, u := range p.Tracks() {
			var last time.Time
			for _, layer := range u.layers() {
				if lp := layer.LastPacket(); lp.After(last) {
					last = lp
				}
			}
			if !last.IsZero() && now.Sub(last) >= timeout {
				p.log.Info("unpublishing a silent track while reconnecting", "track", u.info.ID, "silent", now.Sub(last).Round(time.Millisecond))
				u.silence()
			}
		}
	}
}

// silence unpublishes u for its silence: its next packet publishes it
// again.
func (u *UpTrack) silence() {
	u.mu.Lock()
	if u.stopped {
		u.mu.Unlock()
		return
	}
	u.silenced.Store(true)
	u.mu.Unlock()
	u.stop()
}
