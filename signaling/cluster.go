package signaling

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/vigil-media/vigil/cluster"
	"github.com/vigil-media/vigil/sfu"
	"github.com/vigil-media/vigil/webhooks"
)

// Cluster mode (docs/cluster.md). With Config.Cluster set, every node
// accepts every call: a room's calls are served by the node that owns it
// (the room map in Redis says which), and any other node relays them
// there over HTTP (proxyTo), WebSocket and SSE included. Session and
// WHIP/WHEP resource ids start with the id of the node that issued them
// and a '.', so that they are routed without asking Redis.

// Errors of cluster mode.
var (
	// ErrClusterUnavailable: the operation needs Redis, which cannot be
	// reached (503 cluster_unavailable, with Retry-After).
	ErrClusterUnavailable = errors.New("cluster unavailable: Redis is unreachable")
	// ErrNodeUnavailable: the node that owns the room (or issued the
	// session) does not answer (503 node_unavailable, with Retry-After).
	ErrNodeUnavailable = errors.New("the node that holds the room does not answer")
	// ErrRoomMoved: a relayed request reached a node that does not hold
	// the room (it moved meanwhile); retry (503 room_moved, Retry-After).
	ErrRoomMoved = errors.New("room moved: it is not on this node; retry")
)

// Headers of requests between nodes.
const (
	// HeaderPeer names the node that relays a request.
	HeaderPeer = "X-Vigil-Peer"
	// HeaderPeerAuth proves it: hex HMAC-SHA256 of the node id with a key
	// derived from the admin key (peerKeyLabel).
	HeaderPeerAuth = "X-Vigil-Peer-Auth"
	// HeaderClientIP is the address of the client a peer relays for;
	// believed only with a valid HeaderPeerAuth.
	HeaderClientIP = "X-Vigil-Client-IP"
	// HeaderEdge asks a node to serve a relayed room request itself, as an
	// edge of a cascaded broadcast (signaling/cascade.go); believed only
	// with a valid HeaderPeerAuth.
	HeaderEdge = "X-Vigil-Edge"
	// HeaderPlaced tells the node a relayed POST /v1/rooms was placed on
	// it: it creates the room itself.
	HeaderPlaced = "X-Vigil-Placed"

	peerKeyLabel = "vigil cluster peer v1"
)

// ReasonRoomMoved is why a participant leaves a room that moved to
// another node (its node lost it to a re-homing): open a new session
// with the same token.
const ReasonRoomMoved = "room_moved"

// clusterTimeout bounds one call to Redis made for a request.
const clusterTimeout = 1500 * time.Millisecond

// peerKey derives the key of the peer auth from the admin key.
func peerKey(adminKey string) []byte {
	m := hmac.New(sha256.New, []byte(adminKey))
	m.Write([]byte(peerKeyLabel))
	return m.Sum(nil)
}

// peerAuth is the HeaderPeerAuth value of node id.
func (s *Server) peerAuth(id string) string {
	m := hmac.New(sha256.New, s.peerKey)
	m.Write([]byte(id))
	return hex.EncodeToString(m.Sum(nil))
}

// fromPeer reports whether the request was relayed by another node of
// the cluster, and which: its HeaderPeerAuth must verify (compared in
// constant time). Always false in single-node mode.
func (s *Server) fromPeer(c *gin.Context) (nodeID string, ok bool) {
	if s.cfg.Cluster == nil {
		return "", false
	}
	id := c.Request.Header.Get(HeaderPeer)
	got, err := hex.DecodeString(c.Request.Header.Get(HeaderPeerAuth))
	if id == "" || err != nil {
		return "", false
	}
	want, _ := hex.DecodeString(s.peerAuth(id))
	if !hmac.Equal(got, want) {
		return "", false
	}
	return id, true
}

// clientAddr is the address the per-address limits count: the client a
// peer relays for (HeaderClientIP, with a valid peer auth), else the
// request's own client (the peer's, or X-Forwarded-For from a trusted
// proxy).
func (s *Server) clientAddr(c *gin.Context) string {
	if _, ok := s.fromPeer(c); ok {
		if ip := strings.TrimSpace(c.Request.Header.Get(HeaderClientIP)); ip != "" {
			return ip
		}
	}
	return c.ClientIP()
}

// peerHeaders are the headers only a peer may send (HeaderRelay is the
// cascade's, cascade.go).
var peerHeaders = []string{HeaderPeer, HeaderPeerAuth, HeaderClientIP, HeaderEdge, HeaderPlaced, HeaderRelay}

// stripPeerHeaders forgets the peer headers of a request that does not
// carry a valid peer auth, so that nothing after it believes them.
func (s *Server) stripPeerHeaders(c *gin.Context) {
	if _, ok := s.fromPeer(c); ok {
		return
	}
	for _, h := range peerHeaders {
		c.Request.Header.Del(h)
	}
}

