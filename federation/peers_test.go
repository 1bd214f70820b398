package federation_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"
	"github.com/vigil-media/vigil/cluster"
	"github.com/vigil-media/vigil/federation"
	"github.com/vigil-media/vigil/signaling"
	"github.com/vigil-media/vigil/signaling/vigiltest"
)

// The attacks of a client on the cluster's trust between nodes
// (docs/cluster.md, "Security"): forged, stale, replayed and mismatched
// peer auths; node records written into Redis by someone without the
// cluster key; node URLs over TLS.

// TestPeerAuthRefused: a request whose peer auth is forged, made with
// another key, older or newer than 30 s, or signed for another node,
// method, path or query is not a peer's: it is relayed to the room's
// owner like any client's (not refused as relayed twice, not served
// here as an edge), the owner gets this node's own peer headers and the
// client's real address, and the per-address join limit counts the real
// address. A peer auth captured on the wire is good only for its own
// method and request URI, within 30 s.
func TestPeerAuthRefused(t *testing.T) {
	rd := vigiltest.StartRedis(t)
	prefix := testPrefix(t)
	a := startNode(t, rd, prefix, "a", func(c *signaling.Config) { c.JoinRate = 1 }) // bursts of 2
	fake := startFakeNode(t, rd, prefix, "fake")
	ctx := context.Background()
	if _, err := fake.cl.CreateRoom(ctx, cluster.RoomRecord{Name: "far", Kind: "conference", Owner: "fake"}); err != nil {
		t.Fatal(err)
	}
	const path = "/v1/rooms/far?x=1"
	now := time.Now()

	// The control: a valid peer auth is a peer's, never relayed again,
	// and may ask for an edge (served here: the room is not here).
	before := len(fake.requests())
	resp, body := call(t, a.URL, "GET", path, adminH(peer("fake", "GET", path)...), "")
	if resp.StatusCode != 503 || vigiltest.ErrorCode(t, body) != "room_moved" {
		t.Fatalf("a valid peer auth: %d %s, want 503 room_moved (a peer's request is not relayed twice)", resp.StatusCode, body)
	}
	resp, body = call(t, a.URL, "GET", path, adminH(append(peer("fake", "GET", path), federation.HeaderEdge, "1")...), "")
	if resp.StatusCode != 404 || vigiltest.ErrorCode(t, body) != "room_not_found" {
		t.Fatalf("a valid peer auth asking for an edge: %d %s, want it served here (404 room_not_found)", resp.StatusCode, body)
	}
	if n := len(fake.requests()) - before; n != 0 {
		t.Fatalf("valid peer requests relayed %d times", n)
	}

	bad := []struct {
		name    string
		headers []string
	}{
		{"forged", []string{federation.HeaderPeer, "fake", federation.HeaderPeerTime, "0", federation.HeaderPeerAuth, strings.Repeat("ab", 32)}},
		{"no time", peerAt(clusterKey, "fake", "GET", path, now)[:2:2]},
		{"another key", peerAt("not-the-admin-key", "fake", "GET", path, now)},
		{"31 s old", peerAt(clusterKey, "fake", "GET", path, now.Add(-31*time.Second))},
		{"an hour old", peerAt(clusterKey, "fake", "GET", path, now.Add(-time.Hour))},
		{"45 s ahead", peerAt(clusterKey, "fake", "GET", path, now.Add(45*time.Second))},
		{"another path", peerAt(clusterKey, "fake", "GET", "/v1/rooms/other?x=1", now)},
		{"another query", peerAt(clusterKey, "fake", "GET", "/v1/rooms/far?x=2", now)},
		{"no query", peerAt(clusterKey, "fake", "GET", "/v1/rooms/far", now)},
		{"another method", peerAt(clusterKey, "fake", "DELETE", path, now)},
		{"another node", append(peerAt(clusterKey, "fake", "GET", path, now)[2:], federation.HeaderPeer, "b")},
	}
	// "no time": the id and a valid old-style (v1) auth of the id alone.
	bad[1].headers = append(bad[1].headers, federation.HeaderPeerAuth, oldPeerAuth(clusterKey, "fake"))
	for _, b := range bad {
		h := adminH(append(b.headers, federation.HeaderEdge, "1", federation.HeaderClientIP, "203.0.113.7", federation.HeaderRelay, "1")...)
		before := len(fake.requests())
		resp, body := call(t, a.URL, "GET", path, h, "")
		got := fake.requests()
		if resp.StatusCode != 200 || !strings.Contains(string(body), `"fake":true`) || len(got) != before+1 {
			t.Errorf("%s: %d %s, owner got %d requests; want it relayed like a client's", b.name, resp.StatusCode, body, len(got)-before)
			continue
		}
		r := got[len(got)-1]
		for h, v := range map[string]string{federation.HeaderPeer: "a", federation.HeaderClientIP: "127.0.0.1",
			federation.HeaderEdge: "", federation.HeaderRelay: ""} {
			if r.Header.Get(h) != v {
				t.Errorf("%s: the owner got %s %q, want %q", b.name, h, r.Header.Get(h), v)
			}
		}
	}

	// A peer auth captured on the wire (what a sent the owner): good
	// again for its own method and URI within 30 s, and for nothing else.
	captured := fake.requests()[len(fake.requests())-1].Header
	replay := func(method, uri string) (*http.Response, []byte) {
		return call(t, a.URL, method, uri, adminH(federation.HeaderPeer, captured.Get(federation.HeaderPeer),
			federation.HeaderPeerTime, captured.Get(federation.HeaderPeerTime),
			federation.HeaderPeerAuth, captured.Get(federation.HeaderPeerAuth)), "")
	}
	if resp, body := replay("GET", path); resp.StatusCode != 503 || vigiltest.ErrorCode(t, body) != "room_moved" {
		t.Fatalf("the captured auth, same request: %d %s, want 503 room_moved (it is valid: the test can fail)", resp.StatusCode, body)
	}
	for _, c := range []struct{ method, uri string }{{"GET", "/v1/rooms/far?x=2"}, {"GET", "/v1/rooms/far/participants"}, {"DELETE", "/v1/rooms/far?x=1"}} {
		before := len(fake.requests())
		resp, body := replay(c.method, c.uri)
		if got := fake.requests(); resp.StatusCode != 200 || len(got) != before+1 || got[len(got)-1].Method != c.method {
			t.Errorf("the captured auth on %s %s: %d %s; want it relayed like a client's", c.method, c.uri, resp.StatusCode, body)
		}
	}

	// The join limit (2 at once from one address) counts 127.0.0.1
	// whatever client address a stale or mismatched auth names.
	if resp, body := call(t, a.URL, "POST", "/v1/rooms", adminH(), `{"name":"r","kind":"conference"}`); resp.StatusCode != 201 {
		t.Fatalf("create room: %d %s", resp.StatusCode, body)
	}
	joinPath := "/v1/rooms/r/sessions"
	var codes []int
	for i, hs := range [][]string{
		peerAt(clusterKey, "b", "POST", joinPath, time.Now().Add(-31*time.Second)),
		peerAt(clusterKey, "b", "POST", "/v1/rooms/q/sessions", time.Now()),
		peerAt(clusterKey, "b", "GET", joinPath, time.Now()),
	} {
		h := pairs(append(hs, federation.HeaderClientIP, "198.51.100."+string(rune('1'+i)), "Authorization", "Bearer not-a-token")...)
		resp, _ := call(t, a.URL, "POST", joinPath, h, "")
		codes = append(codes, resp.StatusCode)
	}
	if codes[0] != 401 || codes[1] != 401 || codes[2] != 429 {
		t.Errorf("joins with forged client addresses: %v, want [401 401 429]", codes)
	}
	t.Logf("%d forged, stale or mismatched peer auths sent; join limit with them: %v", len(bad)+3, codes)
}

