package sfu

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/pion/interceptor/pkg/cc"
	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v4"
)

// ErrGlare is returned for a client offer that crossed an offer of ours.
// The server is the impolite side of perfect negotiation: it keeps its own
// offer, and the client rolls its back and offers again after answering.
var ErrGlare = errors.New("offer collided with a pending server offer")

const maxPendingCandidates = 64

// Participant is one member of a room with one PeerConnection.
type Participant struct {
	room     *Room
	identity string
	sink     Sink
	log      *slog.Logger
	pc       *webrtc.PeerConnection
	streamID string // msid stream of camera and microphone

	// negMu serializes every negotiation step and transceiver change.
	negMu          sync.Mutex
	awaitingAnswer bool // our offer is out, no answer yet
	needOffer      bool // something changed while awaiting an answer
	needRestart    bool // the next offer restarts ICE
	restartOut     bool // our pending offer restarts ICE
	pendingICE     []webrtc.ICECandidateInit

	mode    Mode
	relay   *relayed                           // a relayed participant's borrowed pc (cascade.go), or nil
	bwe     estimator                          // what the connection carries to the client, or nil
	quit    chan struct{}                      // closed when leaving starts
	joinSeq uint64                             // order of joining the room, set under the room's lock
	player  map[webrtc.RTPCodecType]*DownTrack // a WHEP player's two down-tracks, set once

	mu        sync.Mutex             // guards what follows
	follow    string                 // a player's publisher to follow
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
	// it; talk is who a proctor speaks to now ("*": every candidate).
	waiting bool
	talk    map[string]bool
	// The media connection (reconnect.go): connected once it first
	// connects; while reconnecting, grace ends the participant and back
	// is closed when it is connected again.
	connected, reconnecting bool
	grace, restart          *time.Timer
	back                    chan struct{}
	closed                  bool
	done                    chan struct{}
	left                    sync.WaitGroup // up-track readers and RTCP readers
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
		talk:      map[string]bool{},
		simulcast: map[string][]string{},
		groups:    map[string]*layerGroup{},
	}
	if p.relay != nil {
		p.connected = true // as its publisher is on its node; the relay's callbacks are not ours
		return p, nil
	}
	if e, ok := r.sfu.estimators.LoadAndDelete(pc.ID()); ok {
		p.bwe = e.(cc.BandwidthEstimator)
	}

	pc.OnTrack(p.onTrack)
	pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
		p.log.Debug("connection state", "state", s.String())
		// Off pion's goroutine: it takes the room's lock, and reads
		// the state again, so that the order of these goroutines does
		// not matter.
		go p.connectionChanged()
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

func (p *Participant) info() ParticipantInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	info := ParticipantInfo{Identity: p.identity, Role: p.role, Tracks: []TrackInfo{}, State: p.stateLocked()}
	switch {
	case p.reconnecting:
		info.Connection = ConnectionReconnecting
	case p.connected:
		info.Connection = ConnectionConnected
	}
	for _, u := range p.ups {
		info.Tracks = append(info.Tracks, u.Info())
	}
	return info
}

func (p *Participant) upTracks() []*UpTrack {
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

	p.negMu.Lock()
	defer p.negMu.Unlock()
	if p.isClosed() {
		return ErrClosed
	}
	if p.awaitingAnswer {
		return ErrGlare
	}
	p.mu.Lock()
	for mid, src := range sources {
		p.sources[mid] = src
	}
	for mid, rids := range parseSimulcast(parsed) {
		p.simulcast[mid] = rids
	}
	p.mu.Unlock()
	if err := p.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidSDP, err)
	}
	p.flushICELocked()
	answer, err := p.pc.CreateAnswer(nil)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidSDP, err)
	}
	sdpText, err := p.setLocalLocked(answer)
	if err != nil {
		return err
	}
	p.sink.Deliver(AnswerEvent{SDP: sdpText, Tracks: p.trackMapLocked()})
	if p.needOffer {
		p.needOffer = false
		p.negotiateLocked()
	}
	return nil
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
func (p *Participant) HandleAnswer(answer string) error {
	p.negMu.Lock()
	defer p.negMu.Unlock()
	if p.isClosed() {
		return ErrClosed
	}
	if !p.awaitingAnswer {
		return fmt.Errorf("%w: no offer is pending", ErrInvalidState)
	}
	if err := p.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: answer}); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidSDP, err)
	}
	p.awaitingAnswer = false
	restarted := p.restartOut
	p.restartOut = false
	p.flushICELocked()
	if restarted && p.pc.ICEConnectionState() == webrtc.ICEConnectionStateFailed {
		// Our restart failed before its answer came (the client was
		// away longer than the ICE failed timeout): restart again, now
		// that the client is there to answer.
		p.needRestart, p.needOffer = true, true
	}
	if p.needOffer {
		p.needOffer = false
		p.negotiateLocked()
	}
	return nil
}

