package signaling

import (
	"errors"
	"fmt"
	"net/http"
	"sort"
	"time"
	"unicode/utf8"

	"github.com/gin-gonic/gin"
	"github.com/vigil-media/vigil/sfu"
)

// participantsAPI is the admin API of the participants of a room: list,
// describe, change the role, kick, mute a track, and revoke an identity's
// tokens. It holds no state of its own, so no lock: the rooms and the
// tokens guard theirs.
type participantsAPI struct {
	// srv is the composition root: the media core, the tokens, bindJSON
	// and the cluster's revocations (Federation.Revoked).
	srv *Server
	hub *sessionHub // the transport attached to each participant
}

// routes registers the routes of g, a group behind the admin key.
func (a *participantsAPI) routes(g relayedRoutes) {
	g.POST("/rooms/:room/tokens/revoke", a.revokeTokens)
	g.GET("/rooms/:room/participants", a.listParticipants)
	g.GET("/rooms/:room/participants/:identity", a.getParticipant)
	g.PATCH("/rooms/:room/participants/:identity", a.updateParticipant)
	g.POST("/rooms/:room/participants/:identity/kick", a.kickParticipant)
	g.POST("/rooms/:room/participants/:identity/tracks/:source/mute", a.muteTrack)
}

// maxKickMessageBytes caps the text an admin sends with a kick.
const maxKickMessageBytes = 512

// trackResponse describes a published track with its counters.
type trackResponse struct {
	sfu.TrackInfo
	sfu.TrackStats
}

// ParticipantResponse describes a participant to an admin.
type ParticipantResponse struct {
	Identity string   `json:"identity"`
	Role     sfu.Role `json:"role"`
	// ConnectionState is the state of the participant's PeerConnection.
	ConnectionState string `json:"connection_state"`
	// Transport names the signaling transport attached now, null if none.
	Transport *string `json:"transport"`
	// Bitrate is the sum of the recent bitrates of its tracks, in bit/s.
	Bitrate uint64          `json:"bitrate"`
	Tracks  []trackResponse `json:"tracks"`
}

// describeParticipant describes p; transports comes from a.transports.
func describeParticipant(p *sfu.Participant, transports map[*sfu.Participant]string) ParticipantResponse {
	out := ParticipantResponse{
		Identity: p.Identity(), Role: p.Role(),
		ConnectionState: p.ConnectionState().String(),
		Tracks:          []trackResponse{},
	}
	if t := transports[p]; t != "" {
		out.Transport = &t
	}
	for _, u := range p.Tracks() {
		tr := trackResponse{TrackInfo: u.Info(), TrackStats: u.Stats()}
		out.Bitrate += tr.Bitrate
		out.Tracks = append(out.Tracks, tr)
	}
	sort.Slice(out.Tracks, func(i, j int) bool { return out.Tracks[i].Source < out.Tracks[j].Source })
	return out
}

// participant looks up the room and the participant named in the path.
func (a *participantsAPI) participant(c *gin.Context) (*sfu.Room, *sfu.Participant, error) {
	r, err := a.srv.sfu.Room(c.Param("room"))
	if err != nil {
		return nil, nil, err
	}
	id := c.Param("identity")
	p := r.Participant(id)
	if p == nil {
		return r, nil, fmt.Errorf("%w: %q", sfu.ErrParticipantNotFound, id)
	}
	return r, p, nil
}

// listParticipantsResponse is the reply to GET .../participants.
type listParticipantsResponse struct {
	Participants []ParticipantResponse `json:"participants"`
}

func (a *participantsAPI) listParticipants(c *gin.Context) {
	r, err := a.srv.sfu.Room(c.Param("room"))
	if err != nil {
		writeError(c, err)
		return
	}
	ps := r.List()
	ts := a.hub.transports(r.Name())
	out := listParticipantsResponse{Participants: make([]ParticipantResponse, 0, len(ps))}
	for _, p := range ps {
		out.Participants = append(out.Participants, describeParticipant(p, ts))
	}
	c.JSON(http.StatusOK, out)
}

func (a *participantsAPI) getParticipant(c *gin.Context) {
	_, p, err := a.participant(c)
	if err != nil {
		writeError(c, err)
		return
	}
	c.JSON(http.StatusOK, describeParticipant(p, a.hub.transportOf(p)))
}

// updateParticipantRequest is the body of PATCH .../participants/{identity}.
type updateParticipantRequest struct {
	Role *sfu.Role `json:"role"`
}

// updateParticipant changes a participant's role, if its room's kind
// allows: what it publishes, receives and sees changes at once. The role
// lasts as long as the participant: rejoining takes the token's role.
func (a *participantsAPI) updateParticipant(c *gin.Context) {
	r, p, err := a.participant(c)
	if err != nil {
		writeError(c, err)
		return
	}
	var req updateParticipantRequest
	if err := a.srv.bindJSON(c, &req); err != nil {
		writeError(c, err)
		return
	}
	if req.Role == nil {
		writeError(c, fmt.Errorf("%w: role is required", ErrInvalidRequest))
		return
	}
	if !sfu.ValidRole(r.Kind(), *req.Role) {
		writeError(c, fmt.Errorf("%w: %q in a %s room (one of %v)", sfu.ErrInvalidRole, *req.Role, r.Kind(), sfu.Roles(r.Kind())))
		return
	}
	if err := r.SetRole(p.Identity(), *req.Role); err != nil {
		writeError(c, err)
		return
	}
	c.JSON(http.StatusOK, describeParticipant(p, a.hub.transportOf(p)))
}

