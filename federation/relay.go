package federation

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/vigil-media/vigil/cluster"
	"github.com/vigil-media/vigil/signaling"
)

// Headers of requests between nodes.
const (
	// HeaderPeer names the node that sends a request.
	HeaderPeer = "X-Vigil-Peer"
	// HeaderPeerTime is when it signed the request: Unix seconds. A
	// signature more than PeerAuthWindow away from the receiver's clock
	// does not verify.
	HeaderPeerTime = "X-Vigil-Peer-Time"
	// HeaderPeerAuth proves it: the hex HMAC-SHA256 of the node id, the
	// method, the request URI (path and query, as sent on the request
	// line) and HeaderPeerTime, each followed by a newline, with a key
	// derived from the admin key (peerKeyLabel).
	HeaderPeerAuth = "X-Vigil-Peer-Auth"
	// HeaderClientIP is the address of the client a peer relays for;
	// believed only with a valid HeaderPeerAuth.
	HeaderClientIP = "X-Vigil-Client-IP"
	// HeaderEdge asks a node to serve a relayed room request itself, as an
	// edge of a cascaded broadcast (cascade.go); believed only
	// with a valid HeaderPeerAuth.
	HeaderEdge = "X-Vigil-Edge"
	// HeaderPlaced tells the node a relayed POST /v1/rooms was placed on
	// it: it creates the room itself.
	HeaderPlaced = "X-Vigil-Placed"

	peerKeyLabel = "vigil cluster peer v1"
	// registrationKeyLabel derives the cluster key that signs the node
	// registrations in Redis (cluster.Config.Key) from the admin key.
	registrationKeyLabel = "vigil cluster registration v1"
)

// PeerAuthWindow is how far a peer request's HeaderPeerTime may be from
// the receiver's clock, either way: the nodes' clocks must agree to
// within it (NTP), and a captured peer auth is worthless after it.
const PeerAuthWindow = 30 * time.Second

// HeaderRelay marks, with a valid peer auth, the session POST of a relay:
// an edge joining the owner's room for its replica (cascade.go).
const HeaderRelay = "X-Vigil-Relay"

// clusterTimeout bounds one call to Redis made for a request.
const clusterTimeout = 1500 * time.Millisecond

// router is the node's peer auth, routing and relaying: it serves here
// what this node holds and relays the rest to the node that does.
type router struct {
	*core
	rooms   *roomMap        // rooms ended here, whose record is still to delete
	cascade *cascade        // which rooms are edge replicas
	peerKey []byte          // the key of peer auths
	peers   *http.Transport // relayed requests to other nodes

	// mu guards urls. Nothing else is locked while it is held.
	mu   sync.Mutex
	urls map[string]string // last known URL of each node, by id
}

// deriveKey derives a key of the cluster from the admin key.
func deriveKey(adminKey, label string) []byte {
	m := hmac.New(sha256.New, []byte(adminKey))
	m.Write([]byte(label))
	return m.Sum(nil)
}

// peerAuth is the HeaderPeerAuth of node id's request: method, request
// URI uri, signed at Unix time unix.
func (rt *router) peerAuth(id, method, uri string, unix int64) []byte {
	m := hmac.New(sha256.New, rt.peerKey)
	m.Write([]byte(id + "\n" + method + "\n" + uri + "\n" + strconv.FormatInt(unix, 10) + "\n"))
	return m.Sum(nil)
}

// signPeer sets on h the headers that make a request of method to uri
// (path and query) this node's: HeaderPeer, HeaderPeerTime and
// HeaderPeerAuth.
func (rt *router) signPeer(h http.Header, method, uri string) {
	now := time.Now().Unix()
	h.Set(HeaderPeer, rt.id)
	h.Set(HeaderPeerTime, strconv.FormatInt(now, 10))
	h.Set(HeaderPeerAuth, hex.EncodeToString(rt.peerAuth(rt.id, method, uri, now)))
}

// signPeerRequest signs req (signPeer) for its method and URL.
func (rt *router) signPeerRequest(req *http.Request) {
	rt.signPeer(req.Header, req.Method, req.URL.RequestURI())
}

// requestURI is the request URI a peer signed: the request line's, as
// received.
func requestURI(r *http.Request) string {
	if r.RequestURI != "" {
		return r.RequestURI
	}
	return r.URL.RequestURI()
}

// peerVerdictKey keys, in a request's gin context, fromPeer's verdict:
// the sending node's id, "" for none.
const peerVerdictKey = "vigil.federation.peer"

// fromPeer reports whether the request was sent by a node of the
// cluster, and which: its HeaderPeerAuth must verify for its method,
// request URI and HeaderPeerTime (compared in constant time), and that
// time be within PeerAuthWindow of now. The verdict is kept for the
// rest of the request, so that a request checked near the end of the
// window is not a peer's in one step and a client's in the next.
func (rt *router) fromPeer(c *gin.Context) (nodeID string, ok bool) {
	if v, seen := c.Get(peerVerdictKey); seen {
		id, _ := v.(string)
		return id, id != ""
	}
	id, ok := rt.verifyPeer(c.Request)
	c.Set(peerVerdictKey, id)
	return id, ok
}

