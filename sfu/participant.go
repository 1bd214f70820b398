package sfu

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"sync"

	"github.com/pion/interceptor/pkg/cc"
	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v4"
)

// Participant is one member of a room with one PeerConnection. Its
// parts with their own state live beside it: what it publishes
// (publish.go), the SDP and ICE exchange (negotiation.go), the media
// connection and its reconnection
// (reconnect.go), the layer allocation of what it receives
// (simulcast.go), whom a proctor talks to (proctoring.go), and a WHEP
// player's down-tracks (whep.go).
//
// Lock order: neg.mu, then the room's mu, then mu, then any of
// pubs.mu, link.mu, talk.mu, alloc.mu and player.mu, then the mu of an
// up-track, a down-track or a layer group. A lock later in that order is
// never held while taking an earlier one.
type Participant struct {
	room     *Room
	identity string
	sink     Sink
	log      *slog.Logger
	pc       *webrtc.PeerConnection
	streamID string // msid stream of camera and microphone

	mode    Mode
	relay   *relayed      // a relayed participant's borrowed pc (cascade.go), or nil
	quit    chan struct{} // closed when leaving starts
	joinSeq uint64        // order of joining the room, set under the room's lock

	pubs   publications // the tracks it publishes
	neg    negotiation  // the offer/answer exchange and ICE of pc
	link   link         // the media connection: connected, reconnecting
	alloc  allocator    // simulcast layers of what it receives
	talk   talkGate     // a proctor's: whom it talks to
	player *player      // a WHEP player's down-tracks, or nil

	// mu guards what follows. Taken under neg.mu or the room's mu, it
	// may be held while taking pubs.mu, link.mu, talk.mu, alloc.mu,
	// player.mu or a track's or layer group's mu.
	mu    sync.Mutex
	role  Role                  // also written under the room's lock
	downs map[string]*DownTrack // forwarded to us, by up-track id
	// waiting is true for a proctoring candidate until a proctor admits
	// it.
	waiting bool
	closed  bool
	done    chan struct{}
	left    sync.WaitGroup // up-track readers and RTCP readers
}

func randomID(prefix string) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

func newParticipant(r *Room, cfg JoinConfig) (*Participant, error) {
	pc, err := r.connectionFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("sfu: new peer connection: %w", err)
	}
	p := &Participant{
		room: r, identity: cfg.Identity, role: cfg.Role, sink: cfg.Sink, mode: cfg.Mode, relay: cfg.relay,
		log:      r.log.With("participant", cfg.Identity),
		pc:       pc,
		streamID: randomID("ST"),
		downs:    map[string]*DownTrack{},
		done:     make(chan struct{}),
		quit:     make(chan struct{}),
		waiting:  r.kind == KindProctoring && cfg.Role == RoleCandidate,
	}
	p.pubs = newPublications(p)
	p.neg = negotiation{pc: pc, sink: cfg.Sink, log: p.log, signaled: cfg.Mode == ModeSignaled, quit: p.quit}
	p.link.p = p
	p.alloc.p = p
	p.talk.to = map[string]bool{}
	if cfg.Mode == ModeWHEP {
		p.player = &player{p: p}
	}
	if p.relay != nil {
		p.link.connected = true // as its publisher is on its node; the relay's callbacks are not ours
		return p, nil
	}
	if e, ok := r.sfu.estimators.LoadAndDelete(pc.ID()); ok {
		p.alloc.bwe = e.(cc.BandwidthEstimator)
	}

	pc.OnTrack(p.pubs.onTrack)
	pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
		p.log.Debug("connection state", "state", s.String())
		// Off pion's goroutine: it takes the room's lock, and reads
		// the state again, so that the order of these goroutines does
		// not matter.
		go p.link.changed()
	})
	return p, nil
}

// Identity is the participant's identity.
func (p *Participant) Identity() string { return p.identity }

// Role is the participant's role.
func (p *Participant) Role() Role {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.role
}

// Room is the participant's room.
func (p *Participant) Room() *Room { return p.room }

// Done is closed when the participant has left.
func (p *Participant) Done() <-chan struct{} { return p.done }

// ConnectionState is the state of the participant's PeerConnection.
func (p *Participant) ConnectionState() webrtc.PeerConnectionState {
	return p.pc.ConnectionState()
}

// Info describes the participant as others see it.
func (p *Participant) Info() ParticipantInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	info := ParticipantInfo{Identity: p.identity, Role: p.role, Tracks: []TrackInfo{}, State: p.stateLocked()}
	switch connected, reconnecting := p.link.state(); {
	case reconnecting:
		info.Connection = ConnectionReconnecting
	case connected:
		info.Connection = ConnectionConnected
	}
	for _, u := range p.pubs.list() {
		info.Tracks = append(info.Tracks, u.Info())
	}
	return info
}

// Tracks returns the tracks the participant publishes.
func (p *Participant) Tracks() []*UpTrack { return p.pubs.list() }

