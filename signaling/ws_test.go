package signaling_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/signaling/vigiltest"
)

func TestMain(m *testing.M) {
	// goleak runs per test where media is involved; see TestMediaOverWebSocket.
	m.Run()
}

func TestMediaOverWebSocket(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "class", "conference")
	alice := vigiltest.Dial(t, srv, "class", "alice", "participant")
	bob := vigiltest.Dial(t, srv, "class", "bob", "participant")
	carol := vigiltest.Dial(t, srv, "class", "carol", "participant")

	joined := alice.WaitEvent("joined", nil)
	if joined.Seq != 1 {
		t.Fatalf("joined is seq %d, want 1", joined.Seq)
	}
	media := newSynthetic(t, "alice")
	alice.Publish(map[string]webrtc.TrackLocal{"camera": media.video, "microphone": media.audio})

	for _, sub := range []*vigiltest.Client{bob, carol} {
		vigiltest.WaitFor(t, 10*time.Second, "media from alice", func() bool {
			return sub.Packets("alice/camera") > 20 && sub.Packets("alice/microphone") > 20
		})
	}
	// Rosters: bob saw alice's track published and carol join.
	bob.WaitEvent("track_published", func(d json.RawMessage) bool { return strings.Contains(string(d), `"identity":"alice"`) })
	bob.WaitEvent("participant_joined", func(d json.RawMessage) bool { return strings.Contains(string(d), `"identity":"carol"`) })

	// Sequence numbers of every client's events are 1, 2, 3, ...
	for _, c := range []*vigiltest.Client{alice, bob, carol} {
		for i, e := range c.Events() {
			if e.Seq != uint64(i+1) {
				t.Errorf("event %d has seq %d", i, e.Seq)
			}
		}
	}

	// alice leaves: the others are told, and alice's session ends.
	alice.Send("leave", "", map[string]any{})
	alice.WaitEvent("left", nil)
	bob.WaitEvent("participant_left", func(d json.RawMessage) bool { return strings.Contains(string(d), `"identity":"alice"`) })
	bob.WaitEvent("track_unpublished", nil)
}

func TestSocketBadInputKeepsSocketUsable(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "r", "conference")
	c := vigiltest.Dial(t, srv, "r", "alice", "participant")
	c.WaitEvent("joined", nil)

	cases := []struct {
		frame string
		code  string
	}{
		{`{not json`, "invalid_message"},
		{`[]`, "invalid_message"},
		{`{"type":"dance","id":"x1","data":{}}`, "unknown_type"},
		{`{"id":"x2","data":{}}`, "invalid_message"},
		{`{"type":"offer","id":"x3","data":{"sdp":""}}`, "invalid_message"},
		{`{"type":"offer","id":"x4","data":{"sdp":"v=0 garbage","sources":{}}}`, "invalid_sdp"},
		{`{"type":"offer","id":"x5","data":{"sdp":"x","sources":{"0":"hologram"}}}`, "invalid_message"},
		{`{"type":"answer","id":"x6","data":{"sdp":"v=0"}}`, "invalid_state"},
		{`{"type":"answer","id":"x7","data":{"sdp":"x","extra":1}}`, "invalid_message"},
		{`{"type":"leave","id":"x8","data":{},"more":true}`, "invalid_message"},
	}
	for i, tc := range cases {
		c.SendRaw([]byte(tc.frame))
		n := i + 1
		e := c.WaitEvent("error", func(json.RawMessage) bool { return len(c.EventsOf("error")) >= n })
		_ = e
		errs := c.EventsOf("error")
		var got struct {
			Code, Message, Ref string
		}
		if err := json.Unmarshal(errs[n-1].Data, &got); err != nil {
			t.Fatal(err)
		}
		if got.Code != tc.code || got.Message == "" {
			t.Errorf("frame %s: got code %q (%s), want %q", tc.frame, got.Code, got.Message, tc.code)
		}
		var sent struct {
			ID string `json:"id"`
		}
		if json.Unmarshal([]byte(tc.frame), &sent) == nil && sent.ID != "" && got.Ref != sent.ID {
			t.Errorf("frame %s: ref %q, want %q", tc.frame, got.Ref, sent.ID)
		}
	}
	// A binary frame is refused too.
	c.WriteMessage(websocket.BinaryMessage, []byte{0, 1, 2})
	vigiltest.WaitFor(t, 5*time.Second, "binary refused", func() bool { return len(c.EventsOf("error")) == len(cases)+1 })

	// The socket still works: the participant can still publish.
	media := newSynthetic(t, "alice")
	c.Publish(map[string]webrtc.TrackLocal{"camera": media.video})
	c.WaitEvent("answer", nil)
}

func TestOversizedFrameClosesOnlyThatSocket(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "r", "conference")
	a := vigiltest.Dial(t, srv, "r", "alice", "participant")
	b := vigiltest.Dial(t, srv, "r", "bob", "participant")
	a.WaitEvent("joined", nil)
	end := a.SocketEnd()
	a.SendRaw([]byte(`{"type":"leave","data":{"x":"` + strings.Repeat("a", 300<<10) + `"}}`))
	select {
	case err := <-end:
		if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != websocket.CloseMessageTooBig {
			t.Fatalf("oversized frame: socket ended with %v, want close 1009", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("oversized frame did not close the socket")
	}
	// bob is unaffected, and alice can resume on a new socket.
	a.Connect(1)
	c := vigiltest.Dial(t, srv, "r", "carol", "participant")
	b.WaitEvent("participant_joined", func(d json.RawMessage) bool { return strings.Contains(string(d), "carol") })
	a.WaitEvent("participant_joined", func(d json.RawMessage) bool { return strings.Contains(string(d), "carol") })
	_ = c
}

func TestResumeFromCursor(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "r", "conference")
	a := vigiltest.Dial(t, srv, "r", "alice", "participant")
	a.WaitEvent("joined", nil)
	vigiltest.Dial(t, srv, "r", "bob", "participant")
	a.WaitEvent("participant_joined", nil)

	// Drop alice's socket; events keep coming into her outbox.
	evs := a.DropSocket()
	seen := len(evs)
	last := evs[seen-1].Seq
	vigiltest.Dial(t, srv, "r", "carol", "participant")
	vigiltest.Dial(t, srv, "r", "dave", "participant")
	time.Sleep(100 * time.Millisecond)

	a.Connect(last)
	vigiltest.WaitFor(t, 5*time.Second, "resumed events", func() bool { return len(a.EventsOf("participant_joined")) == 3 })
	time.Sleep(100 * time.Millisecond)
	for i, e := range a.Events() {
		if e.Seq != uint64(i+1) {
			t.Fatalf("after resume, event %d has seq %d: every event exactly once, in order", i, e.Seq)
		}
	}
}