// s.isReplica(name), which tells an edge replica of a cascaded broadcast
// (owned by another node) from a room this node holds, is in cascade.go.

// newID is a new session or WHIP/WHEP resource id: in cluster mode
// prefixed with this node's id and a '.', so that any node routes it.
func (s *Server) newID() string {
	if s.cfg.Cluster != nil {
		return s.cfg.Cluster.ID() + "." + newSessionID()
	}
	return newSessionID()
}

// newPeerTransport is the transport of relayed requests: no overall
// timeout (WebSockets, SSE and long polls last), a short dial.
func newPeerTransport() *http.Transport {
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   5 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
}

// proxyTo relays the request to node n and writes its reply: method,
// path, query, body and headers (Authorization included) as they came,
// the Host too (so that the owner's same-origin checks see what the
// client sent), plus the peer headers (this node's id, its peer auth and
// the client's address) and extra. WebSocket upgrades are relayed, and
// streamed replies (SSE, long polls) are flushed as they come. A node
// that cannot be reached gets 503 node_unavailable. The handler chain is
// aborted: nothing after it runs.
func (s *Server) proxyTo(c *gin.Context, n cluster.Node, extra http.Header) {
	defer c.Abort()
	defer func() {
		// A relayed stream that ends badly (either side went away) after
		// its headers were sent: nothing more can be said to the client.
		// ReverseProxy aborts with http.ErrAbortHandler, which gin's
		// recovery would log as a panic.
		if v := recover(); v != nil {
			if err, ok := v.(error); !ok || !errors.Is(err, http.ErrAbortHandler) {
				panic(v)
			}
			s.log.Debug("relayed reply cut short", "node", n.ID, "path", c.Request.URL.Path)
		}
	}()
	target, err := url.Parse(n.URL)
	if err != nil || target.Host == "" {
		s.log.Error("relay: bad node URL", "node", n.ID, "url", n.URL)
		s.refuseUnavailable(c, ErrNodeUnavailable)
		return
	}
	client := s.clientAddr(c)
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
			for _, h := range peerHeaders {
				pr.Out.Header.Del(h)
			}
			if s.cfg.Cluster != nil {
				id := s.cfg.Cluster.ID()
				pr.Out.Header.Set(HeaderPeer, id)
				pr.Out.Header.Set(HeaderPeerAuth, s.peerAuth(id))
			}
			pr.Out.Header.Set(HeaderClientIP, client)
			for k, vs := range extra {
				pr.Out.Header.Del(k)
				for _, v := range vs {
					pr.Out.Header.Add(k, v)
				}
			}
		},
		Transport:     s.peers,
		FlushInterval: -1,
		ErrorLog:      slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if errors.Is(r.Context().Err(), context.Canceled) {
				return // the client went away
			}
			s.log.Warn("relay to node failed", "node", n.ID, "path", r.URL.Path, "err", err)
			s.refuseUnavailable(c, ErrNodeUnavailable)
		},
	}
	rp.ServeHTTP(c.Writer, c.Request)
}

// refuseUnavailable writes a retryable 503 (cluster_unavailable,
// node_unavailable or room_moved) with Retry-After.
func (s *Server) refuseUnavailable(c *gin.Context, err error) {
	if c.Writer.Written() {
		return
	}
	c.Header("Retry-After", "1")
	writeError(c, err)
}

// clusterState is what cluster mode keeps beside the sfu's rooms.
type clusterState struct {
	mu       sync.Mutex
	records  map[string]cluster.RoomRecord // the records of the rooms held here
	creating map[string]bool               // rooms being created here: not to adopt
	deleting map[string]bool               // rooms ended here whose record is still to delete
	revokes  []cluster.Revocation          // revocations not yet told to the cluster
	urls     map[string]string             // last known URL of each node, by id
	stop     chan struct{}                 // closed by stopCluster
	done     chan struct{}                 // closed when clusterLoop returns
	unsub    func()                        // the "revoked" subscription
	once     sync.Once                     // stopCluster
}

// startCluster subscribes to the revocations of the other nodes and
// starts the loop that loads them (now, and again whenever Redis comes
// back). New calls it in cluster mode.
func (s *Server) startCluster() {
	s.cl.creating, s.cl.deleting, s.cl.urls = map[string]bool{}, map[string]bool{}, map[string]string{}
	s.cl.records = map[string]cluster.RoomRecord{}
	s.cl.stop, s.cl.done = make(chan struct{}), make(chan struct{})
	s.cl.unsub = s.cfg.Cluster.Subscribe(msgRevoked, s.onRevoked)
	go s.clusterLoop()
}

