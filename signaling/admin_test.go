package signaling_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/signaling/vigiltest"
)

// dialQuiet is dial, plus a cleanup that ends the client's socket (and
// so its event handling) before its PeerConnection is closed: a server
// offer that lands during cleanup is then not answered on a closed
// connection.
func dialQuiet(t *testing.T, srv *vigiltest.Server, room, identity, role string) *vigiltest.Client {
	t.Helper()
	c := vigiltest.Dial(t, srv, room, identity, role)
	t.Cleanup(func() {
		end := c.SocketEnd()
		conn := c.Conn()
		_ = conn.Close()
		select {
		case <-end:
		case <-time.After(5 * time.Second):
		}
	})
	return c
}

// admin sends an admin request; it fails the test on a transport error.
func admin(t *testing.T, srv *vigiltest.Server, method, path string, body any) (int, []byte) {
	t.Helper()
	return srv.Do(t, method, path, srv.AdminKey, body)
}

func decodeAPI[T any](t *testing.T, b []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	return v
}

type apiTrack struct {
	ID      string `json:"id"`
	Source  string `json:"source"`
	Kind    string `json:"kind"`
	Muted   bool   `json:"muted"`
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
	Bitrate uint64 `json:"bitrate"`
}

type apiParticipant struct {
	Identity        string     `json:"identity"`
	Role            string     `json:"role"`
	ConnectionState string     `json:"connection_state"`
	Transport       *string    `json:"transport"`
	Bitrate         uint64     `json:"bitrate"`
	Tracks          []apiTrack `json:"tracks"`
}

type apiRoom struct {
	Name            string           `json:"name"`
	Kind            string           `json:"kind"`
	MaxParticipants int              `json:"max_participants"`
	AutoRecord      bool             `json:"auto_record"`
	Participants    []apiParticipant `json:"participants"`
}

func getParticipant(t *testing.T, srv *vigiltest.Server, room, identity string) apiParticipant {
	t.Helper()
	status, body := admin(t, srv, "GET", "/v1/rooms/"+room+"/participants/"+identity, nil)
	if status != http.StatusOK {
		t.Fatalf("get participant %s: %d %s", identity, status, body)
	}
	return decodeAPI[apiParticipant](t, body)
}

// stopsWithin checks that the packet count of key at c stops growing
// within d, and returns the count it stopped at.
func stopsWithin(t *testing.T, c *vigiltest.Client, key string, d time.Duration) int {
	t.Helper()
	time.Sleep(d)
	n := c.Packets(key)
	time.Sleep(500 * time.Millisecond)
	if m := c.Packets(key); m != n {
		t.Errorf("%s still receives %s %v after: %d then %d packets", c.Session[:6], key, d, n, m)
	}
	return n
}

// keepsFlowing checks that the packet count of key at c grows.
func keepsFlowing(t *testing.T, c *vigiltest.Client, key string) {
	t.Helper()
	n := c.Packets(key)
	vigiltest.WaitFor(t, 10*time.Second, key+" keeps flowing", func() bool { return c.Packets(key) > n+10 })
}

func leftEvent(t *testing.T, c *vigiltest.Client) (reason, message string) {
	t.Helper()
	e := c.WaitEvent("left", nil)
	d := decodeAPI[struct {
		Reason  string `json:"reason"`
		Message string `json:"message"`
	}](t, e.Data)
	return d.Reason, d.Message
}

func hasIdentity(identity string) func(json.RawMessage) bool {
	return func(d json.RawMessage) bool { return strings.Contains(string(d), `"identity":"`+identity+`"`) }
}

