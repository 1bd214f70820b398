package signaling

import (
	"errors"
	"io"
	"net/http"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/vigil-media/vigil/sfu"
)

// Federation is the seam between a node and the cluster it may be part
// of (package federation, docs/cluster.md): the placement and routing
// decisions signaling asks for at the few points where a single node and
// a node of a cluster differ. Config.Federation nil is a single node
// (local below): every room and session is here, nothing is relayed, no
// room goes anywhere else.
//
// Its methods are called from request handlers and the server's own
// goroutines, concurrently, and never with a lock of the Server held.
type Federation interface {
	// Route is the routing step, before CORS and before the handlers of
	// every request; kind is how its route is marked where it is
	// registered (RelayNone for OPTIONS and unmarked routes). It lets
	// the request through by returning, or serves it itself (relayed
	// to the node that holds what the route names, or refused) and
	// aborts the chain.
	Route(c *gin.Context, kind Relay)
	// ClientAddr is the address of the request's client that the
	// per-address limits count.
	ClientAddr(c *gin.Context) string
	// NodeID is this node's id, "" on a single node. Session and
	// WHIP/WHEP resource ids then start with it and a '.', and room
	// descriptions name it.
	NodeID() string
	// CreateRoom may serve POST /v1/rooms itself (it places the room on
	// a node); it reports whether it did.
	CreateRoom(c *gin.Context) bool
	// ListRooms may serve GET /v1/rooms itself (the rooms of every
	// node); it reports whether it did.
	ListRooms(c *gin.Context) bool
	// RoomDeleted is told of a room deleted through the API here.
	RoomDeleted(name string)
	// Revoked is told of a revocation made here (applied here already).
	Revoked(room, identity string, at time.Time)
	// PrepareJoin readies a join (a session or WHEP POST) before its
	// token is checked against the room, and returns a func to call
	// once the join is done (nil if none), or why the join fails.
	PrepareJoin(c *gin.Context) (done func(), err error)
	// SpillJoin may send an authorized join to another node; it reports
	// whether it did (the reply is written then).
	SpillJoin(c *gin.Context, claims *Claims, room *sfu.Room) bool
	// Joined is told of the participant of a session opened here.
	Joined(c *gin.Context, claims *Claims, p *sfu.Participant)
	// HandOff may move an empty room of a draining node to another
	// node; it reports whether it did (else the room ends).
	HandOff(r *sfu.Room) bool
	// Health is the body of /healthz; nil for a single node's.
	Health() any
	// Close stops the federation's own work as the server closes, before
	// its rooms end, and returns the reason their participants leave
	// with.
	Close() string
}

// Relay says which node of a cluster serves a route: the one that holds
// what the route's parameter names. Routes are marked where they are
// registered (Server.relayed); Federation.Route gets the mark.
type Relay int

const (
	// RelayNone: any node serves the route itself.
	RelayNone Relay = iota
	// RelayRoom: the node that holds the room named by :room.
	RelayRoom
	// RelaySession: the node that issued the session named by :session.
	RelaySession
	// RelayResource: the node that issued the WHIP/WHEP resource named
	// by :resource.
	RelayResource
)

// local is the Federation of a single node: everything is here.
type local struct{}

func (local) Route(*gin.Context, Relay)                       {}
func (local) ClientAddr(c *gin.Context) string                { return c.ClientIP() }
func (local) NodeID() string                                  { return "" }
func (local) CreateRoom(*gin.Context) bool                    { return false }
func (local) ListRooms(*gin.Context) bool                     { return false }
func (local) RoomDeleted(string)                              {}
func (local) Revoked(string, string, time.Time)               {}
func (local) PrepareJoin(*gin.Context) (func(), error)        { return nil, nil }
func (local) SpillJoin(*gin.Context, *Claims, *sfu.Room) bool { return false }
func (local) Joined(*gin.Context, *Claims, *sfu.Participant)  {}
func (local) HandOff(*sfu.Room) bool                          { return false }
func (local) Health() any                                     { return nil }
func (local) Close() string                                   { return sfu.ReasonShutdown }

// ReasonRoomMoved is why a participant leaves a room that moved to
// another node of a cluster (its node lost it, or stops): open a new
// session with the same token.
const ReasonRoomMoved = "room_moved"

// route is the routing step (Federation.Route), before CORS: the node
// that serves a call sets its CORS headers, a relaying node adds none.
// OPTIONS is never relayed.
func (s *Server) route(c *gin.Context) {
	kind := RelayNone
	if c.Request.Method != http.MethodOptions {
		kind = s.relays[c.Request.Method+" "+c.FullPath()]
	}
	s.fed.Route(c, kind)
}

// relayed is g for registering routes that a cluster serves on one node
// (kind): each is marked in s.relays, by method and full pattern.
func (s *Server) relayed(g *gin.RouterGroup, kind Relay) relayedRoutes {
	return relayedRoutes{g: g, kind: kind, marks: s.relays}
}

