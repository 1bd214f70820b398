package sfu

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v4"
)

// Mode is how a participant negotiates.
type Mode int

// The modes.
const (
	// ModeSignaled participants use Vigil's signaling: the server offers
	// them every track they may receive.
	ModeSignaled Mode = iota
	// ModeWHIP participants publish with one offer (RFC 9725) and receive
	// nothing.
	ModeWHIP
	// ModeWHEP participants play: one offer, answered with the room's main
	// audio and video, which follow the publisher without renegotiation.
	ModeWHEP
)

// ErrNoCodec is returned for an offer with no codec Vigil forwards.
var ErrNoCodec = errors.New("no codec the server forwards")

// defaultCodecs are what a player's idle down-tracks carry, by preference.
var defaultCodecs = map[webrtc.RTPCodecType][]webrtc.RTPCodecCapability{
	webrtc.RTPCodecTypeAudio: {{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}},
	webrtc.RTPCodecTypeVideo: {
		{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000},
		{MimeType: webrtc.MimeTypeH264, ClockRate: 90000, SDPFmtpLine: "packetization-mode=1;profile-level-id=42e01f"},
		{MimeType: webrtc.MimeTypeVP9, ClockRate: 90000, SDPFmtpLine: "profile-id=0"},
	},
}

// SDPCodecs lists, for the first audio and first video m-line of an offer
// that receive, the codec names offered (upper case, e.g. "VP8"); a kind
// absent from the map is not received.
func SDPCodecs(d *sdp.SessionDescription, wantDirection func(dir string) bool) map[webrtc.RTPCodecType][]string {
	out := map[webrtc.RTPCodecType][]string{}
	for _, m := range d.MediaDescriptions {
		var kind webrtc.RTPCodecType
		switch m.MediaName.Media {
		case "audio":
			kind = webrtc.RTPCodecTypeAudio
		case "video":
			kind = webrtc.RTPCodecTypeVideo
		default:
			continue
		}
		if _, seen := out[kind]; seen || m.MediaName.Port.Value == 0 || !wantDirection(direction(m)) {
			continue
		}
		names := []string{}
		for _, a := range m.Attributes {
			if a.Key == "rtpmap" {
				if _, enc, ok := strings.Cut(a.Value, " "); ok {
					name, _, _ := strings.Cut(enc, "/")
					names = append(names, strings.ToUpper(name))
				}
			}
		}
		out[kind] = names
	}
	return out
}

func direction(m *sdp.MediaDescription) string {
	dir := "sendrecv"
	for _, a := range m.Attributes {
		switch a.Key {
		case "sendrecv", "sendonly", "recvonly", "inactive":
			dir = a.Key
		}
	}
	return dir
}

func offered(names []string, c webrtc.RTPCodecCapability) bool {
	_, name, _ := strings.Cut(c.MimeType, "/")
	for _, n := range names {
		if strings.EqualFold(n, name) {
			return true
		}
	}
	return false
}

// player is what a WHEP participant plays: one down-track per kind the
// offer receives, set once by Play, carrying the room's main audio and
// video, or a followed publisher's.
type player struct {
	p *Participant

	// mu guards what follows. It is taken alone, or under neg.mu or the
	// participant's mu; no lock is taken while holding it.
	mu     sync.Mutex
	follow string // the publisher to follow, or "" for the room's first
	tracks map[webrtc.RTPCodecType]*DownTrack
}

// Play answers a WHEP offer: one down-track per kind the offer receives,
// carrying the room's main audio and video (follow names the publisher to
// play; empty means the first publisher the role may receive). They
// follow the publisher across republishes without renegotiation. The
// answer is delivered as an AnswerEvent.
func (p *Participant) Play(offer, follow string) error {
	if p.mode != ModeWHEP {
		return fmt.Errorf("%w: not a player", ErrInvalidState)
	}
	return p.player.play(offer, follow)
}

