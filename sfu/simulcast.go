package sfu

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v4"
)

// Simulcast: a publisher sends one source as several layers (rids), each
// an UpTrack of its own; the first to arrive is the group's primary, the
// one in the roster, subscribed to and unpublished. Each subscriber's
// down-track forwards one layer at a time and switches layers on a
// keyframe of the new layer only, so no picture freezes or corrupts. The
// layer is the one the subscriber asked for, lowered when its bandwidth
// estimate cannot carry it.

// layerGroup holds the layers of one simulcast source.
type layerGroup struct {
	// mu guards what follows; it is taken alone or under the publisher's
	// mu, and no lock is taken while holding it.
	mu      sync.Mutex
	order   []string // rids, low to high, as the offer lists them
	layers  map[string]*UpTrack
	primary *UpTrack
}

// rank is the position of rid in the group's order (unknown rids last).
func (g *layerGroup) rank(rid string) int {
	if i := slices.Index(g.order, rid); i >= 0 {
		return i
	}
	return len(g.order)
}

// present lists the live layers, low to high.
func (g *layerGroup) present() []*UpTrack {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]*UpTrack, 0, len(g.layers))
	for _, u := range g.layers {
		out = append(out, u)
	}
	slices.SortFunc(out, func(a, b *UpTrack) int { return g.rank(a.rid) - g.rank(b.rid) })
	return out
}

func (g *layerGroup) rids() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.order)
}

// parseSimulcast reads, per mid, the rids an offer sends as simulcast, in
// the order of its a=simulcast line (alternatives and paused rids reduced
// to their first, plain id).
func parseSimulcast(d *sdp.SessionDescription) map[string][]string {
	out := map[string][]string{}
	for _, m := range d.MediaDescriptions {
		v, ok := m.Attribute("simulcast")
		if !ok {
			continue
		}
		mid, _ := m.Attribute("mid")
		fields := strings.Fields(v)
		for i := 0; i+1 < len(fields); i += 2 {
			if fields[i] != "send" {
				continue
			}
			for _, alt := range strings.Split(fields[i+1], ";") {
				first, _, _ := strings.Cut(alt, ",")
				if rid := strings.TrimPrefix(first, "~"); rid != "" {
					out[mid] = append(out[mid], rid)
				}
			}
		}
	}
	return out
}

// estimator is what allocation needs of a bandwidth estimate.
type estimator interface{ GetTargetBitrate() int }

// Layer preferences a subscriber may ask for.
const (
	layerDefault = -1 // the role's default
	layerLowest  = 0
	layerHighest = 1 << 10
)

// ParseLayer reads "low", "medium", "high" (or a rid, resolved later).
func parseLayer(s string) (int, bool) {
	switch s {
	case "low":
		return layerLowest, true
	case "medium":
		return 1, true
	case "high":
		return layerHighest, true
	}
	return 0, false
}

// SetLayer sets the highest simulcast layer the participant wants of a
// track it receives: "low", "medium", "high", or one of the track's rids.
// It takes effect at the next keyframe of that layer.
func (p *Participant) SetLayer(trackID, layer string) error {
	p.mu.Lock()
	d := p.downs[trackID]
	p.mu.Unlock()
	if d == nil {
		return fmt.Errorf("%w: not receiving %q", ErrTrackNotFound, trackID)
	}
	want, ok := parseLayer(layer)
	if !ok {
		up := d.source()
		if up == nil || up.group == nil {
			return fmt.Errorf("%w: %q is not a layer of %q", ErrInvalidMessage, layer, trackID)
		}
		i := slices.Index(up.group.rids(), layer)
		if i < 0 {
			return fmt.Errorf("%w: %q is not a layer of %q", ErrInvalidMessage, layer, trackID)
		}
		want = i
	}
	d.mu.Lock()
	d.maxLayer = want
	d.mu.Unlock()
	p.alloc.run()
	return nil
}

// defaultLayer is what a role gets of a simulcast track unless it asks:
// a proctor watches a grid, so the lowest layer; everyone else the
// highest.
func defaultLayer(role Role) int {
	if role == RoleProctor {
		return layerLowest
	}
	return layerHighest
}

const allocateEvery = time.Second

// allocator chooses the simulcast layer of each video track a
// participant receives, within what its connection carries.
type allocator struct {
	p *Participant

	// mu guards bwe. It is taken alone; no lock is taken while holding
	// it.
	mu  sync.Mutex
	bwe estimator // what the connection carries to the client, or nil
}

