package incidents

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/sfu"
)

// Recordings places a moment in a candidate's recording; the recordings
// Manager is one.
type Recordings interface {
	// OffsetFor returns the recording of identity in that instance of
	// room (camera and microphone) that was being written at at, the
	// segment file, and the position of at in that file.
	OffsetFor(room, instance, identity string, at time.Time) (recordingID, file string, offset time.Duration, ok bool)
}

// Config configures a Monitor.
type Config struct {
	// Store keeps the incidents; required.
	Store *Store
	// Recordings, if set, gives each incident its place in the
	// candidate's recording.
	Recordings Recordings
	Logger     *slog.Logger
	// Interval is how often the detectors look at each candidate; 0
	// means 1s.
	Interval time.Duration
	// FreezeAfter is how long a connected candidate's camera may send
	// nothing before video_frozen; 0 means 3s.
	FreezeAfter time.Duration
	// MissingAfter is how long after admission a required source may be
	// unpublished before track_missing; 0 means 10s.
	MissingAfter time.Duration
	// EndedGrace is how long a required source must stay unpublished,
	// with the candidate still in the room, before track_ended (a track
	// replaced by another, a candidate leaving); 0 means 1s.
	EndedGrace time.Duration
	// Required are the sources every admitted candidate must publish;
	// nil means camera, microphone and screen.
	Required []sfu.Source
	// ReportsPerType is the least time between two reports of one type
	// by one candidate (or two flags of one candidate by one proctor);
	// 0 means 1s. ReportsPerMinute caps them per minute; 0 means 60.
	ReportsPerType   time.Duration
	ReportsPerMinute int
	// MaxPerRoom caps the incidents of one room instance (an
	// sfu.Room; a room made again under the same name counts afresh):
	// the one that reaches it is followed by one incidents_capped
	// incident, and the rest are refused with ErrCapped. 0: no cap.
	MaxPerRoom int
	// Retention deletes incidents older than this, and the snapshots no
	// incident references any more; 0 keeps them.
	Retention time.Duration
	// RetentionInterval is how often retention runs; 0 means a tenth of
	// Retention, between a minute and an hour.
	RetentionInterval time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Monitor runs the server-side detectors over every admitted candidate
// of every proctoring room, keeps the latest VP8 keyframe of each
// candidate's camera, and records incidents: it stores each one, then
// pushes it to the room's proctors and watchers (sfu.Room.NotifyProctors).
// It is an sfu.TrackObserver and sfu.AdmissionObserver: combine it with
// others in sfu.Observers.
type Monitor struct {
	cfg    Config
	log    *slog.Logger
	store  *Store
	limits *limiter

	// mu guards what follows; sfu locks are not taken while holding it
	// (gather runs outside it), nor is any other lock of ours.
	mu     sync.Mutex
	cands  map[*sfu.Participant]*candidate
	counts map[weak.Pointer[sfu.Room]]int // incidents recorded per room instance, for MaxPerRoom
	closed bool

	onIncidentMu sync.Mutex                       // serializes OnIncident
	onIncident   atomic.Pointer[[]func(Incident)] // see OnIncident; copied on write

	stop, done chan struct{}
}

// candidate is what the Monitor knows of one candidate. Its fields are
// guarded by Monitor.mu.
type candidate struct {
	room     *sfu.Room
	p        *sfu.Participant
	admitted time.Time // zero while waiting

	everConnected bool
	connected     time.Time // when the detectors last saw the connection become connected
	lost          bool
	missingDone   bool                     // the track_missing check was made
	endedAt       map[sfu.Source]time.Time // unpublished, track_ended not decided yet
	endedOnce     map[sfu.Source]bool      // track_ended raised since admission
	frozen        bool

	cams    map[*sfu.UpTrack]*grabber // VP8 camera tracks and their keyframe sinks
	lastCam *grabber                  // the camera grabbed last; kept after its track ends
}

var (
	_ sfu.TrackObserver     = (*Monitor)(nil)
	_ sfu.AdmissionObserver = (*Monitor)(nil)
)

// NewMonitor starts a Monitor; Close stops it.
func NewMonitor(cfg Config) (*Monitor, error) {
	if cfg.Store == nil {
		return nil, errors.New("incidents: Store is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if cfg.FreezeAfter <= 0 {
		cfg.FreezeAfter = 3 * time.Second
	}
	if cfg.MissingAfter <= 0 {
		cfg.MissingAfter = 10 * time.Second
	}
	if cfg.EndedGrace <= 0 {
		cfg.EndedGrace = time.Second
	}
	if cfg.Required == nil {
		cfg.Required = []sfu.Source{sfu.SourceCamera, sfu.SourceMicrophone, sfu.SourceScreen}
	}
	if cfg.ReportsPerType <= 0 {
		cfg.ReportsPerType = time.Second
	}
	if cfg.ReportsPerMinute <= 0 {
		cfg.ReportsPerMinute = 60
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.RetentionInterval <= 0 {
		cfg.RetentionInterval = min(max(cfg.Retention/10, time.Minute), time.Hour)
	}
	m := &Monitor{
		counts: map[weak.Pointer[sfu.Room]]int{},
		cfg:    cfg, log: cfg.Logger.With("component", "incidents"), store: cfg.Store,
		limits: newLimiter(cfg.ReportsPerType, cfg.ReportsPerMinute),
		cands:  map[*sfu.Participant]*candidate{},
		stop:   make(chan struct{}), done: make(chan struct{}),
	}
	go m.loop()
	return m, nil
}

// Close stops the detectors; later observer calls do nothing. It does
// not close the Store.
func (m *Monitor) Close() {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	m.closed = true
	m.mu.Unlock()
	close(m.stop)
	<-m.done
}

func isCandidate(r *sfu.Room, p *sfu.Participant) bool {
	return r.Kind() == sfu.KindProctoring && p.Role() == sfu.RoleCandidate
}

// candidateLocked returns p's state, making it on first use.
func (m *Monitor) candidateLocked(r *sfu.Room, p *sfu.Participant) *candidate {
	c := m.cands[p]
	if c == nil {
		c = &candidate{room: r, p: p, endedAt: map[sfu.Source]time.Time{}, endedOnce: map[sfu.Source]bool{},
			cams: map[*sfu.UpTrack]*grabber{}}
		m.cands[p] = c
	}
	return c
}

// TrackPublished implements sfu.TrackObserver: a candidate's VP8 camera
// gets a keyframe sink.
func (m *Monitor) TrackPublished(r *sfu.Room, up *sfu.UpTrack) {
	pub := up.Publisher()
	if !isCandidate(r, pub) {
		return
	}
	var g *grabber
	if up.Source() == sfu.SourceCamera && strings.EqualFold(up.Codec().MimeType, webrtc.MimeTypeVP8) {
		g = &grabber{}
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	c := m.candidateLocked(r, pub)
	delete(c.endedAt, up.Source())
	if g != nil {
		c.cams[up] = g
		c.lastCam = g
	}
	m.mu.Unlock()
	if g != nil && !up.AddSink(g) {
		m.mu.Lock()
		delete(c.cams, up)
		m.mu.Unlock()
	}
}

// TrackUnpublished implements sfu.TrackObserver: a required source of an
// admitted candidate that stays unpublished is track_ended.
func (m *Monitor) TrackUnpublished(r *sfu.Room, up *sfu.UpTrack) {
	pub := up.Publisher()
	if !isCandidate(r, pub) {
		return
	}
	now := m.cfg.Now()
	m.mu.Lock()
	c := m.cands[pub]
	var g *grabber
	if c != nil {
		g = c.cams[up]
		delete(c.cams, up)
		if !c.admitted.IsZero() && m.required(up.Source()) {
			if _, pending := c.endedAt[up.Source()]; !pending {
				c.endedAt[up.Source()] = now
			}
		}
	}
	m.mu.Unlock()
	if g != nil {
		up.RemoveSink(g)
	}
}

// Admitted implements sfu.AdmissionObserver: the detectors start.
func (m *Monitor) Admitted(r *sfu.Room, p *sfu.Participant) {
	if !isCandidate(r, p) {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	c := m.candidateLocked(r, p)
	if c.admitted.IsZero() {
		c.admitted = m.cfg.Now()
	}
}

func (m *Monitor) required(src sfu.Source) bool {
	for _, s := range m.cfg.Required {
		if s == src {
			return true
		}
	}
	return false
}

func (m *Monitor) loop() {
	defer close(m.done)
	t := time.NewTicker(m.cfg.Interval)
	defer t.Stop()
	var swept time.Time
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
			m.check()
			if now := m.cfg.Now(); m.cfg.Retention > 0 && now.Sub(swept) >= m.cfg.RetentionInterval {
				swept = now
				m.Sweep()
			}
		}
	}
}

// Sweep deletes the incidents older than Retention and the snapshots no
// incident references any more, and returns how many of each; it runs
// on a schedule when Retention is set.
func (m *Monitor) Sweep() (incidents, snapshots int64) {
	if m.cfg.Retention <= 0 {
		return 0, 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n, k, err := m.store.DeleteBefore(ctx, m.cfg.Now().Add(-m.cfg.Retention))
	if err != nil {
		m.log.Error("incidents retention", "err", err)
		return n, k
	}
	if n > 0 || k > 0 {
		m.log.Info("retention deleted old incidents", "incidents", n, "snapshots", k, "retention", m.cfg.Retention)
	}
	return n, k
}

// facts is what the sfu says of a candidate now.
type facts struct {
	left   bool
	state  webrtc.PeerConnectionState
	tracks map[sfu.Source]*sfu.UpTrack
}

func gather(c *candidate) facts {
	f := facts{tracks: map[sfu.Source]*sfu.UpTrack{}}
	select {
	case <-c.p.Done():
		f.left = true
	default:
		f.left = c.room.Participant(c.p.Identity()) != c.p
	}
	if f.left {
		return f
	}
	f.state = c.p.ConnectionState()
	for _, u := range c.p.Tracks() {
		f.tracks[u.Source()] = u
	}
	return f
}

// pending is an incident decided by a detector, to record outside the
// lock.
type pending struct {
	c   *candidate
	inc Incident
	kf  *keyframe
}

// check runs the detectors once over every candidate.
func (m *Monitor) check() {
	m.mu.Lock()
	cs := make([]*candidate, 0, len(m.cands))
	for _, c := range m.cands {
		cs = append(cs, c)
	}
	for k := range m.counts {
		if k.Value() == nil {
			delete(m.counts, k) // its room is gone
		}
	}
	m.mu.Unlock()
	now := m.cfg.Now()
	m.limits.sweep(now)
	var out []pending
	for _, c := range cs {
		f := gather(c) // sfu locks only, outside ours
		m.mu.Lock()
		out = append(out, m.detectLocked(c, f, now)...)
		m.mu.Unlock()
	}
	for _, p := range out {
		if _, err := m.record(p.c.room, p.inc, p.kf); err != nil {
			m.log.Error("record incident", "room", p.c.room.Name(), "participant", p.c.p.Identity(), "type", p.inc.Type, "err", err)
		}
	}
}

// detectLocked updates c from f and returns the incidents it shows.
func (m *Monitor) detectLocked(c *candidate, f facts, now time.Time) []pending {
	if f.left {
		// Leaving is not losing the connection: forget the candidate.
		delete(m.cands, c.p)
		return nil
	}
	if f.state == webrtc.PeerConnectionStateConnected {
		if c.connected.IsZero() {
			c.connected = now
		}
		c.everConnected = true
	} else {
		c.connected = time.Time{}
	}
	if c.admitted.IsZero() {
		return nil
	}
	var out []pending
	raise := func(typ Type, src sfu.Source, at time.Time, note string) {
		out = append(out, pending{c: c, kf: c.keyframeLocked(), inc: Incident{
			Identity: c.p.Identity(), Type: typ, Source: SourceServer, Track: src, Time: at, Note: note,
		}})
	}

	switch f.state {
	case webrtc.PeerConnectionStateConnected:
		if c.lost {
			c.lost = false
			raise(ConnectionRestored, "", now, "")
		}
	case webrtc.PeerConnectionStateDisconnected, webrtc.PeerConnectionStateFailed:
		if c.everConnected && !c.lost {
			c.lost = true
			raise(ConnectionLost, "", now, "connection "+f.state.String())
		}
	}

	for src, at := range c.endedAt {
		if now.Sub(at) < m.cfg.EndedGrace {
			continue
		}
		delete(c.endedAt, src)
		if f.tracks[src] == nil {
			c.endedOnce[src] = true
			raise(TrackEnded, src, at, string(src)+" unpublished")
		}
	}

	if !c.missingDone && now.Sub(c.admitted) >= m.cfg.MissingAfter {
		c.missingDone = true
		for _, src := range m.cfg.Required {
			_, pending := c.endedAt[src]
			if f.tracks[src] == nil && !pending && !c.endedOnce[src] {
				raise(TrackMissing, src, now, fmt.Sprintf("%s not published %v after admission", src, m.cfg.MissingAfter))
			}
		}
	}

	// A freeze is FreezeAfter without camera packets while connected:
	// counted from the last packet, or from the (re)connection.
	cam := f.tracks[sfu.SourceCamera]
	var since time.Time
	if cam != nil {
		since = cam.LastPacket()
		if c.connected.After(since) {
			since = c.connected
		}
	}
	switch {
	case cam == nil || f.state != webrtc.PeerConnectionStateConnected:
		// Not a freeze: no camera (track_missing, track_ended), or no
		// connection (connection_lost).
	case cam.LastPacket().IsZero():
	case now.Sub(since) >= m.cfg.FreezeAfter:
		if !c.frozen {
			c.frozen = true
			raise(VideoFrozen, sfu.SourceCamera, cam.LastPacket(), fmt.Sprintf("no camera video since %s", cam.LastPacket().UTC().Format(time.RFC3339Nano)))
		}
	default:
		c.frozen = false // frames flow: armed again
	}
	return out
}

// keyframeLocked is the candidate's latest camera keyframe, or nil.
func (c *candidate) keyframeLocked() *keyframe {
	var best *keyframe
	for _, g := range c.cams {
		if k := g.keyframe(); k != nil && (best == nil || k.at.After(best.at)) {
			best = k
		}
	}
	if best == nil && c.lastCam != nil {
		best = c.lastCam.keyframe()
	}
	return best
}

// keyframeOf returns p's latest camera keyframe, or nil.
func (m *Monitor) keyframeOf(p *sfu.Participant) *keyframe {
	m.mu.Lock()
	defer m.mu.Unlock()
	if c := m.cands[p]; c != nil {
		return c.keyframeLocked()
	}
	return nil
}

// Report records an incident a candidate's page reports: only an
// admitted candidate of a proctoring room (ErrNotAdmitted while it
// waits), only the client-reported types, and at most one of a type per
// ReportsPerType and ReportsPerMinute a minute (ErrRateLimited beyond).
func (m *Monitor) Report(p *sfu.Participant, typ Type, note string) (Incident, error) {
	r := p.Room()
	if !isCandidate(r, p) {
		return Incident{}, fmt.Errorf("%w: only a candidate of a proctoring room reports incidents", sfu.ErrForbidden)
	}
	if !p.Admitted() {
		return Incident{}, fmt.Errorf("%w: a candidate reports incidents once a proctor has admitted it", ErrNotAdmitted)
	}
	if !ClientType(typ) {
		return Incident{}, fmt.Errorf("%w: %q is not reported by a client", ErrInvalidType, typ)
	}
	now := m.cfg.Now()
	if !m.limits.allow(r.Name()+"/"+p.Identity(), typ, now) {
		return Incident{}, fmt.Errorf("%w: at most one %s a second and %d reports a minute", ErrRateLimited, typ, m.cfg.ReportsPerMinute)
	}
	return m.record(r, Incident{
		Identity: p.Identity(), Type: typ, Source: SourceClient, Reporter: p.Identity(), Note: note, Time: now,
	}, m.keyframeOf(p))
}

// Flag records a manual incident: a proctor of a proctoring room flags a
// candidate in it, with a note.
func (m *Monitor) Flag(by *sfu.Participant, identity, note string) (Incident, error) {
	r := by.Room()
	if r.Kind() != sfu.KindProctoring || by.Role() != sfu.RoleProctor {
		return Incident{}, fmt.Errorf("%w: only a proctor flags incidents", sfu.ErrForbidden)
	}
	c := r.Participant(identity)
	if c == nil || c.Role() != sfu.RoleCandidate {
		return Incident{}, fmt.Errorf("%w: no candidate %q", sfu.ErrParticipantNotFound, identity)
	}
	now := m.cfg.Now()
	if !m.limits.allow(r.Name()+"/"+by.Identity()+"/"+identity, Manual, now) {
		return Incident{}, fmt.Errorf("%w: at most one flag of a candidate a second and %d a minute", ErrRateLimited, m.cfg.ReportsPerMinute)
	}
	return m.record(r, Incident{
		Identity: identity, Type: Manual, Source: SourceProctor, Reporter: by.Identity(), Note: note, Time: now,
	}, m.keyframeOf(c))
}

// record stores inc (save) unless the room is past MaxPerRoom.
func (m *Monitor) record(r *sfu.Room, inc Incident, kf *keyframe) (Incident, error) {
	m.mu.Lock()
	closed := m.closed
	capped, over := false, false
	if limit := m.cfg.MaxPerRoom; limit > 0 && !closed {
		k := weak.Make(r)
		n := m.counts[k]
		over = n >= limit
		capped = n == limit // the first one over: say so, once
		if n <= limit {
			m.counts[k] = n + 1
		}
	}
	m.mu.Unlock()
	if closed {
		return Incident{}, ErrClosed
	}
	if over {
		err := fmt.Errorf("%w: %d incidents in room %q", ErrCapped, m.cfg.MaxPerRoom, r.Name())
		if capped {
			m.log.Warn("room reached its cap of incidents; further incidents are refused", "room", r.Name(), "max", m.cfg.MaxPerRoom)
			if _, serr := m.save(r, Incident{
				Identity: inc.Identity, Type: IncidentsCapped, Source: SourceServer, Time: inc.Time,
				Note: fmt.Sprintf("the room reached its cap of %d incidents: further incidents (from %s on) are refused", m.cfg.MaxPerRoom, inc.Type),
			}, nil); serr != nil {
				m.log.Error("record incident", "room", r.Name(), "type", IncidentsCapped, "err", serr)
			}
		}
		return Incident{}, err
	}
	return m.save(r, inc, kf)
}

// save completes inc (id, room and its instance, recording offset,
// snapshot from kf), stores it, then pushes it to the room's proctors.
func (m *Monitor) save(r *sfu.Room, inc Incident, kf *keyframe) (Incident, error) {
	inc.ID, inc.Room, inc.Instance, inc.Time = newID(), r.Name(), r.Instance(), ms(inc.Time)
	if m.cfg.Recordings != nil {
		if id, file, off, ok := m.cfg.Recordings.OffsetFor(inc.Room, inc.Instance, inc.Identity, inc.Time); ok {
			offMs := off.Milliseconds()
			inc.RecordingID, inc.OffsetMs = &id, &offMs
			if file != "" {
				inc.RecordingFile = &file
			}
		}
	}
	var snap []byte
	if kf != nil {
		b, err := kf.snapshot()
		if err != nil {
			m.log.Debug("no snapshot", "room", inc.Room, "participant", inc.Identity, "err", err)
		} else {
			snap = b
			at := ms(kf.at)
			inc.HasSnapshot, inc.SnapshotTime = true, &at
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := m.store.Add(ctx, inc, snap); err != nil {
		return Incident{}, err
	}
	m.log.Info("incident", "room", inc.Room, "participant", inc.Identity, "type", inc.Type, "source", inc.Source, "incident", inc.ID)
	r.NotifyProctors(Event{Incident: inc})
	if fs := m.onIncident.Load(); fs != nil {
		for _, f := range *fs {
			f(inc)
		}
	}
	return inc, nil
}

// OnIncident makes f receive every incident recorded from now on (once
// stored and pushed to the proctors), after the functions already
// registered: the server counts them (vigil_incidents_total) and sends
// them as incident.created webhooks. f must not block.
func (m *Monitor) OnIncident(f func(Incident)) {
	m.onIncidentMu.Lock()
	defer m.onIncidentMu.Unlock()
	var fs []func(Incident)
	if cur := m.onIncident.Load(); cur != nil {
		fs = append(fs, *cur...)
	}
	fs = append(fs, f)
	m.onIncident.Store(&fs)
}

// List returns the incidents of a room matching f, oldest first.
func (m *Monitor) List(ctx context.Context, f Filter) ([]Incident, error) {
	return m.store.List(ctx, f)
}

// Get returns one incident of a room.
func (m *Monitor) Get(ctx context.Context, room, id string) (Incident, error) {
	return m.store.Get(ctx, room, id)
}

// Snapshot returns an incident's JPEG.
func (m *Monitor) Snapshot(ctx context.Context, room, id string) ([]byte, error) {
	return m.store.Snapshot(ctx, room, id)
}