func (pl *player) play(offer, follow string) error {
	p := pl.p
	parsed := &sdp.SessionDescription{}
	if err := parsed.UnmarshalString(offer); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidSDP, err)
	}
	kinds := SDPCodecs(parsed, func(dir string) bool { return dir == "recvonly" || dir == "sendrecv" })
	if len(kinds) == 0 {
		return fmt.Errorf("%w: the offer receives no audio or video", ErrInvalidSDP)
	}
	p.neg.mu.Lock()
	defer p.neg.mu.Unlock()
	if p.isClosed() {
		return ErrClosed
	}
	pl.mu.Lock()
	playing := pl.tracks != nil
	if !playing {
		pl.follow = follow
	}
	pl.mu.Unlock()
	if playing {
		return fmt.Errorf("%w: already playing", ErrInvalidState)
	}
	tracks := map[webrtc.RTPCodecType]*DownTrack{}
	sources := map[webrtc.RTPCodecType]*UpTrack{}
	for kind, names := range kinds {
		up := pl.mainTrack(kind)
		var codec webrtc.RTPCodecCapability
		switch {
		case up != nil && offered(names, up.codec):
			codec = up.codec
		case up != nil:
			return fmt.Errorf("%w: the offer has no %s for %s", ErrNoCodec, up.codec.MimeType, kind)
		default:
			for _, c := range defaultCodecs[kind] {
				if offered(names, c) {
					codec = c
					break
				}
			}
			if codec.MimeType == "" {
				return fmt.Errorf("%w: for %s, offered %v", ErrNoCodec, kind, names)
			}
		}
		d := &DownTrack{id: randomID("TR"), streamID: p.streamID, kind: kind, codec: codec, sub: p, maxLayer: layerDefault}
		tr, err := p.pc.AddTransceiverFromTrack(d, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
		if err != nil {
			return fmt.Errorf("sfu: player track: %w", err)
		}
		d.sender = tr.Sender()
		tracks[kind] = d
		sources[kind] = up
	}
	sdpText, err := p.neg.answerLocked(offer)
	if err != nil {
		return err
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return ErrClosed
	}
	for _, d := range tracks {
		p.downs[d.id] = d
		p.left.Add(1)
		go d.readRTCP(&p.left)
	}
	pl.mu.Lock()
	pl.tracks = tracks
	pl.mu.Unlock()
	p.mu.Unlock()
	for kind, d := range tracks {
		if up := sources[kind]; up != nil {
			d.switchTo(up)
		} else {
			// A track published since we looked went to no one.
			pl.refollow(d)
		}
	}
	p.sink.Deliver(AnswerEvent{SDP: sdpText, Tracks: p.neg.trackMapLocked()})
	return nil
}

// mainTrack picks what the player plays of kind: the followed
// publisher's camera or microphone, or, following no one, the
// earliest-joined publisher the role may receive.
func (pl *player) mainTrack(kind webrtc.RTPCodecType) *UpTrack {
	p := pl.p
	want := SourceCamera
	if kind == webrtc.RTPCodecTypeAudio {
		want = SourceMicrophone
	}
	pl.mu.Lock()
	follow := pl.follow
	pl.mu.Unlock()
	r := p.room
	r.mu.Lock()
	defer r.mu.Unlock()
	var best *UpTrack
	var bestSeq uint64
	for _, o := range r.participants {
		if o == p || !CanReceive(r.kind, p.role, o.role) || (follow != "" && o.identity != follow) {
			continue
		}
		for _, u := range o.Tracks() {
			if u.source == want && (best == nil || o.joinSeq < bestSeq) {
				best, bestSeq = u, o.joinSeq
			}
		}
	}
	return best
}

// offerSource gives the player a newly published track, if one of its
// down-tracks is idle and would play it.
func (pl *player) offerSource(up *UpTrack) {
	pl.mu.Lock()
	d := pl.tracks[up.track.Kind()]
	follow := pl.follow
	pl.mu.Unlock()
	if d == nil || d.source() != nil || !codecMatch(up.codec, d.codec) {
		return
	}
	if follow != "" && up.publisher.identity != follow {
		return
	}
	if main := pl.mainTrack(d.kind); main == up {
		d.switchTo(up)
	}
}

// refollow finds an idle player down-track its next source.
func (pl *player) refollow(d *DownTrack) {
	if pl.p.isClosed() {
		return
	}
	if up := pl.mainTrack(d.kind); up != nil && codecMatch(up.codec, d.codec) {
		d.switchTo(up)
	}
}

// idleFrom makes the down-track idle if from is still its source.
func (d *DownTrack) idleFrom(from *UpTrack) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.up == from {
		d.up = nil
		if d.started {
			d.rebase = true
		}
	}
}

// RestartICE applies an ICE restart asked for by a WHIP or WHEP client
// with new credentials: the current remote offer is re-applied with them,
// and the new answer returned (its ufrag, pwd and candidates are what the
// client needs).
func (p *Participant) RestartICE(ufrag, pwd string) (string, error) {
	return p.neg.restartWith(ufrag, pwd)
}

// RemoteICEUfrag is the client's current ICE username fragment.
func (p *Participant) RemoteICEUfrag() string { return p.neg.remoteUfrag() }