func TestAdminEndpointErrors(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "conf", "conference")
	srv.CreateRoom(t, "exam", "proctoring")
	dialQuiet(t, srv, "conf", "alice", "participant").WaitEvent("joined", nil)
	dialQuiet(t, srv, "exam", "cand", "candidate").WaitEvent("joined", nil)
	big := `{"reason":"` + strings.Repeat("x", 70<<10) + `"}`
	routes := []struct{ method, path string }{
		{"DELETE", "/v1/rooms/conf"},
		{"POST", "/v1/rooms/conf/tokens/revoke"},
		{"GET", "/v1/rooms/conf/participants"},
		{"GET", "/v1/rooms/conf/participants/alice"},
		{"PATCH", "/v1/rooms/conf/participants/alice"},
		{"POST", "/v1/rooms/conf/participants/alice/kick"},
		{"POST", "/v1/rooms/conf/participants/alice/tracks/camera/mute"},
	}
	type tc struct {
		name         string
		method, path string
		key          string
		body         any
		status       int
		code         string
	}
	var tests []tc
	for _, r := range routes {
		tests = append(tests,
			tc{"no key " + r.method + " " + r.path, r.method, r.path, "", map[string]any{}, 401, "unauthorized"},
			tc{"wrong key " + r.method + " " + r.path, r.method, r.path, "wrong", map[string]any{}, 401, "unauthorized"},
		)
		// A revocation works for a room that no longer exists
		// (TestRevokeTokensOfDeletedRoom); every other route needs the room.
		if !strings.HasSuffix(r.path, "/tokens/revoke") {
			tests = append(tests,
				tc{"unknown room " + r.method + " " + r.path, r.method, strings.Replace(r.path, "/conf", "/ghost", 1), srv.AdminKey, map[string]any{}, 404, "room_not_found"})
		}
		if r.method != "GET" && r.method != "DELETE" {
			tests = append(tests,
				tc{"malformed " + r.path, r.method, r.path, srv.AdminKey, `{"role":`, 400, "invalid_request"},
				tc{"unknown field " + r.path, r.method, r.path, srv.AdminKey, `{"colour":"red"}`, 400, "invalid_request"},
				tc{"trailing data " + r.path, r.method, r.path, srv.AdminKey, `{} {}`, 400, "invalid_request"},
				tc{"oversized " + r.path, r.method, r.path, srv.AdminKey, big, 413, "body_too_large"},
			)
		}
	}
	tests = append(tests, []tc{
		{"unknown participant", "GET", "/v1/rooms/conf/participants/bob", srv.AdminKey, nil, 404, "participant_not_found"},
		{"kick unknown participant", "POST", "/v1/rooms/conf/participants/bob/kick", srv.AdminKey, map[string]any{}, 404, "participant_not_found"},
		{"patch unknown participant", "PATCH", "/v1/rooms/conf/participants/bob", srv.AdminKey, map[string]any{"role": "participant"}, 404, "participant_not_found"},
		{"mute unknown participant", "POST", "/v1/rooms/conf/participants/bob/tracks/camera/mute", srv.AdminKey, map[string]any{"muted": true}, 404, "participant_not_found"},
		{"mute unpublished track", "POST", "/v1/rooms/conf/participants/alice/tracks/camera/mute", srv.AdminKey, map[string]any{"muted": true}, 404, "track_not_found"},
		{"mute unknown source", "POST", "/v1/rooms/conf/participants/alice/tracks/hologram/mute", srv.AdminKey, map[string]any{"muted": true}, 400, "invalid_request"},
		{"mute without muted", "POST", "/v1/rooms/conf/participants/alice/tracks/camera/mute", srv.AdminKey, map[string]any{}, 400, "invalid_request"},
		{"mute muted not a bool", "POST", "/v1/rooms/conf/participants/alice/tracks/camera/mute", srv.AdminKey, map[string]any{"muted": "yes"}, 400, "invalid_request"},
		{"mute empty body", "POST", "/v1/rooms/conf/participants/alice/tracks/camera/mute", srv.AdminKey, nil, 400, "invalid_request"},
		{"patch without role", "PATCH", "/v1/rooms/conf/participants/alice", srv.AdminKey, map[string]any{}, 400, "invalid_request"},
		{"patch role of another kind", "PATCH", "/v1/rooms/conf/participants/alice", srv.AdminKey, map[string]any{"role": "host"}, 400, "invalid_request"},
		{"patch unknown role", "PATCH", "/v1/rooms/conf/participants/alice", srv.AdminKey, map[string]any{"role": "king"}, 400, "invalid_request"},
		{"candidate to proctor", "PATCH", "/v1/rooms/exam/participants/cand", srv.AdminKey, map[string]any{"role": "proctor"}, 403, "forbidden"},
		{"kick reason too long", "POST", "/v1/rooms/conf/participants/alice/kick", srv.AdminKey, map[string]any{"reason": strings.Repeat("x", 513)}, 400, "invalid_request"},
		{"revoke bad identity", "POST", "/v1/rooms/conf/tokens/revoke", srv.AdminKey, map[string]any{"identity": "a b"}, 400, "invalid_request"},
		{"revoke no identity", "POST", "/v1/rooms/conf/tokens/revoke", srv.AdminKey, map[string]any{}, 400, "invalid_request"},
		{"token ttl overflow", "POST", "/v1/rooms/conf/tokens", srv.AdminKey, map[string]any{"identity": "a", "role": "participant", "ttl_seconds": 9223372037}, 400, "invalid_request"},
		{"token ttl negative", "POST", "/v1/rooms/conf/tokens", srv.AdminKey, map[string]any{"identity": "a", "role": "participant", "ttl_seconds": -1}, 400, "invalid_request"},
		{"create room negative cap", "POST", "/v1/rooms", srv.AdminKey, map[string]any{"name": "x", "kind": "conference", "max_participants": -1}, 400, "invalid_request"},
		{"create room auto_record not a bool", "POST", "/v1/rooms", srv.AdminKey, map[string]any{"name": "x", "kind": "conference", "auto_record": 1}, 400, "invalid_request"},
		{"unknown method on participant", "PUT", "/v1/rooms/conf/participants/alice", srv.AdminKey, nil, 405, "method_not_allowed"},
	}...)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := srv.Do(t, tt.method, tt.path, tt.key, tt.body)
			if status != tt.status {
				t.Fatalf("status %d, want %d: %s", status, tt.status, body)
			}
			if got := vigiltest.ErrorCode(t, body); got != tt.code {
				t.Fatalf("code %q, want %q", got, tt.code)
			}
		})
	}
	// None of that changed anything: the rooms and their participants
	// are as they were.
	for room, who := range map[string]string{"conf": "alice", "exam": "cand"} {
		p := getParticipant(t, srv, room, who)
		if p.Role != map[string]string{"conf": "participant", "exam": "candidate"}[room] {
			t.Errorf("%s's role became %q", who, p.Role)
		}
	}
}

