package federation_test

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/gorilla/websocket"
	"github.com/vigil-media/vigil/cluster"
	"github.com/vigil-media/vigil/federation"
	"github.com/vigil-media/vigil/sfu"
	"github.com/vigil-media/vigil/signaling"
	"github.com/vigil-media/vigil/signaling/vigiltest"
)

// The cluster tests run real nodes in-process (media core, signaling
// server, cluster membership on a private redis-server) on loopback.
// The multi-process tests, with media, are in cmd/vigil.

const clusterKey = "cluster-admin-key"

// clusterTokenSecret signs the join tokens of every node.
const clusterTokenSecret = "cluster-token-secret"

// testNode is one node of a test cluster.
type testNode struct {
	ID, URL string
	Sig     *signaling.Server
	SFU     *sfu.SFU
	Cl      *cluster.Cluster
}

// startNode runs a node with id in the cluster of Redis rd under prefix.
func startNode(t *testing.T, rd *vigiltest.Redis, prefix, id string, configure func(*signaling.Config)) *testNode {
	t.Helper()
	return startNodeWith(t, rd, prefix, id, nodeOptions{configure: configure})
}

// nodeOptions are startNodeWith's.
type nodeOptions struct {
	configure func(*signaling.Config)
	// cert: the node serves HTTPS with it, and registers an https URL.
	cert *tls.Certificate
	// roots: the authorities the node trusts when it calls an https node.
	roots *x509.CertPool
}