// HandleOffer applies a client offer. sources declares, for each mid the
// client sends on, what it carries; every sending m-line must be declared
// (by this offer or an earlier one) and allowed to the participant's
// role, and sources may name no mid the offer does not send on, or the
// offer is refused whole (ErrForbidden, ErrInvalidSDP) and nothing
// changes. What it declares is kept only once the offer is applied, and
// replaces what earlier offers declared: a mid that stops sending is
// forgotten. The answer is delivered as an AnswerEvent.
func (p *Participant) HandleOffer(offer string, sources map[string]Source) error {
	parsed := &sdp.SessionDescription{}
	if err := parsed.UnmarshalString(offer); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidSDP, err)
	}
	declared, simulcast, err := p.pubs.checkOffer(parsed, sources)
	if err != nil {
		return err
	}
	return p.neg.applyOffer(offer, func() { p.pubs.declare(declared, simulcast) })
}

// HandleAnswer applies the client's answer to our pending offer.
func (p *Participant) HandleAnswer(answer string) error { return p.neg.applyAnswer(answer) }

// AddICECandidate adds a trickled remote candidate; before a remote
// description exists it is kept (up to a bound) and added after.
func (p *Participant) AddICECandidate(c webrtc.ICECandidateInit) error {
	return p.neg.addCandidate(c)
}

// subscribe forwards ups to the participant, then renegotiates once.
// gated down-tracks start closed (a proctor's microphone, which Talk
// opens).
func (p *Participant) subscribe(ups []*UpTrack, gated bool) {
	if len(ups) == 0 || p.mode != ModeSignaled {
		return
	}
	p.neg.mu.Lock()
	defer p.neg.mu.Unlock()
	added := false
	for _, up := range ups {
		p.mu.Lock()
		_, dup := p.downs[up.info.ID]
		closed := p.closed
		p.mu.Unlock()
		if dup || closed {
			continue
		}
		dt := newDownTrack(up, p)
		dt.gated.Store(gated)
		tr, err := p.pc.AddTransceiverFromTrack(dt, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
		if err != nil {
			p.log.Warn("add down-track", "track", up.info.ID, "err", err)
			continue
		}
		dt.sender = tr.Sender()
		if !up.addDown(dt) { // unpublished meanwhile
			_ = p.pc.RemoveTrack(dt.sender)
			continue
		}
		p.mu.Lock()
		if p.closed { // leaving: its connection closes every sender
			p.mu.Unlock()
			up.removeDown(dt)
			continue
		}
		p.downs[up.info.ID] = dt
		p.left.Add(1)
		p.mu.Unlock()
		go dt.readRTCP(&p.left)
		added = true
	}
	if added {
		p.neg.negotiateLocked()
		p.alloc.run()
	}
}

// removeDownTrack stops forwarding dt to p and renegotiates.
func (p *Participant) removeDownTrack(dt *DownTrack) {
	p.neg.mu.Lock()
	defer p.neg.mu.Unlock()
	p.mu.Lock()
	if p.downs[dt.id] != dt || p.closed {
		p.mu.Unlock()
		return
	}
	delete(p.downs, dt.id)
	p.mu.Unlock()
	if err := p.pc.RemoveTrack(dt.sender); err != nil {
		p.log.Debug("remove down-track", "err", err)
		return
	}
	p.neg.negotiateLocked()
}

func (p *Participant) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// Leave removes the participant from its room: its tracks are unpublished
// everywhere, its subscriptions dropped, its connection closed, and its
// sink gets a LeftEvent with reason. It returns when every goroutine of
// the participant has ended. Calling it again does nothing.
func (p *Participant) Leave(reason string) { p.leaveWith(LeftEvent{Reason: reason}, true) }

// leaveWith is leave with the LeftEvent the participant gets last.
func (p *Participant) leaveWith(ev LeftEvent, fromRoom bool) {
	reason := ev.Reason
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	close(p.quit)
	p.link.stop()
	ups := p.pubs.close()
	downs := make([]*DownTrack, 0, len(p.downs))
	for _, d := range p.downs {
		downs = append(downs, d)
	}
	p.downs = map[string]*DownTrack{}
	p.mu.Unlock()

	// Tracks end before their publisher leaves the roster, so everyone
	// sees track_unpublished, then participant_left.
	for _, u := range ups {
		u.stop()
	}
	if fromRoom {
		p.room.remove(p, reason)
	}
	for _, d := range downs {
		d.detach()
	}
	p.closePC()
	if reason == ReasonKicked || reason == ReasonRevoked {
		p.room.sfu.RevokeICEServers(p.room.name, p.identity)
	}
	p.left.Wait()
	close(p.done)
	p.sink.Deliver(ev)
	p.log.Info("participant left", "reason", reason)
}

func (p *Participant) closePC() {
	if p.relay != nil {
		p.relay.release() // the relay's connection stays open
		return
	}
	if err := p.pc.Close(); err != nil {
		p.log.Debug("close peer connection", "err", err)
	}
}