// AddICECandidate adds a trickled remote candidate; before a remote
// description exists it is kept (up to a bound) and added after.
func (p *Participant) AddICECandidate(c webrtc.ICECandidateInit) error {
	p.negMu.Lock()
	defer p.negMu.Unlock()
	if p.isClosed() {
		return ErrClosed
	}
	if p.pc.RemoteDescription() == nil {
		if len(p.pendingICE) >= maxPendingCandidates {
			return fmt.Errorf("%w: too many candidates before a description", ErrInvalidState)
		}
		p.pendingICE = append(p.pendingICE, c)
		return nil
	}
	if err := p.pc.AddICECandidate(c); err != nil {
		return fmt.Errorf("%w: candidate: %v", ErrInvalidSDP, err)
	}
	return nil
}

func (p *Participant) flushICELocked() {
	for _, c := range p.pendingICE {
		if err := p.pc.AddICECandidate(c); err != nil {
			p.log.Debug("dropping candidate", "err", err)
		}
	}
	p.pendingICE = nil
}

// setLocalLocked sets a local description and waits for gathering, so
// that the description carries our candidates (no server-side trickle).
func (p *Participant) setLocalLocked(d webrtc.SessionDescription) (string, error) {
	gathered := webrtc.GatheringCompletePromise(p.pc)
	if err := p.pc.SetLocalDescription(d); err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalidSDP, err)
	}
	select {
	case <-gathered:
	case <-time.After(5 * time.Second):
		p.log.Warn("ICE gathering did not complete in 5s")
	}
	return p.pc.LocalDescription().SDP, nil
}

// negotiateLocked sends a new offer, or marks one as needed when an
// exchange is under way. negMu must be held.
func (p *Participant) negotiateLocked() {
	if p.isClosed() || p.mode != ModeSignaled {
		return // WHIP and WHEP peers cannot take our offers
	}
	if p.awaitingAnswer || p.pc.SignalingState() != webrtc.SignalingStateStable {
		p.needOffer = true
		return
	}
	var opts *webrtc.OfferOptions
	if p.needRestart {
		opts = &webrtc.OfferOptions{ICERestart: true}
		p.needRestart = false
	}
	offer, err := p.pc.CreateOffer(opts)
	if err != nil {
		p.log.Warn("create offer", "err", err)
		p.sink.Deliver(ErrorEvent{Code: "negotiation_failed", Message: err.Error()})
		return
	}
	sdpText, err := p.setLocalLocked(offer)
	if err != nil {
		p.log.Warn("set local offer", "err", err)
		p.sink.Deliver(ErrorEvent{Code: "negotiation_failed", Message: err.Error()})
		return
	}
	p.awaitingAnswer = true
	p.restartOut = opts != nil
	p.sink.Deliver(OfferEvent{SDP: sdpText, Tracks: p.trackMapLocked()})
}

// trackMapLocked maps each mid that forwards a track to that track.
func (p *Participant) trackMapLocked() map[string]TrackInfo {
	m := map[string]TrackInfo{}
	for _, t := range p.pc.GetTransceivers() {
		if t.Sender() == nil || t.Mid() == "" {
			continue
		}
		if dt, ok := t.Sender().Track().(*DownTrack); ok {
			m[t.Mid()] = dt.trackInfo()
		}
	}
	return m
}

// addDownTracks subscribes the participant to ups, then renegotiates once.
func (p *Participant) addDownTracks(ups []*UpTrack) { p.addDownTracksForced(ups, false) }

// addDownTracksForced is addDownTracks; gated down-tracks start closed (a
// proctor's microphone, which Talk opens).
func (p *Participant) addDownTracksForced(ups []*UpTrack, gated bool) {
	if len(ups) == 0 || p.mode != ModeSignaled {
		return
	}
	p.negMu.Lock()
	defer p.negMu.Unlock()
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
		p.negotiateLocked()
		p.allocate()
	}
}

// removeDownTrack stops forwarding dt to p and renegotiates.
func (p *Participant) removeDownTrack(dt *DownTrack) {
	p.negMu.Lock()
	defer p.negMu.Unlock()
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
	p.negotiateLocked()
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
func (p *Participant) Leave(reason string) { p.leave(reason, true) }

func (p *Participant) leave(reason string, fromRoom bool) {
	p.leaveWith(LeftEvent{Reason: reason}, fromRoom)
}

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
	p.stopTimersLocked()
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