// oldPeerAuth is the peer auth of the first version: the node id alone,
// good forever.
func oldPeerAuth(adminKey, id string) string {
	k := hmac.New(sha256.New, []byte(adminKey))
	k.Write([]byte("vigil cluster peer v1"))
	m := hmac.New(sha256.New, k.Sum(nil))
	m.Write([]byte(id))
	return hex.EncodeToString(m.Sum(nil))
}

// recorder is an HTTP server that only records what it gets.
type recorder struct {
	hs   *httptest.Server
	mu   sync.Mutex
	auth []string // the Authorization of each request
}

func startRecorder(t *testing.T) *recorder {
	r := &recorder{}
	r.hs = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.auth = append(r.auth, req.Header.Get("Authorization"))
		r.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"rooms":[],"recorded":true}`))
	}))
	t.Cleanup(r.hs.Close)
	return r
}

func (r *recorder) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.auth...)
}

// TestForgedRegistrationGetsNothing: someone who can write to Redis
// registers nodes pointing at their own server (no signature, another
// node's signature copied, a signature made with another key), less
// loaded than any node and first by id, and gives them rooms. No call
// through a node (admin calls about those rooms, listing all rooms,
// placing new rooms, sessions of those nodes) reaches their server: no
// request, no admin key. The same record signed with the cluster key
// does get the relay: the test can fail.
func TestForgedRegistrationGetsNothing(t *testing.T) {
	rd := vigiltest.StartRedis(t)
	prefix := testPrefix(t)
	a := startNode(t, rd, prefix, "a", nil)
	evil := startRecorder(t)
	ctx := context.Background()
	raw := redis.NewClient(&redis.Options{Addr: rd.Addr})
	t.Cleanup(func() { _ = raw.Close() })

	aSig := raw.HGet(ctx, prefix+"node:a", "sig").Val()
	if aSig != registrationSig(clusterKey, "a", a.URL) {
		t.Fatalf("a's registration: sig %q, want the documented signature", aSig)
	}
	register := func(id, url, sig string) {
		t.Helper()
		if err := raw.HSet(ctx, prefix+"node:"+id, "url", url, "rooms", 0, "participants", 0,
			"started", time.Now().UnixMilli(), "sig", sig).Err(); err != nil {
			t.Fatal(err)
		}
		raw.PExpire(ctx, prefix+"node:"+id, time.Hour)
		raw.SAdd(ctx, prefix+"nodes", id)
	}
	giveRoom := func(name, owner string) {
		raw.HSet(ctx, prefix+"room:"+name, "kind", "conference", "max_participants", 0, "auto_record", 0,
			"owner", owner, "epoch", 1, "created", time.Now().UnixMilli())
		raw.SAdd(ctx, prefix+"rooms", name)
	}
	forged := map[string]string{
		"0none":     "",
		"0copied":   aSig,
		"0otherkey": registrationSig("another-admin-key", "0otherkey", evil.hs.URL),
	}
	for id, sig := range forged {
		register(id, evil.hs.URL, sig)
		giveRoom("victim-"+id, id)
	}
	time.Sleep(500 * time.Millisecond) // a few heartbeats: a's cache is refreshed

	attacks := 0
	attack := func(method, path, body string, wantStatus int) {
		t.Helper()
		attacks++
		resp, b := call(t, a.URL, method, path, adminH(), body)
		if resp.StatusCode != wantStatus {
			t.Errorf("%s %s: %d %s, want %d", method, path, resp.StatusCode, b, wantStatus)
		}
	}
	for id := range forged {
		room := "/v1/rooms/victim-" + id
		attack("GET", room, "", 503)
		attack("DELETE", room, "", 503)
		attack("POST", room+"/tokens", `{"identity":"x","role":"viewer"}`, 503)
		attack("GET", room+"/events", "", 503)
		attack("GET", "/v1/sessions/"+id+".s1/poll", "", 404)
		attack("DELETE", "/whip/victim-"+id+"/"+id+".r1", "", 404)
	}
	for i := range 3 {
		attack("POST", "/v1/rooms", `{"name":"new`+string(rune('0'+i))+`","kind":"conference"}`, 201)
	}
	resp, body := call(t, a.URL, "GET", "/v1/rooms", adminH(), "")
	attacks++
	var list signaling.ListRoomsResponse
	if resp.StatusCode != 200 || json.Unmarshal(body, &list) != nil {
		t.Fatalf("GET /v1/rooms: %d %s", resp.StatusCode, body)
	}
	for _, r := range list.Rooms {
		if strings.HasPrefix(r.Name, "new") && r.Node != "a" {
			t.Errorf("room %s placed on %q, want a", r.Name, r.Node)
		}
	}
	t.Logf("%d admin calls through a with %d forged node records in Redis: their server got %d requests, %d with the admin key",
		attacks, len(forged), len(evil.got()), strings.Count(strings.Join(evil.got(), "\n"), clusterKey))
	if got := evil.got(); len(got) != 0 {
		t.Errorf("the forged nodes' server got %d requests (Authorization %q), want none", len(got), got)
	}

	// The control: a record signed with the cluster key is a node.
	signed := startRecorder(t)
	register("0signed", signed.hs.URL, registrationSig(clusterKey, "0signed", signed.hs.URL))
	giveRoom("victim-signed", "0signed")
	time.Sleep(500 * time.Millisecond)
	attack("GET", "/v1/rooms/victim-signed", "", 200)
	if got := signed.got(); len(got) != 1 || got[0] != "Bearer "+clusterKey {
		t.Errorf("a signed node got %q, want one relayed request with the admin key", got)
	}
	if got := evil.got(); len(got) != 0 {
		t.Errorf("the forged nodes' server got %d requests, want none", len(got))
	}
}

// selfSigned makes a self-signed certificate for 127.0.0.1 and the pool
// that trusts it.
func selfSigned(t *testing.T) (*tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "vigil test node"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// TestPeerHTTPS: a node whose URL is https (a self-signed certificate)
// is reached by a node that trusts the certificate (PeerRootCAs): room
// placement, admin calls, a session's polls and its WebSocket are
// relayed over TLS. A node that does not trust it relays nothing there:
// 503 node_unavailable.
func TestPeerHTTPS(t *testing.T) {
	rd := vigiltest.StartRedis(t)
	prefix := testPrefix(t)
	cert, pool := selfSigned(t)
	a := startNodeWith(t, rd, prefix, "a", nodeOptions{cert: cert})
	b := startNodeWith(t, rd, prefix, "b", nodeOptions{roots: pool})
	c := startNode(t, rd, prefix, "c", nil)
	if !strings.HasPrefix(a.URL, "https://") {
		t.Fatalf("a's URL %s", a.URL)
	}
	vigiltest.WaitFor(t, 10*time.Second, "b to see a", func() bool {
		nodes, err := b.Cl.Nodes(context.Background())
		return err == nil && len(nodes) == 3
	})

	// Placed on a (every node is idle; a is first by id), through b.
	resp, body := call(t, b.URL, "POST", "/v1/rooms", adminH(), `{"name":"r","kind":"conference"}`)
	if resp.StatusCode != 201 || !strings.Contains(string(body), `"node":"a"`) {
		t.Fatalf("create a room through b: %d %s, want it placed on a over TLS", resp.StatusCode, body)
	}
	if _, err := a.SFU.Room("r"); err != nil {
		t.Fatalf("a does not hold the room: %v", err)
	}
	resp, body = call(t, b.URL, "POST", "/v1/rooms/r/tokens", adminH(), `{"identity":"v","role":"participant"}`)
	var tok struct {
		Token string `json:"token"`
	}
	if resp.StatusCode != 201 || json.Unmarshal(body, &tok) != nil || tok.Token == "" {
		t.Fatalf("mint a token through b: %d %s", resp.StatusCode, body)
	}
	resp, body = call(t, b.URL, "POST", "/v1/rooms/r/sessions", map[string]string{"Authorization": "Bearer " + tok.Token}, "")
	var sess struct {
		SessionID string `json:"session_id"`
	}
	if resp.StatusCode != 201 || json.Unmarshal(body, &sess) != nil || !strings.HasPrefix(sess.SessionID, "a.") {
		t.Fatalf("open a session through b: %d %s", resp.StatusCode, body)
	}
	if resp, body := call(t, b.URL, "GET", "/v1/sessions/"+sess.SessionID+"/poll?cursor=0", nil, ""); resp.StatusCode != 200 {
		t.Errorf("poll through b: %d %s", resp.StatusCode, body)
	}
	ws := "ws" + strings.TrimPrefix(b.URL, "http") + "/v1/sessions/" + sess.SessionID + "/ws?cursor=0"
	conn, wresp, err := websocket.DefaultDialer.Dial(ws, nil)
	if err != nil {
		t.Fatalf("WebSocket through b: %v %v", err, wresp)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, msg, err := conn.ReadMessage(); err != nil || !strings.Contains(string(msg), `"joined"`) {
		t.Errorf("WebSocket through b: first event %s, %v; want joined", msg, err)
	}
	_ = conn.Close()

	// c does not trust a's certificate.
	resp, body = call(t, c.URL, "GET", "/v1/rooms/r", adminH(), "")
	if resp.StatusCode != 503 || vigiltest.ErrorCode(t, body) != "node_unavailable" {
		t.Errorf("through a node that does not trust a's certificate: %d %s, want 503 node_unavailable", resp.StatusCode, body)
	}
	resp, body = call(t, b.URL, "GET", "/v1/rooms/r", adminH(), "")
	if resp.StatusCode != 200 {
		t.Errorf("through b: %d %s", resp.StatusCode, body)
	}
}
