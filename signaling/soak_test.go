package signaling_test

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/vigil-media/vigil/signaling/vigiltest"
)

// Soak bounds, stated in docs/operations.md: after the soak, once every
// session has gone, the process has at most soakGoroutines more
// goroutines than before it, and its heap in use after a GC has grown by
// less than soakHeapBytes.
const (
	soakGoroutines = 10
	soakHeapBytes  = 16 << 20
)

// TestSoakJoinLeave: signaling clients (no media) join and leave in a
// loop for a bounded time, over WebSocket or long poll, most leaving
// with DELETE and one in four just dropping its transport (the session
// then ends when the grace period passes). Afterwards no participant or
// session is left, goroutines are back to the baseline within
// soakGoroutines and the heap in use grew by less than soakHeapBytes.
// 200 clients for 10 s by default; VIGIL_SOAK=full runs the full spec,
// 500 clients for 60 s.
func TestSoakJoinLeave(t *testing.T) {
	// The grace period is longer than a loaded server (500 clients and
	// the server in one process, with -race, on 2 cores: requests take up
	// to 2 s) takes between a session's open and its first poll, or a
	// transport's end and the DELETE: else sessions time out, correctly,
	// before their clients leave.
	clients, length, grace := 200, 10*time.Second, 3*time.Second
	if os.Getenv("VIGIL_SOAK") == "full" {
		clients, length, grace = 500, 60*time.Second, 10*time.Second
	} else if testing.Short() {
		t.Skip("soak test skipped in -short mode")
	}
	const rooms = 10
	srv := vigiltest.StartWith(t, vigiltest.Options{GracePeriod: grace})
	for i := range rooms {
		srv.CreateRoom(t, fmt.Sprintf("soak-%d", i), "conference")
	}
	tr := &http.Transport{MaxIdleConns: clients * 2, MaxIdleConnsPerHost: clients * 2, IdleConnTimeout: 5 * time.Second}
	hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	dialer := &websocket.Dialer{HandshakeTimeout: 10 * time.Second}

	var joins, leaves, drops, failures, slowest atomic.Int64
	var failMu sync.Mutex
	var firstFailure string
	fail := func(format string, args ...any) {
		if failures.Add(1) == 1 {
			failMu.Lock()
			firstFailure = fmt.Sprintf(format, args...)
			failMu.Unlock()
		}
	}
	do := func(method, path, bearer string, body string) (int, []byte, error) {
		req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if err != nil {
			return 0, nil, err
		}
		req.Header.Set("Content-Type", "application/json")
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		start := time.Now()
		resp, err := hc.Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		if d := int64(time.Since(start)); d > slowest.Load() && !strings.Contains(path, "wait=") {
			slowest.Store(d) // racy maximum: good enough for a log line
		}
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, b, err
	}
	// cycle is one join, a short stay and a leave (or a drop).
	cycle := func(id int, n int, rng *rand.Rand) {
		room := fmt.Sprintf("soak-%d", id%rooms)
		identity := fmt.Sprintf("c%d", id)
		code, body, err := do(http.MethodPost, "/v1/rooms/"+room+"/tokens", srv.AdminKey, fmt.Sprintf(`{"identity":%q,"role":"participant"}`, identity))
		if err != nil || code != http.StatusCreated {
			fail("mint: %d %v %s", code, err, body)
			return
		}
		var minted struct{ Token string }
		_ = json.Unmarshal(body, &minted)
		code, body, err = do(http.MethodPost, "/v1/rooms/"+room+"/sessions", minted.Token, "")
		if err != nil || code != http.StatusCreated {
			fail("open session: %d %v %s", code, err, body)
			return
		}
		var opened struct {
			SessionID string `json:"session_id"`
		}
		_ = json.Unmarshal(body, &opened)
		joins.Add(1)
		openedAt := time.Now()
		stay := time.Duration(100+rng.IntN(300)) * time.Millisecond
		if n%2 == 0 { // WebSocket: read until joined, stay, close
			conn, _, err := dialer.Dial(vigiltest.WSURL(srv, opened.SessionID, 0), nil)
			if err != nil {
				fail("ws: %v", err)
				return
			}
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			var ev vigiltest.Event
			if err := conn.ReadJSON(&ev); err != nil || ev.Type != "joined" {
				fail("ws first event: %v %s", err, ev.Type)
			}
			time.Sleep(stay)
			defer conn.Close() // after the leave, as a client does
		} else { // long poll: the joined event, then one poll that waits
			code, body, err := do(http.MethodGet, "/v1/sessions/"+opened.SessionID+"/poll?cursor=0", "", "")
			if err != nil || code != http.StatusOK || !strings.Contains(string(body), `"type":"joined"`) {
				fail("poll: %d %v %s", code, err, body)
			}
			var reply struct{ Cursor uint64 }
			_ = json.Unmarshal(body, &reply)
			_, _, _ = do(http.MethodGet, fmt.Sprintf("/v1/sessions/%s/poll?cursor=%d&wait=%.1f", opened.SessionID, reply.Cursor, stay.Seconds()), "", "")
		}
		if rng.IntN(4) == 0 {
			drops.Add(1) // gone without a word: the grace period ends it
			return
		}
		leaveAt := time.Now()
		code, body, err = do(http.MethodDelete, "/v1/sessions/"+opened.SessionID, "", "")
		if err != nil || code != http.StatusNoContent {
			fail("leave (%s, %v after the open, answered in %v): %d %v %s", map[bool]string{true: "ws", false: "long poll"}[n%2 == 0],
				leaveAt.Sub(openedAt), time.Since(leaveAt), code, err, body)
			return
		}
		leaves.Add(1)
	}
	run := func(d time.Duration) {
		var wg sync.WaitGroup
		end := time.Now().Add(d)
		for id := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(id), 7))
				for n := 0; time.Now().Before(end); n++ {
					cycle(id, n+id, rng)
				}
			}()
		}
		wg.Wait()
	}
	settled := func() {
		t.Helper()
		vigiltest.WaitFor(t, 20*time.Second, "every participant gone", func() bool {
			for _, r := range srv.SFU.Rooms() {
				if len(r.Participants()) > 0 {
					return false
				}
			}
			return true
		})
		tr.CloseIdleConnections()
		time.Sleep(grace + time.Second) // sessions past their grace, timers fired
	}
	measure := func() (int, uint64) {
		var ms runtime.MemStats
		for range 3 {
			runtime.GC()
		}
		runtime.ReadMemStats(&ms)
		return runtime.NumGoroutine(), ms.HeapInuse
	}

	// Warm up (pools, caches, the first rooms' state), then the baseline.
	run(time.Second)
	settled()
	g0, h0 := measure()
	j0, l0, d0 := joins.Load(), leaves.Load(), drops.Load()
	start := time.Now()
	run(length)
	elapsed := time.Since(start)
	settled()
	g1, h1 := measure()
	n := joins.Load() - j0
	t.Logf("%d clients, grace %v, for %v: %d joins (%.0f/s), %d leaves, %d drops, %d failures, slowest request %v; goroutines %d -> %d (%+d), heap in use %.1f -> %.1f MiB (%+.1f MiB)",
		clients, grace, elapsed.Round(time.Millisecond), n, float64(n)/elapsed.Seconds(), leaves.Load()-l0, drops.Load()-d0, failures.Load(), time.Duration(slowest.Load()).Round(time.Millisecond),
		g0, g1, g1-g0, float64(h0)/(1<<20), float64(h1)/(1<<20), (float64(h1)-float64(h0))/(1<<20))
	if f := failures.Load(); f > 0 {
		t.Errorf("%d failed cycles, the first: %s", f, firstFailure)
	}
	if n < int64(clients) {
		t.Errorf("only %d joins", n)
	}
	if g1-g0 > soakGoroutines {
		buf := make([]byte, 1<<20)
		t.Errorf("goroutines grew by %d (more than %d):\n%s", g1-g0, soakGoroutines, buf[:runtime.Stack(buf, true)])
	}
	if int64(h1)-int64(h0) >= soakHeapBytes {
		t.Errorf("heap in use grew by %d bytes (bound %d)", int64(h1)-int64(h0), soakHeapBytes)
	}
	code, body := srv.Do(t, http.MethodGet, "/metrics", "", nil)
	if code != http.StatusOK {
		t.Fatalf("metrics: %d", code)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if (strings.HasPrefix(line, "vigil_signaling_sessions") || strings.HasPrefix(line, "vigil_participants")) && !strings.HasSuffix(line, " 0") {
			t.Errorf("left over: %s", line)
		}
	}
}
