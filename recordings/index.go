package recordings

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// The index: every recording under Config.Dir by id, rebuilt from the
// manifests at start, and what reads it (List, Get, Inspect, Open,
// OffsetFor), checks it (Verify) and prunes it (Delete, Sweep).

// rebuild reads every manifest under Dir.
func (m *Manager) rebuild() error {
	entries, err := os.ReadDir(m.cfg.Dir)
	if err != nil {
		return fmt.Errorf("recordings: %w", err)
	}
	for _, e := range entries {
		if !e.IsDir() || !ValidID(e.Name()) {
			continue
		}
		dir := filepath.Join(m.cfg.Dir, e.Name())
		man, err := readManifest(dir)
		if err != nil {
			m.log.Warn("skipping recording with an unreadable manifest", "dir", dir, "err", err)
			continue
		}
		if man.Status == StatusRecording || man.Status == StatusPaused {
			m.seal(dir, man)
		}
		m.index[man.ID] = &entry{man: man}
	}
	m.log.Info("recordings index rebuilt", "recordings", len(m.index))
	return nil
}

// seal marks a recording cut short by a crash as interrupted. A file
// still open then was never hashed by the server, and whatever is in it
// now may have been written by anyone while the server was down: it is
// marked unverified with its size and modification time, not hashed (a
// hash would vouch for content the server cannot account for).
func (m *Manager) seal(dir string, man *Manifest) {
	segs := man.Segments[:0]
	for _, s := range man.Segments {
		if s.SHA256 == "" {
			path := filepath.Join(dir, s.File)
			fi, err := os.Lstat(path)
			if err != nil || !fi.Mode().IsRegular() {
				continue // listed before it was created: nothing was written
			}
			end := fi.ModTime().UTC()
			s.Bytes, s.EndedAt, s.Status, s.Unverified = fi.Size(), &end, StatusInterrupted, true
			s.DurationMs = max(0, end.Sub(s.StartedAt).Milliseconds())
		}
		segs = append(segs, s)
	}
	man.Segments = segs
	man.Status = StatusInterrupted
	if n := len(segs); n > 0 {
		man.EndedAt = segs[n-1].EndedAt
	}
	man.totals()
	if err := writeManifest(dir, man); err != nil {
		m.log.Warn("rewrite interrupted manifest", "dir", dir, "err", err)
	}
	m.log.Warn("recording was interrupted by a crash; its open file is unverified", "recording", man.ID, "room", man.Room, "participant", man.Identity)
}

// Filter selects recordings; empty fields match everything.
type Filter struct {
	Room string
	// Instance selects the recordings of one instance of the room
	// (sfu.Room.Instance).
	Instance string
	Identity string
}

// List returns the recordings matching f, oldest first.
func (m *Manager) List(f Filter) []Manifest {
	m.mu.Lock()
	out := []Manifest{}
	for _, e := range m.index {
		if (f.Room == "" || e.man.Room == f.Room) && (f.Instance == "" || e.man.Instance == f.Instance) &&
			(f.Identity == "" || e.man.Identity == f.Identity) {
			out = append(out, *e.man.clone())
		}
	}
	m.mu.Unlock()
	sortManifests(out)
	return out
}

func sortManifests(ms []Manifest) {
	sort.Slice(ms, func(i, j int) bool {
		if !ms[i].StartedAt.Equal(ms[j].StartedAt) {
			return ms[i].StartedAt.Before(ms[j].StartedAt)
		}
		return ms[i].ID < ms[j].ID
	})
}