// kickRequest is the optional body of POST .../kick.
type kickRequest struct {
	Reason string `json:"reason"`
}

// kickParticipant removes a participant: it gets a left event with
// reason "kicked" and the admin's text as message, its media stops, and
// the others see it leave with reason "kicked".
func (a *participantsAPI) kickParticipant(c *gin.Context) {
	_, p, err := a.participant(c)
	if err != nil {
		writeError(c, err)
		return
	}
	var req kickRequest
	if c.Request.ContentLength != 0 {
		if err := a.srv.bindJSON(c, &req); err != nil {
			writeError(c, err)
			return
		}
	}
	if len(req.Reason) > maxKickMessageBytes || !utf8.ValidString(req.Reason) {
		writeError(c, fmt.Errorf("%w: reason must be at most %d bytes of UTF-8", ErrInvalidRequest, maxKickMessageBytes))
		return
	}
	p.LeaveWithMessage(sfu.ReasonKicked, req.Reason)
	c.Status(http.StatusNoContent)
}

// muteRequest is the body of POST .../tracks/{source}/mute.
type muteRequest struct {
	Muted *bool `json:"muted"`
}

// muteTrack stops (or resumes) forwarding one of a participant's tracks.
// The participant and those who see it get a track_muted event. The
// source stays muted if the participant publishes it again.
func (a *participantsAPI) muteTrack(c *gin.Context) {
	_, p, err := a.participant(c)
	if err != nil {
		writeError(c, err)
		return
	}
	src := sfu.Source(c.Param("source"))
	if !src.Valid() {
		writeError(c, fmt.Errorf("%w: unknown source %q (camera, microphone or screen)", ErrInvalidRequest, src))
		return
	}
	var req muteRequest
	if err := a.srv.bindJSON(c, &req); err != nil {
		writeError(c, err)
		return
	}
	if req.Muted == nil {
		writeError(c, fmt.Errorf("%w: muted is required", ErrInvalidRequest))
		return
	}
	if _, err := p.SetMuted(src, *req.Muted, "admin"); err != nil {
		writeError(c, err)
		return
	}
	for _, u := range p.Tracks() {
		if u.Source() == src {
			c.JSON(http.StatusOK, trackResponse{TrackInfo: u.Info(), TrackStats: u.Stats()})
			return
		}
	}
	// The track ended meanwhile.
	writeError(c, fmt.Errorf("%w: %s publishes no %s", sfu.ErrTrackNotFound, p.Identity(), src))
}

// revokeRequest is the body of POST /v1/rooms/{room}/tokens/revoke.
type revokeRequest struct {
	Identity string `json:"identity"`
}

// revokeResponse is the reply to a revocation.
type revokeResponse struct {
	Room         string    `json:"room"`
	Identity     string    `json:"identity"`
	RevokedAt    time.Time `json:"revoked_at"`
	Disconnected bool      `json:"disconnected"`
}

// revokeTokens makes every token of an identity in the room issued so far
// stop working, and disconnects that identity's participant at once with
// reason token_revoked. The revocation is by name: it covers the tokens
// of every instance of the room, and works as well for a room that no
// longer exists (nobody to disconnect then).
func (a *participantsAPI) revokeTokens(c *gin.Context) {
	name := c.Param("room")
	if !sfu.ValidName(name) {
		writeError(c, fmt.Errorf("%w: room name %q", sfu.ErrInvalidName, name))
		return
	}
	r, err := a.srv.sfu.Room(name)
	switch {
	case errors.Is(err, sfu.ErrRoomNotFound):
		r = nil // deleted, or never created: its tokens may still be out
	case err != nil:
		writeError(c, err)
		return
	}
	var req revokeRequest
	if err := a.srv.bindJSON(c, &req); err != nil {
		writeError(c, err)
		return
	}
	if !sfu.ValidName(req.Identity) {
		writeError(c, errors.Join(ErrInvalidRequest, fmt.Errorf("%w: identity %q", sfu.ErrInvalidName, req.Identity)))
		return
	}
	// Revoke first: a join racing with this is either refused, or is in
	// the room by the time we look (openSession checks again after
	// joining).
	at := a.srv.tokens.Revoke(name, req.Identity)
	a.srv.fed.Revoked(name, req.Identity, at)
	// Its TURN credentials too, whether or not it is in the room now.
	a.srv.sfu.RevokeICEServers(name, req.Identity)
	out := revokeResponse{Room: name, Identity: req.Identity, RevokedAt: at.UTC()}
	if r == nil {
		c.JSON(http.StatusOK, out)
		return
	}
	if p := r.Participant(req.Identity); p != nil {
		p.Leave(sfu.ReasonRevoked)
		out.Disconnected = true
	}
	c.JSON(http.StatusOK, out)
}
