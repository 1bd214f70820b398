package sfu

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

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

// Play answers a WHEP offer: one down-track per kind the offer receives,
// carrying the room's main audio and video (follow names the publisher to
// play; empty means the first publisher the role may receive). They
// follow the publisher across republishes without renegotiation. The
// answer is delivered as an AnswerEvent.
func (p *Participant) Play(offer, follow string) error {
	if p.mode != ModeWHEP {
		return fmt.Errorf("%w: not a player", ErrInvalidState)
	}
	parsed := &sdp.SessionDescription{}
	if err := parsed.UnmarshalString(offer); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidSDP, err)
	}
	kinds := SDPCodecs(parsed, func(dir string) bool { return dir == "recvonly" || dir == "sendrecv" })
	if len(kinds) == 0 {
		return fmt.Errorf("%w: the offer receives no audio or video", ErrInvalidSDP)
	}
	p.negMu.Lock()
	defer p.negMu.Unlock()
	if p.isClosed() {
		return ErrClosed
	}
	if p.player != nil {
		return fmt.Errorf("%w: already playing", ErrInvalidState)
	}
	p.mu.Lock()
	p.follow = follow
	p.mu.Unlock()
	player := map[webrtc.RTPCodecType]*DownTrack{}
	sources := map[webrtc.RTPCodecType]*UpTrack{}
	for kind, names := range kinds {
		up := p.room.mainTrack(p, kind)
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
		player[kind] = d
		sources[kind] = up
	}
	if err := p.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidSDP, err)
	}
	answer, err := p.pc.CreateAnswer(nil)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidSDP, err)
	}
	sdpText, err := p.setLocalLocked(answer)
	if err != nil {
		return err
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return ErrClosed
	}
	for _, d := range player {
		p.downs[d.id] = d
		p.left.Add(1)
		go d.readRTCP(&p.left)
	}
	p.player = player
	p.mu.Unlock()
	for kind, d := range player {
		if up := sources[kind]; up != nil {
			d.switchTo(up)
		} else {
			// A track published since we looked went to no one.
			p.refollow(d)
		}
	}
	p.sink.Deliver(AnswerEvent{SDP: sdpText, Tracks: p.trackMapLocked()})
	return nil
}

// mainTrack picks what a player of kind plays: the followed publisher's
// camera or microphone, or, following no one, the earliest-joined
// publisher the role may receive.
func (r *Room) mainTrack(p *Participant, kind webrtc.RTPCodecType) *UpTrack {
	want := SourceCamera
	if kind == webrtc.RTPCodecTypeAudio {
		want = SourceMicrophone
	}
	p.mu.Lock()
	follow := p.follow
	p.mu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	var best *UpTrack
	var bestSeq uint64
	for _, o := range r.participants {
		if o == p || !CanReceive(r.kind, p.role, o.role) || (follow != "" && o.identity != follow) {
			continue
		}
		for _, u := range o.upTracks() {
			if u.source == want && (best == nil || o.joinSeq < bestSeq) {
				best, bestSeq = u, o.joinSeq
			}
		}
	}
	return best
}

// offerSource gives a player a newly published track, if one of its
// down-tracks is idle and would play it.
func (p *Participant) offerSource(up *UpTrack) {
	p.mu.Lock()
	d := p.player[up.track.Kind()]
	follow := p.follow
	p.mu.Unlock()
	if d == nil || d.source() != nil || !codecMatch(up.codec, d.codec) {
		return
	}
	if follow != "" && up.publisher.identity != follow {
		return
	}
	if main := p.room.mainTrack(p, d.kind); main == up {
		d.switchTo(up)
	}
}

// refollow finds an idle player down-track its next source.
func (p *Participant) refollow(d *DownTrack) {
	if p.isClosed() {
		return
	}
	if up := p.room.mainTrack(p, d.kind); up != nil && codecMatch(up.codec, d.codec) {
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

var iceCredRE = regexp.MustCompile(`(?m)^a=ice-(ufrag|pwd):.*$`)

// RestartICE applies an ICE restart asked for by a WHIP or WHEP client
// with new credentials: the current remote offer is re-applied with them,
// and the new answer returned (its ufrag, pwd and candidates are what the
// client needs).
func (p *Participant) RestartICE(ufrag, pwd string) (string, error) {
	if ufrag == "" || pwd == "" || strings.ContainsAny(ufrag+pwd, "\r\n") {
		return "", fmt.Errorf("%w: ICE restart needs a ufrag and a pwd", ErrInvalidSDP)
	}
	p.negMu.Lock()
	defer p.negMu.Unlock()
	if p.isClosed() {
		return "", ErrClosed
	}
	cur := p.pc.RemoteDescription()
	if cur == nil || cur.Type != webrtc.SDPTypeOffer {
		return "", fmt.Errorf("%w: no offer to restart", ErrInvalidState)
	}
	next := iceCredRE.ReplaceAllStringFunc(cur.SDP, func(line string) string {
		if strings.HasPrefix(line, "a=ice-ufrag:") {
			return "a=ice-ufrag:" + ufrag
		}
		return "a=ice-pwd:" + pwd
	})
	if err := p.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: next}); err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalidSDP, err)
	}
	answer, err := p.pc.CreateAnswer(nil)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalidSDP, err)
	}
	return p.setLocalLocked(answer)
}

// RemoteICEUfrag is the client's current ICE username fragment.
func (p *Participant) RemoteICEUfrag() string {
	d := p.pc.RemoteDescription()
	if d == nil {
		return ""
	}
	for _, line := range strings.Split(d.SDP, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimRight(line, "\r"), "a=ice-ufrag:"); ok {
			return v
		}
	}
	return ""
}