// stopCluster stops what startCluster started; Close calls it.
func (s *Server) stopCluster() {
	if s.cfg.Cluster == nil {
		return
	}
	s.cl.once.Do(func() {
		close(s.cl.stop)
		<-s.cl.done
		s.cl.unsub()
	})
}

// clusterPoll is how often the loop looks whether Redis came back.
const clusterPoll = 250 * time.Millisecond

// clusterLoop resynchronizes with Redis at start and whenever it comes
// back after an outage: it loads the revocations, tells the cluster of
// those made here meanwhile, and deletes the records of the rooms that
// ended here meanwhile.
func (s *Server) clusterLoop() {
	defer close(s.cl.done)
	t := time.NewTicker(clusterPoll)
	defer t.Stop()
	synced := false
	for {
		switch {
		case !s.cfg.Cluster.Available():
			if synced {
				s.log.Warn("cluster: Redis is unreachable; rooms here go on, cross-node calls fail until it is back")
			}
			synced = false
		case !synced:
			synced = s.resync() == nil
			if synced {
				s.log.Info("cluster: in sync with Redis", "node", s.cfg.Cluster.ID())
			}
		}
		select {
		case <-s.cl.stop:
			return
		case <-t.C:
		}
	}
}

// resync is one resynchronization (clusterLoop).
func (s *Server) resync() error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*clusterTimeout)
	defer cancel()
	cl := s.cfg.Cluster
	revs, err := cl.Revocations(ctx)
	if err != nil {
		return err
	}
	for _, rv := range revs {
		s.applyRevocation(rv)
	}
	s.cl.mu.Lock()
	pending := s.cl.revokes
	s.cl.revokes = nil
	var deleting []string
	for name := range s.cl.deleting {
		deleting = append(deleting, name)
	}
	s.cl.mu.Unlock()
	for i, rv := range pending {
		if err := cl.Revoke(ctx, rv); err != nil {
			s.cl.mu.Lock()
			s.cl.revokes = append(pending[i:], s.cl.revokes...)
			s.cl.mu.Unlock()
			return err
		}
	}
	for _, name := range deleting {
		if err := s.forgetRoom(name); err != nil {
			return err
		}
	}
	return nil
}

// unavailable maps a failure to reach Redis to ErrClusterUnavailable.
func unavailable(err error) error {
	if errors.Is(err, cluster.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w (%v)", ErrClusterUnavailable, err)
	}
	return err
}

// redisCtx is the context of a call to Redis made for a request, or
// ErrClusterUnavailable at once when the last call failed, so that a
// request needing Redis fails fast while it is away.
func (s *Server) redisCtx(c *gin.Context) (context.Context, context.CancelFunc, error) {
	if !s.cfg.Cluster.Available() {
		return nil, nil, ErrClusterUnavailable
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), clusterTimeout)
	return ctx, cancel, nil
}

// node looks up a live node. While Redis is away it answers from the
// last URL it saw for that id: a session on a node that is still up
// stays reachable.
func (s *Server) node(ctx context.Context, id string) (cluster.Node, error) {
	var n cluster.Node
	err := ErrClusterUnavailable
	if s.cfg.Cluster.Available() {
		n, err = s.cfg.Cluster.Node(ctx, id)
	}
	s.cl.mu.Lock()
	defer s.cl.mu.Unlock()
	switch {
	case err == nil:
		s.cl.urls[id] = n.URL
	case errors.Is(err, cluster.ErrNodeNotFound):
		delete(s.cl.urls, id)
	default:
		if u, ok := s.cl.urls[id]; ok {
			return cluster.Node{ID: id, URL: u}, nil
		}
	}
	return n, err
}

// clusterRoute is the routing step of cluster mode, before any handler
// of a route scoped to a room or to a session: a room this node holds,
// or a session or WHIP/WHEP resource it issued, is served here; any
// other is relayed to the node that holds it. Requests relayed by a peer
// are never relayed again. In single-node mode it only drops the peer
// headers.
func (s *Server) clusterRoute(c *gin.Context) {
	s.stripPeerHeaders(c)
	if s.cfg.Cluster == nil {
		return
	}
	path, method := c.FullPath(), c.Request.Method
	switch {
	case method == http.MethodOptions:
	case path == "/whip/:room" || path == "/whep/:room":
		s.routeRoom(c, c.Param("room"))
	case path == "/whip/:room/:resource" || path == "/whep/:room/:resource":
		s.routeID(c, c.Param("resource"), ErrResourceNotFound)
	case strings.HasPrefix(path, "/v1/rooms/:room"):
		s.routeRoom(c, c.Param("room"))
	case strings.HasPrefix(path, "/v1/sessions/:session"):
		s.routeID(c, c.Param("session"), ErrSessionNotFound)
	}
}

