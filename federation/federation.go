// Package federation makes a Vigil server one node of a cluster
// (docs/cluster.md): every node accepts every call, and a room's calls
// are served by the node that holds it (the room map in Redis, package
// cluster, says which), any other node relaying them there over HTTP,
// WebSocket and SSE included (relay.go). New rooms are placed on the
// least loaded node, rooms of a node that died are re-homed, a draining
// node hands its rooms over, revocations reach every node (rooms.go),
// and big broadcasts cascade to edge nodes (cascade.go, replica.go).
//
// It sits above package signaling and talks to it through one seam,
// signaling.Federation, which *Node implements: signaling asks it the
// placement and routing decisions, and federation uses a few exported
// methods of *signaling.Server to open and describe rooms.
//
// Session and WHIP/WHEP resource ids start with the id of the node that
// issued them and a '.', so that they are routed without asking Redis.
package federation

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/vigil-media/vigil/cluster"
	"github.com/vigil-media/vigil/sfu"
	"github.com/vigil-media/vigil/signaling"
)

// Config configures a node.
type Config struct {
	// Signaling configures the node's signaling server (SFU, AdminKey
	// and TokenSecret required: every node verifies the join tokens any
	// other node minted, so they all need the same secret); New sets its
	// Federation.
	Signaling signaling.Config
	// Cluster configures the node's membership (RedisURL and URL
	// required); New sets its Load, Rooms, Adopt and Lost, its NodeID
	// when empty, and its Key (which signs the registrations) when
	// empty, derived from the admin key.
	Cluster cluster.Config
	// EdgeViewers is how many viewers of one broadcast room this node
	// holds before it sends further viewers to edge nodes, which relay
	// the room from it (cascade.go); 0 means DefaultEdgeViewers, a
	// negative number never.
	EdgeViewers int
	// EdgeIdle is how long an edge keeps a replica with no viewer before
	// it closes it and its relay; 0 means 10s.
	EdgeIdle time.Duration
	// PeerRootCAs are the certificate authorities the node trusts when
	// it calls a node whose URL is https; nil means the system's.
	PeerRootCAs *x509.CertPool
}

// Node is one node of a cluster: a signaling server whose
// signaling.Federation it is, and its cluster membership, whose
// callbacks (load, rooms, adopt, lost) are its room map's. It is the
// composition of three parts, each owning its state and lock, which
// it delegates signaling.Federation's methods to.
type Node struct {
	*core
	router  *router  // peer auth, routing and relaying (relay.go)
	rooms   *roomMap // rooms held here, placement, revocations (rooms.go)
	cascade *cascade // cascaded broadcasts (cascade.go, replica.go)
}

// core is what the parts of a node share.
type core struct {
	cfg Config
	id  string // this node's id, known before the membership exists
	log *slog.Logger
	sfu *sfu.SFU
	// srv is set by New before the membership starts; cl once it has
	// joined, after the membership's first heartbeat may have begun:
	// its callbacks (load, heldRooms, adopt, lose) use id, never cl,
	// but for a room that ended here, which needs a request served
	// after New returned.
	srv *signaling.Server
	cl  *cluster.Cluster
}

// ErrNoTokenSecret refuses a node without Config.Signaling.TokenSecret:
// a secret of its own would make it refuse every other node's tokens.
var ErrNoTokenSecret = errors.New("federation: a token secret is required, the same on every node")

// New builds a node: its signaling server (with the node as its
// Federation), then its membership of the cluster, which may adopt
// rooms at once; then it subscribes to the bus and starts resyncing
// with Redis. It fails as signaling.New does, or when the node cannot
// join ("join the cluster: ...", wrapping cluster.ErrUnavailable when
// Redis cannot be reached).
func New(ctx context.Context, cfg Config) (*Node, error) {
	if cfg.Signaling.TokenSecret == "" {
		return nil, ErrNoTokenSecret
	}
	if cfg.Signaling.Logger == nil {
		cfg.Signaling.Logger = slog.Default()
	}
	if cfg.Cluster.NodeID == "" {
		var b [8]byte
		_, _ = rand.Read(b[:]) // crypto/rand.Read does not fail
		cfg.Cluster.NodeID = hex.EncodeToString(b[:])
	}
	co := &core{cfg: cfg, id: cfg.Cluster.NodeID, log: cfg.Signaling.Logger, sfu: cfg.Signaling.SFU}
	rt := &router{core: co, peerKey: deriveKey(cfg.Signaling.AdminKey, peerKeyLabel), peers: newPeerTransport(cfg.PeerRootCAs), urls: map[string]string{}}
	rm := newRoomMap(co)
	cs := &cascade{core: co, router: rt}
	rt.rooms, rt.cascade = rm, cs
	rm.router, rm.cascade = rt, cs
	n := &Node{core: co, router: rt, rooms: rm, cascade: cs}
	sc := cfg.Signaling
	sc.Federation = n
	srv, err := signaling.New(sc)
	if err != nil {
		return nil, err
	}
	n.srv = srv
	cc := cfg.Cluster
	if len(cc.Key) == 0 {
		cc.Key = deriveKey(cfg.Signaling.AdminKey, registrationKeyLabel)
	}
	cc.Load, cc.Rooms, cc.Adopt, cc.Lost = rm.load, rm.heldRooms, rm.adopt, rm.lose
	cl, err := cluster.New(ctx, cc)
	if err != nil {
		srv.Close(time.Second) // no session yet: returns at once
		return nil, fmt.Errorf("join the cluster: %w", err)
	}
	n.cl = cl
	rm.startCluster()
	cs.startCascade()
	return n, nil
}

