package recordings

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/vigil-media/vigil/sfu"
)

// Segments: the files of one recording. The writer goroutine opens one
// when its tracks are ready, binds tracks to it, writes their frames, and
// ends it when a track it cannot hold arrives or the recording stops.

// segState is the open segment file.
type segState struct {
	index   int
	name    string
	mux     *muxer
	base    time.Time
	tracks  []muxTrack
	bound   map[uint64]*trackState
	last    time.Time // arrival of the last packet written
	opened  time.Time // when the open cluster got its first block
	pending bool
}

// pump opens a segment when the tracks are ready, binds tracks to it,
// and writes their frames. A track the open file cannot hold (a camera
// that comes after the microphone, a new codec) starts a new segment at
// its first frame, once its clock mapping has settled; meanwhile the open
// file takes only what comes before that frame, so the two segments
// neither overlap nor leave a hole.
func (r *recorder) pump() {
	if r.failed {
		return
	}
	if r.seg == nil {
		if !r.startable() {
			return
		}
		r.openSegment()
		if r.failed || r.seg == nil {
			return
		}
	}
	now := r.m.now()
	var cut time.Time
	roll := false
	for _, t := range r.tracks {
		if len(t.pending) == 0 || t.bound != 0 || r.bind(t) {
			continue
		}
		if r.fits(t) {
			t.pending = nil // another live track holds this kind
			continue
		}
		if t.s.kind == "video" {
			for len(t.pending) > 0 && !t.pending[0].key {
				t.pending = t.pending[1:]
			}
			if len(t.pending) == 0 {
				t.asm.needKey = true
				continue
			}
		}
		if w := t.pending[0].wall(); cut.IsZero() || w.Before(cut) {
			cut = w
		}
		roll = roll || r.forcing || now.Sub(t.pending[0].first) >= holdBack
	}
	for _, t := range r.tracks {
		r.writePending(t, roll, cut)
		if r.failed {
			return
		}
	}
	if roll {
		r.endSegment()
		if !r.failed {
			r.openSegment()
		}
	}
}

// startable reports whether a segment should open: every live track has a
// frame (video: a keyframe) and the group is complete, or the settle time
// has passed and some track is ready.
func (r *recorder) startable() bool {
	if len(r.tracks) == 0 {
		return false
	}
	all, any := true, false
	var cam, mic bool
	for _, t := range r.tracks {
		if t.hasFmt {
			any = true
		} else {
			all = false
		}
		cam = cam || t.s.source == sfu.SourceCamera
		mic = mic || t.s.source == sfu.SourceMicrophone
	}
	if any && r.forcing {
		return true
	}
	// Wait until the first frames have been held back, so that the
	// segment's start time rests on a settled clock mapping.
	now := r.m.now()
	for _, t := range r.tracks {
		if len(t.pending) > 0 && now.Sub(t.pending[0].first) < holdBack {
			return false
		}
	}
	complete := r.key.group == GroupScreen || (cam && mic)
	if all && complete {
		return true
	}
	return any && now.Sub(r.firstAttach) >= r.m.cfg.SettleTimeout
}

// bind attaches t to a free track of the open file with its kind and codec.
func (r *recorder) bind(t *trackState) bool {
	for _, mt := range r.seg.tracks {
		if mt.Kind == t.s.kind && mt.Codec == t.s.codec && r.seg.bound[mt.Number] == nil {
			r.seg.bound[mt.Number] = t
			t.bound, t.keyed = mt.Number, false
			return true
		}
	}
	return false
}

// fits reports whether the open file has a track of t's kind that another
// live track holds (so t must wait rather than start a new file).
func (r *recorder) fits(t *trackState) bool {
	for _, mt := range r.seg.tracks {
		if mt.Kind == t.s.kind && r.seg.bound[mt.Number] != nil {
			return true
		}
	}
	return false
}

