package sfu

import (
	"fmt"
	"strings"
	"sync"

	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v4"
)

// publications is what a participant publishes: the sources its offers
// declared, its up-tracks, the simulcast groups of their layers, and the
// sources the server muted.
type publications struct {
	p *Participant

	// mu guards what follows. It is taken alone, or under the room's or
	// the participant's mu (leaving closes it); while holding it one may
	// take an up-track's or a layer group's mu.
	mu        sync.Mutex
	closed    bool                   // the participant is leaving: nothing more is published
	sources   map[string]Source      // mid -> declared source of a client offer
	simulcast map[string][]string    // mid -> rids, low to high, of a client offer
	groups    map[string]*layerGroup // mid -> simulcast layers published
	ups       map[string]*UpTrack    // published, by track id
	// mutedSrc are the sources the server muted (SetMuted): a track
	// published again on a muted source starts muted.
	mutedSrc map[Source]bool
}

func newPublications(p *Participant) publications {
	return publications{
		p: p, sources: map[string]Source{}, simulcast: map[string][]string{},
		groups: map[string]*layerGroup{}, ups: map[string]*UpTrack{},
	}
}

// declare records what an applied client offer declared: the source of
// each mid it sends on, and the simulcast layers of each. What earlier
// offers declared for mids that no longer send is forgotten, so the maps
// never hold more than one offer's sending m-lines (at most MaxTracks).
func (pb *publications) declare(sources map[string]Source, simulcast map[string][]string) {
	pb.mu.Lock()
	defer pb.mu.Unlock()
	pb.sources, pb.simulcast = sources, simulcast
}

// declaredLen is how many mids the kept declarations name, for tests.
func (pb *publications) declaredLen() (sources, simulcast int) {
	pb.mu.Lock()
	defer pb.mu.Unlock()
	return len(pb.sources), len(pb.simulcast)
}

// declared is the source an offer declared for mid.
func (pb *publications) declared(mid string) (Source, bool) {
	pb.mu.Lock()
	defer pb.mu.Unlock()
	src, ok := pb.sources[mid]
	return src, ok
}

// list returns the published up-tracks.
func (pb *publications) list() []*UpTrack {
	pb.mu.Lock()
	defer pb.mu.Unlock()
	out := make([]*UpTrack, 0, len(pb.ups))
	for _, u := range pb.ups {
		out = append(out, u)
	}
	return out
}

// get returns the published up-track with id, or nil.
func (pb *publications) get(id string) *UpTrack {
	pb.mu.Lock()
	defer pb.mu.Unlock()
	return pb.ups[id]
}

// forget drops u, which ended, if it is still published.
func (pb *publications) forget(u *UpTrack) {
	pb.mu.Lock()
	defer pb.mu.Unlock()
	if pb.ups[u.info.ID] == u {
		delete(pb.ups, u.info.ID)
	}
}

// setMuted records that the server muted (or unmuted) src.
func (pb *publications) setMuted(src Source, muted bool) {
	pb.mu.Lock()
	defer pb.mu.Unlock()
	if muted {
		if pb.mutedSrc == nil {
			pb.mutedSrc = map[Source]bool{}
		}
		pb.mutedSrc[src] = true
	} else {
		delete(pb.mutedSrc, src)
	}
}

// close ends publishing, for the participant is leaving, and returns the
// up-tracks published, now no longer listed.
func (pb *publications) close() []*UpTrack {
	pb.mu.Lock()
	defer pb.mu.Unlock()
	pb.closed = true
	ups := make([]*UpTrack, 0, len(pb.ups))
	for _, u := range pb.ups {
		ups = append(ups, u)
	}
	pb.ups = map[string]*UpTrack{}
	return ups
}

