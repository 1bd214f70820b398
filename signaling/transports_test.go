package signaling_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/signaling/vigiltest"
)

// checkExactlyOnce fails unless c's events are seq 1, 2, 3, ... in order.
func checkExactlyOnce(t *testing.T, c *vigiltest.Client) {
	t.Helper()
	for i, e := range c.Events() {
		if e.Seq != uint64(i+1) {
			t.Fatalf("event %d has seq %d (type %s): want every event exactly once, in order", i, e.Seq, e.Type)
		}
	}
}

func TestEveryTransportCarriesAWholeSession(t *testing.T) {
	for _, transport := range []string{"ws", "sse", "longpoll", "poll"} {
		t.Run(transport, func(t *testing.T) {
			srv := vigiltest.Start(t)
			srv.CreateRoom(t, "r", "conference")
			pub := vigiltest.Dial(t, srv, "r", "alice", "participant")
			sub := vigiltest.DialVia(t, srv, "r", "bob", "participant", transport)
			sub.WaitEvent("joined", nil)

			media := newSynthetic(t, "alice")
			pub.Publish(map[string]webrtc.TrackLocal{"camera": media.video, "microphone": media.audio})
			vigiltest.WaitFor(t, 10*time.Second, transport+" subscriber receives media", func() bool {
				return sub.Packets("alice/camera") > 20 && sub.Packets("alice/microphone") > 20
			})
			// And the other way: bob publishes through POSTed offers.
			bm := newSynthetic(t, "bob")
			sub.Publish(map[string]webrtc.TrackLocal{"camera": bm.video})
			vigiltest.WaitFor(t, 10*time.Second, "publisher over "+transport+" reaches alice", func() bool {
				return pub.Packets("bob/camera") > 20
			})
			if transport != "ws" {
				posts, refused := sub.Posts()
				if posts == 0 || refused != 0 {
					t.Fatalf("over %s: %d messages POSTed, %d refused", transport, posts, refused)
				}
			}
			checkExactlyOnce(t, sub)
		})
	}
}

func TestResumeOnAnotherTransportExactlyOnce(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "r", "conference")
	talker := vigiltest.Dial(t, srv, "r", "talker", "participant")
	c := vigiltest.DialVia(t, srv, "r", "listener", "participant", "ws")
	c.WaitEvent("joined", nil)

	var wg sync.WaitGroup
	wg.Add(1)
	const chats = 120
	go func() {
		defer wg.Done()
		for i := 0; i < chats; i++ {
			talker.Send("chat", "", map[string]string{"text": fmt.Sprintf("m%03d", i)})
			time.Sleep(5 * time.Millisecond)
		}
	}()
	// Switch transports mid-stream, each time from the last event seen.
	for _, next := range []string{"sse", "longpoll", "poll", "ws", "sse"} {
		time.Sleep(100 * time.Millisecond)
		c.Disconnect()
		c.ConnectVia(next, c.LastSeq())
	}
	wg.Wait()
	vigiltest.WaitFor(t, 10*time.Second, "every chat", func() bool { return len(c.EventsOf("chat")) >= chats })
	time.Sleep(200 * time.Millisecond)
	checkExactlyOnce(t, c)
	got := c.EventsOf("chat")
	if len(got) != chats {
		t.Fatalf("%d chat events, want %d", len(got), chats)
	}
	for i, e := range got {
		if want := fmt.Sprintf(`"text":"m%03d"`, i); !strings.Contains(string(e.Data), want) {
			t.Fatalf("chat %d is %s, want %s", i, e.Data, want)
		}
	}
}

func TestIdempotentPost(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "r", "conference")
	a := vigiltest.DialVia(t, srv, "r", "alice", "participant", "longpoll")
	b := vigiltest.Dial(t, srv, "r", "bob", "participant")
	a.WaitEvent("joined", nil)
	b.WaitEvent("joined", nil)

	msg := []byte(`{"type":"chat","data":{"text":"hello once"}}`)
	s1, body1, replayed1 := a.Post(msg, "key-1")
	s2, body2, replayed2 := a.Post(msg, "key-1")
	if s1 != 200 || s2 != 200 || string(body1) != string(body2) {
		t.Fatalf("replies differ: %d %s / %d %s", s1, body1, s2, body2)
	}
	if replayed1 || !replayed2 {
		t.Fatalf("replayed flags %v %v, want false then true", replayed1, replayed2)
	}
	// Same key, another body: refused.
	s3, body3, _ := a.Post([]byte(`{"type":"chat","data":{"text":"something else"}}`), "key-1")
	if s3 != 422 || vigiltest.ErrorCode(t, body3) != "idempotency_key_reused" {
		t.Fatalf("reused key: %d %s", s3, body3)
	}
	// A refused message is replayed as refused, not re-run.
	bad := []byte(`{"type":"answer","data":{"sdp":"v=0"}}`)
	s4, body4, _ := a.Post(bad, "key-2")
	s5, body5, r5 := a.Post(bad, "key-2")
	if s4 != 409 || s5 != 409 || string(body4) != string(body5) || !r5 || vigiltest.ErrorCode(t, body4) != "invalid_state" {
		t.Fatalf("refused message: %d %s / %d %s replayed=%v", s4, body4, s5, body5, r5)
	}
	// Without a key, each POST acts.
	a.Post([]byte(`{"type":"chat","data":{"text":"twice"}}`), "")
	a.Post([]byte(`{"type":"chat","data":{"text":"twice"}}`), "")

	vigiltest.WaitFor(t, 5*time.Second, "chats at bob", func() bool { return len(b.EventsOf("chat")) >= 3 })
	time.Sleep(200 * time.Millisecond)
	counts := map[string]int{}
	for _, e := range b.EventsOf("chat") {
		var d struct{ Text string }
		_ = json.Unmarshal(e.Data, &d)
		counts[d.Text]++
	}
	if counts["hello once"] != 1 || counts["twice"] != 2 || counts["something else"] != 0 {
		t.Fatalf("chat effects %v, want hello once x1, twice x2", counts)
	}
}