// openSegment starts a new file with every track whose format is known.
func (r *recorder) openSegment() {
	var ready []*trackState
	var kinds = map[string]bool{}
	base := time.Time{}
	// Newest first, so a replacement track wins over the one it replaces.
	for i := len(r.tracks) - 1; i >= 0; i-- {
		t := r.tracks[i]
		if !t.hasFmt || kinds[t.s.kind] {
			continue
		}
		kinds[t.s.kind] = true
		ready = append(ready, t)
	}
	if len(ready) == 0 {
		return
	}
	// A file's video starts at a keyframe: after a roll, the frames of a
	// running video track wait for the next one, which is asked for.
	for _, t := range ready {
		if t.s.kind != "video" {
			continue
		}
		for len(t.pending) > 0 && !t.pending[0].key {
			t.pending = t.pending[1:]
		}
		if len(t.pending) == 0 {
			t.asm.needKey = true
			t.kfAsked = r.m.now()
			t.s.up.RequestKeyframe()
		}
	}
	for _, t := range ready {
		if len(t.pending) > 0 {
			if w := t.pending[0].wall(); base.IsZero() || w.Before(base) {
				base = w
			}
		}
	}
	if base.IsZero() {
		base = r.m.now()
	}
	index := len(r.man.Segments) + 1
	container, ext := "webm", "webm"
	var tracks []muxTrack
	var metas []TrackMeta
	// Audio first (WebM muxing guidelines), then video.
	for _, kind := range []string{"audio", "video"} {
		for _, t := range ready {
			if t.s.kind != kind {
				continue
			}
			mt := muxTrack{Number: uint64(len(tracks) + 1), Kind: kind, Codec: t.s.codec}
			switch {
			case kind == "audio":
				mt.Channels = t.s.channels
				mt.Private = opusHead(t.s.channels)
			case t.s.codec == codecH264:
				mt.Private = avcDecoderConfig(t.sps, t.pps)
				container, ext = "matroska", "mkv"
			}
			mt.Width, mt.Height = t.width, t.height
			if kind == "video" && (mt.Width == 0 || mt.Height == 0) {
				mt.Width, mt.Height = 640, 480 // not in the keyframe; decoders use the stream's
			}
			tracks = append(tracks, mt)
			metas = append(metas, TrackMeta{Source: string(t.s.source), Kind: kind, Codec: t.s.codec, Width: t.width, Height: t.height, TrackID: t.s.trackID})
		}
	}
	name := fmt.Sprintf("%s-%03d.%s", r.key.group, index, ext)
	seg := Segment{
		Index: index, File: name, Container: container, Tracks: metas,
		Status: StatusRecording, StartedAt: base.UTC(),
	}
	if !r.lastEnd.IsZero() {
		// Negative when the new segment begins before the last one ended:
		// a late track's first frames, delayed on their way here.
		seg.GapMs = base.Sub(r.lastEnd).Milliseconds()
	}
	if index == 1 {
		r.man.StartedAt = base.UTC()
	}
	r.man.Segments = append(r.man.Segments, seg)
	r.man.Status = StatusRecording
	// The manifest names the file before the file exists: a crash between
	// the two leaves a listed file that is missing, which the index drops.
	if err := r.saveManifest(); err != nil {
		r.fail(err)
		return
	}
	fw, err := r.m.cfg.openFile(filepath.Join(r.dir, name))
	if err != nil {
		r.fail(fmt.Errorf("create %s: %w", name, err))
		return
	}
	w := countingFile{fw, &r.m.written, &r.bytes}
	mux, err := newMuxer(w, container, tracks, base)
	if err != nil {
		_ = w.Close()
		r.fail(fmt.Errorf("write %s: %w", name, err))
		return
	}
	r.seg = &segState{index: index, name: name, mux: mux, base: base, tracks: tracks, bound: map[uint64]*trackState{}}
	for _, t := range ready {
		r.bind(t)
	}
	r.log.Info("recording segment started", "file", name, "tracks", len(tracks), "gap_ms", seg.GapMs)
	if index == 1 {
		r.m.emit(EventStarted, r.man)
	}
}

// writePending writes a bound track's frames to the open file: those
// that have waited holdBack, or all of them, but none from before (if set).
func (r *recorder) writePending(t *trackState, all bool, before time.Time) {
	seg := r.seg
	if seg == nil || t.bound == 0 {
		return
	}
	now := r.m.now()
	n := 0
	for _, f := range t.pending {
		if !all && now.Sub(f.first) < holdBack {
			break
		}
		if !before.IsZero() && !f.wall().Before(before) {
			break
		}
		n++
		video := t.s.kind == "video"
		if video && !t.keyed && !f.key {
			continue // a file's video starts at a keyframe
		}
		ms := f.wall().Sub(seg.base).Milliseconds()
		if ms < 0 {
			if ms < -500 {
				// From before this file. Video after a dropped frame
				// waits for the next keyframe.
				t.keyed = t.keyed && !video
				continue
			}
			ms = 0
		}
		if video && f.key {
			t.keyed = true
		}
		if !seg.mux.pending() {
			seg.opened = r.m.now()
		}
		if err := seg.mux.writeBlock(t.bound, ms, f.key, f.data); err != nil {
			t.pending = nil
			r.fail(err)
			return
		}
		seg.pending = seg.mux.pending()
		if f.arrival.After(seg.last) {
			seg.last = f.arrival
		}
	}
	t.pending = t.pending[n:]
	if len(t.pending) == 0 {
		t.pending = nil
	}
}

// endSegment finalizes the open file (Cues, Duration) and seals it with
// its SHA-256 in the manifest.
func (r *recorder) endSegment() {
	seg := r.seg
	r.seg = nil
	for _, t := range r.tracks {
		t.bound = 0
	}
	if seg == nil {
		return
	}
	if err := seg.mux.finalize(); err != nil {
		r.fail(fmt.Errorf("finalize %s: %w", seg.name, err))
		return
	}
	s := &r.man.Segments[len(r.man.Segments)-1]
	end := seg.last
	if end.IsZero() {
		end = seg.base
	}
	endUTC := end.UTC()
	s.Status, s.Finalized, s.EndedAt = StatusComplete, true, &endUTC
	s.DurationMs = seg.mux.duration().Milliseconds()
	sum, n, err := hashFile(filepath.Join(r.dir, seg.name))
	if err != nil {
		r.fail(fmt.Errorf("hash %s: %w", seg.name, err))
		return
	}
	s.SHA256, s.Bytes = sum, n
	r.man.EndedAt = &endUTC
	r.lastEnd = end
	r.saveOrFail()
	r.log.Info("recording segment finalized", "file", seg.name, "duration_ms", s.DurationMs, "bytes", n)
}

// openFile creates a segment file, 0600, never over an existing one.
func openFile(path string) (fileWriter, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
}