func TestRoomLifecycle(t *testing.T) {
	srv := vigiltest.Start(t)
	status, body := admin(t, srv, "POST", "/v1/rooms", map[string]any{"name": "b-room", "kind": "broadcast", "max_participants": 5, "auto_record": true})
	if status != http.StatusCreated {
		t.Fatalf("create: %d %s", status, body)
	}
	r := decodeAPI[apiRoom](t, body)
	if r.Name != "b-room" || r.Kind != "broadcast" || r.MaxParticipants != 5 || !r.AutoRecord || r.Participants == nil || len(r.Participants) != 0 {
		t.Fatalf("created room: %s", body)
	}
	srv.CreateRoom(t, "a-room", "conference")
	status, body = admin(t, srv, "GET", "/v1/rooms", nil)
	list := decodeAPI[struct {
		Rooms []apiRoom `json:"rooms"`
	}](t, body)
	if status != 200 || len(list.Rooms) != 2 || list.Rooms[0].Name != "a-room" || list.Rooms[1].Name != "b-room" || list.Rooms[0].AutoRecord || !list.Rooms[1].AutoRecord {
		t.Fatalf("list: %d %s", status, body)
	}
	status, body = admin(t, srv, "GET", "/v1/rooms/b-room", nil)
	if r := decodeAPI[apiRoom](t, body); status != 200 || r.MaxParticipants != 5 || !r.AutoRecord {
		t.Fatalf("get: %d %s", status, body)
	}

	// Full room: max_participants holds.
	for i, id := range []string{"h1", "v1", "v2", "v3", "v4"} {
		role := "viewer"
		if i == 0 {
			role = "host"
		}
		if _, err := srv.OpenSession(t, "b-room", srv.Token(t, "b-room", id, role)); err != nil {
			t.Fatal(err)
		}
	}
	status, body = srv.Do(t, "POST", "/v1/rooms/b-room/sessions", srv.Token(t, "b-room", "v5", "viewer"), nil)
	if status != 409 || vigiltest.ErrorCode(t, body) != "room_full" {
		t.Fatalf("sixth join: %d %s", status, body)
	}

	if status, body := admin(t, srv, "DELETE", "/v1/rooms/b-room", nil); status != http.StatusNoContent || len(body) != 0 {
		t.Fatalf("delete: %d %s", status, body)
	}
	for _, p := range []string{"/v1/rooms/b-room", "/v1/rooms/b-room/participants"} {
		if status, body := admin(t, srv, "GET", p, nil); status != 404 || vigiltest.ErrorCode(t, body) != "room_not_found" {
			t.Fatalf("GET %s after delete: %d %s", p, status, body)
		}
	}
	if status, body := admin(t, srv, "DELETE", "/v1/rooms/b-room", nil); status != 404 || vigiltest.ErrorCode(t, body) != "room_not_found" {
		t.Fatalf("delete again: %d %s", status, body)
	}
	// The name is free again; the other room is untouched.
	srv.CreateRoom(t, "b-room", "proctoring")
	if status, _ := admin(t, srv, "GET", "/v1/rooms/a-room", nil); status != 200 {
		t.Fatalf("a-room: %d", status)
	}
}

