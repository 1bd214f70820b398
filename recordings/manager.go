package recordings

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	"github.com/vigil-media/vigil/sfu"
)

// Errors of the recordings API.
var (
	ErrNotFound     = errors.New("recording not found")
	ErrFileNotFound = errors.New("recording file not found")
	ErrActive       = errors.New("recording is in progress; stop it first")
	ErrClosed       = errors.New("recordings are shut down")
	ErrInvalidName  = errors.New("invalid identity")
)

// Config configures the Manager.
type Config struct {
	// Dir holds one directory per recording. It is created (0700) if
	// missing.
	Dir string
	// Retention deletes finished recordings older than this (by their
	// end); 0 keeps them forever.
	Retention time.Duration
	// RetentionInterval is how often retention runs; 0 means a tenth of
	// Retention, between a minute and an hour.
	RetentionInterval time.Duration
	// ReconnectGrace is how long a recording whose tracks all ended waits
	// for the participant to publish again, into a new segment of the same
	// recording; 0 means 60s.
	ReconnectGrace time.Duration
	// SettleTimeout is how long a new segment waits for its group to be
	// complete (camera and microphone) and for a first video keyframe
	// before it starts with what it has; 0 means 2s. Nothing is lost
	// meanwhile: frames wait in memory.
	SettleTimeout time.Duration
	// QueuePackets bounds each recording's packet queue; a packet that
	// finds it full is dropped and counted. 0 means 4096.
	QueuePackets int
	Logger       *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// OpenFile creates a segment file for writing; nil creates a new file
	// (0600). A test of another package injects faults here (a file on
	// /dev/full, where every write fails with ENOSPC).
	OpenFile func(path string) (*os.File, error)

	openFile func(path string) (fileWriter, error) // tests inject faults here
}

// recKey identifies an active recording: one per participant and group.
type recKey struct {
	room     *sfu.Room
	identity string
	group    string
}

// entry is a recording in the index.
type entry struct {
	man *Manifest // an immutable snapshot
	rec *recorder // while active
}

// roomRules is what was asked of one room through Start and Stop.
type roomRules struct {
	all, none bool            // every participant / stop auto-recording
	on, off   map[string]bool // by identity
}

// Manager records participants and keeps the index of recordings. It is
// the sfu's TrackObserver: rooms with AutoRecord record everyone, and
// proctoring rooms every candidate, from the moment they publish; other
// rooms record whom Start asks for.
type Manager struct {
	cfg Config
	log *slog.Logger

	mu     sync.Mutex
	index  map[string]*entry
	active map[recKey]*recorder
	sinks  map[*sfu.UpTrack]*sink
	rules  map[weak.Pointer[sfu.Room]]*roomRules
	closed bool

	wg        sync.WaitGroup // writer goroutines
	sweepStop chan struct{}
	sweepDone chan struct{}

	hashMu sync.Mutex
	hashes map[string]hashEntry

	onEventMu         sync.Mutex                    // serializes OnEvent
	onEvent           atomic.Pointer[[]func(Event)] // see OnEvent; copied on write
	written, failures atomic.Uint64                 // see Stats
}

type hashEntry struct {
	size         int64
	mtime, ctime time.Time
	sum          string
}

var _ sfu.TrackObserver = (*Manager)(nil)

