package recordings

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

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

	// ctlMu guards ctl and retired; taken alone or under the Manager's
	// mu, and no lock is taken while holding it.
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

	// Limits (disk.go), writer-owned but bytes, which countingFile adds to.
	bytes       atomic.Int64 // written to this recording's files
	windowStart time.Time    // of the bitrate window
	windowBytes int64        // bytes at windowStart
	diskChecked time.Time
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
	now := r.m.now()
	t.asm.push(&it.p, now)
	r.collect(t)
	r.pump()
	if r.m.cfg.MaxBytes > 0 && !r.failed {
		r.checkLimits(now)
	}
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
	if r.failed || r.checkLimits(now) {
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

// fail stops the recording on a write error: logged, marked failed in
// the manifest with the reason (disk_full or write_error), its sinks
// detached. The media path is not touched.
func (r *recorder) fail(err error) { r.failWith(reasonOf(err), err) }

// failWith stops the recording as failed for reason.
func (r *recorder) failWith(reason string, err error) {
	if r.failed {
		return
	}
	r.failed = true
	r.log.Error("recording failed", "reason", reason, "err", err)
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
	r.man.Status, r.man.Error, r.man.Reason, r.man.EndedAt = StatusFailed, err.Error(), reason, &now
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
