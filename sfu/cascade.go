package sfu

import (
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/pion/dtls/v3"
	"github.com/pion/ice/v4"
	"github.com/pion/webrtc/v4"
)

// Cascading. A broadcast's tracks can be served by other nodes than the
// one its hosts publish on: an edge node opens one server-to-server
// WebRTC connection to the owner (the relay: signaling drives it) and
// publishes each track it receives there into a local replica of the
// room, as a track of a relayed participant standing for the host.
//
// A relayed participant borrows the relay's PeerConnection: it never
// negotiates on it, receives nothing, and does not close it when it
// leaves (it stops the receivers of its own tracks instead, so that
// their readers end). Everything else is an ordinary participant's:
// its up-tracks are read by the usual reader, forwarded to down-tracks,
// fed to sinks and counted; a keyframe request of a subscriber is a PLI
// written on the relay connection, which the owner turns into a
// keyframe request to the host.

// ModeRelayed participants publish the tracks a relay connection
// receives from another node (JoinRelayed). It follows the modes of
// whep.go.
const ModeRelayed = ModeWHEP + 1

// ErrNotRelayed is returned by the relay calls on any other participant.
var ErrNotRelayed = errors.New("not a relayed participant")

// relayed is a relayed participant's part of the borrowed connection:
// the receivers of the tracks it publishes.
type relayed struct {
	pc *webrtc.PeerConnection
	// mu guards what follows; no lock is taken while holding it.
	mu        sync.Mutex
	receivers map[*webrtc.TrackRemote]*webrtc.RTPReceiver
	released  bool
}

// NewRelayConnection makes a PeerConnection with the SFU's codecs,
// header extensions and interceptors (NACK, reports, congestion control
// feedback): the receiving end of a relay, whose tracks JoinRelayed
// participants publish. The caller negotiates it and closes it.
//
// It is a full ICE agent on a UDP port of its own (ephemeral, on the
// media port's address when that names one; the public IPs advertised
// too), not on the shared media port: the SFU's agents are ICE-lite,
// and two lite agents never connect; and the media port's mux tells its
// connections apart by the remote address alone, which every relay
// between the same two nodes would share.
func (s *SFU) NewRelayConnection() (*webrtc.PeerConnection, error) {
	cfg := s.cfg
	se := webrtc.SettingEngine{LoggerFactory: pionLogs{log: s.log}}
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	se.SetIncludeLoopbackCandidate(cfg.IncludeLoopback)
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	se.SetSRTPProtectionProfiles(dtls.SRTP_AEAD_AES_128_GCM, dtls.SRTP_AES128_CM_HMAC_SHA1_80)
	if host, _, err := net.SplitHostPort(cfg.UDPAddr); err == nil {
		if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
			se.SetIPFilter(func(a net.IP) bool { return a.Equal(ip) })
		}
	}
	if len(cfg.PublicIPs) > 0 {
		err := se.SetICEAddressRewriteRules(webrtc.ICEAddressRewriteRule{
			External: cfg.PublicIPs, AsCandidateType: webrtc.ICECandidateTypeHost, Mode: webrtc.ICEAddressRewriteAppend,
		})
		if err != nil {
			return nil, fmt.Errorf("sfu: relay public IPs: %w", err)
		}
	}
	setICETimeouts(&se, cfg)
	me := &webrtc.MediaEngine{}
	if err := registerCodecs(me); err != nil {
		return nil, err
	}
	ir, err := s.interceptors(me)
	if err != nil {
		return nil, err
	}
	api := webrtc.NewAPI(webrtc.WithSettingEngine(se), webrtc.WithMediaEngine(me), webrtc.WithInterceptorRegistry(ir))
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return nil, fmt.Errorf("sfu: new relay connection: %w", err)
	}
	// Its send-side estimator is nobody's: a relay sends nothing.
	s.estimators.LoadAndDelete(pc.ID())
	return pc, nil
}