// routeRoom serves a room's request here if this node holds the room
// (its own room, not an edge replica), and relays it to the room's owner
// otherwise. A room the map does not know is left to the handler, which
// answers as a single node does (404 room_not_found, after its own
// checks).
func (s *Server) routeRoom(c *gin.Context, name string) {
	if _, err := s.sfu.Room(name); err == nil && !s.isReplica(name) {
		return
	}
	if _, peer := s.fromPeer(c); peer {
		if c.GetHeader(HeaderEdge) == "1" {
			return // an edge of a cascaded broadcast asks for its replica (cascade.go)
		}
		// Never relayed twice: the room moved since the peer looked.
		s.refuseUnavailable(c, ErrRoomMoved)
		return
	}
	ctx, cancel, err := s.redisCtx(c)
	if err != nil {
		s.refuseUnavailable(c, err)
		return
	}
	defer cancel()
	me := s.cfg.Cluster.ID()
	rec, err := s.cfg.Cluster.Room(ctx, name)
	switch {
	case errors.Is(err, cluster.ErrRoomNotFound):
		return
	case err != nil:
		s.refuseUnavailable(c, unavailable(err))
		return
	case rec.Owner == me:
		if s.deletingRoom(name) {
			return // ended here: its record goes soon
		}
		// Re-homed here, adopted at the next heartbeat.
		s.refuseUnavailable(c, ErrRoomMoved)
		return
	}
	n, err := s.node(ctx, rec.Owner)
	switch {
	case errors.Is(err, cluster.ErrNodeNotFound):
		// Its owner died; the room is re-homed when the lease runs out.
		s.refuseUnavailable(c, fmt.Errorf("%w: node %s is gone; the room moves to another node", ErrNodeUnavailable, rec.Owner))
		return
	case err != nil:
		s.refuseUnavailable(c, unavailable(err))
		return
	}
	s.proxyTo(c, n, nil)
}

// routeID relays the request of a session or WHIP/WHEP resource issued
// by another node to that node. One whose node is gone is notFound: the
// client opens a new session with its token.
func (s *Server) routeID(c *gin.Context, id string, notFound error) {
	prefix, _, ok := strings.Cut(id, ".")
	if !ok || prefix == s.cfg.Cluster.ID() {
		return
	}
	if _, peer := s.fromPeer(c); peer {
		return // never relayed twice: answered here (not found)
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), clusterTimeout)
	defer cancel()
	n, err := s.node(ctx, prefix)
	switch {
	case errors.Is(err, cluster.ErrNodeNotFound):
		writeError(c, fmt.Errorf("%w: its node %s is gone; open a new session", notFound, prefix))
		return
	case err != nil:
		s.refuseUnavailable(c, unavailable(err))
		return
	}
	s.proxyTo(c, n, nil)
}

// createRoomCluster is POST /v1/rooms in cluster mode: the room goes to
// the least loaded live node (this one included), which writes its
// record in the map first (so that the name is taken cluster-wide) and
// then opens it. A draining node places every new room elsewhere.
func (s *Server) createRoomCluster(c *gin.Context) {
	raw, err := readBody(c, s.cfg.MaxBodyBytes)
	if err != nil {
		writeError(c, err)
		return
	}
	c.Request.Body = io.NopCloser(strings.NewReader(raw))
	var req createRoomRequest
	if err := s.bindJSON(c, &req); err != nil {
		writeError(c, err)
		return
	}
	switch {
	case req.MaxParticipants < 0:
		writeError(c, fmt.Errorf("%w: max_participants must not be negative", ErrInvalidRequest))
		return
	case !sfu.ValidName(req.Name):
		writeError(c, fmt.Errorf("%w: room name %q", sfu.ErrInvalidName, req.Name))
		return
	case !sfu.ValidKind(req.Kind):
		writeError(c, fmt.Errorf("%w: %q", sfu.ErrInvalidKind, req.Kind))
		return
	}
	cl := s.cfg.Cluster
	me := cl.ID()
	ctx, cancel, err := s.redisCtx(c)
	if err != nil {
		s.refuseUnavailable(c, err)
		return
	}
	defer cancel()
	if _, peer := s.fromPeer(c); !peer {
		var except []string
		if s.Draining() {
			except = []string{me}
		}
		n, err := cl.Pick(ctx, except...)
		switch {
		case errors.Is(err, cluster.ErrNodeNotFound) && len(except) > 0:
			writeError(c, ErrDraining) // no other node to place it on
			return
		case err != nil:
			s.refuseUnavailable(c, unavailable(err))
			return
		case n.ID != me:
			c.Request.Body = io.NopCloser(strings.NewReader(raw))
			c.Request.ContentLength = int64(len(raw))
			s.proxyTo(c, n, http.Header{HeaderPlaced: {n.ID}})
			return
		}
	}
	if err := s.admitRoom(); err != nil {
		writeError(c, err)
		return
	}
	if _, err := s.sfu.Room(req.Name); err == nil {
		writeError(c, fmt.Errorf("%w: %q", sfu.ErrRoomExists, req.Name))
		return
	}
	s.cl.mu.Lock()
	if s.cl.creating[req.Name] {
		s.cl.mu.Unlock()
		writeError(c, fmt.Errorf("%w: %q", sfu.ErrRoomExists, req.Name))
		return
	}
	s.cl.creating[req.Name] = true
	s.cl.mu.Unlock()
	defer func() {
		s.cl.mu.Lock()
		delete(s.cl.creating, req.Name)
		s.cl.mu.Unlock()
	}()
	rec, err := cl.CreateRoom(ctx, cluster.RoomRecord{Name: req.Name, Kind: string(req.Kind),
		MaxParticipants: req.MaxParticipants, AutoRecord: req.AutoRecord, Owner: me})
	switch {
	case errors.Is(err, cluster.ErrRoomExists):
		writeError(c, fmt.Errorf("%w: %q", sfu.ErrRoomExists, req.Name))
		return
	case err != nil:
		s.refuseUnavailable(c, unavailable(err))
		return
	}
	r, err := s.sfu.CreateRoom(req.Name, req.Kind, sfu.RoomOptions{MaxParticipants: req.MaxParticipants, AutoRecord: req.AutoRecord})
	if err != nil {
		if derr := cl.DeleteRoom(context.WithoutCancel(ctx), req.Name, me); derr != nil && !errors.Is(derr, cluster.ErrRoomNotFound) {
			s.log.Warn("cluster: undo a room record", "room", req.Name, "err", derr)
		}
		writeError(c, err)
		return
	}
	s.keepRecord(rec)
	s.roomCreated(r)
	s.watchRoom(r)
	c.JSON(http.StatusCreated, s.describe(r, nil))
}

