package signaling

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/gin-gonic/gin"
	"github.com/vigil-media/vigil/incidents"
	"github.com/vigil-media/vigil/sfu"
)

// ErrIncidentsDisabled is returned by the incidents API and messages of a
// server configured without an incidents Monitor.
var ErrIncidentsDisabled = errors.New("incidents are not enabled on this server")

// maxNoteBytes caps the note of an incident.
const maxNoteBytes = 2048

// incidentRoutes registers the incidents API (docs/api.md). Each route
// takes the admin key, or the join token of a proctor of that room (what
// the proctor's page holds); a candidate's token is refused.
func (s *Server) incidentRoutes(g *gin.RouterGroup) {
	r := s.relayed(g.Group("/rooms/:room/incidents", s.requireIncidentReader), RelayRoom)
	r.GET("", s.listIncidents)
	r.GET("/:id", s.getIncident)
	r.GET("/:id/snapshot", s.incidentSnapshot)
}

// requireIncidentReader lets through the admin key, or a valid join
// token of a proctor of the room named in the path.
func (s *Server) requireIncidentReader(c *gin.Context) {
	claims, ok := s.adminOrToken(c)
	switch {
	case !ok:
		return
	case claims == nil: // the admin key
		c.Next()
		return
	case claims.Room != c.Param("room"):
		writeError(c, fmt.Errorf("%w: the token is for another room", ErrForbidden))
		return
	case claims.Role != string(sfu.RoleProctor):
		writeError(c, fmt.Errorf("%w: only proctors see incidents", ErrForbidden))
		return
	}
	c.Next()
}

// adminOrToken authenticates a reader who may be an admin or hold a join
// token: claims nil for the admin key (compared in constant time), the
// token's claims otherwise; ok false once the error is written.
func (s *Server) adminOrToken(c *gin.Context) (claims *Claims, ok bool) {
	key, ok := bearer(c.Request)
	if !ok {
		writeError(c, ErrUnauthorized)
		return nil, false
	}
	sum := sha256.Sum256([]byte(key))
	if subtle.ConstantTimeCompare(sum[:], s.admin[:]) == 1 {
		return nil, true
	}
	claims, err := s.tokens.Verify(key)
	switch {
	case errors.Is(err, ErrTokenExpired), errors.Is(err, ErrTokenRevoked):
		writeError(c, err)
		return nil, false
	case err != nil:
		writeError(c, fmt.Errorf("%w: neither the admin key nor a valid join token", ErrUnauthorized))
		return nil, false
	}
	return claims, true
}

// incidentMonitor returns the Monitor or writes the error.
func (s *Server) incidentMonitor(c *gin.Context) *incidents.Monitor {
	if s.cfg.Incidents == nil {
		writeError(c, ErrIncidentsDisabled)
		return nil
	}
	return s.cfg.Incidents
}

// incidentList is the reply of GET /v1/rooms/{room}/incidents.
type incidentList struct {
	Room      string               `json:"room"`
	Incidents []incidents.Incident `json:"incidents"`
}

func (s *Server) listIncidents(c *gin.Context) {
	m := s.incidentMonitor(c)
	if m == nil {
		return
	}
	room := c.Param("room")
	if !sfu.ValidName(room) {
		writeError(c, fmt.Errorf("%w: room name %q", ErrInvalidRequest, room))
		return
	}
	f := incidents.Filter{Room: room, Identity: c.Query("candidate"), Type: incidents.Type(c.Query("type"))}
	if f.Identity != "" && !sfu.ValidName(f.Identity) {
		writeError(c, fmt.Errorf("%w: candidate %q", ErrInvalidRequest, f.Identity))
		return
	}
	if f.Type != "" && !incidents.ValidType(f.Type) {
		writeError(c, fmt.Errorf("%w: unknown incident type %q", ErrInvalidRequest, f.Type))
		return
	}
	if v := c.Query("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > incidents.MaxList {
			writeError(c, fmt.Errorf("%w: limit must be 1 to %d", ErrInvalidRequest, incidents.MaxList))
			return
		}
		f.Limit = n
	}
	list, err := m.List(c.Request.Context(), f)
	if err != nil {
		writeError(c, err)
		return
	}
	c.JSON(http.StatusOK, incidentList{Room: room, Incidents: list})
}

func (s *Server) getIncident(c *gin.Context) {
	m := s.incidentMonitor(c)
	if m == nil {
		return
	}
	inc, err := m.Get(c.Request.Context(), c.Param("room"), c.Param("id"))
	if err != nil {
		writeError(c, err)
		return
	}
	c.JSON(http.StatusOK, inc)
}

func (s *Server) incidentSnapshot(c *gin.Context) {
	m := s.incidentMonitor(c)
	if m == nil {
		return
	}
	b, err := m.Snapshot(c.Request.Context(), c.Param("room"), c.Param("id"))
	if err != nil {
		writeError(c, err)
		return
	}
	// Evidence does not change: cache it privately.
	c.Header("Cache-Control", "private, max-age=86400, immutable")
	c.Header("X-Content-Type-Options", "nosniff")
	c.Data(http.StatusOK, "image/jpeg", b)
}

// reportIncident applies a report_incident message.
func (s *Server) reportIncident(p *sfu.Participant, msg *ReportIncidentMessage) error {
	if s.cfg.Incidents == nil {
		return ErrIncidentsDisabled
	}
	_, err := s.cfg.Incidents.Report(p, msg.Type, msg.Note)
	return err
}

// flagIncident applies a flag_incident message.
func (s *Server) flagIncident(p *sfu.Participant, msg *FlagIncidentMessage) error {
	if s.cfg.Incidents == nil {
		return ErrIncidentsDisabled
	}
	_, err := s.cfg.Incidents.Flag(p, msg.Identity, msg.Note)
	return err
}