func TestParticipantsDescribed(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "r", "conference")
	alice := dialQuiet(t, srv, "r", "alice", "participant")
	media := newSynthetic(t, "alice")
	alice.Publish(map[string]webrtc.TrackLocal{"camera": media.video, "microphone": media.audio})
	bob := dialQuiet(t, srv, "r", "bob", "participant")
	vigiltest.WaitFor(t, 10*time.Second, "bob receives alice", func() bool { return bob.Packets("alice/camera") > 0 })
	// A session with no transport attached.
	if _, err := srv.OpenSession(t, "r", srv.Token(t, "r", "carol", "participant")); err != nil {
		t.Fatal(err)
	}

	var a apiParticipant
	vigiltest.WaitFor(t, 10*time.Second, "alice's bitrate", func() bool {
		a = getParticipant(t, srv, "r", "alice")
		return a.Bitrate > 0 && len(a.Tracks) == 2 && a.Tracks[0].Bitrate > 0 && a.Tracks[1].Bitrate > 0
	})
	if a.Identity != "alice" || a.Role != "participant" || a.ConnectionState != "connected" || a.Transport == nil || *a.Transport != "ws" {
		t.Fatalf("alice: %+v", a)
	}
	if a.Tracks[0].Source != "camera" || a.Tracks[0].Kind != "video" || a.Tracks[1].Source != "microphone" || a.Tracks[1].Kind != "audio" {
		t.Fatalf("alice's tracks: %+v", a.Tracks)
	}
	for _, tr := range a.Tracks {
		if tr.ID == "" || tr.Muted || tr.Packets == 0 || tr.Bytes < tr.Packets {
			t.Errorf("track %+v", tr)
		}
	}
	if a.Bitrate != a.Tracks[0].Bitrate+a.Tracks[1].Bitrate {
		t.Errorf("participant bitrate %d is not the sum of its tracks'", a.Bitrate)
	}

	status, body := admin(t, srv, "GET", "/v1/rooms/r/participants", nil)
	list := decodeAPI[struct {
		Participants []apiParticipant `json:"participants"`
	}](t, body)
	if status != 200 || len(list.Participants) != 3 {
		t.Fatalf("list: %d %s", status, body)
	}
	want := []string{"alice", "bob", "carol"}
	for i, p := range list.Participants {
		if p.Identity != want[i] {
			t.Fatalf("list order: %s", body)
		}
	}
	b, c := list.Participants[1], list.Participants[2]
	if b.Transport == nil || *b.Transport != "ws" || len(b.Tracks) != 0 || b.Tracks == nil {
		t.Errorf("bob: %+v", b)
	}
	if c.Transport != nil || c.ConnectionState != "new" || len(c.Tracks) != 0 {
		t.Errorf("carol (no transport): %+v", c)
	}
	if !strings.Contains(string(body), `"transport":null`) {
		t.Errorf("no transport is not null: %s", body)
	}
	// The room carries the same.
	_, body = admin(t, srv, "GET", "/v1/rooms/r", nil)
	if r := decodeAPI[apiRoom](t, body); len(r.Participants) != 3 || len(r.Participants[0].Tracks) != 2 || r.Participants[0].ConnectionState != "connected" {
		t.Errorf("room: %s", body)
	}
}

