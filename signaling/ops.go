package signaling

import (
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/vigil-media/vigil/incidents"
	"github.com/vigil-media/vigil/metrics"
	"github.com/vigil-media/vigil/recordings"
	"github.com/vigil-media/vigil/sfu"
	"github.com/vigil-media/vigil/webhooks"
)

// ErrDraining refuses a new room while the server drains.
var ErrDraining = errors.New("server is draining: no new rooms")

// drainPoll is how often a draining server looks for rooms to end.
const drainPoll = 250 * time.Millisecond

// operations owns the server's life cycle as operators see it: health,
// readiness, drain mode and shutdown, and the metrics endpoint.
type operations struct {
	cfg  *Config // Metrics, Webhooks, DrainTimeout
	log  *slog.Logger
	sfu  *sfu.SFU
	fed  Federation // hands a draining node's empty rooms over
	auth gin.HandlerFunc
	// stats adds the signaling layer's sessions to serverStats.
	stats func(map[string]int)

	// mu guards closing, draining and since. Nothing is locked while
	// holding it.
	mu       sync.Mutex
	closing  bool // Close has begun: nothing new is admitted
	draining bool
	since    time.Time
	drained  chan struct{} // closed when draining and no room is left
}

// initOps wires metrics and webhooks and makes s.ops; New calls it.
func (s *Server) initOps() {
	s.ops = &operations{cfg: &s.cfg, log: s.log, sfu: s.sfu, fed: s.fed, auth: s.requireAdmin,
		drained: make(chan struct{}),
		stats: func(out map[string]int) {
			s.resources.count(out)
			s.hub.countTransports(out)
		}}
	if s.cfg.Metrics == nil {
		s.cfg.Metrics = metrics.New("dev")
	}
	m := s.cfg.Metrics
	m.WatchSFU(s.sfu.Stats)
	m.WatchServer(s.ops.serverStats)
	if s.cfg.Recordings != nil {
		m.WatchRecordings(s.cfg.Recordings.Stats)
		s.cfg.Recordings.OnEvent(s.evidence.recordingToFeed) // recording_* on the admin room feeds
	}
	if s.cfg.Incidents != nil {
		s.cfg.Incidents.OnIncident(func(inc incidents.Incident) { m.Incident(string(inc.Type)) })
	}
	if h := s.cfg.Webhooks; h.Enabled() {
		m.WatchWebhooks(h.Stats)
		if s.cfg.Recordings != nil {
			s.cfg.Recordings.OnEvent(func(ev recordings.Event) { h.Emit(ev.Type, ev.Recording) })
		}
		if s.cfg.Incidents != nil {
			s.cfg.Incidents.OnIncident(func(inc incidents.Incident) { h.Emit(webhooks.IncidentCreated, inc) })
		}
	}
}

// Metrics is the server's metrics registry.
func (s *Server) Metrics() *metrics.Metrics { return s.cfg.Metrics }

// routes registers the health, readiness, metrics and drain endpoints.
func (o *operations) routes(e *gin.Engine) {
	e.GET("/healthz", o.healthz)
	e.GET("/readyz", o.readyz)
	e.GET("/metrics", gin.WrapH(o.cfg.Metrics.Handler()))
	e.POST("/v1/drain", o.auth, o.postDrain)
}

// serverStats is what the metrics read from the signaling layer.
func (o *operations) serverStats() metrics.ServerStats {
	out := metrics.ServerStats{Sessions: map[string]int{}, Draining: o.isDraining()}
	o.stats(out.Sessions)
	return out
}

type statusResponse struct {
	Status string `json:"status"`
}

// healthz answers 200 while the process serves HTTP at all.
func (o *operations) healthz(c *gin.Context) {
	c.Header("Cache-Control", "no-store")
	if h := o.fed.Health(); h != nil {
		c.JSON(http.StatusOK, h)
		return
	}
	c.JSON(http.StatusOK, statusResponse{Status: "ok"})
}

// readyz answers 200 when the server takes new rooms, 503 while it
// drains or shuts down.
func (o *operations) readyz(c *gin.Context) {
	c.Header("Cache-Control", "no-store")
	o.mu.Lock()
	closing, draining := o.closing, o.draining
	o.mu.Unlock()
	switch {
	case closing:
		c.JSON(http.StatusServiceUnavailable, statusResponse{Status: "shutting_down"})
	case draining:
		c.JSON(http.StatusServiceUnavailable, statusResponse{Status: "draining"})
	default:
		c.JSON(http.StatusOK, statusResponse{Status: "ready"})
	}
}

// drainResponse is the reply to POST /v1/drain.
type drainResponse struct {
	Draining bool      `json:"draining"`
	Since    time.Time `json:"since"`
	Rooms    int       `json:"rooms"`
}

func (o *operations) postDrain(c *gin.Context) {
	o.drain()
	o.mu.Lock()
	since := o.since
	o.mu.Unlock()
	c.JSON(http.StatusAccepted, drainResponse{Draining: true, Since: since.UTC(), Rooms: len(o.sfu.Rooms())})
}

// Drain starts drain mode: new rooms are refused with ErrDraining and
// /readyz answers 503; rooms already open go on. A room with nobody in it
// is ended (at once, or when its last participant leaves); when no room
// is left, Drained is closed. Calling it again does nothing.
func (s *Server) Drain() { s.ops.drain() }

