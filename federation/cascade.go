package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/vigil-media/vigil/cluster"
	"github.com/vigil-media/vigil/sfu"
	"github.com/vigil-media/vigil/signaling"
)

// Cascaded broadcasts (docs/cluster.md). A broadcast room lives on its
// owner node; once the owner holds Config.EdgeViewers viewers of it, it
// sends each further viewer's join to an edge node (the node the client
// came through, or the least loaded other one) with HeaderEdge. The edge
// serves it from a local replica of the room, linked to the owner by one
// relay per (room, edge): the edge joins the owner's room as a viewer
// through the ordinary signaling (a session, its WebSocket, an ordinary
// PeerConnection, which the edge answers), and publishes each track it
// receives, under the identity and source the offer's track map gives
// it, as a track of a relayed participant of the replica (sfu.JoinRelayed).
// Keyframe requests of the edge's viewers are PLIs on the relay, which
// the owner passes on to the host. The relay is not a viewer at the
// owner: it is never cascaded, and not counted.

// DefaultEdgeViewers is Config.EdgeViewers's default.
const DefaultEdgeViewers = 500

const (
	defaultEdgeIdle     = 10 * time.Second
	relayIdentityPrefix = "relay."
	relayLinkTimeout    = 10 * time.Second // to open the relay's session and socket
	msgRoomEvent        = "room_event"     // cluster.Message type of edge presence
)

// cascade is the node's part in cascaded broadcasts: the replicas this
// node serves as an edge, and the relays the rooms it owns feed.
type cascade struct {
	*core
	router *router // peer auth and relaying

	// mu guards the fields below it but wg. While it is held, a
	// replica's mu may be taken (stopUnless, ensureReplica), and the sfu
	// may be called to create a room and watch it (ensureReplica).
	mu       sync.Mutex
	replicas map[string]*replica // edge: by room name
	// closing counts, by room name, the replicas stopped whose room is
	// not closed yet: still replicas, not rooms of this node, so that the
	// cluster's reconcile does not take one for a room this node lost.
	closing map[string]int
	relays  map[*sfu.Participant]bool // owner: the relays' participants
	closed  bool
	wg      sync.WaitGroup // replica goroutines
	unsub   func()         // the bus subscription
}

func (cs *cascade) edgeViewers() int {
	if cs.cfg.EdgeViewers == 0 {
		return DefaultEdgeViewers
	}
	return cs.cfg.EdgeViewers
}

func (cs *cascade) edgeIdle() time.Duration {
	if cs.cfg.EdgeIdle <= 0 {
		return defaultEdgeIdle
	}
	return cs.cfg.EdgeIdle
}

// startCascade subscribes to the presence of the edges' viewers, which
// the owner adds to its rooms' admin feeds.
func (cs *cascade) startCascade() {
	cs.unsub = cs.cl.Subscribe(msgRoomEvent, cs.edgePresence)
}

// closeCascade ends every replica (its viewers leave with
// server_shutdown, its relay session ends) and waits for them.
func (cs *cascade) closeCascade() {
	cs.mu.Lock()
	cs.closed = true
	reps := make([]*replica, 0, len(cs.replicas))
	for _, r := range cs.replicas {
		reps = append(reps, r)
	}
	unsub := cs.unsub
	cs.unsub = nil
	cs.mu.Unlock()
	if unsub != nil {
		unsub()
	}
	for _, r := range reps {
		// The broadcast goes on at its owner: the viewers start over
		// there (or at another edge).
		r.stop(signaling.ReasonRoomMoved)
	}
	cs.wg.Wait()
}

// isReplica reports whether the local room called name is an edge
// replica of a broadcast another node owns.
func (cs *cascade) isReplica(name string) bool {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	r := cs.replicas[name]
	return (r != nil && !r.roomGone.Load()) || cs.closing[name] > 0
}

// isRelayJoin reports whether a session POST is a relay's: a peer's
// request with HeaderRelay, whose token names that peer's relay.
func (cs *cascade) isRelayJoin(c *gin.Context, claims *signaling.Claims) bool {
	peer, ok := cs.router.fromPeer(c)
	return ok && c.GetHeader(HeaderRelay) != "" && claims.Subject == relayIdentityPrefix+peer &&
		sfu.Role(claims.Role) == sfu.RoleViewer
}