func TestKickEndToEnd(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "r", "conference")
	alice := dialQuiet(t, srv, "r", "alice", "participant")
	am := newSynthetic(t, "alice")
	alice.Publish(map[string]webrtc.TrackLocal{"camera": am.video, "microphone": am.audio})
	bob := dialQuiet(t, srv, "r", "bob", "participant")
	vigiltest.WaitFor(t, 10*time.Second, "bob receives alice", func() bool { return bob.Packets("alice/camera") > 0 })
	bm := newSynthetic(t, "bob")
	bob.Publish(map[string]webrtc.TrackLocal{"camera": bm.video})
	carol := dialQuiet(t, srv, "r", "carol", "participant")
	vigiltest.WaitFor(t, 10*time.Second, "everyone receives", func() bool {
		return carol.Packets("alice/camera") > 0 && carol.Packets("bob/camera") > 0 && alice.Packets("bob/camera") > 0
	})
	aliceEnd := alice.SocketEnd()

	status, body := admin(t, srv, "POST", "/v1/rooms/r/participants/alice/kick", map[string]any{"reason": "phone on the desk"})
	if status != http.StatusNoContent {
		t.Fatalf("kick: %d %s", status, body)
	}
	if reason, msg := leftEvent(t, alice); reason != "kicked" || msg != "phone on the desk" {
		t.Fatalf("alice left with %q %q", reason, msg)
	}
	select {
	case err := <-aliceEnd:
		if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != websocket.CloseNormalClosure {
			t.Errorf("alice's socket ended with %v, want a normal close", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("alice's socket stayed open after the kick")
	}
	for _, c := range []*vigiltest.Client{bob, carol} {
		stopsWithin(t, c, "alice/camera", time.Second)
		e := c.WaitEvent("participant_left", hasIdentity("alice"))
		if !strings.Contains(string(e.Data), `"reason":"kicked"`) || strings.Contains(string(e.Data), "phone") {
			t.Errorf("others told %s, want reason kicked and not the message", e.Data)
		}
	}
	// The others are unaffected.
	keepsFlowing(t, carol, "bob/camera")
	if len(bob.EventsOf("left")) != 0 || len(carol.EventsOf("left")) != 0 {
		t.Error("others were made to leave")
	}
	if status, body := admin(t, srv, "GET", "/v1/rooms/r/participants/alice", nil); status != 404 || vigiltest.ErrorCode(t, body) != "participant_not_found" {
		t.Fatalf("alice after kick: %d %s", status, body)
	}
	// The body is optional.
	status, body = srv.Do(t, "POST", "/v1/rooms/r/participants/bob/kick", srv.AdminKey, nil)
	if status != http.StatusNoContent {
		t.Fatalf("kick without a body: %d %s", status, body)
	}
	if reason, msg := leftEvent(t, bob); reason != "kicked" || msg != "" {
		t.Fatalf("bob left with %q %q", reason, msg)
	}
	if !strings.Contains(string(bob.EventsOf("left")[0].Data), `{"reason":"kicked"}`) {
		t.Errorf("left without a message carries one: %s", bob.EventsOf("left")[0].Data)
	}
}

func TestMuteEndToEnd(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "r", "conference")
	alice := dialQuiet(t, srv, "r", "alice", "participant")
	am := newSynthetic(t, "alice")
	alice.Publish(map[string]webrtc.TrackLocal{"camera": am.video, "microphone": am.audio})
	bob := dialQuiet(t, srv, "r", "bob", "participant")
	vigiltest.WaitFor(t, 10*time.Second, "bob receives alice", func() bool {
		return bob.Packets("alice/camera") > 0 && bob.Packets("alice/microphone") > 0
	})

	status, body := admin(t, srv, "POST", "/v1/rooms/r/participants/alice/tracks/microphone/mute", map[string]any{"muted": true})
	if status != 200 {
		t.Fatalf("mute: %d %s", status, body)
	}
	if tr := decodeAPI[apiTrack](t, body); !tr.Muted || tr.Source != "microphone" || tr.ID == "" {
		t.Fatalf("mute reply: %s", body)
	}
	for _, c := range []*vigiltest.Client{alice, bob} {
		e := c.WaitEvent("track_muted", nil)
		if !strings.Contains(string(e.Data), `"muted":true`) || !strings.Contains(string(e.Data), `"by":"admin"`) || !strings.Contains(string(e.Data), `"source":"microphone"`) {
			t.Errorf("track_muted: %s", e.Data)
		}
	}
	stopsWithin(t, bob, "alice/microphone", time.Second)
	keepsFlowing(t, bob, "alice/camera")
	a := getParticipant(t, srv, "r", "alice")
	for _, tr := range a.Tracks {
		if tr.Muted != (tr.Source == "microphone") {
			t.Errorf("after mute: %+v", tr)
		}
	}
	// Muting again is a no-op; unmuting resumes.
	if status, _ := admin(t, srv, "POST", "/v1/rooms/r/participants/alice/tracks/microphone/mute", map[string]any{"muted": true}); status != 200 {
		t.Fatalf("mute again: %d", status)
	}
	status, body = admin(t, srv, "POST", "/v1/rooms/r/participants/alice/tracks/microphone/mute", map[string]any{"muted": false})
	if status != 200 || decodeAPI[apiTrack](t, body).Muted {
		t.Fatalf("unmute: %d %s", status, body)
	}
	keepsFlowing(t, bob, "alice/microphone")
	if n := len(bob.EventsOf("track_muted")); n != 2 {
		t.Errorf("bob got %d track_muted events, want 2 (mute, unmute)", n)
	}
}