// relayedRoutes registers routes on g and marks them with kind.
type relayedRoutes struct {
	g     *gin.RouterGroup
	kind  Relay
	marks map[string]Relay
}

func (r relayedRoutes) GET(p string, h ...gin.HandlerFunc)    { r.handle(http.MethodGet, p, h) }
func (r relayedRoutes) POST(p string, h ...gin.HandlerFunc)   { r.handle(http.MethodPost, p, h) }
func (r relayedRoutes) PATCH(p string, h ...gin.HandlerFunc)  { r.handle(http.MethodPatch, p, h) }
func (r relayedRoutes) DELETE(p string, h ...gin.HandlerFunc) { r.handle(http.MethodDelete, p, h) }

func (r relayedRoutes) handle(method, p string, h []gin.HandlerFunc) {
	r.g.Handle(method, p, h...)
	full := r.g.BasePath()
	if p != "" {
		// As gin joins a group's path and a route's.
		full = path.Join(full, p)
		if strings.HasSuffix(p, "/") && !strings.HasSuffix(full, "/") {
			full += "/"
		}
	}
	r.marks[method+" "+full] = r.kind
}

// Errors of a cluster, answered as 503 with Retry-After.
var (
	// ErrClusterUnavailable: the operation needs Redis, which cannot be
	// reached (503 cluster_unavailable).
	ErrClusterUnavailable = errors.New("cluster unavailable: Redis is unreachable")
	// ErrNodeUnavailable: the node that owns the room (or issued the
	// session) does not answer (503 node_unavailable).
	ErrNodeUnavailable = errors.New("the node that holds the room does not answer")
	// ErrRoomMoved: a relayed request reached a node that does not hold
	// the room (it moved meanwhile); retry (503 room_moved).
	ErrRoomMoved = errors.New("room moved: it is not on this node; retry")
)

// What a Federation uses of a Server. Each of these does what the
// single-node handlers do, for a handler or a callback of package
// federation.

// WriteError replies with the JSON error for err, as every handler does
// (its status and code from the one table in errors.go).
func WriteError(c *gin.Context, err error) { writeError(c, err) }

// ReadRoomRequest reads the body of POST /v1/rooms (size-limited, strict
// JSON, as bindJSON) and returns it decoded and raw, for a relay to send
// on as it came. The request's body can be read again afterwards.
func (s *Server) ReadRoomRequest(c *gin.Context) (CreateRoomRequest, string, error) {
	var req CreateRoomRequest
	raw, err := readBody(c, s.cfg.MaxBodyBytes)
	if err != nil {
		return req, "", err
	}
	c.Request.Body = io.NopCloser(strings.NewReader(raw))
	err = s.bindJSON(c, &req)
	c.Request.Body = io.NopCloser(strings.NewReader(raw))
	c.Request.ContentLength = int64(len(raw))
	return req, raw, err
}

// WatchHooks watches a room opened here for the webhooks of its
// participants, tracks and end, without telling of the room itself
// (federation tells room.rehomed of a room re-homed here).
func (s *Server) WatchHooks(r *sfu.Room) {
	h := s.cfg.Webhooks
	if !h.Enabled() {
		return
	}
	if err := r.Watch(&hookWatcher{hooks: h, room: r.Name()}); err != nil {
		s.log.Debug("watch room for webhooks", "room", r.Name(), "err", err)
	}
}

// DescribeRoom describes a room of this node as GET /v1/rooms/{room}
// does (its node named in a cluster).
func (s *Server) DescribeRoom(r *sfu.Room) RoomResponse {
	return s.describe(r, s.transports(r.Name()))
}

// DescribeRooms describes the rooms of this node, by name, as
// GET /v1/rooms?scope=local does.
func (s *Server) DescribeRooms() []RoomResponse {
	rooms := s.sfu.Rooms()
	sort.Slice(rooms, func(i, j int) bool { return rooms[i].Name() < rooms[j].Name() })
	ts := s.transports("")
	out := make([]RoomResponse, 0, len(rooms))
	for _, r := range rooms {
		out = append(out, s.describe(r, ts))
	}
	return out
}

// describe is describeRoom with the node that holds the room, in a
// cluster.
func (s *Server) describe(r *sfu.Room, ts map[*sfu.Participant]string) RoomResponse {
	out := describeRoom(r, ts)
	out.Node = s.fed.NodeID()
	return out
}

// FeedEvent adds ev to the admin event feed of room, if one is open
// (federation adds there the viewers an edge node serves).
func (s *Server) FeedEvent(room string, ev sfu.Event) {
	if f := s.hub.feed(room); f != nil {
		f.Deliver(ev)
	}
}

// newID is a new session or WHIP/WHEP resource id: in a cluster
// prefixed with this node's id and a '.', so that any node routes it.
func (s *Server) newID() string {
	if id := s.fed.NodeID(); id != "" {
		return id + "." + newSessionID()
	}
	return newSessionID()
}

// Bearer is the bearer token of a request's Authorization header, as
// every handler reads it.
func Bearer(r *http.Request) (string, bool) { return bearer(r) }
