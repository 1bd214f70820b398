package signaling

import (
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/vigil-media/vigil/sfu"
)

// CreateRoomRequest is the body of POST /v1/rooms.
type CreateRoomRequest struct {
	Name            string   `json:"name"`
	Kind            sfu.Kind `json:"kind"`
	MaxParticipants int      `json:"max_participants"`
	AutoRecord      bool     `json:"auto_record"`
}

// RoomResponse describes a room.
type RoomResponse struct {
	Name            string   `json:"name"`
	Kind            sfu.Kind `json:"kind"`
	MaxParticipants int      `json:"max_participants"`
	AutoRecord      bool     `json:"auto_record"`
	// Instance names this instance of the room: a room deleted and
	// created again under the same name is another instance, with its
	// own join tokens and evidence.
	Instance     string                `json:"instance"`
	Participants []ParticipantResponse `json:"participants"`
	// Node is the node that holds the room (cluster mode only).
	Node string `json:"node,omitempty"`
}

// describeRoom describes r; transports comes from s.transports.
func describeRoom(r *sfu.Room, ts map[*sfu.Participant]string) RoomResponse {
	opts := r.Options()
	ps := r.List()
	out := RoomResponse{Name: r.Name(), Kind: r.Kind(), MaxParticipants: opts.MaxParticipants, AutoRecord: opts.AutoRecord,
		Instance:     r.Instance(),
		Participants: make([]ParticipantResponse, 0, len(ps))}
	for _, p := range ps {
		out.Participants = append(out.Participants, describeParticipant(p, ts))
	}
	return out
}

func (s *Server) createRoom(c *gin.Context) {
	if s.fed.CreateRoom(c) {
		return
	}
	var req CreateRoomRequest
	if err := s.bindJSON(c, &req); err != nil {
		writeError(c, err)
		return
	}
	if req.MaxParticipants < 0 {
		writeError(c, fmt.Errorf("%w: max_participants must not be negative", ErrInvalidRequest))
		return
	}
	if err := s.AdmitRoom(); err != nil {
		writeError(c, err)
		return
	}
	r, err := s.sfu.CreateRoom(req.Name, req.Kind, sfu.RoomOptions{MaxParticipants: req.MaxParticipants, AutoRecord: req.AutoRecord})
	if err != nil {
		writeError(c, err)
		return
	}
	s.RoomCreated(r)
	c.JSON(http.StatusCreated, describeRoom(r, nil))
}

// ListRoomsResponse is the reply to GET /v1/rooms.
type ListRoomsResponse struct {
	Rooms []RoomResponse `json:"rooms"`
}

func (s *Server) listRooms(c *gin.Context) {
	if s.fed.ListRooms(c) {
		return
	}
	c.JSON(http.StatusOK, ListRoomsResponse{Rooms: s.DescribeRooms()})
}

func (s *Server) getRoom(c *gin.Context) {
	r, err := s.sfu.Room(c.Param("room"))
	if err != nil {
		writeError(c, err)
		return
	}
	c.JSON(http.StatusOK, s.describe(r, s.transports(r.Name())))
}

// deleteRoom ends a room: every participant leaves with reason
// room_closed (its session gets a left event), its tracks end (so
// recordings are finalized), and the room is forgotten.
func (s *Server) deleteRoom(c *gin.Context) {
	r, err := s.sfu.Room(c.Param("room"))
	if err != nil {
		writeError(c, err)
		return
	}
	r.Close(sfu.ReasonRoomClosed)
	s.fed.RoomDeleted(r.Name())
	c.Status(http.StatusNoContent)
}

// mintTokenRequest is the body of POST /v1/rooms/{room}/tokens.
type mintTokenRequest struct {
	Identity   string   `json:"identity"`
	Role       sfu.Role `json:"role"`
	TTLSeconds int      `json:"ttl_seconds"`
}

type mintTokenResponse struct {
	Token string `json:"token"`
	// Instance is the room instance the token is bound to.
	Instance  string    `json:"instance"`
	JoinURL   string    `json:"join_url"`
	ExpiresAt time.Time `json:"expires_at"`
}