// JoinRelayed adds a participant that publishes, as identity with role,
// tracks received on pc, a relay connection (NewRelayConnection) the
// caller owns: the participant does not negotiate on it, receives
// nothing, and leaves pc open when it leaves. Others see it as they
// would see identity on the node it publishes on. An identity already
// in the room is replaced, as with Join.
func (r *Room) JoinRelayed(identity string, role Role, pc *webrtc.PeerConnection) (*Participant, error) {
	if pc == nil {
		return nil, fmt.Errorf("%w: no relay connection", ErrInvalidState)
	}
	rel := &relayed{pc: pc, receivers: map[*webrtc.TrackRemote]*webrtc.RTPReceiver{}}
	return r.Join(JoinConfig{Identity: identity, Role: role, Sink: discardSink{}, Mode: ModeRelayed, relay: rel})
}

// discardSink drops a relayed participant's events: no client hears them.
type discardSink struct{}

func (discardSink) Deliver(Event) {}

// Relayed reports whether the participant stands for a publisher on
// another node (JoinRelayed).
func (p *Participant) Relayed() bool { return p.relay != nil }

// PublishRelayed publishes track, received on the participant's relay
// connection, as its source src: everyone allowed receives it, as a
// track the participant published itself. A track of a source the
// participant publishes already replaces it.
func (p *Participant) PublishRelayed(track *webrtc.TrackRemote, src Source) (*UpTrack, error) {
	if p.relay == nil {
		return nil, ErrNotRelayed
	}
	if track == nil || !src.Valid() || src.Audio() != (track.Kind() == webrtc.RTPCodecTypeAudio) {
		return nil, fmt.Errorf("%w: a %v track as %q", ErrForbidden, kindOf(track), src)
	}
	if role := p.Role(); !CanPublish(p.room.kind, role, src) {
		return nil, fmt.Errorf("%w: a %s may not publish %s in a %s room", ErrForbidden, role, src, p.room.kind)
	}
	var recv *webrtc.RTPReceiver
	mid := ""
	for _, t := range p.relay.pc.GetTransceivers() {
		if r := t.Receiver(); r != nil && r.Track() == track {
			recv, mid = r, t.Mid()
			break
		}
	}
	if recv == nil {
		return nil, fmt.Errorf("%w: the track is not the relay connection's", ErrInvalidState)
	}
	// Known before the up-track exists: leaving stops it, so that its
	// reader ends.
	if !p.relay.add(track, recv) {
		return nil, ErrClosed
	}
	up, publish := p.pubs.add(track, mid, src, true)
	if up == nil {
		p.relay.stop(track)
		return nil, ErrClosed
	}
	go up.run(&p.left)
	if publish {
		p.room.publish(up)
	}
	return up, nil
}

// UnpublishRelayed ends the participant's track published from track:
// subscribers drop it, and its receiver on the relay connection stops.
func (p *Participant) UnpublishRelayed(track *webrtc.TrackRemote) {
	if p.relay == nil {
		return
	}
	for _, u := range p.Tracks() {
		if u.track == track {
			u.stop()
		}
	}
	p.relay.stop(track)
}

func kindOf(t *webrtc.TrackRemote) string {
	if t == nil {
		return "missing"
	}
	return t.Kind().String()
}

func (r *relayed) add(t *webrtc.TrackRemote, recv *webrtc.RTPReceiver) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.released {
		return false
	}
	r.receivers[t] = recv
	return true
}

// stop stops the receiver of t: its reader's next read fails.
func (r *relayed) stop(t *webrtc.TrackRemote) {
	r.mu.Lock()
	recv := r.receivers[t]
	delete(r.receivers, t)
	r.mu.Unlock()
	if recv != nil {
		_ = recv.Stop()
	}
}

// release is what leaving does to a borrowed connection: the receivers
// of the participant's tracks stop; the connection stays open.
func (r *relayed) release() {
	r.mu.Lock()
	r.released = true
	recvs := r.receivers
	r.receivers = map[*webrtc.TrackRemote]*webrtc.RTPReceiver{}
	r.mu.Unlock()
	for _, recv := range recvs {
		_ = recv.Stop()
	}
}

// connectionFor is the PeerConnection of a participant joining with cfg:
// a new one, or the relay's it borrows.
func (r *Room) connectionFor(cfg JoinConfig) (*webrtc.PeerConnection, error) {
	if cfg.relay != nil {
		return cfg.relay.pc, nil
	}
	return r.sfu.api.NewPeerConnection(webrtc.Configuration{})
}