// describe is describeRoom with, in cluster mode, the node that holds
// the room.
func (s *Server) describe(r *sfu.Room, ts map[*sfu.Participant]string) roomResponse {
	out := describeRoom(r, ts)
	if s.cfg.Cluster != nil {
		out.Node = s.cfg.Cluster.ID()
	}
	return out
}

// listRoomsCluster is GET /v1/rooms in cluster mode: every room of the
// map, each described by the node that holds it (asked with
// ?scope=local), or from its record alone when that node does not
// answer.
func (s *Server) listRoomsCluster(c *gin.Context) {
	ctx, cancel, err := s.redisCtx(c)
	if err != nil {
		s.refuseUnavailable(c, err)
		return
	}
	defer cancel()
	cl := s.cfg.Cluster
	recs, err := cl.Rooms(ctx)
	if err != nil {
		s.refuseUnavailable(c, unavailable(err))
		return
	}
	nodes, err := cl.Nodes(ctx)
	if err != nil {
		s.refuseUnavailable(c, unavailable(err))
		return
	}
	type listed struct {
		node  string
		rooms []roomResponse
	}
	results := make(chan listed, len(nodes))
	asked := 0
	for _, n := range nodes {
		if n.ID == cl.ID() {
			continue
		}
		asked++
		go func() {
			results <- listed{node: n.ID, rooms: s.peerRooms(c, n)}
		}()
	}
	byNode := map[string]map[string]roomResponse{cl.ID(): {}}
	ts := s.transports("")
	for _, r := range s.sfu.Rooms() {
		byNode[cl.ID()][r.Name()] = s.describe(r, ts)
	}
	for range asked {
		l := <-results
		m := map[string]roomResponse{}
		for _, r := range l.rooms {
			m[r.Name] = r
		}
		byNode[l.node] = m
	}
	out := listRoomsResponse{Rooms: make([]roomResponse, 0, len(recs))}
	for _, rec := range recs {
		r, ok := byNode[rec.Owner][rec.Name]
		if !ok {
			r = roomResponse{Name: rec.Name, Kind: sfu.Kind(rec.Kind), MaxParticipants: rec.MaxParticipants,
				AutoRecord: rec.AutoRecord, Participants: []participantResponse{}}
		}
		r.Node = rec.Owner
		out.Rooms = append(out.Rooms, r)
	}
	sort.Slice(out.Rooms, func(i, j int) bool { return out.Rooms[i].Name < out.Rooms[j].Name })
	c.JSON(http.StatusOK, out)
}

