package recordings

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
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
	// MaxBytes caps what one recording writes, over all its files; a
	// recording that reaches it stops as failed, reason size_cap (its
	// open file finalized, so it may end a cluster and the cues past the
	// cap). 0: no cap.
	MaxBytes int64
	// MaxBitrate caps what one recording writes, in bits a second
	// averaged over 10 s; over it, the recording stops as failed, reason
	// bitrate_cap. 0: no cap.
	MaxBitrate int64
	// MinFreeBytes is the free space the recordings' file system must
	// keep: under it a new recording is refused (ErrDiskFull, an
	// EventRefused) and a running one stops as failed, reason disk_full.
	// 0: no guard (a full disk still fails recordings by their write
	// errors).
	MinFreeBytes int64
	// FreeSpace returns the bytes free on the file system of a
	// directory; nil asks the file system (statfs). Tests inject a
	// smaller disk here.
	FreeSpace func(dir string) (uint64, error)

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

	// mu guards what follows. While holding it a recorder's ctlMu is
	// taken (post) and an sfu participant's own lock (its role); it is
	// never taken while holding either.
	mu     sync.Mutex
	index  map[string]*entry
	active map[recKey]*recorder
	sinks  map[*sfu.UpTrack]*sink
	rules  map[weak.Pointer[sfu.Room]]*roomRules
	closed bool

	wg        sync.WaitGroup // writer goroutines
	sweepStop chan struct{}
	sweepDone chan struct{}

	// hashMu guards hashes (index.go); no lock is taken while holding
	// it.
	hashMu sync.Mutex
	hashes map[string]hashEntry

	onEventMu         sync.Mutex                    // serializes OnEvent
	onEvent           atomic.Pointer[[]func(Event)] // see OnEvent; copied on write
	written, failures atomic.Uint64                 // see Stats

	bitrateWindow time.Duration // what MaxBitrate averages over; tests shorten it
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
	if cfg.FreeSpace == nil {
		cfg.FreeSpace = freeSpaceOf
	}
	if cfg.MinFreeBytes > 0 {
		// Said once at start: a dev machine short of space still starts,
		// and its recordings are refused with a clear event.
		switch free, err := cfg.FreeSpace(cfg.Dir); {
		case err != nil:
			cfg.Logger.Warn("free disk space unknown: the min_free_disk guard is off", "dir", cfg.Dir, "err", err)
			cfg.MinFreeBytes = 0
		case free < uint64(cfg.MinFreeBytes):
			cfg.Logger.Warn("less free disk space than min_free_disk: recordings will be refused until there is more",
				"dir", cfg.Dir, "free_bytes", free, "min_free_bytes", cfg.MinFreeBytes)
		}
	}
	m := &Manager{
		bitrateWindow: bitrateWindow,
		cfg:           cfg, log: cfg.Logger.With("component", "recordings"),
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
	low, free := m.diskLow() // statfs, outside the lock
	m.mu.Lock()
	if m.closed || m.sinks[up] != nil || !m.wantsLocked(r, pub.Identity(), pub.Role(), admitted) {
		m.mu.Unlock()
		return
	}
	key := recKey{room: r, identity: pub.Identity(), group: groupOf(up.Source())}
	var s *sink
	for {
		rec := m.active[key]
		if rec == nil && low {
			m.mu.Unlock()
			m.refuse(key, string(pub.Role()), free)
			return
		}
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
			Version: 1, ID: id, Room: key.room.Name(), Instance: key.room.Instance(), RoomKind: string(key.room.Kind()),
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
	if low, free := m.diskLow(); low {
		return nil, fmt.Errorf("%w: %d bytes free, under the %d of min_free_disk", ErrDiskFull, free, m.cfg.MinFreeBytes)
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
