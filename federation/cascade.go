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

// cascadeState is the cascade's part of a node: the replicas this node
// serves as an edge, and the relays the rooms it owns feed.
type cascadeState struct {
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

func (n *Node) edgeViewers() int {
	if n.cfg.EdgeViewers == 0 {
		return DefaultEdgeViewers
	}
	return n.cfg.EdgeViewers
}

func (n *Node) edgeIdle() time.Duration {
	if n.cfg.EdgeIdle <= 0 {
		return defaultEdgeIdle
	}
	return n.cfg.EdgeIdle
}

// startCascade subscribes to the presence of the edges' viewers, which
// the owner adds to its rooms' admin feeds.
func (n *Node) startCascade() {
	n.cascade.unsub = n.cl.Subscribe(msgRoomEvent, n.edgePresence)
}

// closeCascade ends every replica (its viewers leave with
// server_shutdown, its relay session ends) and waits for them.
func (n *Node) closeCascade() {
	n.cascade.mu.Lock()
	n.cascade.closed = true
	reps := make([]*replica, 0, len(n.cascade.replicas))
	for _, r := range n.cascade.replicas {
		reps = append(reps, r)
	}
	unsub := n.cascade.unsub
	n.cascade.unsub = nil
	n.cascade.mu.Unlock()
	if unsub != nil {
		unsub()
	}
	for _, r := range reps {
		// The broadcast goes on at its owner: the viewers start over
		// there (or at another edge).
		r.stop(signaling.ReasonRoomMoved)
	}
	n.cascade.wg.Wait()
}

// isReplica reports whether the local room called name is an edge
// replica of a broadcast another node owns.
func (n *Node) isReplica(name string) bool {
	n.cascade.mu.Lock()
	defer n.cascade.mu.Unlock()
	r := n.cascade.replicas[name]
	return (r != nil && !r.roomGone.Load()) || n.cascade.closing[name] > 0
}

// isRelayJoin reports whether a session POST is a relay's: a peer's
// request with HeaderRelay, whose token names that peer's relay.
func (n *Node) isRelayJoin(c *gin.Context, claims *signaling.Claims) bool {
	peer, ok := n.fromPeer(c)
	return ok && c.GetHeader(HeaderRelay) != "" && claims.Subject == relayIdentityPrefix+peer &&
		sfu.Role(claims.Role) == sfu.RoleViewer
}

// isEdgeJoin reports whether the request asks this node to serve a join
// as an edge: a peer's request with HeaderEdge.
func (n *Node) isEdgeJoin(c *gin.Context) bool {
	_, ok := n.fromPeer(c)
	return ok && c.GetHeader(HeaderEdge) == "1"
}

// Joined implements signaling.Federation: it remembers, at the owner,
// that the participant of a relay's session (isRelayJoin) is not a
// viewer.
func (n *Node) Joined(c *gin.Context, claims *signaling.Claims, p *sfu.Participant) {
	if !n.isRelayJoin(c, claims) {
		return
	}
	n.cascade.mu.Lock()
	defer n.cascade.mu.Unlock()
	if n.cascade.relays == nil {
		n.cascade.relays = map[*sfu.Participant]bool{}
	}
	n.cascade.relays[p] = true
}

// localViewers counts the viewers of room on this node, relays aside.
func (n *Node) localViewers(room *sfu.Room) int {
	ps := room.List()
	n.cascade.mu.Lock()
	defer n.cascade.mu.Unlock()
	for p := range n.cascade.relays {
		select {
		case <-p.Done():
			delete(n.cascade.relays, p)
		default:
		}
	}
	viewers := 0
	for _, p := range ps {
		if p.Role() == sfu.RoleViewer && !n.cascade.relays[p] {
			viewers++
		}
	}
	return viewers
}

// SpillJoin implements signaling.Federation: it sends a viewer's join of
// a full broadcast room this node owns to an edge node, and reports
// whether it did (it has replied then). The edge is the node the client came through, when a peer
// relayed the join, else the least loaded other node; with no other
// live node the join is served here.
func (n *Node) SpillJoin(c *gin.Context, claims *signaling.Claims, room *sfu.Room) bool {
	cl := n.cl
	limit := n.edgeViewers()
	if limit < 0 || room.Kind() != sfu.KindBroadcast || sfu.Role(claims.Role) != sfu.RoleViewer ||
		n.isReplica(room.Name()) || n.isEdgeJoin(c) || n.isRelayJoin(c, claims) {
		return false
	}
	if n.localViewers(room) < limit {
		return false
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), clusterTimeout)
	defer cancel()
	var edge cluster.Node
	var err error
	if peer, ok := n.fromPeer(c); ok && peer != n.id {
		edge, err = cl.Node(ctx, peer)
	} else {
		edge, err = cl.Pick(ctx, n.id)
	}
	if err != nil {
		n.log.Debug("no edge node: serving the viewer here", "room", room.Name(), "err", err)
		return false
	}
	n.log.Debug("viewer sent to an edge", "room", room.Name(), "participant", claims.Subject, "edge", edge.ID)
	n.proxyTo(c, edge, http.Header{HeaderEdge: {"1"}})
	return true
}

