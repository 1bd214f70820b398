package sfu

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/pion/interceptor/pkg/cc"
	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v4"
)

// Participant is one member of a room with one PeerConnection. Its
// parts with their own state live beside it: the SDP and ICE exchange
// (negotiation.go), the media connection and its reconnection
// (reconnect.go), the layer allocation of what it receives
// (simulcast.go), whom a proctor talks to (proctoring.go), and a WHEP
// player's down-tracks (whep.go).
//
// Lock order: neg.mu, then the room's mu, then mu, then any of link.mu,
// talk.mu, alloc.mu, player.mu and the mu of an up-track, a down-track or
// a layer group. A lock later in that order is never held while taking
// an earlier one.
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

	neg    negotiation // the offer/answer exchange and ICE of pc
	link   link        // the media connection: connected, reconnecting
	alloc  allocator   // simulcast layers of what it receives
	talk   talkGate    // a proctor's: whom it talks to
	player *player     // a WHEP player's down-tracks, or nil

	// mu guards what follows. Taken under neg.mu or the room's mu, it
	// may be held while taking link.mu, talk.mu, alloc.mu, player.mu or
	// a track's or layer group's mu.
	mu        sync.Mutex
	role      Role                   // also written under the room's lock
	sources   map[string]Source      // mid -> declared source of a client offer
	simulcast map[string][]string    // mid -> rids, low to high, of a client offer
	groups    map[string]*layerGroup // mid -> simulcast layers published
	ups       map[string]*UpTrack    // published, by track id
	downs     map[string]*DownTrack  // forwarded to us, by up-track id
	// mutedSrc are the sources the server muted (SetMuted): a track
	// published again on a muted source starts muted.
	mutedSrc map[Source]bool
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
		log:       r.log.With("participant", cfg.Identity),
		pc:        pc,
		streamID:  randomID("ST"),
		sources:   map[string]Source{},
		ups:       map[string]*UpTrack{},
		downs:     map[string]*DownTrack{},
		done:      make(chan struct{}),
		quit:      make(chan struct{}),
		waiting:   r.kind == KindProctoring && cfg.Role == RoleCandidate,
		simulcast: map[string][]string{},
		groups:    map[string]*layerGroup{},
	}
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

	pc.OnTrack(p.onTrack)
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
	for _, u := range p.ups {
		info.Tracks = append(info.Tracks, u.Info())
	}
	return info
}

// Tracks returns the tracks the participant publishes.
func (p *Participant) Tracks() []*UpTrack {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*UpTrack, 0, len(p.ups))
	for _, u := range p.ups {
		out = append(out, u)
	}
	return out
}

// HandleOffer applies a client offer. sources declares, for each mid the
// client sends on, what it carries; every sending m-line must be declared
// and allowed to the participant's role, or the offer is refused whole
// with ErrForbidden and nothing changes. The answer is delivered as an
// AnswerEvent.
func (p *Participant) HandleOffer(offer string, sources map[string]Source) error {
	parsed := &sdp.SessionDescription{}
	if err := parsed.UnmarshalString(offer); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidSDP, err)
	}
	if err := p.checkOffer(parsed, sources); err != nil {
		return err
	}

	return p.neg.applyOffer(offer, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		for mid, src := range sources {
			p.sources[mid] = src
		}
		for mid, rids := range parseSimulcast(parsed) {
			p.simulcast[mid] = rids
		}
	})
}