// Draining reports whether drain mode is on.
func (s *Server) Draining() bool { return s.ops.isDraining() }

// Drained is closed once the server drains and no room is left.
func (s *Server) Drained() <-chan struct{} { return s.ops.drained }

func (o *operations) drain() {
	o.mu.Lock()
	if o.draining {
		o.mu.Unlock()
		return
	}
	o.draining, o.since = true, time.Now()
	o.mu.Unlock()
	o.log.Info("draining: new rooms are refused", "rooms", len(o.sfu.Rooms()))
	o.cfg.Webhooks.Emit(webhooks.ServerDraining, map[string]any{"rooms": len(o.sfu.Rooms())})
	go o.drainLoop()
}

func (o *operations) isDraining() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.draining
}

// drainLoop ends empty rooms until none is left.
func (o *operations) drainLoop() {
	t := time.NewTicker(drainPoll)
	defer t.Stop()
	var deadline <-chan time.Time
	if o.cfg.DrainTimeout > 0 {
		d := time.NewTimer(o.cfg.DrainTimeout)
		defer d.Stop()
		deadline = d.C
	}
	for {
		rooms := o.sfu.Rooms()
		for _, r := range rooms {
			if len(r.List()) == 0 && !o.fed.HandOff(r) {
				r.Close(sfu.ReasonRoomClosed)
			}
		}
		if len(o.sfu.Rooms()) == 0 {
			o.log.Info("drained: no room left")
			close(o.drained)
			return
		}
		select {
		case <-t.C:
		case <-deadline:
			o.log.Warn("drain timeout: rooms still open", "rooms", len(o.sfu.Rooms()), "timeout", o.cfg.DrainTimeout)
			close(o.drained)
			return
		}
	}
}

// shutDown marks the server closing: from now on admit refuses.
func (o *operations) shutDown() {
	o.mu.Lock()
	o.closing = true
	o.mu.Unlock()
}

// AdmitRoom refuses a new room while the server drains
// (ErrDraining) or shuts down (ErrShuttingDown).
func (s *Server) AdmitRoom() error {
	o := s.ops
	o.mu.Lock()
	defer o.mu.Unlock()
	switch {
	case o.closing:
		return ErrShuttingDown
	case o.draining:
		return ErrDraining
	}
	return nil
}

// RoomCreated tells the webhooks of a room opened here (room.created)
// and watches it for them; rooms.go and package federation call it.
func (s *Server) RoomCreated(r *sfu.Room) {
	h := s.cfg.Webhooks
	if !h.Enabled() {
		return
	}
	opts := r.Options()
	h.Emit(webhooks.RoomCreated, roomHook{Room: r.Name(), Kind: r.Kind(), MaxParticipants: opts.MaxParticipants, AutoRecord: opts.AutoRecord})
	if err := r.Watch(&hookWatcher{hooks: h, room: r.Name()}); err != nil {
		s.log.Debug("watch room for webhooks", "room", r.Name(), "err", err)
	}
}

// Webhook payloads (docs/operations.md).
type (
	roomHook struct {
		Room            string   `json:"room"`
		Kind            sfu.Kind `json:"kind,omitempty"`
		MaxParticipants int      `json:"max_participants,omitempty"`
		AutoRecord      bool     `json:"auto_record,omitempty"`
		Reason          string   `json:"reason,omitempty"`
	}
	participantHook struct {
		Room        string              `json:"room"`
		Participant sfu.ParticipantInfo `json:"participant"`
	}
	participantLeftHook struct {
		Room     string `json:"room"`
		Identity string `json:"identity"`
		Reason   string `json:"reason,omitempty"`
	}
	trackHook struct {
		Room  string        `json:"room"`
		Track sfu.TrackInfo `json:"track"`
		By    string        `json:"by,omitempty"`
	}
)

// hookWatcher turns a room's events into webhooks. Deliver runs under
// the room's lock: it only encodes and enqueues (Emit never blocks).
type hookWatcher struct {
	hooks *webhooks.Dispatcher
	room  string
}

// Deliver implements sfu.Sink.
func (w *hookWatcher) Deliver(ev sfu.Event) {
	switch ev := ev.(type) {
	case sfu.ParticipantJoinedEvent:
		w.hooks.Emit(webhooks.ParticipantJoined, participantHook{Room: w.room, Participant: ev.Participant})
	case sfu.ParticipantUpdatedEvent:
		w.hooks.Emit(webhooks.ParticipantUpdated, participantHook{Room: w.room, Participant: ev.Participant})
	case sfu.ParticipantLeftEvent:
		w.hooks.Emit(webhooks.ParticipantLeft, participantLeftHook{Room: w.room, Identity: ev.Identity, Reason: ev.Reason})
	case sfu.TrackPublishedEvent:
		w.hooks.Emit(webhooks.TrackPublished, trackHook{Room: w.room, Track: ev.Track})
	case sfu.TrackUnpublishedEvent:
		w.hooks.Emit(webhooks.TrackUnpublished, trackHook{Room: w.room, Track: ev.Track})
	case sfu.TrackMutedEvent:
		w.hooks.Emit(webhooks.TrackMuted, trackHook{Room: w.room, Track: ev.Track, By: ev.By})
	case sfu.RoomClosedEvent:
		w.hooks.Emit(webhooks.RoomClosed, roomHook{Room: w.room, Reason: ev.Reason})
	}
}