func TestEndRoomEndToEnd(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "a", "conference")
	srv.CreateRoom(t, "b", "conference")
	alice := dialQuiet(t, srv, "a", "alice", "participant")
	am := newSynthetic(t, "alice")
	alice.Publish(map[string]webrtc.TrackLocal{"camera": am.video})
	bob := dialQuiet(t, srv, "a", "bob", "participant")
	dave := dialQuiet(t, srv, "b", "dave", "participant")
	dm := newSynthetic(t, "dave")
	dave.Publish(map[string]webrtc.TrackLocal{"camera": dm.video})
	carol := dialQuiet(t, srv, "b", "carol", "participant")
	vigiltest.WaitFor(t, 10*time.Second, "media in both rooms", func() bool {
		return bob.Packets("alice/camera") > 0 && carol.Packets("dave/camera") > 0
	})

	if status, body := admin(t, srv, "DELETE", "/v1/rooms/a", nil); status != http.StatusNoContent {
		t.Fatalf("end room: %d %s", status, body)
	}
	for _, c := range []*vigiltest.Client{alice, bob} {
		if reason, _ := leftEvent(t, c); reason != "room_closed" {
			t.Errorf("left with %q, want room_closed", reason)
		}
	}
	stopsWithin(t, bob, "alice/camera", time.Second)
	keepsFlowing(t, carol, "dave/camera")
	if len(carol.EventsOf("left"))+len(dave.EventsOf("left")) != 0 {
		t.Error("the other room's participants left")
	}
	// The room is gone: a valid token for it finds nothing.
	tok, _, err := srv.Sig.Tokens().Mint("a", "alice", "participant", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	status, body := srv.Do(t, "POST", "/v1/rooms/a/sessions", tok, nil)
	if status != 404 || vigiltest.ErrorCode(t, body) != "room_not_found" {
		t.Fatalf("join an ended room: %d %s", status, body)
	}
}