func (s *Server) mintToken(c *gin.Context) {
	r, err := s.sfu.Room(c.Param("room"))
	if err != nil {
		writeError(c, err)
		return
	}
	var req mintTokenRequest
	if err := s.bindJSON(c, &req); err != nil {
		writeError(c, err)
		return
	}
	ttl := time.Duration(req.TTLSeconds) * time.Second
	switch {
	case req.TTLSeconds == 0:
		ttl = time.Hour
	case req.TTLSeconds < 0 || req.TTLSeconds > int(MaxTokenTTL/time.Second):
		writeError(c, fmt.Errorf("%w: ttl_seconds must be between 1 and %d", ErrInvalidRequest, int(MaxTokenTTL.Seconds())))
		return
	}
	if !sfu.ValidName(req.Identity) {
		writeError(c, fmt.Errorf("%w: identity %q", sfu.ErrInvalidName, req.Identity))
		return
	}
	if !sfu.ValidRole(r.Kind(), req.Role) {
		writeError(c, fmt.Errorf("%w: %q in a %s room (one of %v)", sfu.ErrInvalidRole, req.Role, r.Kind(), sfu.Roles(r.Kind())))
		return
	}
	tok, exp, err := s.tokens.MintFor(r.Name(), r.Instance(), req.Identity, string(req.Role), ttl)
	if err != nil {
		writeError(c, err)
		return
	}
	c.JSON(http.StatusCreated, mintTokenResponse{
		Token: tok, Instance: r.Instance(), ExpiresAt: exp.UTC(),
		JoinURL: "/room/" + url.PathEscape(r.Name()) + "#token=" + tok,
	})
}

// authorizeJoin verifies a join token for room: the token's room must be
// that room, its room instance (if it names one) the room's instance now,
// and its role valid there.
func (s *Server) authorizeJoin(r *http.Request, room string) (*Claims, *sfu.Room, error) {
	tok, ok := bearer(r)
	if !ok {
		return nil, nil, fmt.Errorf("%w: no bearer token", ErrInvalidToken)
	}
	claims, err := s.tokens.Verify(tok)
	if err != nil {
		return nil, nil, err
	}
	if claims.Room != room {
		return nil, nil, fmt.Errorf("%w: the token is for another room", ErrForbidden)
	}
	rm, err := s.sfu.Room(room)
	if err != nil {
		return nil, nil, err
	}
	if claims.Instance != "" && claims.Instance != rm.Instance() {
		return nil, nil, fmt.Errorf("%w: the token is for an earlier room of that name", ErrTokenRoomInstance)
	}
	if !sfu.ValidRole(rm.Kind(), sfu.Role(claims.Role)) {
		return nil, nil, fmt.Errorf("%w: role %q is not valid in this room", ErrForbidden, claims.Role)
	}
	return claims, rm, nil
}

// openSessionResponse is the reply to POST /v1/rooms/{room}/sessions.
type openSessionResponse struct {
	SessionID string `json:"session_id"`
	Cursor    uint64 `json:"cursor"`
	WSURL     string `json:"ws_url"`
}

// admitJoin is the first step of every join that receives (a session,
// a WHEP player): the seam prepares it (an edge of a cascade readies its
// replica), the token is checked against the room, and the seam may
// serve it elsewhere (a big broadcast sends a viewer to an edge). ok is
// false when the reply has been written; done is to be called (deferred)
// either way, once the join has ended.
func (s *Server) admitJoin(c *gin.Context) (claims *Claims, room *sfu.Room, done func(), ok bool) {
	done = func() {}
	edgeDone, err := s.fed.PrepareJoin(c)
	if edgeDone != nil {
		done = edgeDone
	}
	if err != nil {
		writeError(c, err)
		return nil, nil, done, false
	}
	if claims, room, err = s.authorizeJoin(c.Request, c.Param("room")); err != nil {
		writeError(c, err)
		return nil, nil, done, false
	}
	if s.fed.SpillJoin(c, claims, room) {
		return nil, nil, done, false
	}
	return claims, room, done, true
}

func (s *Server) openSession(c *gin.Context) {
	claims, room, done, ok := s.admitJoin(c)
	defer done()
	if !ok {
		return
	}
	ss, err := s.hub.open(room, claims)
	if err != nil {
		writeError(c, err)
		return
	}
	s.fed.Joined(c, claims, ss.Participant())
	if s.tokens.Revoked(claims) {
		// Revoked while joining: the revocation may have looked for the
		// participant before it was in the room.
		ss.end(sfu.ReasonRevoked)
		writeError(c, ErrTokenRevoked)
		return
	}
	c.JSON(http.StatusCreated, openSessionResponse{SessionID: ss.id, Cursor: 0, WSURL: "/v1/sessions/" + ss.id + "/ws"})
}

func (s *Server) closeSession(c *gin.Context) {
	ss, err := s.hub.session(c.Param("session"))
	if err != nil {
		writeError(c, err)
		return
	}
	ss.end(sfu.ReasonLeft)
	c.Status(http.StatusNoContent)
}