// verifyPeer is fromPeer's check.
func (rt *router) verifyPeer(r *http.Request) (nodeID string, ok bool) {
	id := r.Header.Get(HeaderPeer)
	got, err := hex.DecodeString(r.Header.Get(HeaderPeerAuth))
	if id == "" || err != nil {
		return "", false
	}
	at, err := strconv.ParseInt(r.Header.Get(HeaderPeerTime), 10, 64)
	if err != nil {
		return "", false
	}
	if skew := time.Since(time.Unix(at, 0)); skew > PeerAuthWindow || skew < -PeerAuthWindow {
		return "", false
	}
	if !hmac.Equal(got, rt.peerAuth(id, r.Method, requestURI(r), at)) {
		return "", false
	}
	return id, true
}

// ClientAddr is the node's signaling.Federation.ClientAddr: the address the
// per-address limits count is the client a
// peer relays for (HeaderClientIP, with a valid peer auth), else the
// request's own client (the peer's, or X-Forwarded-For from a trusted
// proxy).
func (rt *router) ClientAddr(c *gin.Context) string {
	if _, ok := rt.fromPeer(c); ok {
		if ip := strings.TrimSpace(c.Request.Header.Get(HeaderClientIP)); ip != "" {
			return ip
		}
	}
	return c.ClientIP()
}

// peerHeaders are the headers only a peer may send (HeaderRelay is the
// cascade's, cascade.go).
var peerHeaders = []string{HeaderPeer, HeaderPeerTime, HeaderPeerAuth, HeaderClientIP, HeaderEdge, HeaderPlaced, HeaderRelay}

// stripPeerHeaders forgets the peer headers of a request that does not
// carry a valid peer auth, so that nothing after it believes them.
func (rt *router) stripPeerHeaders(c *gin.Context) {
	if _, ok := rt.fromPeer(c); ok {
		return
	}
	for _, h := range peerHeaders {
		c.Request.Header.Del(h)
	}
}

// newPeerTransport is the transport of requests to other nodes: no
// overall timeout (WebSockets, SSE and long polls last), a short dial,
// and for an https node URL a verified certificate (roots: the system's
// when nil). It speaks HTTP/1.1 only, which relays WebSocket upgrades.
func newPeerTransport(roots *x509.CertPool) *http.Transport {
	return &http.Transport{
		Proxy:                 nil,
		TLSClientConfig:       &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		DialContext:           (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   5 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
}

// peerClient sends requests to other nodes over the peer transport. It
// follows no redirect: a request goes only to a node's signed URL.
func (rt *router) peerClient() *http.Client {
	return &http.Client{
		Transport:     rt.peers,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// proxyTo relays the request to node to and writes its reply: method,
// path, query, body and headers (Authorization included) as they came,
// the Host too (so that the owner's same-origin checks see what the
// client sent), plus the peer headers (this node's id, its peer auth and
// the client's address) and extra. WebSocket upgrades are relayed, and
// streamed replies (SSE, long polls) are flushed as they come. A node
// that cannot be reached gets 503 node_unavailable. The handler chain is
// aborted: nothing after it runs.
func (rt *router) proxyTo(c *gin.Context, to cluster.Node, extra http.Header) {
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
			rt.log.Debug("relayed reply cut short", "node", to.ID, "path", c.Request.URL.Path)
		}
	}()
	target, err := url.Parse(to.URL)
	if err != nil || target.Host == "" {
		rt.log.Error("relay: bad node URL", "node", to.ID, "url", to.URL)
		refuseUnavailable(c, signaling.ErrNodeUnavailable)
		return
	}
	client := rt.ClientAddr(c)
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
			for _, h := range peerHeaders {
				pr.Out.Header.Del(h)
			}
			rt.signPeerRequest(pr.Out)
			pr.Out.Header.Set(HeaderClientIP, client)
			for k, vs := range extra {
				pr.Out.Header.Del(k)
				for _, v := range vs {
					pr.Out.Header.Add(k, v)
				}
			}
		},
		Transport:     rt.peers,
		FlushInterval: -1,
		ErrorLog:      slog.NewLogLogger(rt.log.Handler(), slog.LevelDebug),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if errors.Is(r.Context().Err(), context.Canceled) {
				return // the client went away
			}
			rt.log.Warn("relay to node failed", "node", to.ID, "path", r.URL.Path, "err", err)
			refuseUnavailable(c, signaling.ErrNodeUnavailable)
		},
	}
	rp.ServeHTTP(c.Writer, c.Request)
}

// refuseUnavailable writes a retryable 503 (cluster_unavailable,
// node_unavailable or room_moved) with Retry-After.
func refuseUnavailable(c *gin.Context, err error) {
	if c.Writer.Written() {
		return
	}
	c.Header("Retry-After", "1")
	writeError(c, err)
}