func TestChangeRoleEndToEnd(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "show", "broadcast")
	h := dialQuiet(t, srv, "show", "h", "host")
	hm := newSynthetic(t, "h")
	h.Publish(map[string]webrtc.TrackLocal{"camera": hm.video, "microphone": hm.audio})
	v := dialQuiet(t, srv, "show", "v", "viewer")
	w := dialQuiet(t, srv, "show", "w", "viewer")
	vigiltest.WaitFor(t, 10*time.Second, "viewers receive the host", func() bool {
		return v.Packets("h/camera") > 0 && w.Packets("h/camera") > 0
	})

	// v becomes a host: it is told its new role, and h and w, who see
	// hosts, now see it.
	status, body := admin(t, srv, "PATCH", "/v1/rooms/show/participants/v", map[string]any{"role": "host"})
	if p := decodeAPI[apiParticipant](t, body); status != 200 || p.Role != "host" || p.Identity != "v" {
		t.Fatalf("promote: %d %s", status, body)
	}
	e := v.WaitEvent("role_changed", nil)
	if !strings.Contains(string(e.Data), `"role":"host"`) || !strings.Contains(string(e.Data), `"camera"`) {
		t.Errorf("role_changed: %s", e.Data)
	}
	h.WaitEvent("participant_joined", hasIdentity("v"))
	w.WaitEvent("participant_joined", hasIdentity("v"))
	keepsFlowing(t, v, "h/camera")

	// h becomes a viewer: its tracks end, everyone stops receiving it.
	status, body = admin(t, srv, "PATCH", "/v1/rooms/show/participants/h", map[string]any{"role": "viewer"})
	if p := decodeAPI[apiParticipant](t, body); status != 200 || p.Role != "viewer" || len(p.Tracks) != 0 {
		t.Fatalf("demote: %d %s", status, body)
	}
	stopsWithin(t, v, "h/camera", time.Second)
	stopsWithin(t, w, "h/camera", 0)
	w.WaitEvent("participant_left", func(d json.RawMessage) bool {
		return hasIdentity("h")(d) && strings.Contains(string(d), "role_changed")
	})
	// The same role again is a no-op.
	if status, body := admin(t, srv, "PATCH", "/v1/rooms/show/participants/h", map[string]any{"role": "viewer"}); status != 200 {
		t.Fatalf("same role: %d %s", status, body)
	}
	if n := len(h.EventsOf("role_changed")); n != 1 {
		t.Errorf("h got %d role_changed events, want 1", n)
	}
}

// TestProctoringOverSignaling: a candidate crafting a subscribe for
// another candidate's track over the socket gets forbidden and no media;
// proctors cannot be made candidates nor candidates proctors.
func TestProctoringOverSignaling(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "exam", "proctoring")
	c2 := dialQuiet(t, srv, "exam", "c2", "candidate")
	m := newSynthetic(t, "c2")
	c2.Publish(map[string]webrtc.TrackLocal{"camera": m.video, "microphone": m.audio})
	p := dialQuiet(t, srv, "exam", "p", "proctor")
	c1 := dialQuiet(t, srv, "exam", "c1", "candidate")
	vigiltest.WaitFor(t, 10*time.Second, "proctor receives c2", func() bool { return p.Packets("c2/camera") > 0 })
	c1.WaitEvent("joined", nil)

	var camera string
	for _, tr := range getParticipant(t, srv, "exam", "c2").Tracks {
		if tr.Source == "camera" {
			camera = tr.ID
		}
	}
	crafted := map[string]string{"s1": camera, "s2": "TR0000000000000000"}
	c1.Send("subscribe", "s1", map[string]string{"track_id": crafted["s1"]})
	c1.Send("subscribe", "s2", map[string]string{"track_id": crafted["s2"]})
	for _, ref := range []string{"s1", "s2"} {
		e := c1.WaitEvent("error", func(d json.RawMessage) bool { return strings.Contains(string(d), `"ref":"`+ref+`"`) })
		var reply struct{ Code, Message string }
		if err := json.Unmarshal(e.Data, &reply); err != nil {
			t.Fatalf("crafted subscribe %s: %v: %s", ref, err, e.Data)
		}
		// The reply may echo the track id the candidate sent (a random
		// hex id, which can contain "c2"); beyond that it names no one.
		if rest := strings.ReplaceAll(reply.Message, crafted[ref], ""); reply.Code != "forbidden" || strings.Contains(rest, "c2") {
			t.Errorf("crafted subscribe: %s", e.Data)
		}
	}
	time.Sleep(time.Second)
	received := len(c1.Received())
	if received != 0 {
		t.Errorf("candidate received media after crafted subscribes")
	}
	for _, typ := range []string{"offer", "participant_joined", "track_published", "participant_left"} {
		if n := len(c1.EventsOf(typ)); n != 0 {
			t.Errorf("candidate got %d %s events", n, typ)
		}
	}
	if strings.Contains(string(c1.EventsOf("joined")[0].Data), `"c2"`) || strings.Contains(string(c1.EventsOf("joined")[0].Data), `"p"`) {
		t.Errorf("candidate's roster names others: %s", c1.EventsOf("joined")[0].Data)
	}
	keepsFlowing(t, p, "c2/camera")

	for _, tc := range []struct{ who, role string }{{"c1", "proctor"}, {"p", "candidate"}} {
		status, body := admin(t, srv, "PATCH", "/v1/rooms/exam/participants/"+tc.who, map[string]any{"role": tc.role})
		if status != 403 || vigiltest.ErrorCode(t, body) != "forbidden" {
			t.Errorf("%s to %s: %d %s", tc.who, tc.role, status, body)
		}
	}
	if r := getParticipant(t, srv, "exam", "c1").Role; r != "candidate" {
		t.Errorf("c1 is now %s", r)
	}
}