// checkOffer enforces the publish policy on a client offer before any of
// it is applied, and returns what the offer declares once applied: the
// source and simulcast layers of each mid it sends on. A source declared
// for a mid the offer does not send on is refused (ErrInvalidSDP): only
// the m-lines of the same SDP are ever kept, never a client's made-up
// keys.
func (pb *publications) checkOffer(d *sdp.SessionDescription, sources map[string]Source) (map[string]Source, map[string][]string, error) {
	p := pb.p
	sending := 0
	declared := map[string]Source{}
	simulcast := parseSimulcast(d)
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
			return nil, nil, fmt.Errorf("%w: an offer may send at most %d tracks", ErrTooManyTracks, p.room.sfu.cfg.MaxTracks)
		}
		mid, _ := m.Attribute("mid")
		src, ok := sources[mid]
		if !ok {
			// Declared by an earlier offer: a renegotiation (an ICE
			// restart) need not declare it again.
			src, ok = pb.declared(mid)
		}
		if !ok {
			return nil, nil, fmt.Errorf("%w: m-line %q sends %s without a declared source", ErrForbidden, mid, kind)
		}
		if !src.Valid() || src.Audio() != (kind == "audio") {
			return nil, nil, fmt.Errorf("%w: m-line %q is %s, not %q", ErrForbidden, mid, kind, src)
		}
		if role := p.Role(); !CanPublish(p.room.kind, role, src) {
			return nil, nil, fmt.Errorf("%w: a %s may not publish %s in a %s room", ErrForbidden, role, src, p.room.kind)
		}
		declared[mid] = src
	}
	for mid := range sources {
		if _, ok := declared[mid]; !ok {
			return nil, nil, fmt.Errorf("%w: sources names mid %.64q, on which the offer sends nothing", ErrInvalidSDP, mid)
		}
	}
	for mid := range simulcast {
		if _, ok := declared[mid]; !ok {
			delete(simulcast, mid) // a receiving m-line's layers are not ours to keep
		}
	}
	return declared, simulcast, nil
}

// onTrack publishes a track the client sends, if its mid was declared
// with a source the role may publish.
func (pb *publications) onTrack(track *webrtc.TrackRemote, recv *webrtc.RTPReceiver) {
	p := pb.p
	mid := ""
	for _, t := range p.pc.GetTransceivers() {
		if t.Receiver() == recv {
			mid = t.Mid()
			break
		}
	}
	src, declared := pb.declared(mid)
	role := p.Role()
	kindOK := src.Audio() == (track.Kind() == webrtc.RTPCodecTypeAudio)
	if !declared || !kindOK || !CanPublish(p.room.kind, role, src) {
		p.log.Warn("ignoring undeclared or forbidden track", "mid", mid, "source", src)
		return
	}
	up, publish := pb.add(track, mid, src, true)
	if up == nil {
		return
	}
	go up.run(&p.left)
	if publish {
		p.room.publish(up)
	}
}

// add makes a new up-track of track (on mid, carrying src) the
// participant's: a simulcast layer joins its source's live group, any
// other replaces the track of the same source. publish tells whether the
// room must be told (a new source, not one more layer). With count, the
// caller starts a reader for it (counted in p.left). It returns nil once
// the participant is leaving.
func (pb *publications) add(track *webrtc.TrackRemote, mid string, src Source, count bool) (up *UpTrack, publish bool) {
	p := pb.p
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
	pb.mu.Lock()
	if pb.closed {
		pb.mu.Unlock()
		return nil, false
	}
	if rid := track.RID(); rid != "" {
		up.rid = rid
		g := pb.groups[mid]
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
			pb.mu.Unlock()
			p.log.Info("simulcast layer published", "track", up.info.ID, "rid", rid)
			return up, false
		}
		g = &layerGroup{order: pb.simulcast[mid], layers: map[string]*UpTrack{rid: up}, primary: up}
		up.group = g
		pb.groups[mid] = g
	}
	for id, u := range pb.ups {
		if u.source == src {
			replaced = append(replaced, u)
			delete(pb.ups, id)
		}
	}
	up.muted.Store(pb.mutedSrc[src])
	pb.ups[up.info.ID] = up
	if count {
		p.left.Add(1)
	}
	pb.mu.Unlock()
	for _, u := range replaced {
		u.stop()
	}
	p.log.Info("track published", "track", up.info.ID, "source", src, "codec", codec.MimeType)
	return up, true
}

// revive publishes again, as a new up-track, a track silenced while the
// connection was lost, whose packets came back. It returns nil if the
// participant is leaving or publishes that source otherwise meanwhile.
func (pb *publications) revive(old *UpTrack) *UpTrack {
	p := pb.p
	pb.mu.Lock()
	for _, u := range pb.ups {
		if u.source == old.source && u.mid != old.mid {
			pb.mu.Unlock()
			return nil
		}
	}
	pb.mu.Unlock()
	up, publish := pb.add(old.track, old.mid, old.source, false)
	if up == nil {
		return nil
	}
	p.log.Info("silent track is back", "old", old.info.ID, "track", up.info.ID)
	if publish {
		p.room.publish(up)
	}
	return up
}
