package recordings

import (
	"errors"
	"fmt"
	"syscall"
	"time"
)

// Limits on what one recording may put on disk, and the free-space guard:
// a recording that reaches a limit stops cleanly (its open file
// finalized and hashed) as failed, with the Reason in its manifest.

// ErrDiskFull refuses a new recording while the recordings' file system
// has less than Config.MinFreeBytes free.
var ErrDiskFull = errors.New("not enough free disk space for recordings")

// Reasons a recording failed (Manifest.Reason).
const (
	ReasonDiskFull   = "disk_full"   // the file system went below MinFreeBytes, or a write found it full
	ReasonSizeCap    = "size_cap"    // the recording reached MaxBytes
	ReasonBitrateCap = "bitrate_cap" // the recording wrote more than MaxBitrate over a window
	ReasonWriteError = "write_error" // any other write error
)

// EventRefused is the Event of a recording that did not start because
// the disk is full: its manifest has no id and no files, only the room,
// identity, group, status failed and reason disk_full.
const EventRefused = "recording.refused"

// bitrateWindow is how long the bitrate cap averages over.
const bitrateWindow = 10 * time.Second

// diskCheckEvery is how often a running recording looks at free space.
const diskCheckEvery = time.Second

// diskLow reports whether free space is under MinFreeBytes, and how much
// is free. An error reading it is logged and treated as enough: the
// write errors still stop a recording on a full disk.
func (m *Manager) diskLow() (bool, uint64) {
	if m.cfg.MinFreeBytes <= 0 {
		return false, 0
	}
	free, err := m.cfg.FreeSpace(m.cfg.Dir)
	if err != nil {
		m.log.Warn("free disk space", "dir", m.cfg.Dir, "err", err)
		return false, 0
	}
	return free < uint64(m.cfg.MinFreeBytes), free
}

// refuse tells that a recording of key did not start: the disk is full.
func (m *Manager) refuse(key recKey, role string, free uint64) {
	m.log.Warn("recording refused: not enough free disk space", "room", key.room.Name(), "participant", key.identity,
		"group", key.group, "free_bytes", free, "min_free_bytes", m.cfg.MinFreeBytes)
	m.emit(EventRefused, &Manifest{
		Version: 1, Room: key.room.Name(), RoomKind: string(key.room.Kind()), Identity: key.identity, Role: role,
		Group: key.group, Sources: []string{}, Codecs: []string{}, Segments: []Segment{},
		Status: StatusFailed, Reason: ReasonDiskFull, StartedAt: m.now().UTC(),
		Error: fmt.Sprintf("%d bytes free, under the %d of min_free_disk", free, m.cfg.MinFreeBytes),
	})
}

// checkLimits stops the recording when it went over a cap, or the disk
// under MinFreeBytes; true when it did.
func (r *recorder) checkLimits(now time.Time) bool {
	if r.failed {
		return true
	}
	cfg := &r.m.cfg
	if cfg.MaxBytes > 0 && r.bytes.Load() > cfg.MaxBytes {
		r.abort(ReasonSizeCap, fmt.Errorf("recording reached %d bytes, over the cap of %d", r.bytes.Load(), cfg.MaxBytes))
		return true
	}
	if cfg.MaxBitrate > 0 {
		if r.windowStart.IsZero() {
			r.windowStart, r.windowBytes = now, r.bytes.Load()
		} else if d := now.Sub(r.windowStart); d >= r.m.bitrateWindow {
			bits := (r.bytes.Load() - r.windowBytes) * 8
			if rate := int64(float64(bits) / d.Seconds()); rate > cfg.MaxBitrate {
				r.abort(ReasonBitrateCap, fmt.Errorf("recording wrote %d bit/s over %v, over the cap of %d", rate, d.Round(time.Millisecond), cfg.MaxBitrate))
				return true
			}
			r.windowStart, r.windowBytes = now, r.bytes.Load()
		}
	}
	if cfg.MinFreeBytes > 0 && now.Sub(r.diskChecked) >= diskCheckEvery {
		r.diskChecked = now
		if low, free := r.m.diskLow(); low {
			r.abort(ReasonDiskFull, fmt.Errorf("%d bytes free on the recordings' disk, under the %d of min_free_disk", free, cfg.MinFreeBytes))
			return true
		}
	}
	return false
}

// abort stops the recording as failed for reason: the open file is
// finalized (it plays, with its duration and cues) and hashed first, so
// nothing is left half-written without the manifest saying so.
func (r *recorder) abort(reason string, err error) {
	if r.failed {
		return
	}
	if r.seg != nil {
		r.endSegment() // on a write error, fails with that error instead
	}
	r.failWith(reason, err)
}

// reasonOf classifies a write error.
func reasonOf(err error) string {
	if errors.Is(err, syscall.ENOSPC) || isQuota(err) {
		return ReasonDiskFull
	}
	return ReasonWriteError
}