func TestRevokeEndToEnd(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "r", "conference")
	srv.CreateRoom(t, "other", "conference")
	old := srv.Token(t, "r", "alice", "participant")
	otherRoom := srv.Token(t, "other", "alice", "participant")
	alice := dialQuiet(t, srv, "r", "alice", "participant")
	bob := dialQuiet(t, srv, "r", "bob", "participant")
	bob.WaitEvent("joined", hasIdentity("alice"))

	status, body := admin(t, srv, "POST", "/v1/rooms/r/tokens/revoke", map[string]any{"identity": "alice"})
	if status != 200 {
		t.Fatalf("revoke: %d %s", status, body)
	}
	rv := decodeAPI[struct {
		Room         string    `json:"room"`
		Identity     string    `json:"identity"`
		RevokedAt    time.Time `json:"revoked_at"`
		Disconnected bool      `json:"disconnected"`
	}](t, body)
	if rv.Room != "r" || rv.Identity != "alice" || !rv.Disconnected || time.Since(rv.RevokedAt) > time.Minute {
		t.Fatalf("revoke reply: %s", body)
	}
	if reason, _ := leftEvent(t, alice); reason != "token_revoked" {
		t.Fatalf("alice left with %q", reason)
	}
	bob.WaitEvent("participant_left", func(d json.RawMessage) bool {
		return hasIdentity("alice")(d) && strings.Contains(string(d), "token_revoked")
	})
	status, body = srv.Do(t, "POST", "/v1/rooms/r/sessions", old, nil)
	if status != 401 || vigiltest.ErrorCode(t, body) != "token_revoked" {
		t.Fatalf("revoked token: %d %s", status, body)
	}
	// A token minted now (most likely within the same second) works, and
	// so do alice's token for another room and bob's session.
	if _, err := srv.OpenSession(t, "r", srv.Token(t, "r", "alice", "participant")); err != nil {
		t.Fatalf("token minted after the revocation: %v", err)
	}
	if _, err := srv.OpenSession(t, "other", otherRoom); err != nil {
		t.Fatalf("token for another room: %v", err)
	}
	if len(bob.EventsOf("left")) != 0 {
		t.Error("bob left")
	}
	// Revoking an identity that is not connected.
	status, body = admin(t, srv, "POST", "/v1/rooms/r/tokens/revoke", map[string]any{"identity": "nobody"})
	if status != 200 || !strings.Contains(string(body), `"disconnected":false`) {
		t.Fatalf("revoke absent identity: %d %s", status, body)
	}
}

// clock is a settable clock for tokens.
type clock struct{ offset atomic.Int64 }

func (c *clock) now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) advance(d time.Duration) { c.offset.Add(int64(d)) }

func TestExpiredTokenRefused(t *testing.T) {
	var clk clock
	srv := vigiltest.StartWith(t, vigiltest.Options{Now: clk.now})
	srv.CreateRoom(t, "r", "conference")
	status, body := admin(t, srv, "POST", "/v1/rooms/r/tokens", map[string]any{"identity": "a", "role": "participant", "ttl_seconds": 60})
	if status != 201 {
		t.Fatalf("mint: %d %s", status, body)
	}
	tok := decodeAPI[struct {
		Token string `json:"token"`
	}](t, body).Token
	clk.advance(61 * time.Second)
	status, body = srv.Do(t, "POST", "/v1/rooms/r/sessions", tok, nil)
	if status != 401 || vigiltest.ErrorCode(t, body) != "token_expired" {
		t.Fatalf("expired token: %d %s", status, body)
	}
}