// startNodeWith is startNode with more options.
func startNodeWith(t *testing.T, rd *vigiltest.Redis, prefix, id string, o nodeOptions) *testNode {
	t.Helper()
	configure := o.configure
	gin.SetMode(gin.ReleaseMode)
	logger := slog.New(slog.DiscardHandler)
	if os.Getenv("VIGIL_TEST_LOG") != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", id)
	}
	var handler atomic.Pointer[http.Handler]
	hs := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		(*handler.Load()).ServeHTTP(w, r)
	}))
	url := "http://" + hs.Listener.Addr().String()
	if o.cert != nil {
		hs.TLS = &tls.Config{Certificates: []tls.Certificate{*o.cert}}
		url = "https://" + hs.Listener.Addr().String()
	}
	media, err := sfu.New(sfu.Config{UDPAddr: "127.0.0.1:0", IncludeLoopback: true, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	cfg := signaling.Config{SFU: media, AdminKey: clusterKey, TokenSecret: clusterTokenSecret, Logger: logger, JoinRate: -1, MintRate: -1, MessageRate: -1}
	if configure != nil {
		configure(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	node, err := federation.New(ctx, federation.Config{Signaling: cfg, Cluster: cluster.Config{
		RedisURL: rd.URL, NodeID: id, URL: url, Heartbeat: 100 * time.Millisecond, Lease: 600 * time.Millisecond,
		Prefix: prefix, Logger: logger,
	}, PeerRootCAs: o.roots})
	if err != nil {
		_ = media.Close()
		t.Fatal(err)
	}
	s, cl := node.Server(), node.Cluster()
	h := s.Handler()
	handler.Store(&h)
	if o.cert != nil {
		hs.StartTLS()
	} else {
		hs.Start()
	}
	t.Cleanup(func() {
		s.Close(2 * time.Second)
		_ = cl.Close()
		hs.Close()
	})
	return &testNode{ID: id, URL: url, Sig: s, SFU: media, Cl: cl}
}

// testPrefix is a key prefix of one test's own.
func testPrefix(t *testing.T) string { return "test:" + t.Name() + ":" }

// peerAuth is the documented peer auth (docs/cluster.md) of node id's
// request method uri signed at Unix time at.
func peerAuth(adminKey, id, method, uri string, at int64) string {
	k := hmac.New(sha256.New, []byte(adminKey))
	k.Write([]byte("vigil cluster peer v1"))
	m := hmac.New(sha256.New, k.Sum(nil))
	fmt.Fprintf(m, "%s\n%s\n%s\n%d\n", id, method, uri, at)
	return hex.EncodeToString(m.Sum(nil))
}

// peerAt is the peer headers of node id's request method uri signed with
// adminKey at time at, as pairs for adminH.
func peerAt(adminKey, id, method, uri string, at time.Time) []string {
	return []string{federation.HeaderPeer, id, federation.HeaderPeerTime, strconv.FormatInt(at.Unix(), 10),
		federation.HeaderPeerAuth, peerAuth(adminKey, id, method, uri, at.Unix())}
}

// peer is peerAt now, with the cluster's key.
func peer(id, method, uri string) []string { return peerAt(clusterKey, id, method, uri, time.Now()) }

// pairs makes a header map of pairs.
func pairs(kv ...string) map[string]string {
	h := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		h[kv[i]] = kv[i+1]
	}
	return h
}

// registrationSig is the documented signature (docs/cluster.md) of node
// id's registration at url in Redis.
func registrationSig(adminKey, id, url string) string {
	k := hmac.New(sha256.New, []byte(adminKey))
	k.Write([]byte("vigil cluster registration v1"))
	m := hmac.New(sha256.New, k.Sum(nil))
	fmt.Fprintf(m, "vigil node v1\n%s\n%s\n", id, url)
	return hex.EncodeToString(m.Sum(nil))
}

// clusterKeyOf is the documented cluster key (docs/cluster.md) that
// signs registrations, derived from the admin key.
func clusterKeyOf(adminKey string) []byte {
	k := hmac.New(sha256.New, []byte(adminKey))
	k.Write([]byte("vigil cluster registration v1"))
	return k.Sum(nil)
}

// call sends a request to base+path with headers and returns the reply,
// its body read.
func call(t *testing.T, base, method, path string, header map[string]string, body string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func adminH(extra ...string) map[string]string {
	h := map[string]string{"Authorization": "Bearer " + clusterKey, "Content-Type": "application/json"}
	for i := 0; i+1 < len(extra); i += 2 {
		h[extra[i]] = extra[i+1]
	}
	return h
}

// fakeNode is a node of the cluster whose HTTP server only records what
// it gets: what a relay sends, and whether it sends anything.
type fakeNode struct {
	cl     *cluster.Cluster
	hs     *httptest.Server
	mu     sync.Mutex
	got    []*http.Request
	bodies []string
}

func startFakeNode(t *testing.T, rd *vigiltest.Redis, prefix, id string) *fakeNode {
	t.Helper()
	f := &fakeNode{}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.got = append(f.got, r.Clone(context.Background()))
		f.bodies = append(f.bodies, string(b))
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"fake":true}`)
	}))
	t.Cleanup(hs.Close)
	f.hs = hs
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cl, err := cluster.New(ctx, cluster.Config{RedisURL: rd.URL, NodeID: id, URL: hs.URL, Key: clusterKeyOf(clusterKey),
		Heartbeat: 100 * time.Millisecond, Lease: 600 * time.Millisecond, Prefix: prefix, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Close() })
	f.cl = cl
	return f
}

func (f *fakeNode) requests() []*http.Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*http.Request(nil), f.got...)
}

// TestClusterPeerHeaders: a room or session held by another node is
// relayed there with this node's peer headers and the client's own
// address, whatever peer headers the client forged (they are dropped);
// Authorization, method, path, query and Host go through as they came.
// A request that carries a valid peer auth is never relayed again
// (room_moved for a room, not found for a session), unless it asks for
// an edge (X-Vigil-Edge), which is served here.
func TestClusterPeerHeaders(t *testing.T) {
	rd := vigiltest.StartRedis(t)
	prefix := testPrefix(t)
	a := startNode(t, rd, prefix, "a", nil)
	fake := startFakeNode(t, rd, prefix, "fake")
	ctx := context.Background()
	if _, err := fake.cl.CreateRoom(ctx, cluster.RoomRecord{Name: "far", Kind: "conference", Owner: "fake"}); err != nil {
		t.Fatal(err)
	}

	forged := adminH(federation.HeaderPeer, "fake", federation.HeaderPeerAuth, strings.Repeat("00", 32),
		federation.HeaderClientIP, "203.0.113.9", federation.HeaderEdge, "1")
	resp, body := call(t, a.URL, "GET", "/v1/rooms/far?x=1", forged, "")
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"fake":true`) {
		t.Fatalf("GET a room of another node: %d %s, want it relayed", resp.StatusCode, body)
	}
	got := fake.requests()
	if len(got) != 1 {
		t.Fatalf("the owner got %d requests, want 1", len(got))
	}
	r := got[0]
	at, _ := strconv.ParseInt(r.Header.Get(federation.HeaderPeerTime), 10, 64)
	if d := time.Since(time.Unix(at, 0)); d < -time.Minute || d > time.Minute {
		t.Errorf("relayed %s: %q, want about now", federation.HeaderPeerTime, r.Header.Get(federation.HeaderPeerTime))
	}
	want := map[string]string{
		federation.HeaderPeer: "a", federation.HeaderPeerAuth: peerAuth(clusterKey, "a", "GET", "/v1/rooms/far?x=1", at),
		federation.HeaderClientIP: "127.0.0.1", federation.HeaderEdge: "",
		"Authorization": "Bearer " + clusterKey,
	}
	for h, v := range want {
		if r.Header.Get(h) != v {
			t.Errorf("relayed %s: %q, want %q", h, r.Header.Get(h), v)
		}
	}
	if r.Method != "GET" || r.URL.Path != "/v1/rooms/far" || r.URL.RawQuery != "x=1" || r.Host != strings.TrimPrefix(a.URL, "http://") {
		t.Errorf("relayed %s %s?%s Host %s", r.Method, r.URL.Path, r.URL.RawQuery, r.Host)
	}

	// A POST keeps its body; a session and a WHIP resource of that node
	// are relayed by their id's prefix.
	for _, c := range []struct{ method, path, body string }{
		{"POST", "/v1/rooms/far/participants/x/kick", `{"reason":"r"}`},
		{"GET", "/v1/sessions/fake.s1/poll?cursor=3", ""},
		{"DELETE", "/whip/far/fake.r1", ""},
	} {
		before := len(fake.requests())
		resp, body := call(t, a.URL, c.method, c.path, adminH(), c.body)
		got := fake.requests()
		if resp.StatusCode != 200 || len(got) != before+1 {
			t.Fatalf("%s %s: %d %s, owner got %d new requests", c.method, c.path, resp.StatusCode, body, len(got)-before)
		}
		last := got[len(got)-1]
		fake.mu.Lock()
		b := fake.bodies[len(got)-1]
		fake.mu.Unlock()
		if last.Method != c.method || last.URL.RequestURI() != c.path || string(b) != c.body {
			t.Errorf("relayed %s %s body %q, want %s %s body %q", last.Method, last.URL.RequestURI(), b, c.method, c.path, c.body)
		}
	}

	// Loop guard: a valid peer auth is never relayed again.
	before := len(fake.requests())
	resp, body = call(t, a.URL, "GET", "/v1/rooms/far", adminH(peer("fake", "GET", "/v1/rooms/far")...), "")
	if resp.StatusCode != 503 || vigiltest.ErrorCode(t, body) != "room_moved" || resp.Header.Get("Retry-After") == "" {
		t.Errorf("a peer's request for a room held elsewhere: %d %s (Retry-After %q), want 503 room_moved", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
	resp, body = call(t, a.URL, "GET", "/v1/sessions/fake.s1/poll", adminH(peer("fake", "GET", "/v1/sessions/fake.s1/poll")...), "")
	if resp.StatusCode != 404 || vigiltest.ErrorCode(t, body) != "session_not_found" {
		t.Errorf("a peer's request for a session of another node: %d %s, want 404 session_not_found", resp.StatusCode, body)
	}
	// An edge asks for its replica: served here, not relayed.
	edge := adminH(append(peer("fake", "GET", "/v1/rooms/far"), federation.HeaderEdge, "1")...)
	resp, body = call(t, a.URL, "GET", "/v1/rooms/far", edge, "")
	if resp.StatusCode != 404 || vigiltest.ErrorCode(t, body) != "room_not_found" {
		t.Errorf("an edge's request: %d %s, want it served here (404 room_not_found)", resp.StatusCode, body)
	}
	if n := len(fake.requests()); n != before {
		t.Errorf("%d peer requests relayed again", n-before)
	}

	// A session of a node that is gone, a room no one has: not found, as
	// on a single node (and the admin key is checked first).
	resp, body = call(t, a.URL, "GET", "/v1/sessions/gone.s1/poll", nil, "")
	if resp.StatusCode != 404 || vigiltest.ErrorCode(t, body) != "session_not_found" {
		t.Errorf("a session of a gone node: %d %s, want 404 session_not_found", resp.StatusCode, body)
	}
	resp, body = call(t, a.URL, "PATCH", "/whep/far/gone.r1", map[string]string{"Content-Type": "application/trickle-ice-sdpfrag"}, "")
	if resp.StatusCode != 404 || vigiltest.ErrorCode(t, body) != "resource_not_found" {
		t.Errorf("a WHEP resource of a gone node: %d %s, want 404 resource_not_found", resp.StatusCode, body)
	}
	if resp, body = call(t, a.URL, "GET", "/v1/rooms/nowhere", nil, ""); resp.StatusCode != 401 {
		t.Errorf("an unknown room without the key: %d %s, want 401", resp.StatusCode, body)
	}
	if resp, body = call(t, a.URL, "GET", "/v1/rooms/nowhere", adminH(), ""); resp.StatusCode != 404 || vigiltest.ErrorCode(t, body) != "room_not_found" {
		t.Errorf("an unknown room: %d %s, want 404 room_not_found", resp.StatusCode, body)
	}
	// An owner that does not answer: 503 node_unavailable.
	fake.hs.Close()
	resp, body = call(t, a.URL, "GET", "/v1/rooms/far", adminH(), "")
	if resp.StatusCode != 503 || vigiltest.ErrorCode(t, body) != "node_unavailable" || resp.Header.Get("Retry-After") == "" {
		t.Errorf("a room whose node does not answer: %d %s, want 503 node_unavailable with Retry-After", resp.StatusCode, body)
	}
}

// TestClusterClientAddress: the join limit counts the address a peer
// relays for (X-Vigil-Client-IP with a valid peer auth) and ignores that
// header from anyone else, in cluster mode and on a single node.
func TestClusterClientAddress(t *testing.T) {
	rd := vigiltest.StartRedis(t)
	a := startNode(t, rd, testPrefix(t), "a", func(c *signaling.Config) { c.JoinRate = 1 }) // bursts of 2
	single := vigiltest.StartWith(t, vigiltest.Options{Configure: func(c *signaling.Config) { c.JoinRate = 1 }})
	single.CreateRoom(t, "r", "conference")
	if resp, body := call(t, a.URL, "POST", "/v1/rooms", adminH(), `{"name":"r","kind":"conference"}`); resp.StatusCode != 201 {
		t.Fatalf("create room: %d %s", resp.StatusCode, body)
	}
	join := func(base string, h map[string]string) int {
		h["Authorization"] = "Bearer not-a-token"
		resp, _ := call(t, base, "POST", "/v1/rooms/r/sessions", h, "")
		return resp.StatusCode
	}
	for _, base := range []string{a.URL, single.URL} {
		// Without a valid peer auth, X-Vigil-Client-IP changes nothing:
		// the third join from 127.0.0.1 is refused.
		var codes []int
		for i := range 3 {
			codes = append(codes, join(base, pairs(append(peerAt("wrong-key", "b", "POST", "/v1/rooms/r/sessions", time.Now()),
				federation.HeaderClientIP, fmt.Sprintf("198.51.100.%d", i))...)))
		}
		if codes[0] != 401 || codes[1] != 401 || codes[2] != 429 {
			t.Errorf("%s: forged client addresses: %v, want [401 401 429]", base, codes)
		}
	}
	// With it, each relayed client has its own bucket...
	valid := func(ip string) map[string]string {
		return pairs(append(peer("b", "POST", "/v1/rooms/r/sessions"), federation.HeaderClientIP, ip)...)
	}
	for i := range 4 {
		if code := join(a.URL, valid(fmt.Sprintf("192.0.2.%d", i))); code != 401 {
			t.Errorf("relayed client %d: %d, want 401 (not limited)", i, code)
		}
	}
	// ...and one client relayed three times is limited.
	var codes []int
	for range 3 {
		codes = append(codes, join(a.URL, valid("192.0.2.200")))
	}
	if codes[0] != 401 || codes[1] != 401 || codes[2] != 429 {
		t.Errorf("one relayed client: %v, want [401 401 429]", codes)
	}
	// The same valid headers on a single node are ignored.
	time.Sleep(2100 * time.Millisecond) // the bucket of 127.0.0.1 refills
	codes = nil
	for i := range 3 {
		codes = append(codes, join(single.URL, valid(fmt.Sprintf("192.0.2.%d", i))))
	}
	if codes[2] != 429 {
		t.Errorf("peer headers on a single node: %v, want the third limited", codes)
	}
}

// TestClusterRoomsAcrossNodes: a room created through one node is placed
// by load, has a node field, and is served through every node: listed,
// described, joined (the session id names its node and is routed by
// it), deleted; a session or room on a node whose Redis is gone keeps
// working there, while what needs Redis fails fast with
// cluster_unavailable.
func TestClusterRoomsAcrossNodes(t *testing.T) {
	rd := vigiltest.StartRedis(t)
	prefix := testPrefix(t)
	a := startNode(t, rd, prefix, "a", nil)
	b := startNode(t, rd, prefix, "b", nil)
	nodes := map[string]*testNode{"a": a, "b": b}

	owners := map[string]string{}
	for i := range 4 {
		name := fmt.Sprintf("room-%d", i)
		via := []*testNode{a, b}[i%2]
		resp, body := call(t, via.URL, "POST", "/v1/rooms", adminH(), fmt.Sprintf(`{"name":%q,"kind":"conference"}`, name))
		var room struct{ Node string }
		_ = json.Unmarshal(body, &room)
		if resp.StatusCode != 201 || nodes[room.Node] == nil {
			t.Fatalf("create %s through %s: %d %s", name, via.ID, resp.StatusCode, body)
		}
		owners[name] = room.Node
		if _, err := nodes[room.Node].SFU.Room(name); err != nil {
			t.Fatalf("%s: not on its node %s", name, room.Node)
		}
		if resp, body := call(t, []*testNode{b, a}[i%2].URL, "POST", "/v1/rooms", adminH(), fmt.Sprintf(`{"name":%q,"kind":"conference"}`, name)); resp.StatusCode != 409 || vigiltest.ErrorCode(t, body) != "room_exists" {
			t.Errorf("create %s again through the other node: %d %s", name, resp.StatusCode, body)
		}
		vigiltest.WaitFor(t, 10*time.Second, "the load in the map", func() bool { // what the next Pick sees
			ns, err := a.Cl.Nodes(context.Background())
			for _, n := range ns {
				if n.Load.Rooms != len(nodes[n.ID].SFU.Rooms()) {
					return false
				}
			}
			return err == nil && len(ns) == 2
		})
	}
	if n := len(a.SFU.Rooms()); n != 2 {
		t.Errorf("node a holds %d rooms, b %d: want them spread by load", n, len(b.SFU.Rooms()))
	}
	for _, n := range []*testNode{a, b} {
		_, body := call(t, n.URL, "GET", "/v1/rooms", adminH(), "")
		var list struct{ Rooms []struct{ Name, Node string } }
		_ = json.Unmarshal(body, &list)
		if len(list.Rooms) != 4 {
			t.Fatalf("GET /v1/rooms through %s: %s", n.ID, body)
		}
		for _, r := range list.Rooms {
			if owners[r.Name] != r.Node {
				t.Errorf("through %s: %s on %q, want %q", n.ID, r.Name, r.Node, owners[r.Name])
			}
		}
		_, body = call(t, n.URL, "GET", "/v1/rooms?scope=local", adminH(), "")
		_ = json.Unmarshal(body, &list)
		if len(list.Rooms) != 2 {
			t.Errorf("GET /v1/rooms?scope=local through %s: %s", n.ID, body)
		}
	}

	// Join room-0 through the node that does not hold it.
	owner := nodes[owners["room-0"]]
	other := a
	if owner == a {
		other = b
	}
	resp, body := call(t, other.URL, "POST", "/v1/rooms/room-0/tokens", adminH(), `{"identity":"alice","role":"participant"}`)
	var tok struct{ Token string }
	_ = json.Unmarshal(body, &tok)
	if resp.StatusCode != 201 {
		t.Fatalf("mint through %s: %d %s", other.ID, resp.StatusCode, body)
	}
	resp, body = call(t, other.URL, "POST", "/v1/rooms/room-0/sessions", map[string]string{"Authorization": "Bearer " + tok.Token}, "")
	var sess struct {
		SessionID string `json:"session_id"`
	}
	_ = json.Unmarshal(body, &sess)
	if resp.StatusCode != 201 || !strings.HasPrefix(sess.SessionID, owner.ID+".") {
		t.Fatalf("open a session through %s: %d %s, want an id starting %q", other.ID, resp.StatusCode, body, owner.ID+".")
	}
	for _, n := range []*testNode{a, b} {
		resp, body := call(t, n.URL, "GET", "/v1/sessions/"+sess.SessionID+"/poll?cursor=0", nil, "")
		if resp.StatusCode != 200 || !strings.Contains(string(body), `"joined"`) {
			t.Errorf("poll through %s: %d %s", n.ID, resp.StatusCode, body)
		}
		_, body = call(t, n.URL, "GET", "/v1/rooms/room-0", adminH(), "")
		if !strings.Contains(string(body), `"alice"`) || !strings.Contains(string(body), `"node":"`+owner.ID+`"`) {
			t.Errorf("GET the room through %s: %s", n.ID, body)
		}
	}

	// The room's event feed (SSE) streams through the other node.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	req, _ := http.NewRequestWithContext(ctx, "GET", other.URL+"/v1/rooms/room-0/events", nil)
	req.Header.Set("Authorization", "Bearer "+clusterKey)
	feed, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(feed.Body)
	for sc.Scan() && !strings.Contains(sc.Text(), "room_snapshot") {
	}
	if !strings.Contains(sc.Text(), "room_snapshot") || feed.Header.Get("Content-Type") != "text/event-stream" {
		t.Errorf("the room feed through %s: %d %q, last line %q, want a room_snapshot event as it comes", other.ID, feed.StatusCode, feed.Header.Get("Content-Type"), sc.Text())
	}
	cancel()
	feed.Body.Close()

	// Redis goes away: the room and its session go on where they are;
	// what needs Redis fails fast.
	rd.Stop()
	start := time.Now()
	resp, body = call(t, other.URL, "POST", "/v1/rooms", adminH(), `{"name":"late","kind":"conference"}`)
	if took := time.Since(start); resp.StatusCode != 503 || vigiltest.ErrorCode(t, body) != "cluster_unavailable" || resp.Header.Get("Retry-After") == "" || took > 3*time.Second {
		t.Errorf("create a room without Redis: %d %s in %v, want 503 cluster_unavailable with Retry-After in < 3 s", resp.StatusCode, body, took)
	}
	if resp, body := call(t, owner.URL, "GET", "/v1/rooms/room-0", adminH(), ""); resp.StatusCode != 200 {
		t.Errorf("GET a room on its node without Redis: %d %s", resp.StatusCode, body)
	}
	if resp, body := call(t, owner.URL, "GET", "/v1/sessions/"+sess.SessionID+"/poll?cursor=1", nil, ""); resp.StatusCode != 200 {
		t.Errorf("poll on the session's node without Redis: %d %s", resp.StatusCode, body)
	}
	if resp, body := call(t, other.URL, "GET", "/v1/sessions/"+sess.SessionID+"/poll?cursor=1", nil, ""); resp.StatusCode != 200 {
		t.Errorf("poll through the other node without Redis (its last known URL): %d %s", resp.StatusCode, body)
	}
	for _, p := range []string{"/v1/rooms", "/v1/rooms/room-0"} {
		if resp, body := call(t, other.URL, "GET", p, adminH(), ""); resp.StatusCode != 503 || vigiltest.ErrorCode(t, body) != "cluster_unavailable" {
			t.Errorf("GET %s through %s without Redis: %d %s, want 503 cluster_unavailable", p, other.ID, resp.StatusCode, body)
		}
	}
	var health struct {
		Node  string
		Redis bool
	}
	_, body = call(t, other.URL, "GET", "/healthz", nil, "")
	if _ = json.Unmarshal(body, &health); health.Node != other.ID || health.Redis {
		t.Errorf("healthz without Redis: %s", body)
	}

	// Redis comes back empty: the nodes write their rooms back.
	rd.Start()
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, body = call(t, other.URL, "GET", "/v1/rooms", adminH(), "")
		var list struct{ Rooms []struct{ Name string } }
		_ = json.Unmarshal(body, &list)
		if resp.StatusCode == 200 && len(list.Rooms) == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rooms not back in the map 5 s after Redis: %d %s", resp.StatusCode, body)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Deleted through the other node: gone from its node and the map.
	if resp, body := call(t, other.URL, "DELETE", "/v1/rooms/room-0", adminH(), ""); resp.StatusCode != 204 {
		t.Fatalf("delete through %s: %d %s", other.ID, resp.StatusCode, body)
	}
	for _, n := range []*testNode{a, b} {
		if resp, body := call(t, n.URL, "GET", "/v1/rooms/room-0", adminH(), ""); resp.StatusCode != 404 || vigiltest.ErrorCode(t, body) != "room_not_found" {
			t.Errorf("GET the deleted room through %s: %d %s", n.ID, resp.StatusCode, body)
		}
	}
	if _, err := owner.Cl.Room(context.Background(), "room-0"); err == nil {
		t.Error("the deleted room is still in the map")
	}
}

// TestClusterDrainHandsRoomsOver: in cluster mode a draining node places
// new rooms on the other nodes and hands its empty rooms over to them
// (they go on there, instead of ending), then is drained.
func TestClusterDrainHandsRoomsOver(t *testing.T) {
	rd := vigiltest.StartRedis(t)
	prefix := testPrefix(t)
	a := startNode(t, rd, prefix, "a", nil)
	b := startNode(t, rd, prefix, "b", nil)
	resp, body := call(t, a.URL, "POST", "/v1/rooms", adminH(), `{"name":"exam","kind":"proctoring","max_participants":7}`)
	if resp.StatusCode != 201 || !strings.Contains(string(body), `"node":"a"`) {
		t.Fatalf("create: %d %s, want it on a (both empty: by id)", resp.StatusCode, body)
	}
	if resp, body := call(t, a.URL, "POST", "/v1/drain", adminH(), ""); resp.StatusCode != 202 {
		t.Fatalf("drain a: %d %s", resp.StatusCode, body)
	}
	select {
	case <-a.Sig.Drained():
	case <-time.After(5 * time.Second):
		t.Fatal("a not drained 5 s after its drain started")
	}
	vigiltest.WaitFor(t, 5*time.Second, "the room opened on b", func() bool {
		_, err := b.SFU.Room("exam")
		return err == nil
	})
	for _, n := range []*testNode{a, b} {
		resp, body := call(t, n.URL, "GET", "/v1/rooms/exam", adminH(), "")
		if resp.StatusCode != 200 || !strings.Contains(string(body), `"node":"b"`) || !strings.Contains(string(body), `"kind":"proctoring"`) {
			t.Errorf("the room through %s after a drained: %d %s, want it on b", n.ID, resp.StatusCode, body)
		}
	}
	resp, body = call(t, a.URL, "POST", "/v1/rooms", adminH(), `{"name":"next","kind":"conference"}`)
	if resp.StatusCode != 201 || !strings.Contains(string(body), `"node":"b"`) {
		t.Errorf("a room created through the draining node: %d %s, want it placed on b", resp.StatusCode, body)
	}
}

// TestClusterRevocationReachesEveryNode: a revocation made through any
// node is applied by the room's node, published, and applied by every
// node (their tokens refuse the revoked one); a node that starts later
// loads it from Redis. A token minted afterwards works everywhere.
func TestClusterRevocationReachesEveryNode(t *testing.T) {
	rd := vigiltest.StartRedis(t)
	prefix := testPrefix(t)
	a := startNode(t, rd, prefix, "a", nil)
	b := startNode(t, rd, prefix, "b", nil)
	if resp, body := call(t, b.URL, "POST", "/v1/rooms", adminH(), `{"name":"exam","kind":"proctoring"}`); resp.StatusCode != 201 || !strings.Contains(string(body), `"node":"a"`) {
		t.Fatalf("create: %d %s", resp.StatusCode, body)
	}
	old, _, err := a.Sig.Tokens().Mint("exam", "cand", "candidate", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // the revocation is in a later second than the token
	if resp, body := call(t, b.URL, "POST", "/v1/rooms/exam/tokens/revoke", adminH(), `{"identity":"cand"}`); resp.StatusCode != 200 {
		t.Fatalf("revoke through b: %d %s", resp.StatusCode, body)
	}
	c := startNode(t, rd, prefix, "c", nil)
	for _, n := range []*testNode{a, b, c} {
		vigiltest.WaitFor(t, 10*time.Second, "the revocation on "+n.ID, func() bool {
			_, err := n.Sig.Tokens().Verify(old)
			return errors.Is(err, signaling.ErrTokenRevoked)
		})
	}
	fresh, _, err := b.Sig.Tokens().Mint("exam", "cand", "candidate", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []*testNode{a, b, c} {
		if _, err := n.Sig.Tokens().Verify(fresh); err != nil {
			t.Errorf("a token minted after the revocation, on %s: %v", n.ID, err)
		}
	}
}

// TestClusterShutdownMovesParticipants: a node of a cluster that stops
// cleanly tells its participants room_moved (not server_shutdown: their
// room goes on elsewhere), keeps the room in the map, and the room is
// re-homed to another node once it has left.
func TestClusterShutdownMovesParticipants(t *testing.T) {
	rd := vigiltest.StartRedis(t)
	prefix := testPrefix(t)
	a := startNode(t, rd, prefix, "a", nil)
	b := startNode(t, rd, prefix, "b", nil)
	resp, body := call(t, b.URL, "POST", "/v1/rooms", adminH(), `{"name":"live","kind":"conference"}`)
	var created struct {
		Instance string `json:"instance"`
	}
	if resp.StatusCode != 201 || !strings.Contains(string(body), `"node":"a"`) || json.Unmarshal(body, &created) != nil || len(created.Instance) != 16 {
		t.Fatalf("create: %d %s, want it on a, with an instance", resp.StatusCode, body)
	}
	// A token of the API, bound to the room's instance (minted by a).
	resp, body = call(t, b.URL, "POST", "/v1/rooms/live/tokens", adminH(), `{"identity":"bob","role":"participant"}`)
	var bound struct {
		Token    string `json:"token"`
		Instance string `json:"instance"`
	}
	if resp.StatusCode != 201 || json.Unmarshal(body, &bound) != nil || bound.Instance != created.Instance {
		t.Fatalf("mint through b: %d %s", resp.StatusCode, body)
	}
	tok, _, err := b.Sig.Tokens().Mint("live", "ann", "participant", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	resp, body = call(t, b.URL, "POST", "/v1/rooms/live/sessions", map[string]string{"Authorization": "Bearer " + tok}, "")
	var open struct {
		SessionID string `json:"session_id"`
	}
	if resp.StatusCode != 201 || json.Unmarshal(body, &open) != nil || !strings.HasPrefix(open.SessionID, "a.") {
		t.Fatalf("open a session through b: %d %s, want one of a's", resp.StatusCode, body)
	}
	// The session's socket goes through b, relayed to a.
	conn, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(b.URL, "http")+"/v1/sessions/"+open.SessionID+"/ws?cursor=0", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	left := make(chan string, 1)
	go func() {
		for {
			var ev struct {
				Type string `json:"type"`
				Data struct {
					Identity string `json:"identity"`
					Reason   string `json:"reason"`
				} `json:"data"`
			}
			if err := conn.ReadJSON(&ev); err != nil {
				close(left)
				return
			}
			if ev.Type == "left" {
				left <- ev.Data.Reason
				return
			}
		}
	}()
	a.Sig.Close(2 * time.Second)
	if err := a.Cl.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case reason, ok := <-left:
		if !ok || reason != signaling.ReasonRoomMoved {
			t.Fatalf("left with %q (socket still open: %v), want %q", reason, ok, signaling.ReasonRoomMoved)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no left event 5 s after the node stopped")
	}
	vigiltest.WaitFor(t, 5*time.Second, "the room re-homed to b", func() bool {
		_, err := b.SFU.Room("live")
		return err == nil
	})
	resp, body = call(t, b.URL, "POST", "/v1/rooms/live/sessions", map[string]string{"Authorization": "Bearer " + tok}, "")
	if resp.StatusCode != 201 || !strings.Contains(string(body), `"session_id":"b.`) {
		t.Fatalf("a new session with the same token: %d %s, want one of b's", resp.StatusCode, body)
	}
	// The re-homed room is the same instance: its record carried it, and
	// the token bound to it still joins.
	if r, err := b.SFU.Room("live"); err != nil || r.Instance() != created.Instance {
		t.Fatalf("re-homed room instance: %v, want %s", err, created.Instance)
	}
	resp, body = call(t, b.URL, "POST", "/v1/rooms/live/sessions", map[string]string{"Authorization": "Bearer " + bound.Token}, "")
	if resp.StatusCode != 201 {
		t.Fatalf("the instance's token after the re-homing: %d %s", resp.StatusCode, body)
	}
}

// TestNodeNeedsTokenSecret: a node without a token secret is refused
// before it joins: a secret of its own would refuse every other node's
// tokens.
func TestNodeNeedsTokenSecret(t *testing.T) {
	_, err := federation.New(context.Background(), federation.Config{Signaling: signaling.Config{AdminKey: clusterKey}})
	if !errors.Is(err, federation.ErrNoTokenSecret) {
		t.Fatalf("New without a token secret: %v, want ErrNoTokenSecret", err)
	}
}
