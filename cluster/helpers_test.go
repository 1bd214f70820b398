package cluster

import (
	"context"
	"log/slog"
	"maps"
	"net"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/vigil-media/vigil/internal/redisserver"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testKey is the cluster key of the test nodes.
var testKey = []byte("test cluster key")

// Short beats keep the tests fast.
const (
	testHeartbeat = 100 * time.Millisecond
	testLease     = 500 * time.Millisecond
	// waitFor's deadline: generous, for a loaded 2-core machine.
	testDeadline = 15 * time.Second
)

// testRedis is a private redis-server on a loopback port, which a test
// can stop and start again (empty: no persistence) on the same port: a
// testing.T wrapper over internal/redisserver.
type testRedis struct {
	t   *testing.T
	srv *redisserver.Server
}

// startRedis starts a redis-server for t and stops it at t's cleanup.
// The test fails (it does not skip) when redis-server is missing.
func startRedis(t *testing.T) *testRedis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal("redis-server is not on PATH; the cluster tests need a real Redis: run `make deps`")
	}
	srv, err := redisserver.Start(context.Background(), redisserver.Options{Path: bin, Dir: t.TempDir(), Timeout: testDeadline})
	if err != nil {
		t.Fatal(err)
	}
	r := &testRedis{t: t, srv: srv}
	t.Cleanup(r.Stop)
	return r
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func (r *testRedis) Addr() string { return r.srv.Addr() }

func (r *testRedis) URL() string { return r.srv.URL() }

// Start starts the server again, on the same port, empty.
func (r *testRedis) Start() {
	r.t.Helper()
	if err := r.srv.Start(context.Background()); err != nil {
		r.t.Fatal(err)
	}
}

// Stop kills the server (as a crash would) and waits for it to exit.
func (r *testRedis) Stop() { r.srv.Stop() }

// rawClient is a plain client, to look at the keys behind the API.
func rawClient(t *testing.T, addr string) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// testPrefix is a key prefix of t's own.
func testPrefix(t *testing.T) string {
	return "test:" + strings.ReplaceAll(t.Name(), "/", ":") + ":"
}

// testLogger logs into t's output.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// newNode starts a node with the test beats and t's prefix; h (if not
// nil) holds its rooms. It is closed at t's cleanup.
func newNode(t *testing.T, redisURL, id string, h *holder, mod ...func(*Config)) *Cluster {
	t.Helper()
	cfg := Config{
		RedisURL:  redisURL,
		NodeID:    id,
		URL:       "http://" + id + ".test:7880",
		Key:       testKey,
		Heartbeat: testHeartbeat,
		Lease:     testLease,
		Prefix:    testPrefix(t),
		Logger:    testLogger(t).With("test_node", id),
	}
	if h != nil {
		cfg.Rooms, cfg.Adopt, cfg.Lost, cfg.Load = h.list, h.adopt, h.lose, h.load
	}
	for _, f := range mod {
		f(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := New(ctx, cfg)
	if err != nil {
		t.Fatalf("New(%s): %v", id, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// holder stands for signaling: the rooms a node holds, and what Adopt
// and Lost did to them.
type holder struct {
	mu      sync.Mutex
	rooms   map[string]RoomRecord
	adopted map[string]int
	lost    map[string]int
	// creating: rooms being created on this node (createHeld), from
	// before CreateRoom until a heartbeat has read them from list. A
	// heartbeat that read list before the room was held may find it in
	// the map, owned here, and call Adopt for it; like signaling (its
	// creating set, then "the room exists"), the holder ignores that.
	creating map[string]bool
}

func newHolder() *holder {
	return &holder{rooms: map[string]RoomRecord{}, adopted: map[string]int{}, lost: map[string]int{}, creating: map[string]bool{}}
}

func (h *holder) add(r RoomRecord) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.rooms[r.Name] = r
}

// createHeld creates rec through c, for a room h holds (rec.Owner is h's
// node), as signaling does: the record first, then the room held.
func createHeld(t *testing.T, ctx context.Context, c *Cluster, h *holder, rec RoomRecord) RoomRecord {
	t.Helper()
	h.mu.Lock()
	h.creating[rec.Name] = true
	h.mu.Unlock()
	rec, err := c.CreateRoom(ctx, rec)
	if err != nil {
		t.Fatal(err)
	}
	h.add(rec)
	return rec
}

func (h *holder) remove(name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.rooms, name)
}

func (h *holder) list() []RoomRecord {
	h.mu.Lock()
	defer h.mu.Unlock()
	for name := range h.rooms {
		delete(h.creating, name)
	}
	return slices.Collect(maps.Values(h.rooms))
}

func (h *holder) names() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Sorted(maps.Keys(h.rooms))
}

func (h *holder) adopt(r RoomRecord) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.creating[r.Name] {
		return
	}
	h.rooms[r.Name] = r
	h.adopted[r.Name]++
}

func (h *holder) lose(name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.rooms, name)
	h.lost[name]++
}

func (h *holder) load() Load {
	h.mu.Lock()
	defer h.mu.Unlock()
	return Load{Rooms: len(h.rooms)}
}

func (h *holder) counts() (adopted, lost map[string]int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return maps.Clone(h.adopted), maps.Clone(h.lost)
}

// waitFor polls cond until it holds, failing t after testDeadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testDeadline)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*testDeadline)
	t.Cleanup(cancel)
	return ctx
}

// proxy is a TCP proxy to Redis that a test can cut, to cut one node off
// while the others still reach Redis.
type proxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]struct{}
	frozen map[net.Conn]bool
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}, frozen: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		_ = ln.Close()
		p.Cut()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) URL() string { return "redis://" + p.ln.Addr().String() + "/0" }

// Cut closes every proxied connection and, until Restore, every new one.
func (p *proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		_ = c.Close()
	}
}

// Freeze makes every proxied connection a black hole: whatever is sent
// on it is dropped, and it is not closed (a Redis host that vanished).
// New connections work.
func (p *proxy) Freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		p.frozen[c] = true
	}
}

func (p *proxy) isFrozen(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.frozen[c]
}

func (p *proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
}

func (p *proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *proxy) untrack(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
	delete(p.frozen, c)
}

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.DialTimeout("tcp", p.target, time.Second)
		if err != nil {
			_ = in.Close()
			continue
		}
		if !p.track(in) || !p.track(out) {
			_ = in.Close()
			_ = out.Close()
			p.untrack(in)
			continue
		}
		p.wg.Add(2)
		pipe := func(dst, src net.Conn) {
			defer p.wg.Done()
			buf := make([]byte, 32<<10)
			for {
				n, err := src.Read(buf)
				if n > 0 && !p.isFrozen(src) {
					if _, err := dst.Write(buf[:n]); err != nil {
						break
					}
				}
				if err != nil {
					break
				}
			}
			_ = dst.Close()
			_ = src.Close()
			p.untrack(dst)
			p.untrack(src)
		}
		go pipe(in, out)
		go pipe(out, in)
	}
}