func TestCursorAheadAndReplacedSocket(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "r", "conference")
	a := vigiltest.Dial(t, srv, "r", "alice", "participant")
	a.WaitEvent("joined", nil)

	conn, _, err := websocket.DefaultDialer.Dial(vigiltest.WSURL(srv, a.Session, 999), nil)
	if err != nil {
		t.Fatal(err)
	}
	var first map[string]any
	if err := conn.ReadJSON(&first); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(mustString(first), "invalid_cursor") {
		t.Fatalf("cursor ahead: got %v", first)
	}
	_, _, err = conn.ReadMessage()
	if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != 4400 {
		t.Fatalf("cursor ahead: close %v, want 4400", err)
	}

	// A second socket replaces the first, which is closed with 4000.
	end := a.SocketEnd()
	second, _, err := websocket.DefaultDialer.Dial(vigiltest.WSURL(srv, a.Session, 0), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	select {
	case err := <-end:
		if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != 4000 {
			t.Fatalf("replaced socket ended with %v, want close 4000", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("replaced socket was not closed")
	}
	var ev vigiltest.Event
	if err := second.ReadJSON(&ev); err != nil || ev.Seq != 1 || ev.Type != "joined" {
		t.Fatalf("new socket from cursor 0: %+v %v", ev, err)
	}
}

func mustString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestUnknownSessionIs404(t *testing.T) {
	srv := vigiltest.Start(t)
	status, body := srv.Do(t, http.MethodGet, "/v1/sessions/nope/ws", "", nil)
	if status != http.StatusNotFound || vigiltest.ErrorCode(t, body) != "session_not_found" {
		t.Fatalf("got %d %s", status, body)
	}
	_, _, err := websocket.DefaultDialer.Dial(vigiltest.WSURL(srv, "nope", 0), nil)
	if err == nil {
		t.Fatal("dial to an unknown session succeeded")
	}
}

func TestGracePeriodEndsAbandonedSession(t *testing.T) {
	srv := vigiltest.StartWith(t, vigiltest.Options{GracePeriod: 200 * time.Millisecond})
	srv.CreateRoom(t, "r", "conference")
	watcher := vigiltest.Dial(t, srv, "r", "watcher", "participant")
	if _, err := srv.OpenSession(t, "r", srv.Token(t, "r", "ghost", "participant")); err != nil {
		t.Fatal(err)
	}
	watcher.WaitEvent("participant_joined", func(d json.RawMessage) bool { return strings.Contains(string(d), "ghost") })
	watcher.WaitEvent("participant_left", func(d json.RawMessage) bool {
		return strings.Contains(string(d), "ghost") && strings.Contains(string(d), "timeout")
	})
}

func TestViewerCannotPublish(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "show", "broadcast")
	host := vigiltest.Dial(t, srv, "show", "host1", "host")
	viewer := vigiltest.Dial(t, srv, "show", "v1", "viewer")
	viewer2 := vigiltest.Dial(t, srv, "show", "v2", "viewer")

	media := newSynthetic(t, "host1")
	host.Publish(map[string]webrtc.TrackLocal{"camera": media.video, "microphone": media.audio})
	vigiltest.WaitFor(t, 10*time.Second, "viewer receives host", func() bool { return viewer.Packets("host1/camera") > 10 })

	vm := newSynthetic(t, "v1")
	viewer.Publish(map[string]webrtc.TrackLocal{"camera": vm.video})
	e := viewer.WaitEvent("error", nil)
	if !strings.Contains(string(e.Data), `"code":"forbidden"`) {
		t.Fatalf("viewer offer: %s", e.Data)
	}
	// An undeclared sending m-line is refused as well.
	viewer.Send("offer", "sneaky", map[string]any{"sdp": viewer.PC.LocalDescription().SDP, "sources": map[string]string{}})
	viewer.WaitEvent("error", func(d json.RawMessage) bool {
		return strings.Contains(string(d), "sneaky") && strings.Contains(string(d), "forbidden")
	})

	// Viewers do not see each other; the host does not see viewers.
	for _, ev := range viewer2.EventsOf("participant_joined") {
		if !strings.Contains(string(ev.Data), `"role":"host"`) {
			t.Errorf("viewer saw a non-host join: %s", ev.Data)
		}
	}
	joined := viewer2.WaitEvent("joined", nil)
	if strings.Contains(string(joined.Data), `"v1"`) {
		t.Errorf("viewer roster lists another viewer: %s", joined.Data)
	}
	if n := len(host.EventsOf("participant_joined")); n != 0 {
		t.Errorf("host saw %d viewers join", n)
	}
	if n := viewer.Packets("v1/camera") + host.Packets("v1/camera"); n != 0 {
		t.Errorf("viewer media was forwarded: %d packets", n)
	}
}