// checkOffer enforces the publish policy on a client offer before any of
// it is applied.
func (p *Participant) checkOffer(d *sdp.SessionDescription, sources map[string]Source) error {
	sending := 0
	for _, m := range d.MediaDescriptions {
		kind := m.MediaName.Media
		if kind != "audio" && kind != "video" {
			continue
		}
		if m.MediaName.Port.Value == 0 {
			continue // rejected or stopped m-line
		}
		dir := "sendrecv"
		for _, a := range m.Attributes {
			switch a.Key {
			case "sendrecv", "sendonly", "recvonly", "inactive":
				dir = a.Key
			}
		}
		if dir != "sendrecv" && dir != "sendonly" {
			continue
		}
		if sending++; p.room.sfu.cfg.MaxTracks > 0 && sending > p.room.sfu.cfg.MaxTracks {
			return fmt.Errorf("%w: an offer may send at most %d tracks", ErrTooManyTracks, p.room.sfu.cfg.MaxTracks)
		}
		mid, _ := m.Attribute("mid")
		src, ok := sources[mid]
		if !ok {
			// Declared by an earlier offer: a renegotiation (an ICE
			// restart) need not declare it again.
			p.mu.Lock()
			src, ok = p.sources[mid]
			p.mu.Unlock()
		}
		if !ok {
			return fmt.Errorf("%w: m-line %q sends %s without a declared source", ErrForbidden, mid, kind)
		}
		if !src.Valid() || src.Audio() != (kind == "audio") {
			return fmt.Errorf("%w: m-line %q is %s, not %q", ErrForbidden, mid, kind, src)
		}
		if role := p.Role(); !CanPublish(p.room.kind, role, src) {
			return fmt.Errorf("%w: a %s may not publish %s in a %s room", ErrForbidden, role, src, p.room.kind)
		}
	}
	return nil
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

// onTrack publishes a track the client sends, if its mid was declared
// with a source the role may publish.
func (p *Participant) onTrack(track *webrtc.TrackRemote, recv *webrtc.RTPReceiver) {
	mid := ""
	for _, t := range p.pc.GetTransceivers() {
		if t.Receiver() == recv {
			mid = t.Mid()
			break
		}
	}
	p.mu.Lock()
	src, declared := p.sources[mid]
	role := p.role
	p.mu.Unlock()
	kindOK := src.Audio() == (track.Kind() == webrtc.RTPCodecTypeAudio)
	if !declared || !kindOK || !CanPublish(p.room.kind, role, src) {
		p.log.Warn("ignoring undeclared or forbidden track", "mid", mid, "source", src)
		return
	}
	up, publish := p.addUpTrack(track, mid, src, true)
	if up == nil {
		return
	}
	go up.run(&p.left)
	if publish {
		p.room.publish(up)
	}
}

// addUpTrack makes a new up-track of track (on mid, carrying src) the
// participant's: a simulcast layer joins its source's live group, any
// other replaces the track of the same source. publish tells whether the
// room must be told (a new source, not one more layer). With count, the
// caller starts a reader for it (counted in p.left). It returns nil once
// the participant is leaving.
func (p *Participant) addUpTrack(track *webrtc.TrackRemote, mid string, src Source, count bool) (up *UpTrack, publish bool) {
	codec := track.Codec()
	stream := p.streamID
	if src == SourceScreen {
		stream += "-screen"
	}
	up = &UpTrack{
		publisher: p, track: track, source: src, streamID: stream, mid: mid,
		codec: codec.RTPCodecCapability,
		info: TrackInfo{
			ID: randomID("TR"), Identity: p.identity, Source: src,
			Kind: track.Kind().String(), Codec: strings.ToLower(strings.TrimPrefix(strings.TrimPrefix(codec.MimeType, "video/"), "audio/")),
		},
		done: make(chan struct{}),
	}
	var replaced []*UpTrack
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, false
	}
	if rid := track.RID(); rid != "" {
		up.rid = rid
		g := p.groups[mid]
		if g != nil && !g.primary.isStopped() {
			// Another layer of a source already published: it joins
			// the group, and the allocator may pick it.
			up.info, up.group = g.primary.info, g
			up.muted.Store(g.primary.muted.Load())
			g.mu.Lock()
			g.layers[rid] = up
			g.mu.Unlock()
			if count {
				p.left.Add(1)
			}
			p.mu.Unlock()
			p.log.Info("simulcast layer published", "track", up.info.ID, "rid", rid)
			return up, false
		}
		g = &layerGroup{order: p.simulcast[mid], layers: map[string]*UpTrack{rid: up}, primary: up}
		up.group = g
		p.groups[mid] = g
	}
	for id, u := range p.ups {
		if u.source == src {
			replaced = append(replaced, u)
			delete(p.ups, id)
		}
	}
	up.muted.Store(p.mutedSrc[src])
	p.ups[up.info.ID] = up
	if count {
		p.left.Add(1)
	}
	p.mu.Unlock()
	for _, u := range replaced {
		u.stop()
	}
	p.log.Info("track published", "track", up.info.ID, "source", src, "codec", codec.MimeType)
	return up, true
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
	ups := make([]*UpTrack, 0, len(p.ups))
	for _, u := range p.ups {
		ups = append(ups, u)
	}
	p.ups = map[string]*UpTrack{}
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