// unavailable maps a failure to reach Redis to signaling.ErrClusterUnavailable.
func unavailable(err error) error {
	if errors.Is(err, cluster.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w (%v)", signaling.ErrClusterUnavailable, err)
	}
	return err
}

// redisCtx is the context of a call to Redis made for a request, or
// signaling.ErrClusterUnavailable at once when the last call failed, so that a
// request needing Redis fails fast while it is away.
func (rt *router) redisCtx(c *gin.Context) (context.Context, context.CancelFunc, error) {
	if !rt.cl.Available() {
		return nil, nil, signaling.ErrClusterUnavailable
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), clusterTimeout)
	return ctx, cancel, nil
}

// node looks up a live node. While Redis is away it answers from the
// last URL it saw for that id: a session on a node that is still up
// stays reachable.
func (rt *router) node(ctx context.Context, id string) (cluster.Node, error) {
	var to cluster.Node
	err := signaling.ErrClusterUnavailable
	if rt.cl.Available() {
		to, err = rt.cl.Node(ctx, id)
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	switch {
	case err == nil:
		rt.urls[id] = to.URL
	case errors.Is(err, cluster.ErrNodeNotFound):
		delete(rt.urls, id)
	default:
		if u, ok := rt.urls[id]; ok {
			return cluster.Node{ID: id, URL: u}, nil
		}
	}
	return to, err
}

// Route is the node's signaling.Federation.Route: the routing step, before CORS
// and any handler. It drops the peer headers of a request without a
// valid peer auth; then a room this node holds, or a session or
// WHIP/WHEP resource it issued, is served here, and any other is relayed
// to the node that holds it. Requests relayed by a peer are never
// relayed again.
func (rt *router) Route(c *gin.Context, kind signaling.Relay) {
	rt.stripPeerHeaders(c)
	switch kind {
	case signaling.RelayRoom:
		rt.routeRoom(c, c.Param("room"))
	case signaling.RelaySession:
		rt.routeID(c, c.Param("session"), signaling.ErrSessionNotFound)
	case signaling.RelayResource:
		rt.routeID(c, c.Param("resource"), signaling.ErrResourceNotFound)
	}
}

// routeRoom serves a room's request here if this node holds the room
// (its own room, not an edge replica), and relays it to the room's owner
// otherwise. A room the map does not know is left to the handler, which
// answers as a single node does (404 room_not_found, after its own
// checks).
func (rt *router) routeRoom(c *gin.Context, name string) {
	if _, err := rt.sfu.Room(name); err == nil && !rt.cascade.isReplica(name) {
		return
	}
	if _, peer := rt.fromPeer(c); peer {
		if c.GetHeader(HeaderEdge) == "1" {
			return // an edge of a cascaded broadcast asks for its replica (cascade.go)
		}
		// Never relayed twice: the room moved since the peer looked.
		refuseUnavailable(c, signaling.ErrRoomMoved)
		return
	}
	ctx, cancel, err := rt.redisCtx(c)
	if err != nil {
		refuseUnavailable(c, err)
		return
	}
	defer cancel()
	me := rt.id
	rec, err := rt.cl.Room(ctx, name)
	switch {
	case errors.Is(err, cluster.ErrRoomNotFound):
		return
	case err != nil:
		refuseUnavailable(c, unavailable(err))
		return
	case rec.Owner == me:
		if rt.rooms.deletingRoom(name) {
			return // ended here: its record goes soon
		}
		// Re-homed here, adopted at the next heartbeat.
		refuseUnavailable(c, signaling.ErrRoomMoved)
		return
	}
	owner, err := rt.node(ctx, rec.Owner)
	switch {
	case errors.Is(err, cluster.ErrNodeNotFound):
		// Its owner died; the room is re-homed when the lease runs out.
		refuseUnavailable(c, fmt.Errorf("%w: node %s is gone; the room moves to another node", signaling.ErrNodeUnavailable, rec.Owner))
		return
	case err != nil:
		refuseUnavailable(c, unavailable(err))
		return
	}
	rt.proxyTo(c, owner, nil)
}

// routeID relays the request of a session or WHIP/WHEP resource issued
// by another node to that node. One whose node is gone is notFound: the
// client opens a new session with its token.
func (rt *router) routeID(c *gin.Context, id string, notFound error) {
	prefix, _, ok := strings.Cut(id, ".")
	if !ok || prefix == rt.id {
		return
	}
	if _, peer := rt.fromPeer(c); peer {
		return // never relayed twice: answered here (not found)
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), clusterTimeout)
	defer cancel()
	issuer, err := rt.node(ctx, prefix)
	switch {
	case errors.Is(err, cluster.ErrNodeNotFound):
		writeError(c, fmt.Errorf("%w: its node %s is gone; open a new session", notFound, prefix))
		return
	case err != nil:
		refuseUnavailable(c, unavailable(err))
		return
	}
	rt.proxyTo(c, issuer, nil)
}