// Get returns a recording's manifest.
func (m *Manager) Get(id string) (Manifest, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.index[id]
	if e == nil {
		return Manifest{}, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	return *e.man.clone(), nil
}

// OffsetFor places the moment at in the recording of identity's camera
// and microphone (group av; the screen's when there is none) in that
// instance of room: the recording, the segment file being written then
// and at's position in it. While a recording is paused (the participant dropped), a moment
// after its last file ended is placed at that file's end. ok is false
// when no recording of them was under way at at.
func (m *Manager) OffsetFor(room, instance, identity string, at time.Time) (recordingID, file string, offset time.Duration, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var best *Segment
	var bestMan *Manifest
	for _, e := range m.index {
		man := e.man
		if man.Room != room || man.Instance != instance || man.Identity != identity {
			continue
		}
		for i := range man.Segments {
			s := &man.Segments[i]
			live := (man.Status == StatusRecording || man.Status == StatusPaused) && i == len(man.Segments)-1
			if s.StartedAt.After(at) || (s.EndedAt != nil && at.After(*s.EndedAt) && !live) {
				continue // after at, or ended before it in a recording that is over
			}
			// Prefer the av group, then the latest segment begun before at.
			better := best == nil ||
				(man.Group == GroupAV && bestMan.Group != GroupAV) ||
				(man.Group == bestMan.Group && s.StartedAt.After(best.StartedAt))
			if better {
				best, bestMan = s, man
			}
		}
	}
	if best == nil {
		return "", "", 0, false
	}
	offset = at.Sub(best.StartedAt)
	if best.EndedAt != nil && at.After(*best.EndedAt) {
		offset = best.EndedAt.Sub(best.StartedAt)
	}
	return bestMan.ID, best.File, offset, true
}

// Inspect returns a recording's manifest with each file verified against
// its SHA-256 now (Verified and Check set on each segment).
func (m *Manager) Inspect(id string) (Manifest, error) {
	man, err := m.Get(id)
	if err != nil {
		return man, err
	}
	checks, err := m.Verify(id)
	if err != nil {
		return man, err
	}
	for i := range man.Segments {
		for _, c := range checks {
			if c.File == man.Segments[i].File {
				ok := c.Result == CheckOK
				man.Segments[i].Verified, man.Segments[i].Check = &ok, c.Result
			}
		}
	}
	return man, nil
}

// Verify hashes each finished file of a recording and compares it with
// the manifest. Hashes are cached by file size, modification time and
// inode change time.
func (m *Manager) Verify(id string) ([]FileCheck, error) {
	man, err := m.Get(id)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(m.cfg.Dir, id)
	out := make([]FileCheck, 0, len(man.Segments))
	for _, s := range man.Segments {
		out = append(out, checkSegment(dir, id, s, m.cachedHash))
	}
	return out, nil
}

func (m *Manager) cachedHash(path string) (string, int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", 0, err
	}
	m.hashMu.Lock()
	h, ok := m.hashes[path]
	m.hashMu.Unlock()
	if ok && h.size == fi.Size() && h.mtime.Equal(fi.ModTime()) && h.ctime.Equal(changeTime(fi)) {
		return h.sum, h.size, nil
	}
	sum, n, err := hashFile(path)
	if err != nil {
		return "", 0, err
	}
	m.hashMu.Lock()
	m.hashes[path] = hashEntry{size: fi.Size(), mtime: fi.ModTime(), ctime: changeTime(fi), sum: sum}
	m.hashMu.Unlock()
	return sum, n, nil
}

// Open opens one file of a recording for reading. Only files the
// manifest lists can be opened, and only inside the recording's directory.
func (m *Manager) Open(id, name string) (*os.File, fs.FileInfo, error) {
	man, err := m.Get(id)
	if err != nil {
		return nil, nil, err
	}
	if !validFileName(name) {
		return nil, nil, fmt.Errorf("%w: %q", ErrFileNotFound, name)
	}
	listed := false
	for _, s := range man.Segments {
		listed = listed || s.File == name
	}
	if !listed {
		return nil, nil, fmt.Errorf("%w: %q", ErrFileNotFound, name)
	}
	root, err := os.OpenRoot(filepath.Join(m.cfg.Dir, id))
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrFileNotFound, err)
	}
	defer root.Close()
	f, err := root.Open(name)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrFileNotFound, err)
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		_ = f.Close()
		return nil, nil, fmt.Errorf("%w: %q", ErrFileNotFound, name)
	}
	return f, fi, nil
}

// Delete removes a finished recording and its files.
func (m *Manager) Delete(id string) error {
	m.mu.Lock()
	e := m.index[id]
	switch {
	case e == nil:
		m.mu.Unlock()
		return fmt.Errorf("%w: %q", ErrNotFound, id)
	case e.rec != nil:
		m.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrActive, id)
	}
	delete(m.index, id)
	m.mu.Unlock()
	dir := filepath.Join(m.cfg.Dir, id)
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("recordings: delete %s: %w", id, err)
	}
	m.hashMu.Lock()
	for p := range m.hashes {
		if filepath.Dir(p) == dir {
			delete(m.hashes, p)
		}
	}
	m.hashMu.Unlock()
	m.log.Info("recording deleted", "recording", id)
	return nil
}

// Sweep deletes the finished recordings older than the retention period
// (by their end) and returns their ids. It runs on a schedule when
// Retention is set.
func (m *Manager) Sweep() []string {
	if m.cfg.Retention <= 0 {
		return nil
	}
	cutoff := m.now().Add(-m.cfg.Retention)
	m.mu.Lock()
	var old []string
	for id, e := range m.index {
		end := e.man.StartedAt
		if e.man.EndedAt != nil {
			end = *e.man.EndedAt
		}
		if e.rec == nil && end.Before(cutoff) {
			old = append(old, id)
		}
	}
	m.mu.Unlock()
	var deleted []string
	for _, id := range old {
		if err := m.Delete(id); err != nil {
			m.log.Warn("retention", "recording", id, "err", err)
			continue
		}
		deleted = append(deleted, id)
	}
	if len(deleted) > 0 {
		m.log.Info("retention deleted old recordings", "count", len(deleted), "retention", m.cfg.Retention)
	}
	return deleted
}

func (m *Manager) sweepLoop() {
	defer close(m.sweepDone)
	m.Sweep()
	t := time.NewTicker(m.cfg.RetentionInterval)
	defer t.Stop()
	for {
		select {
		case <-m.sweepStop:
			return
		case <-t.C:
			m.Sweep()
		}
	}
}

// hashEntry is a finished file's cached SHA-256, trusted while the
// file's size, modification and change times are the same.
type hashEntry struct {
	size         int64
	mtime, ctime time.Time
	sum          string
}