// loop re-runs the layer allocation every second until the participant
// leaves.
func (a *allocator) loop() {
	p := a.p
	defer p.left.Done()
	t := time.NewTicker(allocateEvery)
	defer t.Stop()
	for {
		select {
		case <-p.quit:
			return
		case <-t.C:
			a.run()
		}
	}
}

// run chooses each simulcast down-track's layer: every one gets its
// lowest layer first, then, in turn, the highest layer up to what it asked
// for that the bandwidth estimate still carries. Other video is paid for
// first. Layers whose bitrate is not known yet cost nothing.
func (a *allocator) run() {
	p := a.p
	p.mu.Lock()
	downs := make([]*DownTrack, 0, len(p.downs))
	for _, d := range p.downs {
		if d.kind == webrtc.RTPCodecTypeVideo {
			downs = append(downs, d)
		}
	}
	role := p.role
	p.mu.Unlock()
	a.mu.Lock()
	bwe := a.bwe
	a.mu.Unlock()
	now := time.Now()
	budget := int64(1) << 62
	if bwe != nil {
		budget = int64(bwe.GetTargetBitrate())
	}
	type choice struct {
		d      *DownTrack
		layers []*UpTrack
		want   int
		pick   int
	}
	var choices []*choice
	for _, d := range downs {
		up := d.source()
		if up == nil {
			continue
		}
		if up.group == nil {
			budget -= int64(up.bitrate.Load())
			continue
		}
		layers := liveLayers(up.group.present(), now)
		if len(layers) == 0 {
			continue
		}
		d.mu.Lock()
		want := d.maxLayer
		d.mu.Unlock()
		if want == layerDefault {
			want = defaultLayer(role)
		}
		want = min(want, len(layers)-1)
		budget -= int64(layers[0].bitrate.Load())
		choices = append(choices, &choice{d: d, layers: layers, want: want})
	}
	for upgraded := true; upgraded; {
		upgraded = false
		for _, c := range choices {
			if c.pick >= c.want {
				continue
			}
			cost := int64(c.layers[c.pick+1].bitrate.Load()) - int64(c.layers[c.pick].bitrate.Load())
			if cost <= budget {
				budget -= cost
				c.pick++
				upgraded = true
			}
		}
	}
	for _, c := range choices {
		c.d.requestLayer(c.layers[c.pick])
	}
}

// layerSilence is how long a simulcast layer may send nothing before the
// allocation stops choosing it.
const layerSilence = 2 * time.Second

// liveLayers drops from ls (lowest first) the layers silent for
// layerSilence: one the publisher's encoder turned off (a browser keeps
// an upper layer off while its estimate is low, or never enables it). A
// subscriber switched to it would wait for a keyframe that never comes.
// If every layer is silent, all are kept.
func liveLayers(ls []*UpTrack, now time.Time) []*UpTrack {
	live := make([]*UpTrack, 0, len(ls))
	for _, l := range ls {
		if now.Sub(l.LastPacket()) < layerSilence {
			live = append(live, l)
		}
	}
	if len(live) == 0 {
		return ls
	}
	return live
}

// requestLayer makes up the layer to forward: at once if nothing is
// forwarded, else from up's next keyframe, until which the current layer
// goes on.
func (d *DownTrack) requestLayer(up *UpTrack) {
	d.mu.Lock()
	if d.up == up || d.pending == up {
		prev := d.pending
		if d.up == up {
			d.pending = nil
		}
		d.mu.Unlock()
		if prev != nil && prev != up {
			prev.removeDown(d)
		}
		return
	}
	if d.up == nil {
		d.mu.Unlock()
		d.switchTo(up)
		return
	}
	prev := d.pending
	d.pending, d.pendingAt = up, time.Now()
	d.mu.Unlock()
	if prev != nil {
		prev.removeDown(d)
	}
	if !up.addDown(d) {
		d.mu.Lock()
		if d.pending == up {
			d.pending = nil
		}
		d.mu.Unlock()
		return
	}
	up.requestKeyframe()
}

// layers lists u and, if it is simulcast, its sibling layers.
func (u *UpTrack) layers() []*UpTrack {
	if u.group == nil {
		return []*UpTrack{u}
	}
	return u.group.present()
}

// recordedLayer is the layer a sink of u records: the highest present
// that is sending (liveLayers). It is chosen once, when the sink is
// added.
func (u *UpTrack) recordedLayer() *UpTrack {
	ls := liveLayers(u.layers(), time.Now())
	if len(ls) == 0 {
		return u
	}
	return ls[len(ls)-1]
}