var _ signaling.Federation = (*Node)(nil)

// Server is the node's signaling server.
func (n *Node) Server() *signaling.Server { return n.srv }

// Cluster is the node's membership; closing it (after the server) leaves
// the cluster.
func (n *Node) Cluster() *cluster.Cluster { return n.cl }

// The node as signaling.Federation: each method is its part's.

// Route implements signaling.Federation (router.Route).
func (n *Node) Route(c *gin.Context, kind signaling.Relay) { n.router.Route(c, kind) }

// ClientAddr implements signaling.Federation (router.ClientAddr).
func (n *Node) ClientAddr(c *gin.Context) string { return n.router.ClientAddr(c) }

// CreateRoom implements signaling.Federation (roomMap.CreateRoom).
func (n *Node) CreateRoom(c *gin.Context) bool { return n.rooms.CreateRoom(c) }

// ListRooms implements signaling.Federation (roomMap.ListRooms).
func (n *Node) ListRooms(c *gin.Context) bool { return n.rooms.ListRooms(c) }

// RoomDeleted implements signaling.Federation (roomMap.RoomDeleted).
func (n *Node) RoomDeleted(name string) { n.rooms.RoomDeleted(name) }

// Revoked implements signaling.Federation (roomMap.Revoked).
func (n *Node) Revoked(room, identity string, at time.Time) { n.rooms.Revoked(room, identity, at) }

// HandOff implements signaling.Federation (roomMap.HandOff).
func (n *Node) HandOff(r *sfu.Room) bool { return n.rooms.HandOff(r) }

// PrepareJoin implements signaling.Federation (cascade.PrepareJoin).
func (n *Node) PrepareJoin(c *gin.Context) (func(), error) { return n.cascade.PrepareJoin(c) }

// SpillJoin implements signaling.Federation (cascade.SpillJoin).
func (n *Node) SpillJoin(c *gin.Context, claims *signaling.Claims, room *sfu.Room) bool {
	return n.cascade.SpillJoin(c, claims, room)
}

// Joined implements signaling.Federation (cascade.Joined).
func (n *Node) Joined(c *gin.Context, claims *signaling.Claims, p *sfu.Participant) {
	n.cascade.Joined(c, claims, p)
}

// NodeID implements signaling.Federation: this node's id.
func (n *Node) NodeID() string { return n.id }

// health is the reply of /healthz on a node.
type health struct {
	Status string `json:"status"`
	Node   string `json:"node"`
	// Redis says whether the node's last call to Redis succeeded.
	Redis bool `json:"redis"`
}

// Health implements signaling.Federation: the node and whether it
// reaches Redis.
func (n *Node) Health() any {
	return health{Status: "ok", Node: n.id, Redis: n.cl.Available()}
}

// Close implements signaling.Federation: it ends every replica and stops
// the bus subscriptions and the resync loop. The node's participants
// leave with room_moved, not server_shutdown: its rooms stay in the map
// and are re-homed once it has left the cluster, so clients open new
// sessions and find them there.
func (n *Node) Close() string {
	n.cascade.closeCascade()
	n.rooms.stopCluster()
	return signaling.ReasonRoomMoved
}

// writeError is signaling.WriteError, with a failure to reach Redis
// answered as cluster_unavailable.
func writeError(c *gin.Context, err error) {
	if errors.Is(err, cluster.ErrUnavailable) && !errors.Is(err, signaling.ErrClusterUnavailable) {
		err = fmt.Errorf("%w (%w)", signaling.ErrClusterUnavailable, err)
	}
	signaling.WriteError(c, err)
}
