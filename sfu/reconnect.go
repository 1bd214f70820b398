package sfu

import (
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

// connectionChanged acts on the connection's current state.
func (p *Participant) connectionChanged() {
	state := p.pc.ConnectionState()
	cfg := p.room.sfu.cfg
	announce := false
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	switch state {
	case webrtc.PeerConnectionStateConnected:
		p.connected = true
		if p.reconnecting {
			p.reconnecting = false
			p.stopTimersLocked()
			close(p.back)
			announce = true
			p.log.Info("participant reconnected")
		}
	case webrtc.PeerConnectionStateDisconnected, webrtc.PeerConnectionStateFailed:
		if !p.reconnecting {
			p.reconnecting = true
			announce = true
			p.back = make(chan struct{})
			p.grace = time.AfterFunc(cfg.ReconnectGrace, func() {
				p.log.Info("not reconnected within the grace period", "grace", cfg.ReconnectGrace)
				p.Leave(ReasonTimeout)
			})
			p.left.Add(1)
			go p.watchSilence(p.back)
			p.log.Info("participant reconnecting", "state", state.String())
		}
		if p.restart != nil {
			p.restart.Stop()
			p.restart = nil
		}
		if delay := cfg.ICERestartDelay; delay >= 0 {
			if state == webrtc.PeerConnectionStateFailed {
				delay = 0
			}
			p.restart = time.AfterFunc(delay, p.restartICE)
		}
	}
	p.mu.Unlock()
	if announce {
		p.announce()
	}
}

// stopTimersLocked stops the grace and restart timers; p.mu is held.
func (p *Participant) stopTimersLocked() {
	if p.grace != nil {
		p.grace.Stop()
		p.grace = nil
	}
	if p.restart != nil {
		p.restart.Stop()
		p.restart = nil
	}
}

// announce tells everyone who sees p, and the room's watchers, how p is
// now.
func (p *Participant) announce() {
	r := p.room
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.participants[p.identity] != p {
		return
	}
	ev := ParticipantUpdatedEvent{Participant: p.info()}
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
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.reconnecting
}

// restartICE offers an ICE restart to a signaled client whose connection
// is still lost; while an offer of ours is pending, the next one
// restarts (unless the pending one does already).
func (p *Participant) restartICE() {
	if p.mode != ModeSignaled {
		return // WHIP and WHEP clients restart by PATCH
	}
	p.negMu.Lock()
	defer p.negMu.Unlock()
	if p.isClosed() || p.pc.ConnectionState() == webrtc.PeerConnectionStateConnected {
		return
	}
	if p.awaitingAnswer && p.restartOut {
		return
	}
	p.log.Info("offering an ICE restart")
	p.needRestart = true
	p.negotiateLocked()
}

// watchSilence unpublishes, while the connection is lost, each track
// silent for MediaTimeout. It ends when the connection is back or the
// participant leaves.
func (p *Participant) watchSilence(back <-chan struct{}) {
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
		for _, u := range p.upTracks() {
			var last time.Time
			for _, l := range u.layers() {
				if lp := l.LastPacket(); lp.After(last) {
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

// revive publishes again, as a new up-track, a track silenced while the
// connection was lost, whose packets came back. It returns nil if the
// participant is leaving or publishes that source otherwise meanwhile.
func (p *Participant) revive(old *UpTrack) *UpTrack {
	p.mu.Lock()
	for _, u := range p.ups {
		if u.source == old.source && u.mid != old.mid {
			p.mu.Unlock()
			return nil
		}
	}
	p.mu.Unlock()
	up, publish := p.addUpTrack(old.track, old.mid, old.source, false)
	if up == nil {
		return nil
	}
	p.log.Info("silent track is back", "old", old.info.ID, "track", up.info.ID)
	if publish {
		p.room.publish(up)
	}
	return up
}
