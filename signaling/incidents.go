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

// ctxTokenInstance is the gin context key of the room instance a
// proctor's token reads (requireIncidentReader); unset for the admin key.
const ctxTokenInstance = "vigil.token_instance"

// instanceAll is the value of ?instance= that lists every instance of a
// room's name (the admin key only).
const instanceAll = "all"

// requireIncidentReader lets through the admin key, or a valid join
// token of a proctor of the room named in the path, bound to an instance
// of that room (it reads that instance's incidents only).
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
	case claims.Instance == "":
		writeError(c, errNoTokenInstance)
		return
	}
	c.Set(ctxTokenInstance, claims.Instance)
	c.Next()
}

// errNoTokenInstance refuses evidence to a proctor's token minted
// offline without a room instance: it could be a past cohort's.
var errNoTokenInstance = fmt.Errorf("%w: the token names no room instance; mint it through the API, or with vigil token -instance", ErrTokenRoomInstance)

// listInstance is the instance of room whose incidents a list shows ("":
// every one), from ?instance=: a proctor's token reads its own instance
// only (the default); the admin key reads any one, all of them with
// "all", and by default the instance live now, or every instance when
// the room no longer exists.
func (a *evidenceAPI) listInstance(c *gin.Context, room string) (string, error) {
	q := c.Query("instance")
	if tok := c.GetString(ctxTokenInstance); tok != "" {
		if q != "" && q != tok {
			return "", fmt.Errorf("%w: the token reads its own room instance only", ErrTokenRoomInstance)
		}
		return tok, nil
	}
	switch {
	case q == instanceAll:
		return "", nil
	case q != "" && !sfu.ValidInstance(q):
		return "", fmt.Errorf("%w: instance %q: want a room instance or %q", ErrInvalidRequest, q, instanceAll)
	case q != "":
		return q, nil
	}
	if r, err := a.srv.sfu.Room(room); err == nil {
		return r.Instance(), nil
	}
	return "", nil
}

// incident returns the incident of the path for the reader: one of
// another instance of the room is not found for a proctor's token.
func (a *evidenceAPI) incident(c *gin.Context, m *incidents.Monitor) (incidents.Incident, error) {
	inc, err := m.Get(c.Request.Context(), c.Param("room"), c.Param("id"))
	if err != nil {
		return inc, err
	}
	if tok := c.GetString(ctxTokenInstance); tok != "" && inc.Instance != tok {
		return incidents.Incident{}, fmt.Errorf("%w: %q is of another instance of the room", incidents.ErrNotFound, inc.ID)
	}
	return inc, nil
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
	Room string `json:"room"`
	// Instance is the room instance listed; absent: every instance.
	Instance  string               `json:"instance,omitempty"`
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
	inst, err := a.listInstance(c, room)
	if err != nil {
		writeError(c, err)
		return
	}
	f := incidents.Filter{Room: room, Instance: inst, Identity: c.Query("candidate"), Type: incidents.Type(c.Query("type"))}
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
	c.JSON(http.StatusOK, incidentList{Room: room, Instance: inst, Incidents: list})
}

func (a *evidenceAPI) getIncident(c *gin.Context) {
	m := a.incidentMonitor(c)
	if m == nil {
		return
	}
	inc, err := a.incident(c, m)
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
	if _, err := a.incident(c, m); err != nil {
		writeError(c, err)
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
