package signaling

import (
	"errors"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/vigil-media/vigil/metrics"
	"github.com/vigil-media/vigil/recordings"
	"github.com/vigil-media/vigil/sfu"
	"github.com/vigil-media/vigil/webhooks"
)

// ErrDraining refuses a new room while the server drains.
var ErrDraining = errors.New("server is draining: no new rooms")

// drainPoll is how often a draining server looks for rooms to end.
const drainPoll = 250 * time.Millisecond

// opsState is the server's operational state: drain mode.
type opsState struct {
	draining bool
	since    time.Time
	drained  chan struct{} // closed when draining and no room is left
}

// initOps wires metrics and webhooks; New calls it.
func (s *Server) initOps() {
	s.ops.drained = make(chan struct{})
	if s.cfg.Metrics == nil {
		s.cfg.Metrics = metrics.New("dev")
	}
	m := s.cfg.Metrics
	m.WatchSFU(s.sfu.Stats)
	m.WatchServer(s.serverStats)
	if s.cfg.Recordings != nil {
		m.WatchRecordings(s.cfg.Recordings.Stats)
		s.cfg.Recordings.OnEvent(s.evidence.recordingToFeed) // recording_* on the admin room feeds
	}
	if h := s.cfg.Webhooks; h.Enabled() {
		m.WatchWebhooks(h.Stats)
		if s.cfg.Recordings != nil {
			s.cfg.Recordings.OnEvent(func(ev recordings.Event) { h.Emit(ev.Type, ev.Recording) })
		}
	}
}

// Metrics is the server's metrics registry.
func (s *Server) Metrics() *metrics.Metrics { return s.cfg.Metrics }

// opsRoutes registers the health, readiness, metrics and drain endpoints.
func (s *Server) opsRoutes(e *gin.Engine) {
	e.GET("/healthz", s.healthz)
	e.GET("/readyz", s.readyz)
	e.GET("/metrics", gin.WrapH(s.cfg.Metrics.Handler()))
	e.POST("/v1/drain", s.requireAdmin, s.postDrain)
}

// serverStats is what the metrics read from the signaling layer.
func (s *Server) serverStats() metrics.ServerStats {
	s.mu.Lock()
	out := metrics.ServerStats{Sessions: map[string]int{}, Draining: s.ops.draining}
	s.mu.Unlock()
	s.resources.count(out.Sessions)
	s.hub.countTransports(out.Sessions)
	return out
}

type statusResponse struct {
	Status string `json:"status"`
}

// healthz answers 200 while the process serves HTTP at all.
func (s *Server) healthz(c *gin.Context) {
	c.Header("Cache-Control", "no-store")
	if h := s.fed.Health(); h != nil {
		c.JSON(http.StatusOK, h)
		return
	}
	c.JSON(http.StatusOK, statusResponse{Status: "ok"})
}

// readyz answers 200 when the server takes new rooms, 503 while it
// drains or shuts down.
func (s *Server) readyz(c *gin.Context) {
	c.Header("Cache-Control", "no-store")
	s.mu.Lock()
	closing, draining := s.closing, s.ops.draining
	s.mu.Unlock()
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

func (s *Server) postDrain(c *gin.Context) {
	s.Drain()
	s.mu.Lock()
	since := s.ops.since
	s.mu.Unlock()
	c.JSON(http.StatusAccepted, drainResponse{Draining: true, Since: since.UTC(), Rooms: len(s.sfu.Rooms())})
}

// Drain starts drain mode: new rooms are refused with ErrDraining and
// /readyz answers 503; rooms already open go on. A room with nobody in it
// is ended (at once, or when its last participant leaves); when no room
// is left, Drained is closed. Calling it again does nothing.
func (s *Server) Drain() {
	s.mu.Lock()
	if s.ops.draining {
		s.mu.Unlock()
		return
	}
	s.ops.draining, s.ops.since = true, time.Now()
	s.mu.Unlock()
	s.log.Info("draining: new rooms are refused", "rooms", len(s.sfu.Rooms()))
	s.cfg.Webhooks.Emit(webhooks.ServerDraining, map[string]any{"rooms": len(s.sfu.Rooms())})
	go s.drainLoop()
}

// Draining reports whether drain mode is on.
func (s *Server) Draining() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ops.draining
}

// Drained is closed once the server drains and no room is left.
func (s *Server) Drained() <-chan struct{} { return s.ops.drained }

// drainLoop ends empty rooms until none is left.
func (s *Server) drainLoop() {
	t := time.NewTicker(drainPoll)
	defer t.Stop()
	var deadline <-chan time.Time
	if s.cfg.DrainTimeout > 0 {
		d := time.NewTimer(s.cfg.DrainTimeout)
		defer d.Stop()
		deadline = d.C
	}
	for {
		rooms := s.sfu.Rooms()
		for _, r := range rooms {
			if len(r.List()) == 0 && !s.fed.HandOff(r) {
				r.Close(sfu.ReasonRoomClosed)
			}
		}
		if len(s.sfu.Rooms()) == 0 {
			s.log.Info("drained: no room left")
			close(s.ops.drained)
			return
		}
		select {
		case <-t.C:
		case <-deadline:
			s.log.Warn("drain timeout: rooms still open", "rooms", len(s.sfu.Rooms()), "timeout", s.cfg.DrainTimeout)
			close(s.ops.drained)
			return
		}
	}
}

// admitRoom refuses a new room while draining or shutting down.
func (s *Server) admitRoom() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closing:
		return ErrShuttingDown
	case s.ops.draining:
		return ErrDraining
	}
	return nil
}

// roomCreated tells the webhooks of a new room and watches it for them.
func (s *Server) roomCreated(r *sfu.Room) {
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