func TestCursorTooOldOnEveryTransport(t *testing.T) {
	srv := vigiltest.StartWith(t, vigiltest.Options{OutboxCapacity: 8})
	srv.CreateRoom(t, "r", "conference")
	talker := vigiltest.Dial(t, srv, "r", "talker", "participant")
	c := vigiltest.DialVia(t, srv, "r", "late", "participant", "poll")
	c.WaitEvent("joined", nil)
	c.Disconnect()
	for i := 0; i < 20; i++ {
		talker.Send("chat", "", map[string]string{"text": "x"})
	}
	var status int
	var body []byte
	vigiltest.WaitFor(t, 5*time.Second, "the late client's outbox to overflow", func() bool {
		status, body = srv.Do(t, "GET", "/v1/sessions/"+c.Session+"/poll?cursor=1", "", nil)
		return status != http.StatusOK
	})
	if status != http.StatusGone || vigiltest.ErrorCode(t, body) != "cursor_too_old" {
		t.Fatalf("poll: %d %s", status, body)
	}
	req, _ := http.NewRequest("GET", srv.URL+"/v1/sessions/"+c.Session+"/events", nil)
	req.Header.Set("Last-Event-ID", "1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusGone || vigiltest.ErrorCode(t, b) != "cursor_too_old" {
		t.Fatalf("sse: %d %s", resp.StatusCode, b)
	}
	conn, _, err := websocket.DefaultDialer.Dial(vigiltest.WSURL(srv, c.Session, 1), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var first vigiltest.Event
	if err := conn.ReadJSON(&first); err != nil || first.Type != "error" || !strings.Contains(string(first.Data), "cursor_too_old") {
		t.Fatalf("ws first frame %+v %v", first, err)
	}
	if _, _, err := conn.ReadMessage(); err == nil || !websocket.IsCloseError(err, 4410) {
		t.Fatalf("ws close: %v, want 4410", err)
	}
	// The client's way out: a new session, which starts at seq 1.
	again := vigiltest.DialVia(t, srv, "r", "late", "participant", "poll")
	if e := again.WaitEvent("joined", nil); e.Seq != 1 {
		t.Fatalf("rejoined at seq %d", e.Seq)
	}
}

func TestShortPollETagAndLongPollLimits(t *testing.T) {
	srv := vigiltest.StartWith(t, vigiltest.Options{MaxLongPolls: 1})
	srv.CreateRoom(t, "r", "conference")
	sid, err := srv.OpenSession(t, "r", srv.Token(t, "r", "alice", "participant"))
	if err != nil {
		t.Fatal(err)
	}
	get := func(query, inm string) (*http.Response, []byte) {
		req, _ := http.NewRequest("GET", srv.URL+"/v1/sessions/"+sid+"/poll?"+query, nil)
		if inm != "" {
			req.Header.Set("If-None-Match", inm)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, b
	}
	resp, body := get("cursor=1", "")
	etag := resp.Header.Get("ETag")
	if resp.StatusCode != 200 || etag == "" || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), `"events":[]`) {
		t.Fatalf("empty short poll: %d etag=%q retry=%q %s", resp.StatusCode, etag, resp.Header.Get("Retry-After"), body)
	}
	if resp, _ = get("cursor=1", etag); resp.StatusCode != http.StatusNotModified {
		t.Fatalf("If-None-Match with nothing new: %d, want 304", resp.StatusCode)
	}
	vigiltest.Dial(t, srv, "r", "bob", "participant") // a new event for alice
	vigiltest.WaitFor(t, 5*time.Second, "a new event", func() bool {
		resp, _ := get("cursor=1", etag)
		return resp.StatusCode == 200
	})

	// Long poll: held until the timeout when nothing comes.
	start := time.Now()
	resp, body = get("cursor=2&wait=0.3", "")
	if d := time.Since(start); resp.StatusCode != 200 || d < 250*time.Millisecond || !strings.Contains(string(body), `"events":[]`) {
		t.Fatalf("long poll timeout: %d after %v: %s", resp.StatusCode, d, body)
	}
	// The cap: one held long poll at a time here.
	held := make(chan struct{})
	go func() {
		defer close(held)
		get("cursor=2&wait=2", "")
	}()
	time.Sleep(300 * time.Millisecond) // let the first one be held
	resp, body = get("cursor=2&wait=2", "")
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || vigiltest.ErrorCode(t, body) != "too_many_waiters" {
		t.Fatalf("second long poll over the cap: %d retry=%q %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	<-held
	for _, q := range []string{"cursor=x", "cursor=2&wait=31", "cursor=2&wait=-1", "cursor=999"} {
		if resp, body := get(q, ""); resp.StatusCode != 400 {
			t.Errorf("poll ?%s: %d %s, want 400", q, resp.StatusCode, body)
		}
	}
}

func TestSlowSubscriberDoesNotStallOthers(t *testing.T) {
	// Room enough for a client that keeps up even on a loaded machine,
	// not for one that never reads.
	srv := vigiltest.StartWith(t, vigiltest.Options{OutboxCapacity: 256})
	srv.CreateRoom(t, "r", "conference")
	talker := vigiltest.Dial(t, srv, "r", "talker", "participant")
	fast := vigiltest.Dial(t, srv, "r", "fast", "participant")
	slowSID, err := srv.OpenSession(t, "r", srv.Token(t, "r", "slow", "participant"))
	if err != nil {
		t.Fatal(err)
	}
	// The slow client opens a socket and never reads from it.
	slow, _, err := websocket.DefaultDialer.Dial(vigiltest.WSURL(srv, slowSID, 0), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	fast.WaitEvent("joined", nil)

	text := strings.Repeat("z", 2000)
	const n = 400
	start := time.Now()
	for i := 0; i < n; i++ {
		talker.Send("chat", "", map[string]string{"text": text})
	}
	vigiltest.WaitFor(t, 10*time.Second, "fast subscriber gets every chat", func() bool { return len(fast.EventsOf("chat")) == n })
	t.Logf("fast subscriber got %d chats of 2 KB in %v while another never read", n, time.Since(start))
	checkExactlyOnce(t, fast)

	// The policy for the slow one: its outbox keeps the last 256 events;
	// resuming from where it stopped is refused as too old.
	status, body := srv.Do(t, "GET", "/v1/sessions/"+slowSID+"/poll?cursor=2", "", nil)
	if status != http.StatusGone || vigiltest.ErrorCode(t, body) != "cursor_too_old" {
		t.Fatalf("slow subscriber resuming: %d %s", status, body)
	}
}

func TestAdminRoomFeed(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "r", "conference")
	a := vigiltest.Dial(t, srv, "r", "alice", "participant")
	a.WaitEvent("joined", nil)

	if status, body := srv.Do(t, "GET", "/v1/rooms/r/events/poll", "", nil); status != 401 || vigiltest.ErrorCode(t, body) != "unauthorized" {
		t.Fatalf("feed without key: %d %s", status, body)
	}
	if status, body := srv.Do(t, "GET", "/v1/rooms/ghost/events/poll", srv.AdminKey, nil); status != 404 || vigiltest.ErrorCode(t, body) != "room_not_found" {
		t.Fatalf("feed of unknown room: %d %s", status, body)
	}
	// SSE from the start.
	req, _ := http.NewRequest("GET", srv.URL+"/v1/rooms/r/events", nil)
	req.Header.Set("Authorization", "Bearer "+srv.AdminKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	types := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var ev vigiltest.Event
				_ = json.Unmarshal([]byte(d), &ev)
				types <- ev.Type
			}
		}
		close(types)
	}()
	b := vigiltest.Dial(t, srv, "r", "bob", "participant")
	media := newSynthetic(t, "bob")
	b.Publish(map[string]webrtc.TrackLocal{"microphone": media.audio})
	vigiltest.WaitFor(t, 10*time.Second, "alice hears bob", func() bool { return a.Packets("bob/microphone") > 0 })
	b.Send("chat", "", map[string]string{"text": "hi"})
	b.Send("leave", "", map[string]any{})

	want := []string{"room_snapshot", "participant_joined", "track_published", "chat", "track_unpublished", "participant_left"}
	var got []string
	deadline := time.After(10 * time.Second)
	for len(got) < len(want) {
		select {
		case typ, ok := <-types:
			if !ok {
				t.Fatalf("feed ended after %v", got)
			}
			got = append(got, typ)
		case <-deadline:
			t.Fatalf("feed gave %v, want %v", got, want)
		}
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("feed gave %v, want %v", got, want)
	}
	// The same feed by poll, from the start.
	status, body := srv.Do(t, "GET", "/v1/rooms/r/events/poll?cursor=0", srv.AdminKey, nil)
	if status != 200 || !strings.Contains(string(body), `"type":"room_snapshot"`) || !strings.Contains(string(body), `"identity":"alice"`) {
		t.Fatalf("feed poll: %d %s", status, body)
	}
}