// peerRooms asks node n for the rooms it holds (GET /v1/rooms?scope=local
// with the caller's admin key and this node's peer auth); nil if it does
// not answer within clusterTimeout.
func (s *Server) peerRooms(c *gin.Context, n cluster.Node) []roomResponse {
	ctx, cancel := context.WithTimeout(c.Request.Context(), clusterTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(n.URL, "/")+"/v1/rooms?scope=local", nil)
	if err != nil {
		return nil
	}
	req.Header.Set("Authorization", c.GetHeader("Authorization"))
	id := s.cfg.Cluster.ID()
	req.Header.Set(HeaderPeer, id)
	req.Header.Set(HeaderPeerAuth, s.peerAuth(id))
	req.Header.Set(HeaderClientIP, s.clientAddr(c))
	resp, err := s.peers.RoundTrip(req)
	if err != nil {
		s.log.Warn("cluster: list the rooms of a node", "node", n.ID, "err", err)
		return nil
	}
	defer resp.Body.Close()
	var out listRoomsResponse
	if resp.StatusCode != http.StatusOK || json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&out) != nil {
		s.log.Warn("cluster: list the rooms of a node", "node", n.ID, "status", resp.StatusCode)
		return nil
	}
	return out.Rooms
}

// clusterWatcher makes a room's record follow the room: when the room
// ends here (deleted, drained), its record leaves the map. A room that
// moved, or that ends because this node shuts down, keeps its record:
// another node holds it, or will.
type clusterWatcher struct {
	srv  *Server
	room string
}

// Deliver implements sfu.Sink; it runs under the room's lock.
func (w *clusterWatcher) Deliver(ev sfu.Event) {
	ce, ok := ev.(sfu.RoomClosedEvent)
	if !ok {
		return
	}
	w.srv.cl.mu.Lock()
	defer w.srv.cl.mu.Unlock()
	delete(w.srv.cl.records, w.room)
	if ce.Reason == ReasonRoomMoved || ce.Reason == sfu.ReasonShutdown {
		return
	}
	w.srv.cl.deleting[w.room] = true
	go func() {
		if err := w.srv.forgetRoom(w.room); err != nil {
			w.srv.log.Warn("cluster: delete a room's record; retried when Redis is back", "room", w.room, "err", err)
		}
	}()
}

// watchRoom makes r's record follow it (clusterWatcher).
func (s *Server) watchRoom(r *sfu.Room) {
	if s.cfg.Cluster == nil {
		return
	}
	if err := r.Watch(&clusterWatcher{srv: s, room: r.Name()}); err != nil {
		s.log.Debug("watch room for the cluster", "room", r.Name(), "err", err)
	}
}

// deletingRoom reports whether the room ended here and its record is
// still to delete.
func (s *Server) deletingRoom(name string) bool {
	s.cl.mu.Lock()
	defer s.cl.mu.Unlock()
	return s.cl.deleting[name]
}

// forgetRoom deletes the record of a room that ended here, if this node
// still owns it. A failure to reach Redis keeps it to retry
// (clusterLoop); until then the room is not adopted again.
func (s *Server) forgetRoom(name string) error {
	s.cl.mu.Lock()
	s.cl.deleting[name] = true
	s.cl.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	err := s.cfg.Cluster.DeleteRoom(ctx, name, s.cfg.Cluster.ID())
	if err != nil && !errors.Is(err, cluster.ErrRoomNotFound) && !errors.Is(err, cluster.ErrNotOwner) {
		return err
	}
	s.cl.mu.Lock()
	delete(s.cl.deleting, name)
	s.cl.mu.Unlock()
	return nil
}

// AdoptRoom opens here a room the map gives to this node that it does
// not hold: one re-homed here from a node that died (cluster.Config.Adopt).
// An edge replica of it gives way to it.
func (s *Server) AdoptRoom(rec cluster.RoomRecord) {
	if s.admitRoom() == ErrShuttingDown {
		return // its rooms go to the other nodes
	}
	s.cl.mu.Lock()
	creating, deleting := s.cl.creating[rec.Name], s.cl.deleting[rec.Name]
	s.cl.mu.Unlock()
	switch {
	case creating:
		return
	case deleting:
		go func() { _ = s.forgetRoom(rec.Name) }()
		return
	}
	if r, err := s.sfu.Room(rec.Name); err == nil {
		if !s.isReplica(rec.Name) {
			return
		}
		r.Close(ReasonRoomMoved)
	}
	r, err := s.sfu.CreateRoom(rec.Name, sfu.Kind(rec.Kind), sfu.RoomOptions{MaxParticipants: rec.MaxParticipants, AutoRecord: rec.AutoRecord})
	if err != nil {
		s.log.Error("cluster: adopt a room", "room", rec.Name, "err", err)
		return
	}
	s.log.Info("cluster: room re-homed here", "room", rec.Name, "epoch", rec.Epoch)
	s.keepRecord(rec)
	s.roomAdopted(r, rec)
	s.watchRoom(r)
}