// isEdgeJoin reports whether the request asks this node to serve a join
// as an edge: a peer's request with HeaderEdge.
func (cs *cascade) isEdgeJoin(c *gin.Context) bool {
	_, ok := cs.router.fromPeer(c)
	return ok && c.GetHeader(HeaderEdge) == "1"
}

// Joined is the node's signaling.Federation.Joined: it remembers, at the owner,
// that the participant of a relay's session (isRelayJoin) is not a
// viewer.
func (cs *cascade) Joined(c *gin.Context, claims *signaling.Claims, p *sfu.Participant) {
	if !cs.isRelayJoin(c, claims) {
		return
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.relays == nil {
		cs.relays = map[*sfu.Participant]bool{}
	}
	cs.relays[p] = true
}

// localViewers counts the viewers of room on this node, relays aside.
func (cs *cascade) localViewers(room *sfu.Room) int {
	ps := room.List()
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for p := range cs.relays {
		select {
		case <-p.Done():
			delete(cs.relays, p)
		default:
		}
	}
	viewers := 0
	for _, p := range ps {
		if p.Role() == sfu.RoleViewer && !cs.relays[p] {
			viewers++
		}
	}
	return viewers
}

// SpillJoin is the node's signaling.Federation.SpillJoin: it sends a viewer's join of
// a full broadcast room this node owns to an edge node, and reports
// whether it did (it has replied then). The edge is the node the client came through, when a peer
// relayed the join, else the least loaded other node; with no other
// live node the join is served here.
func (cs *cascade) SpillJoin(c *gin.Context, claims *signaling.Claims, room *sfu.Room) bool {
	cl := cs.cl
	limit := cs.edgeViewers()
	if limit < 0 || room.Kind() != sfu.KindBroadcast || sfu.Role(claims.Role) != sfu.RoleViewer ||
		cs.isReplica(room.Name()) || cs.isEdgeJoin(c) || cs.isRelayJoin(c, claims) {
		return false
	}
	if cs.localViewers(room) < limit {
		return false
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), clusterTimeout)
	defer cancel()
	var edge cluster.Node
	var err error
	if peer, ok := cs.router.fromPeer(c); ok && peer != cs.id {
		edge, err = cl.Node(ctx, peer)
	} else {
		edge, err = cl.Pick(ctx, cs.id)
	}
	if err != nil {
		cs.log.Debug("no edge node: serving the viewer here", "room", room.Name(), "err", err)
		return false
	}
	cs.log.Debug("viewer sent to an edge", "room", room.Name(), "participant", claims.Subject, "edge", edge.ID)
	cs.router.proxyTo(c, edge, http.Header{HeaderEdge: {"1"}})
	return true
}

// PrepareJoin is the node's signaling.Federation.PrepareJoin: it readies, for a join
// this node serves as an edge, the room's replica and its relay. It returns a func to call once the join
// is done (the replica does not close for idleness before), or nil when
// the request is not an edge join.
func (cs *cascade) PrepareJoin(c *gin.Context) (func(), error) {
	if !cs.isEdgeJoin(c) {
		return nil, nil
	}
	name := c.Param("room")
	tok, ok := signaling.Bearer(c.Request)
	if !ok {
		return nil, fmt.Errorf("%w: no bearer token", signaling.ErrInvalidToken)
	}
	claims, err := cs.srv.Tokens().Verify(tok)
	if err != nil {
		return nil, err
	}
	if claims.Room != name {
		return nil, fmt.Errorf("%w: the token is for another room", signaling.ErrForbidden)
	}
	if sfu.Role(claims.Role) != sfu.RoleViewer {
		return nil, fmt.Errorf("%w: only viewers are served by edges", signaling.ErrForbidden)
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), relayLinkTimeout)
	defer cancel()
	r, err := cs.ensureReplica(ctx, name)
	if err != nil || r == nil {
		return nil, err
	}
	return r.joinDone, nil
}

