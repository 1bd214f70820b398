package recordings

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/rtp"
	"github.com/vigil-media/vigil/sfu"
)

// Groups: what goes into one file.
const (
	GroupAV     = "av"     // camera and microphone, A/V-synchronized
	GroupScreen = "screen" // screen share
)

func groupOf(src sfu.Source) string {
	if src == sfu.SourceScreen {
		return GroupScreen
	}
	return GroupAV
}

// sink is attached to one up-track. WritePacket runs on the track's reader
// goroutine: it copies the packet into the recorder's bounded queue, or
// drops it and counts, and never blocks.
type sink struct {
	r        *recorder
	up       *sfu.UpTrack
	source   sfu.Source
	kind     string // "audio" or "video"
	codec    string
	clock    uint32
	channels int
	trackID  string
	closed   atomic.Bool
	once     sync.Once

	gone bool // writer-owned: the track has ended and was drained
}

type item struct {
	s *sink
	p packet
}

func newSink(r *recorder, up *sfu.UpTrack) *sink {
	c := up.Codec()
	info := up.Info()
	s := &sink{r: r, up: up, source: up.Source(), clock: c.ClockRate, channels: int(c.Channels), trackID: info.ID}
	s.codec = strings.ToLower(c.MimeType[strings.IndexByte(c.MimeType, '/')+1:])
	s.kind = "video"
	if s.source.Audio() {
		s.kind = "audio"
	}
	if s.channels == 0 {
		s.channels = 2
	}
	return s
}

// WritePacket implements sfu.PacketSink.
func (s *sink) WritePacket(pkt *rtp.Packet, _ bool) {
	if s.closed.Load() || len(pkt.Payload) == 0 {
		return
	}
	q := s.r.data
	if len(q) == cap(q) { // full: drop before copying anything
		s.r.dropped.Add(1)
		return
	}
	it := item{s: s, p: packet{
		seq: pkt.SequenceNumber, ts: pkt.Timestamp, marker: pkt.Marker,
		payload: append([]byte(nil), pkt.Payload...), at: s.r.m.now(),
	}}
	select {
	case q <- it:
	default:
		s.r.dropped.Add(1)
	}
}

// Close implements sfu.PacketSink: the track ended or the sink was removed.
func (s *sink) Close() {
	s.once.Do(func() {
		s.closed.Store(true)
		s.r.post(ctlMsg{kind: ctlEnded, s: s})
	})
}

type ctlKind int

const (
	ctlAttach ctlKind = iota
	ctlEnded
	ctlStop
)

type ctlMsg struct {
	kind ctlKind
	s    *sink
}

// trackState is the writer's view of one attached track.
type trackState struct {
	s       *sink
	asm     *assembler
	pending []frame
	bound   uint64 // track number in the open segment, 0 if none
	keyed   bool   // video: a keyframe has been written to the open segment
	kfAsked time.Time

	// The format, known from the first frame (video: the latest keyframe).
	hasFmt        bool
	width, height int
	sps, pps      []byte
}

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

const maxPendingFrames = 4096

// recorder writes one recording. Everything but post and the sinks runs
// on its one writer goroutine, which owns the files and the manifest.
type recorder struct {
	m       *Manager
	key     recKey
	id      string
	dir     string
	log     *slog.Logger
	data    chan item
	dropped atomic.Uint64
	done    chan struct{}

	ctlMu   sync.Mutex
	ctl     []ctlMsg
	retired bool
	wake    chan struct{}

	// writer-owned
	man         *Manifest
	tracks      []*trackState
	seg         *segState
	firstAttach time.Time
	graceUntil  time.Time
	lastEnd     time.Time // when the previous segment ended
	failed      bool
	forcing     bool // the tracks are ending: start a segment with what there is
}

// post queues a control message; false once the recorder has retired.
func (r *recorder) post(c ctlMsg) bool {
	r.ctlMu.Lock()
	if r.retired {
		r.ctlMu.Unlock()
		return false
	}
	r.ctl = append(r.ctl, c)
	r.ctlMu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
	return true
}

// retire stops accepting control messages. Unless force is set, it fails
// when messages are waiting (a track arrived in time).
func (r *recorder) retire(force bool) ([]ctlMsg, bool) {
	r.ctlMu.Lock()
	defer r.ctlMu.Unlock()
	if !force && len(r.ctl) > 0 {
		return nil, false
	}
	r.retired = true
	rest := r.ctl
	r.ctl = nil
	return rest, true
}