// PrepareJoin implements signaling.Federation: it readies, for a join
// this node serves as an edge, the room's replica and its relay. It returns a func to call once the join
// is done (the replica does not close for idleness before), or nil when
// the request is not an edge join.
func (n *Node) PrepareJoin(c *gin.Context) (func(), error) {
	if !n.isEdgeJoin(c) {
		return nil, nil
	}
	name := c.Param("room")
	tok, ok := signaling.Bearer(c.Request)
	if !ok {
		return nil, fmt.Errorf("%w: no bearer token", signaling.ErrInvalidToken)
	}
	claims, err := n.srv.Tokens().Verify(tok)
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
	r, err := n.ensureReplica(ctx, name)
	if err != nil || r == nil {
		return nil, err
	}
	return r.joinDone, nil
}

// ensureReplica returns the linked replica of room name, starting it
// (and its relay) when there is none; nil when this node owns the room
// (it is served as any local room). The replica counts one join under
// way, which the caller ends with joinDone.
func (n *Node) ensureReplica(ctx context.Context, name string) (*replica, error) {
	cl := n.cl
	rec, err := cl.Room(ctx, name)
	switch {
	case errors.Is(err, cluster.ErrRoomNotFound):
		return nil, fmt.Errorf("%w: %q", sfu.ErrRoomNotFound, name)
	case err != nil:
		return nil, fmt.Errorf("%w: %v", signaling.ErrClusterUnavailable, err)
	case rec.Owner == n.id:
		return nil, nil
	case sfu.Kind(rec.Kind) != sfu.KindBroadcast:
		return nil, fmt.Errorf("%w: only broadcasts are cascaded", signaling.ErrForbidden)
	}
	owner, err := cl.Node(ctx, rec.Owner)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", signaling.ErrNodeUnavailable, err)
	}

	n.cascade.mu.Lock()
	r := n.cascade.replicas[name]
	if r != nil && r.roomGone.Load() {
		r = nil // its room was closed under it (an adoption): it is closing
	}
	if r == nil {
		if n.cascade.closed {
			n.cascade.mu.Unlock()
			return nil, signaling.ErrShuttingDown
		}
		// The replica is the same instance as its origin: a viewer's
		// token for it joins here too.
		room, err := n.sfu.CreateRoom(name, sfu.KindBroadcast, sfu.RoomOptions{Instance: rec.Instance})
		if err != nil {
			n.cascade.mu.Unlock()
			if errors.Is(err, sfu.ErrRoomExists) {
				return nil, signaling.ErrRoomMoved // a room of ours by that name: it was moved away
			}
			return nil, err
		}
		if r, err = n.newReplica(room, owner); err != nil {
			n.cascade.mu.Unlock()
			room.Close(sfu.ReasonRoomClosed)
			return nil, err
		}
		if n.cascade.replicas == nil {
			n.cascade.replicas = map[string]*replica{}
		}
		n.cascade.replicas[name] = r
		n.cascade.wg.Add(2)
		go r.run()
		go r.watch()
	}
	r.mu.Lock()
	r.pending++
	r.mu.Unlock()
	n.cascade.mu.Unlock()

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
func (n *Node) edgePresence(m cluster.Message) {
	if m.Origin == n.id || n.isReplica(m.Room) {
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
			n.srv.FeedEvent(m.Room, ev)
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
			n.srv.FeedEvent(m.Room, ev)
		}
	}
}