// ensureReplica returns the linked replica of room name, starting it
// (and its relay) when there is none; nil when this node owns the room
// (it is served as any local room). The replica counts one join under
// way, which the caller ends with joinDone.
func (cs *cascade) ensureReplica(ctx context.Context, name string) (*replica, error) {
	cl := cs.cl
	rec, err := cl.Room(ctx, name)
	switch {
	case errors.Is(err, cluster.ErrRoomNotFound):
		return nil, fmt.Errorf("%w: %q", sfu.ErrRoomNotFound, name)
	case err != nil:
		return nil, fmt.Errorf("%w: %v", signaling.ErrClusterUnavailable, err)
	case rec.Owner == cs.id:
		return nil, nil
	case sfu.Kind(rec.Kind) != sfu.KindBroadcast:
		return nil, fmt.Errorf("%w: only broadcasts are cascaded", signaling.ErrForbidden)
	}
	owner, err := cl.Node(ctx, rec.Owner)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", signaling.ErrNodeUnavailable, err)
	}

	cs.mu.Lock()
	r := cs.replicas[name]
	if r != nil && r.roomGone.Load() {
		r = nil // its room was closed under it (an adoption): it is closing
	}
	if r == nil {
		if cs.closed {
			cs.mu.Unlock()
			return nil, signaling.ErrShuttingDown
		}
		// The replica is the same instance as its origin: a viewer's
		// token for it joins here too.
		room, err := cs.sfu.CreateRoom(name, sfu.KindBroadcast, sfu.RoomOptions{Instance: rec.Instance})
		if err != nil {
			cs.mu.Unlock()
			if errors.Is(err, sfu.ErrRoomExists) {
				return nil, signaling.ErrRoomMoved // a room of ours by that name: it was moved away
			}
			return nil, err
		}
		if r, err = cs.newReplica(room, owner); err != nil {
			cs.mu.Unlock()
			room.Close(sfu.ReasonRoomClosed)
			return nil, err
		}
		if cs.replicas == nil {
			cs.replicas = map[string]*replica{}
		}
		cs.replicas[name] = r
		cs.wg.Add(2)
		go r.run()
		go r.watch()
	}
	r.mu.Lock()
	r.pending++
	r.mu.Unlock()
	cs.mu.Unlock()

	select {
	case <-r.ready:
		if r.err == nil {
			return r, nil
		}
		err = r.err
	case <-ctx.Done():
		err = fmt.Errorf("%w: the relay to %s is not up: %v", signaling.ErrNodeUnavailable, owner.ID, ctx.Err())
	}
	r.joinDone()
	return nil, err
}

// presenceData is the Data of a room_event Message.
type presenceData struct {
	Type  string `json:"type"`
	Event any    `json:"event"`
}

// edgeJoinedEvent and edgeLeftEvent are the owner's admin feed events of
// an edge's viewers: participant_joined and participant_left, with the
// edge's node id.
type edgeJoinedEvent struct {
	Participant sfu.ParticipantInfo `json:"participant"`
	Node        string              `json:"node,omitempty"`
}

// Type implements sfu.Event.
func (edgeJoinedEvent) Type() string { return "participant_joined" }

type edgeLeftEvent struct {
	Identity string `json:"identity"`
	Reason   string `json:"reason,omitempty"`
	Node     string `json:"node,omitempty"`
	// Identities, on the bus only, are many viewers leaving at once
	// (their replica closed); the feed gets one event each.
	Identities []string `json:"identities,omitempty"`
}

// Type implements sfu.Event.
func (edgeLeftEvent) Type() string { return "participant_left" }

// edgePresence adds an edge's viewer coming or going to the admin feed
// of the room, if this node owns it and the feed is on.
func (cs *cascade) edgePresence(m cluster.Message) {
	if m.Origin == cs.id || cs.isReplica(m.Room) {
		return
	}
	var d struct {
		Type  string          `json:"type"`
		Event json.RawMessage `json:"event"`
	}
	if err := json.Unmarshal(m.Data, &d); err != nil {
		return
	}
	switch d.Type {
	case "participant_joined":
		var ev edgeJoinedEvent
		if json.Unmarshal(d.Event, &ev) == nil {
			ev.Node = m.Origin
			cs.srv.FeedEvent(m.Room, ev)
		}
	case "participant_left":
		var ev edgeLeftEvent
		if json.Unmarshal(d.Event, &ev) != nil {
			break
		}
		ev.Node = m.Origin
		ids := ev.Identities
		ev.Identities = nil
		if len(ids) == 0 {
			ids = []string{ev.Identity}
		}
		for _, id := range ids {
			ev.Identity = id
			cs.srv.FeedEvent(m.Room, ev)
		}
	}
}
