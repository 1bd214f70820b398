package signaling

import (
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/vigil-media/vigil/sfu"
)

// createRoomRequest is the body of POST /v1/rooms.
type createRoomRequest struct {
	Name            string   `json:"name"`
	Kind            sfu.Kind `json:"kind"`
	MaxParticipants int      `json:"max_participants"`
}

// roomResponse describes a room.
type roomResponse struct {
	Name            string                `json:"name"`
	Kind            sfu.Kind              `json:"kind"`
	MaxParticipants int                   `json:"max_participants"`
	Participants    []sfu.ParticipantInfo `json:"participants"`
}

func describeRoom(r *sfu.Room) roomResponse {
	return roomResponse{Name: r.Name(), Kind: r.Kind(), MaxParticipants: r.Options().MaxParticipants, Participants: r.Participants()}
}

func (s *Server) createRoom(c *gin.Context) {
	var req createRoomRequest
	if err := s.bindJSON(c, &req); err != nil {
		writeError(c, err)
		return
	}
	if req.MaxParticipants < 0 {
		writeError(c, fmt.Errorf("%w: max_participants must not be negative", ErrInvalidRequest))
		return
	}
	r, err := s.sfu.CreateRoom(req.Name, req.Kind, sfu.RoomOptions{MaxParticipants: req.MaxParticipants})
	if err != nil {
		writeError(c, err)
		return
	}
	c.JSON(http.StatusCreated, describeRoom(r))
}

func (s *Server) listRooms(c *gin.Context) {
	rooms := s.sfu.Rooms()
	out := make([]roomResponse, 0, len(rooms))
	for _, r := range rooms {
		out = append(out, describeRoom(r))
	}
	c.JSON(http.StatusOK, gin.H{"rooms": out})
}

func (s *Server) getRoom(c *gin.Context) {
	r, err := s.sfu.Room(c.Param("room"))
	if err != nil {
		writeError(c, err)
		return
	}
	c.JSON(http.StatusOK, describeRoom(r))
}

// mintTokenRequest is the body of POST /v1/rooms/{room}/tokens.
type mintTokenRequest struct {
	Identity   string   `json:"identity"`
	Role       sfu.Role `json:"role"`
	TTLSeconds int      `json:"ttl_seconds"`
}

type mintTokenResponse struct {
	Token     string    `json:"token"`
	JoinURL   string    `json:"join_url"`
	ExpiresAt time.Time `json:"expires_at"`
}

const maxTokenTTL = 24 * time.Hour

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
	case req.TTLSeconds < 0 || ttl > maxTokenTTL:
		writeError(c, fmt.Errorf("%w: ttl_seconds must be between 1 and %d", ErrInvalidRequest, int(maxTokenTTL.Seconds())))
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
	tok, exp, err := s.tokens.Mint(r.Name(), req.Identity, string(req.Role), ttl)
	if err != nil {
		writeError(c, err)
		return
	}
	c.JSON(http.StatusCreated, mintTokenResponse{
		Token: tok, ExpiresAt: exp.UTC(),
		JoinURL: "/room/" + url.PathEscape(r.Name()) + "#token=" + tok,
	})
}

// authorizeJoin verifies a join token for room: the token's room must be
// that room and its role valid there.
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

func (s *Server) openSession(c *gin.Context) {
	claims, room, err := s.authorizeJoin(c.Request, c.Param("room"))
	if err != nil {
		writeError(c, err)
		return
	}
	ss, err := s.newSession(room, claims)
	if err != nil {
		writeError(c, err)
		return
	}
	c.JSON(http.StatusCreated, openSessionResponse{SessionID: ss.id, Cursor: 0, WSURL: "/v1/sessions/" + ss.id + "/ws"})
}

func (s *Server) closeSession(c *gin.Context) {
	ss, err := s.session(c.Param("session"))
	if err != nil {
		writeError(c, err)
		return
	}
	ss.end(sfu.ReasonLeft)
	c.Status(http.StatusNoContent)
}

func (s *Server) session(id string) (*Session, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ss, ok := s.sessions[id]
	if !ok {
		return nil, ErrSessionNotFound
	}
	return ss, nil
}
