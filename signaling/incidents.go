package signaling

import (
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
func (a *evidenceAPI) incidentRoutes(g *gin.RouterGroup) {
	r := a.srv.relayed(g.Group("/rooms/:room/incidents", a.requireIncidentReader), RelayRoom)
	r.GET("", a.listIncidents)
	r.GET("/:id", a.getIncident)
	r.GET("/:id/snapshot", a.incidentSnapshot)
}

// requireIncidentReader lets through the admin key, or a valid join
// token of a proctor of the room named in the path.
func (a *evidenceAPI) requireIncidentReader(c *gin.Context) {
	claims, ok := a.srv.adminOrToken(c)
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

// incidentMonitor returns the Monitor or writes the error.
func (a *evidenceAPI) incidentMonitor(c *gin.Context) *incidents.Monitor {
	if a.incidents == nil {
		writeError(c, ErrIncidentsDisabled)
		return nil
	}
	return a.incidents
}

// incidentList is the reply of GET /v1/rooms/{room}/incidents.
type incidentList struct {
	Room      string               `json:"room"`
	Incidents []incidents.Incident `json:"incidents"`
}

func (a *evidenceAPI) listIncidents(c *gin.Context) {
	m := a.incidentMonitor(c)
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

func (a *evidenceAPI) getIncident(c *gin.Context) {
	m := a.incidentMonitor(c)
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

func (a *evidenceAPI) incidentSnapshot(c *gin.Context) {
	m := a.incidentMonitor(c)
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