// New opens the recordings directory and rebuilds the index from the
// manifests in it. A recording that was in progress when the server died
// is marked interrupted and its files sealed with their hashes.
func New(cfg Config) (*Manager, error) {
	if cfg.Dir == "" {
		return nil, errors.New("recordings: Dir is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ReconnectGrace <= 0 {
		cfg.ReconnectGrace = 60 * time.Second
	}
	if cfg.SettleTimeout <= 0 {
		cfg.SettleTimeout = 2 * time.Second
	}
	if cfg.QueuePackets <= 0 {
		cfg.QueuePackets = 4096
	}
	if cfg.RetentionInterval <= 0 {
		cfg.RetentionInterval = min(max(cfg.Retention/10, time.Minute), time.Hour)
	}
	if cfg.openFile == nil && cfg.OpenFile != nil {
		open := cfg.OpenFile
		cfg.openFile = func(path string) (fileWriter, error) {
			f, err := open(path)
			if err != nil {
				return nil, err
			}
			return f, nil
		}
	}
	if cfg.openFile == nil {
		cfg.openFile = openFile
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("recordings: %w", err)
	}
	m := &Manager{
		cfg: cfg, log: cfg.Logger.With("component", "recordings"),
		index: map[string]*entry{}, active: map[recKey]*recorder{},
		sinks: map[*sfu.UpTrack]*sink{}, rules: map[weak.Pointer[sfu.Room]]*roomRules{},
		hashes: map[string]hashEntry{},
	}
	if err := m.rebuild(); err != nil {
		return nil, err
	}
	if cfg.Retention > 0 {
		m.sweepStop, m.sweepDone = make(chan struct{}), make(chan struct{})
		go m.sweepLoop()
	}
	return m, nil
}

func (m *Manager) now() time.Time { return m.cfg.Now() }

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

// seal marks a recording cut short by a crash as interrupted: each file
// still open gets its size, end time and hash, so later tampering shows.
func (m *Manager) seal(dir string, man *Manifest) {
	segs := man.Segments[:0]
	for _, s := range man.Segments {
		if s.SHA256 == "" {
			path := filepath.Join(dir, s.File)
			fi, err := os.Stat(path)
			if err != nil {
				continue // listed before it was created: nothing was written
			}
			sum, n, err := hashFile(path)
			if err != nil {
				m.log.Warn("hash interrupted segment", "file", path, "err", err)
				continue
			}
			end := fi.ModTime().UTC()
			s.SHA256, s.Bytes, s.EndedAt, s.Status = sum, n, &end, StatusInterrupted
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
	m.log.Warn("recording was interrupted by a crash", "recording", man.ID, "room", man.Room, "participant", man.Identity)
}

// wantsLocked decides whether a participant's tracks are recorded. A
// proctoring candidate is recorded from the moment a proctor admits it.
func (m *Manager) wantsLocked(r *sfu.Room, identity string, role sfu.Role, admitted bool) bool {
	if rules := m.rules[weak.Make(r)]; rules != nil {
		switch {
		case rules.off[identity]:
			return false
		case rules.on[identity] || rules.all:
			return true
		case rules.none:
			return false
		}
	}
	return r.Options().AutoRecord || (r.Kind() == sfu.KindProctoring && role == sfu.RoleCandidate && admitted)
}

// Admitted implements sfu.AdmissionObserver: an admitted candidate's
// tracks start recording.
func (m *Manager) Admitted(r *sfu.Room, p *sfu.Participant) {
	for _, t := range p.Tracks() {
		m.TrackPublished(r, t)
	}
}

func (m *Manager) rulesLocked(r *sfu.Room) *roomRules {
	for k := range m.rules {
		if k.Value() == nil {
			delete(m.rules, k) // its room is gone
		}
	}
	k := weak.Make(r)
	rules := m.rules[k]
	if rules == nil {
		rules = &roomRules{on: map[string]bool{}, off: map[string]bool{}}
		m.rules[k] = rules
	}
	return rules
}

// TrackPublished implements sfu.TrackObserver.
func (m *Manager) TrackPublished(r *sfu.Room, up *sfu.UpTrack) {
	pub := up.Publisher()
	admitted := pub.Admitted()
	m.mu.Lock()
	if m.closed || m.sinks[up] != nil || !m.wantsLocked(r, pub.Identity(), pub.Role(), admitted) {
		m.mu.Unlock()
		return
	}
	key := recKey{room: r, identity: pub.Identity(), group: groupOf(up.Source())}
	var s *sink
	for {
		rec := m.active[key]
		if rec == nil {
			rec = m.newRecorderLocked(key, pub.Role())
		}
		s = newSink(rec, up)
		if rec.post(ctlMsg{kind: ctlAttach, s: s}) {
			break
		}
		// It was retiring: the next round starts a new recording.
		if m.active[key] == rec {
			delete(m.active, key)
		}
	}
	m.sinks[up] = s
	m.mu.Unlock()
	if !up.AddSink(s) {
		s.Close()
	}
}

// TrackUnpublished implements sfu.TrackObserver.
func (m *Manager) TrackUnpublished(_ *sfu.Room, up *sfu.UpTrack) {
	m.mu.Lock()
	s := m.sinks[up]
	m.mu.Unlock()
	if s != nil {
		up.RemoveSink(s) // closes it, if it was attached
		s.Close()
	}
}

func (m *Manager) newRecorderLocked(key recKey, role sfu.Role) *recorder {
	id := newID()
	now := m.now().UTC()
	rec := &recorder{
		m: m, key: key, id: id, dir: filepath.Join(m.cfg.Dir, id),
		log:  m.log.With("recording", id, "room", key.room.Name(), "participant", key.identity, "group", key.group),
		data: make(chan item, m.cfg.QueuePackets),
		done: make(chan struct{}),
		wake: make(chan struct{}, 1),
		man: &Manifest{
			Version: 1, ID: id, Room: key.room.Name(), RoomKind: string(key.room.Kind()),
			Identity: key.identity, Role: string(role), Group: key.group,
			Sources: []string{}, Codecs: []string{}, Segments: []Segment{},
			Status: StatusRecording, StartedAt: now,
		},
	}
	m.active[key] = rec
	m.index[id] = &entry{man: rec.man.clone(), rec: rec}
	m.wg.Add(1)
	go rec.run()
	rec.log.Info("recording started")
	return rec
}

// publish stores a new snapshot of a recording's manifest.
func (m *Manager) publish(id string, man *Manifest) {
	m.mu.Lock()
	if e := m.index[id]; e != nil {
		e.man = man
	}
	m.mu.Unlock()
}

// finished takes a recorder out of the active set.
func (m *Manager) finished(r *recorder) {
	m.mu.Lock()
	if m.active[r.key] == r {
		delete(m.active, r.key)
	}
	if e := m.index[r.id]; e != nil && e.rec == r {
		e.rec = nil
	}
	m.mu.Unlock()
}

// discard forgets a recorder that recorded nothing.
func (m *Manager) discard(r *recorder) {
	m.finished(r)
	m.mu.Lock()
	delete(m.index, r.id)
	m.mu.Unlock()
}

func (m *Manager) forgetSink(s *sink) {
	m.mu.Lock()
	if m.sinks[s.up] == s {
		delete(m.sinks, s.up)
	}
	m.mu.Unlock()
}

// Start records identity in room (every participant when identity is
// empty), from now on and whenever they publish again, until Stop. It
// returns the recordings in progress for them.
func (m *Manager) Start(r *sfu.Room, identity string) ([]Manifest, error) {
	if identity != "" && !sfu.ValidName(identity) {
		return nil, fmt.Errorf("%w: %q", ErrInvalidName, identity)
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, ErrClosed
	}
	rules := m.rulesLocked(r)
	if identity == "" {
		rules.all, rules.none = true, false
		clear(rules.off)
	} else {
		rules.on[identity] = true
		delete(rules.off, identity)
	}
	m.mu.Unlock()
	for _, p := range r.List() {
		if identity != "" && p.Identity() != identity {
			continue
		}
		for _, t := range p.Tracks() {
			m.TrackPublished(r, t)
		}
	}
	return m.activeFor(r, identity), nil
}

func (m *Manager) activeFor(r *sfu.Room, identity string) []Manifest {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := []Manifest{}
	for k, rec := range m.active {
		if k.room == r && (identity == "" || k.identity == identity) {
			out = append(out, *m.index[rec.id].man.clone())
		}
	}
	sortManifests(out)
	return out
}

// Stop stops recording identity in room (everyone when empty), including
// the automatic recording of proctoring and AutoRecord rooms, until Start.
// Each file is finalized before it returns; it returns the recordings
// stopped.
func (m *Manager) Stop(r *sfu.Room, identity string) ([]Manifest, error) {
	if identity != "" && !sfu.ValidName(identity) {
		return nil, fmt.Errorf("%w: %q", ErrInvalidName, identity)
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, ErrClosed
	}
	rules := m.rulesLocked(r)
	if identity == "" {
		rules.all, rules.none = false, true
		clear(rules.on)
		clear(rules.off)
	} else {
		delete(rules.on, identity)
		rules.off[identity] = true
	}
	var recs []*recorder
	for k, rec := range m.active {
		if k.room == r && (identity == "" || k.identity == identity) {
			recs = append(recs, rec)
		}
	}
	m.mu.Unlock()
	out := []Manifest{}
	for _, rec := range recs {
		rec.post(ctlMsg{kind: ctlStop})
		<-rec.done
		if man, err := m.Get(rec.id); err == nil {
			out = append(out, man)
		}
	}
	sortManifests(out)
	return out, nil
}

// Close stops every recording, finalizing its files; call it after the
// rooms have closed. Later calls to the observer methods do nothing.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	recs := make([]*recorder, 0, len(m.active))
	for _, rec := range m.active {
		recs = append(recs, rec)
	}
	m.mu.Unlock()
	for _, rec := range recs {
		rec.post(ctlMsg{kind: ctlStop})
	}
	m.wg.Wait()
	if m.sweepStop != nil {
		close(m.sweepStop)
		<-m.sweepDone
	}
	return nil
}

// Filter selects recordings; empty fields match everything.
type Filter struct {
	Room     string
	Identity string
}

// List returns the recordings matching f, oldest first.
func (m *Manager) List(f Filter) []Manifest {
	m.mu.Lock()
	out := []Manifest{}
	for _, e := range m.index {
		if (f.Room == "" || e.man.Room == f.Room) && (f.Identity == "" || e.man.Identity == f.Identity) {
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
// and microphone (group av; the screen's when there is none) in room: the
// recording, the segment file being written then and at's position in
// it. While a recording is paused (the participant dropped), a moment
// after its last file ended is placed at that file's end. ok is false
// when no recording of them was under way at at.
func (m *Manager) OffsetFor(room, identity string, at time.Time) (recordingID, file string, offset time.Duration, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var best *Segment
	var bestMan *Manifest
	for _, e := range m.index {
		man := e.man
		if man.Room != room || man.Identity != identity {
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