// handOff moves an empty room this node holds to the least loaded other
// node, for a drain in cluster mode: the room goes on there instead of
// ending. It reports whether it did; false on a single node, for an edge
// replica, or with no other node (or no Redis): the room ends then, as on
// a single node.
func (s *Server) handOff(r *sfu.Room) bool {
	cl := s.cfg.Cluster
	name := r.Name()
	if cl == nil || s.isReplica(name) || !cl.Available() {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*clusterTimeout)
	defer cancel()
	to, err := cl.Pick(ctx, cl.ID())
	if err != nil {
		return false
	}
	s.cl.mu.Lock()
	rec, ok := s.cl.records[name]
	s.cl.creating[name] = true // not to adopt back meanwhile
	s.cl.mu.Unlock()
	defer func() {
		s.cl.mu.Lock()
		delete(s.cl.creating, name)
		s.cl.mu.Unlock()
	}()
	if !ok {
		opts := r.Options()
		rec = cluster.RoomRecord{Name: name, Kind: string(r.Kind()), MaxParticipants: opts.MaxParticipants, AutoRecord: opts.AutoRecord}
	}
	r.Close(ReasonRoomMoved) // its record stays
	if err := cl.DeleteRoom(ctx, name, cl.ID()); err != nil && !errors.Is(err, cluster.ErrRoomNotFound) {
		s.log.Warn("cluster: hand a room over", "room", name, "err", err)
		return true // closed here; its record is re-homed when this node leaves
	}
	rec.Owner = to.ID
	if _, err := cl.CreateRoom(ctx, rec); err != nil {
		s.log.Warn("cluster: hand a room over", "room", name, "to", to.ID, "err", err)
		return true
	}
	s.log.Info("cluster: draining: room handed over", "room", name, "to", to.ID)
	return true
}

// LoseRoom closes a room this node held that the map gives to another
// node (re-homed while this node was cut off from Redis) or no longer
// has (deleted through another node): each participant leaves with
// reason room_moved, and their clients open new sessions, which reach
// the room where it is now (cluster.Config.Lost).
func (s *Server) LoseRoom(name string) {
	r, err := s.sfu.Room(name)
	if err != nil || s.isReplica(name) {
		return
	}
	s.log.Warn("cluster: room moved to another node", "room", name)
	go r.Close(ReasonRoomMoved) // not on the heartbeat: leaving takes a while
}

// ClusterRooms lists the rooms this node holds, as records
// (cluster.Config.Rooms): edge replicas and rooms ending here are not.
func (s *Server) ClusterRooms() []cluster.RoomRecord {
	if s.cfg.Cluster == nil {
		return nil
	}
	me := s.cfg.Cluster.ID()
	var out []cluster.RoomRecord
	for _, r := range s.sfu.Rooms() {
		if s.isReplica(r.Name()) || s.deletingRoom(r.Name()) {
			continue
		}
		s.cl.mu.Lock()
		rec, ok := s.cl.records[r.Name()]
		s.cl.mu.Unlock()
		if !ok {
			opts := r.Options()
			rec = cluster.RoomRecord{Name: r.Name(), Kind: string(r.Kind()), MaxParticipants: opts.MaxParticipants, AutoRecord: opts.AutoRecord}
		}
		rec.Owner = me
		out = append(out, rec)
	}
	return out
}

// keepRecord keeps the record of a room held here, for ClusterRooms
// (written back as it was if Redis loses it); watchRoom's watcher
// forgets it when the room ends.
func (s *Server) keepRecord(rec cluster.RoomRecord) {
	s.cl.mu.Lock()
	defer s.cl.mu.Unlock()
	s.cl.records[rec.Name] = rec
}

// clusterLoad is this node's load figure (cluster.Config.Load): its rooms
// (edge replicas included) and their participants; a draining node,
// which takes no new room, reports the most there is.
func (s *Server) clusterLoad() cluster.Load {
	if s.Draining() {
		return cluster.Load{Rooms: math.MaxInt32, Participants: math.MaxInt32}
	}
	var l cluster.Load
	for _, r := range s.sfu.Rooms() {
		l.Rooms++
		l.Participants += len(r.List())
	}
	return l
}

// ClusterHooks are the callbacks of a node's cluster.Config (Load, Rooms,
// Adopt and Lost) served by a Server that does not exist yet: the
// cluster.Cluster is made first, since New takes it in Config.Cluster.
// Its zero value is ready; Configure fills a cluster.Config, and Bind hands
// the callbacks the Server once New has returned. Until then the node
// has no load and holds, adopts and loses no room (every room comes
// through the Server). It must not be copied after first use.
//
//	var hooks signaling.ClusterHooks
//	cl, err := cluster.New(ctx, hooks.Configure(cluster.Config{RedisURL: ..., URL: ...}))
//	...
//	srv, err := signaling.New(signaling.Config{SFU: media, Cluster: cl, ...})
//	...
//	hooks.Bind(srv)
type ClusterHooks struct {
	srv atomic.Pointer[Server]
}