func (r *recorder) run() {
	defer r.m.wg.Done()
	defer close(r.done)
	if err := os.Mkdir(r.dir, 0o700); err != nil {
		r.fail(fmt.Errorf("create recording directory: %w", err))
		return
	}
	if err := r.saveManifest(); err != nil {
		r.fail(err)
		return
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for !r.failed {
		select {
		case it := <-r.data:
			r.onPacket(it)
		case <-r.wake:
			if r.onControl() {
				return
			}
		case <-tick.C:
			if r.onTick() {
				return
			}
		}
	}
}

// saveManifest writes the manifest and publishes a copy to the index.
func (r *recorder) saveManifest() error {
	r.man.DroppedPackets = r.dropped.Load()
	r.man.totals()
	r.m.publish(r.id, r.man.clone())
	return writeManifest(r.dir, r.man)
}

func (r *recorder) trackFor(s *sink) *trackState {
	for _, t := range r.tracks {
		if t.s == s {
			return t
		}
	}
	if s.gone {
		return nil
	}
	t := &trackState{s: s, asm: newAssembler(s.codec, s.kind == "video", s.clock)}
	r.tracks = append(r.tracks, t)
	if r.firstAttach.IsZero() {
		r.firstAttach = r.m.now()
	}
	r.graceUntil = time.Time{}
	return t
}

func (r *recorder) onPacket(it item) {
	t := r.trackFor(it.s)
	if t == nil {
		return
	}
	t.asm.push(&it.p, r.m.now())
	r.collect(t)
	r.pump()
}

// collect moves assembled frames to the track's pending list.
func (r *recorder) collect(t *trackState) {
	fs := t.asm.take()
	if len(fs) == 0 {
		return
	}
	if t.s.codec == codecH264 && t.sps == nil {
		// A file's H.264 track needs the parameter sets of its first
		// keyframe; wait for a keyframe that carries them.
		for len(fs) > 0 && (fs[0].sps == nil || fs[0].pps == nil) {
			fs = fs[1:]
			t.asm.needKey = true
		}
	}
	for _, f := range fs {
		if !t.hasFmt || (f.key && f.width > 0) {
			t.hasFmt = true
			if f.width > 0 {
				t.width, t.height = f.width, f.high
			}
			if f.sps != nil && f.pps != nil {
				t.sps, t.pps = f.sps, f.pps
			}
		}
	}
	t.pending = append(t.pending, fs...)
	if n := len(t.pending) - maxPendingFrames; n > 0 {
		t.pending = t.pending[n:]
	}
}

// onControl handles queued control messages; true when the recorder is done.
func (r *recorder) onControl() bool {
	r.ctlMu.Lock()
	msgs := r.ctl
	r.ctl = nil
	r.ctlMu.Unlock()
	for _, c := range msgs {
		switch c.kind {
		case ctlAttach:
			r.trackFor(c.s)
		case ctlEnded:
			r.drainData()
			r.endTrack(c.s)
			if r.failed {
				return true
			}
		case ctlStop:
			r.stop()
			return true
		}
	}
	r.pump()
	return r.failed
}

// drainData handles the packets already queued: those of a track that
// ended were queued before its end was posted.
func (r *recorder) drainData() {
	for i := cap(r.data); i > 0; i-- {
		select {
		case it := <-r.data:
			r.onPacket(it)
		default:
			return
		}
	}
}

// endTrack writes what is left of a track that ended. The segment ends
// when its last track does; the recording then waits for the participant
// to come back.
func (r *recorder) endTrack(s *sink) {
	s.gone = true
	r.m.forgetSink(s)
	idx := -1
	for i, t := range r.tracks {
		if t.s == s {
			idx = i
		}
	}
	if idx < 0 {
		return
	}
	t := r.tracks[idx]
	t.asm.flush()
	r.collect(t)
	r.forcing = len(r.tracks) == 1
	r.pump()
	r.forcing = false
	if r.seg != nil && t.bound != 0 {
		r.writePending(t, true, time.Time{})
		delete(r.seg.bound, t.bound)
	}
	// Pumping may have changed r.tracks (a write failure drops them all):
	// find t again.
	r.tracks = slices.DeleteFunc(r.tracks, func(o *trackState) bool { return o == t })
	if len(r.tracks) > 0 || r.failed {
		return
	}
	if r.seg != nil {
		r.endSegment()
	}
	if r.failed {
		return
	}
	r.graceUntil = r.m.now().Add(r.m.cfg.ReconnectGrace)
	r.firstAttach = time.Time{}
	if len(r.man.Segments) > 0 {
		r.man.Status = StatusPaused
		r.saveOrFail()
	}
}

// onTick releases frames held behind gaps, flushes a cluster that has
// been open for a second, asks for keyframes, and ends the wait for a
// reconnect. True when the recorder is done.
func (r *recorder) onTick() bool {
	now := r.m.now()
	for _, t := range r.tracks {
		t.asm.drain(now, false)
		r.collect(t)
		if t.asm.video && t.asm.needKey && now.Sub(t.kfAsked) >= time.Second {
			t.kfAsked = now
			t.s.up.RequestKeyframe()
		}
	}
	r.pump()
	if r.failed {
		return true
	}
	if r.seg != nil && r.seg.pending && now.Sub(r.seg.opened) >= time.Second {
		if err := r.seg.mux.flush(); err != nil {
			r.fail(err)
			return true
		}
		r.seg.pending = false
	}
	if len(r.tracks) == 0 && !r.graceUntil.IsZero() && !now.Before(r.graceUntil) {
		if rest, ok := r.retire(false); ok {
			r.detach(rest)
			r.complete()
			return true
		}
	}
	return false
}

// stop ends the recording now: every sink detached, every file finalized.
func (r *recorder) stop() {
	rest, _ := r.retire(true)
	r.detach(rest)
	for _, t := range r.tracks {
		t.s.closed.Store(true)
		t.s.up.RemoveSink(t.s)
	}
	r.drainData()
	for _, t := range r.tracks {
		t.asm.flush()
		r.collect(t)
	}
	r.forcing = true
	r.pump()
	r.forcing = false
	if r.seg != nil {
		for _, t := range r.tracks {
			r.writePending(t, true, time.Time{})
		}
		r.endSegment()
	}
	for _, t := range r.tracks {
		t.s.gone = true
		r.m.forgetSink(t.s)
	}
	r.tracks = nil
	if !r.failed {
		r.complete()
	}
}

// detach removes sinks whose attachment arrived after retirement.
func (r *recorder) detach(msgs []ctlMsg) {
	for _, c := range msgs {
		if c.kind == ctlAttach {
			c.s.closed.Store(true)
			c.s.up.RemoveSink(c.s)
			c.s.gone = true
			r.m.forgetSink(c.s)
		}
	}
}

// complete marks the recording finished and takes it out of the active set.
func (r *recorder) complete() {
	r.man.DroppedPackets = r.dropped.Load()
	if len(r.man.Segments) == 0 {
		// Nothing was ever recorded: no recording.
		r.m.discard(r)
		if err := os.RemoveAll(r.dir); err != nil {
			r.log.Warn("remove empty recording", "err", err)
		}
		return
	}
	r.man.Status = StatusComplete
	if last := r.man.Segments[len(r.man.Segments)-1].EndedAt; last != nil {
		t := *last
		r.man.EndedAt = &t
	}
	if err := r.saveManifest(); err != nil {
		r.log.Error("recording manifest", "err", err)
	}
	r.m.finished(r)
	r.m.emit(EventCompleted, r.man)
	r.log.Info("recording complete", "segments", len(r.man.Segments), "duration_ms", r.man.DurationMs, "bytes", r.man.Bytes)
}

// fail stops the recording on an error: logged, marked failed in the
// manifest, its sinks detached. The media path is not touched.
func (r *recorder) fail(err error) {
	if r.failed {
		return
	}
	r.failed = true
	r.log.Error("recording failed", "err", err)
	rest, _ := r.retire(true)
	r.detach(rest)
	for _, t := range r.tracks {
		t.s.closed.Store(true)
		t.s.up.RemoveSink(t.s)
		t.s.gone = true
		r.m.forgetSink(t.s)
	}
	r.tracks = nil
	now := r.m.now().UTC()
	if r.seg != nil {
		seg := r.seg
		r.seg = nil
		_ = seg.mux.w.Close()
		s := &r.man.Segments[len(r.man.Segments)-1]
		s.Status, s.EndedAt, s.DurationMs = StatusFailed, &now, seg.mux.duration().Milliseconds()
		if sum, n, herr := hashFile(filepath.Join(r.dir, seg.name)); herr == nil {
			s.SHA256, s.Bytes = sum, n
		}
	}
	r.man.Status, r.man.Error, r.man.EndedAt = StatusFailed, err.Error(), &now
	if werr := r.saveManifest(); werr != nil {
		r.log.Error("recording manifest", "err", werr)
	}
	r.m.finished(r)
	r.m.failures.Add(1)
	r.m.emit(EventFailed, r.man)
}

func (r *recorder) saveOrFail() {
	if err := r.saveManifest(); err != nil {
		r.fail(err)
	}
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
	w := countingFile{fw, &r.m.written}
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