// Bind makes s serve the callbacks.
func (h *ClusterHooks) Bind(s *Server) { h.srv.Store(s) }

// Configure returns cfg with its Load, Rooms, Adopt and Lost set to h's.
func (h *ClusterHooks) Configure(cfg cluster.Config) cluster.Config {
	cfg.Load, cfg.Rooms, cfg.Adopt, cfg.Lost = h.Load, h.Rooms, h.Adopt, h.Lost
	return cfg
}

// Load is cluster.Config.Load: the bound Server's rooms and participants,
// or the most there is while it drains; zeros before Bind.
func (h *ClusterHooks) Load() cluster.Load {
	if s := h.srv.Load(); s != nil {
		return s.clusterLoad()
	}
	return cluster.Load{}
}

// Rooms is cluster.Config.Rooms: the bound Server's ClusterRooms; none
// before Bind.
func (h *ClusterHooks) Rooms() []cluster.RoomRecord {
	if s := h.srv.Load(); s != nil {
		return s.ClusterRooms()
	}
	return nil
}

// Adopt is cluster.Config.Adopt: the bound Server's AdoptRoom; nothing
// before Bind.
func (h *ClusterHooks) Adopt(rec cluster.RoomRecord) {
	if s := h.srv.Load(); s != nil {
		s.AdoptRoom(rec)
	}
}

// Lost is cluster.Config.Lost: the bound Server's LoseRoom; nothing
// before Bind.
func (h *ClusterHooks) Lost(name string) {
	if s := h.srv.Load(); s != nil {
		s.LoseRoom(name)
	}
}

// Revocations across nodes.

// msgRevoked is the bus message of a revocation (cluster.Revoke).
const msgRevoked = "revoked"

// revokeInCluster tells every node of a revocation made here. While
// Redis is away it is kept and told when Redis is back; this node, which
// holds the room, applies it at once either way.
func (s *Server) revokeInCluster(room, identity string, at time.Time) {
	if s.cfg.Cluster == nil {
		return
	}
	rv := cluster.Revocation{Room: room, Identity: identity, At: at}
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	if err := s.cfg.Cluster.Revoke(ctx, rv); err != nil {
		s.log.Warn("cluster: revocation not told to the other nodes yet; retried when Redis is back", "room", room, "participant", identity, "err", err)
		s.cl.mu.Lock()
		s.cl.revokes = append(s.cl.revokes, rv)
		s.cl.mu.Unlock()
	}
}

// onRevoked applies a revocation made on another node.
func (s *Server) onRevoked(m cluster.Message) {
	if m.Origin == s.cfg.Cluster.ID() {
		return // applied when it was made
	}
	var rv cluster.Revocation
	if err := json.Unmarshal(m.Data, &rv); err != nil || rv.Room == "" || rv.Identity == "" {
		s.log.Warn("cluster: bad revocation message", "origin", m.Origin, "err", err)
		return
	}
	s.applyRevocation(rv)
}

// applyRevocation refuses the tokens a revocation covers and disconnects
// the participant of that identity in that room here, if there is one
// (in an edge replica too).
func (s *Server) applyRevocation(rv cluster.Revocation) {
	s.tokens.RevokeAt(rv.Room, rv.Identity, rv.At)
	r, err := s.sfu.Room(rv.Room)
	if err != nil {
		return
	}
	if p := r.Participant(rv.Identity); p != nil {
		p.Leave(sfu.ReasonRevoked)
	}
}

// clusterHealth is the reply of /healthz in cluster mode.
type clusterHealth struct {
	Status string `json:"status"`
	Node   string `json:"node"`
	// Redis says whether the node's last call to Redis succeeded.
	Redis bool `json:"redis"`
}

// roomAdopted tells the webhooks of a room re-homed here (room.rehomed)
// and watches it for them.
func (s *Server) roomAdopted(r *sfu.Room, rec cluster.RoomRecord) {
	h := s.cfg.Webhooks
	if !h.Enabled() {
		return
	}
	opts := r.Options()
	h.Emit(webhooks.RoomRehomed, roomRehomedHook{
		roomHook: roomHook{Room: r.Name(), Kind: r.Kind(), MaxParticipants: opts.MaxParticipants, AutoRecord: opts.AutoRecord},
		Node:     s.cfg.Cluster.ID(), Epoch: rec.Epoch,
	})
	if err := r.Watch(&hookWatcher{hooks: h, room: r.Name()}); err != nil {
		s.log.Debug("watch room for webhooks", "room", r.Name(), "err", err)
	}
}

// roomRehomedHook is the payload of room.rehomed: the room, the node
// that holds it now, and its epoch (one more at each re-homing).
type roomRehomedHook struct {
	roomHook
	Node  string `json:"node"`
	Epoch int64  `json:"epoch"`
}
