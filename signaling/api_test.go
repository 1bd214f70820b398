package signaling_test

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vigil-media/vigil/signaling"
	"github.com/vigil-media/vigil/signaling/vigiltest"
)

func TestAdminAPIErrors(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "taken", "conference")
	big := `{"name":"` + strings.Repeat("x", 70<<10) + `","kind":"conference"}`
	tests := []struct {
		name         string
		method, path string
		key          string
		body         any
		status       int
		code         string
	}{
		{"no key", "POST", "/v1/rooms", "", map[string]any{"name": "a", "kind": "conference"}, 401, "unauthorized"},
		{"wrong key", "POST", "/v1/rooms", "nope", map[string]any{"name": "a", "kind": "conference"}, 401, "unauthorized"},
		{"malformed JSON", "POST", "/v1/rooms", srv.AdminKey, `{"name":`, 400, "invalid_request"},
		{"empty body", "POST", "/v1/rooms", srv.AdminKey, nil, 400, "invalid_request"},
		{"unknown field", "POST", "/v1/rooms", srv.AdminKey, map[string]any{"name": "a", "kind": "conference", "colour": "red"}, 400, "invalid_request"},
		{"trailing data", "POST", "/v1/rooms", srv.AdminKey, `{"name":"a","kind":"conference"} {}`, 400, "invalid_request"},
		{"oversized body", "POST", "/v1/rooms", srv.AdminKey, big, 413, "body_too_large"},
		{"bad kind", "POST", "/v1/rooms", srv.AdminKey, map[string]any{"name": "a", "kind": "party"}, 400, "invalid_request"},
		{"bad name", "POST", "/v1/rooms", srv.AdminKey, map[string]any{"name": "../etc", "kind": "conference"}, 400, "invalid_request"},
		{"negative cap", "POST", "/v1/rooms", srv.AdminKey, map[string]any{"name": "a", "kind": "conference", "max_participants": -1}, 400, "invalid_request"},
		{"duplicate room", "POST", "/v1/rooms", srv.AdminKey, map[string]any{"name": "taken", "kind": "broadcast"}, 409, "room_exists"},
		{"unknown room", "GET", "/v1/rooms/ghost", srv.AdminKey, nil, 404, "room_not_found"},
		{"token for unknown room", "POST", "/v1/rooms/ghost/tokens", srv.AdminKey, map[string]any{"identity": "a", "role": "participant"}, 404, "room_not_found"},
		{"role not of kind", "POST", "/v1/rooms/taken/tokens", srv.AdminKey, map[string]any{"identity": "a", "role": "viewer"}, 400, "invalid_request"},
		{"bad identity", "POST", "/v1/rooms/taken/tokens", srv.AdminKey, map[string]any{"identity": "a b", "role": "participant"}, 400, "invalid_request"},
		{"ttl too long", "POST", "/v1/rooms/taken/tokens", srv.AdminKey, map[string]any{"identity": "a", "role": "participant", "ttl_seconds": 90000}, 400, "invalid_request"},
		{"unknown route", "GET", "/v1/nothing", "", nil, 404, "not_found"},
		{"wrong method", "PUT", "/v1/rooms", srv.AdminKey, nil, 405, "method_not_allowed"},
	}
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
}

func TestCreateRoomAndMintToken(t *testing.T) {
	srv := vigiltest.Start(t)
	status, body := srv.Do(t, "POST", "/v1/rooms", srv.AdminKey, map[string]any{"name": "exam-1", "kind": "proctoring", "max_participants": 3})
	if status != http.StatusCreated {
		t.Fatalf("%d %s", status, body)
	}
	var room struct {
		Name            string `json:"name"`
		Kind            string `json:"kind"`
		MaxParticipants int    `json:"max_participants"`
	}
	if err := json.Unmarshal(body, &room); err != nil || room.Name != "exam-1" || room.Kind != "proctoring" || room.MaxParticipants != 3 {
		t.Fatalf("room: %s (%v)", body, err)
	}
	status, body = srv.Do(t, "POST", "/v1/rooms/exam-1/tokens", srv.AdminKey, map[string]any{"identity": "cand-1", "role": "candidate", "ttl_seconds": 60})
	if status != http.StatusCreated {
		t.Fatalf("%d %s", status, body)
	}
	var tok struct {
		Token     string    `json:"token"`
		JoinURL   string    `json:"join_url"`
		ExpiresAt time.Time `json:"expires_at"`
	}
	if err := json.Unmarshal(body, &tok); err != nil {
		t.Fatal(err)
	}
	if tok.JoinURL != "/room/exam-1#token="+tok.Token {
		t.Fatalf("join_url %q", tok.JoinURL)
	}
	if d := time.Until(tok.ExpiresAt); d < 50*time.Second || d > 70*time.Second {
		t.Fatalf("expires in %v, want about 60s", d)
	}
	claims, err := srv.Sig.Tokens().Verify(tok.Token)
	if err != nil || claims.Room != "exam-1" || claims.Subject != "cand-1" || claims.Role != "candidate" {
		t.Fatalf("claims %+v %v", claims, err)
	}
	// The room lists its participants once someone joins.
	if _, err := srv.OpenSession(t, "exam-1", tok.Token); err != nil {
		t.Fatal(err)
	}
	status, body = srv.Do(t, "GET", "/v1/rooms/exam-1", srv.AdminKey, nil)
	if status != 200 || !strings.Contains(string(body), `"identity":"cand-1"`) {
		t.Fatalf("get room: %d %s", status, body)
	}
	status, body = srv.Do(t, "GET", "/v1/rooms", srv.AdminKey, nil)
	if status != 200 || !strings.Contains(string(body), `"name":"exam-1"`) {
		t.Fatalf("list rooms: %d %s", status, body)
	}
}

func TestJoinTokenChecks(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "a", "conference")
	srv.CreateRoom(t, "b", "conference")
	good := srv.Token(t, "a", "alice", "participant")

	// Tokens minted with a clock an hour back are expired now.
	past := signaling.NewTokens(srv.TokenSecret, func() time.Time { return time.Now().Add(-time.Hour) })
	expired, _, err := past.Mint("a", "alice", "participant", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	forgedBy := signaling.NewTokens("another-key", nil)
	forged, _, _ := forgedBy.Mint("a", "alice", "participant", time.Minute)
	// The admin key does not sign tokens: the token secret is its own.
	byAdminKey, _, _ := signaling.NewTokens(srv.AdminKey, nil).Mint("a", "alice", "participant", time.Minute)
	parts := strings.Split(good, ".")
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(`{"room":"b","role":"participant","sub":"alice","iss":"vigil","exp":9999999999}`)) + "." + parts[2]
	none := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + parts[1] + "."
	wrongRole, _, _ := srv.Sig.Tokens().Mint("a", "alice", "viewer", time.Minute)
	future := signaling.NewTokens(srv.TokenSecret, func() time.Time { return time.Now().Add(time.Hour) })
	notYet, _, _ := future.Mint("a", "alice", "participant", time.Hour)

	tests := []struct {
		name   string
		room   string
		token  string
		status int
		code   string
	}{
		{"no token", "a", "", 401, "invalid_token"},
		{"garbage", "a", "not.a.jwt", 401, "invalid_token"},
		{"token for another room", "b", good, 403, "forbidden"},
		{"expired", "a", expired, 401, "token_expired"},
		{"forged signature", "a", forged, 401, "invalid_token"},
		{"signed with the admin key", "a", byAdminKey, 401, "invalid_token"},
		{"tampered claims", "a", tampered, 401, "invalid_token"},
		{"alg none", "a", none, 401, "invalid_token"},
		{"not yet valid", "a", notYet, 401, "invalid_token"},
		{"role not of the room's kind", "a", wrongRole, 403, "forbidden"},
		{"unknown room", "ghost", srv.Token(t, "a", "x", "participant"), 403, "forbidden"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := srv.Do(t, "POST", "/v1/rooms/"+tt.room+"/sessions", tt.token, nil)
			if status != tt.status {
				t.Fatalf("status %d, want %d: %s", status, tt.status, body)
			}
			if got := vigiltest.ErrorCode(t, body); got != tt.code {
				t.Fatalf("code %q, want %q", got, tt.code)
			}
		})
	}

	// A valid token for a room that was never created: 404.
	ghost, _, _ := srv.Sig.Tokens().Mint("ghost", "x", "participant", time.Minute)
	status, body := srv.Do(t, "POST", "/v1/rooms/ghost/sessions", ghost, nil)
	if status != 404 || vigiltest.ErrorCode(t, body) != "room_not_found" {
		t.Fatalf("unknown room: %d %s", status, body)
	}
	// And the good token works.
	if _, err := srv.OpenSession(t, "a", good); err != nil {
		t.Fatal(err)
	}
}

func TestRoomFull(t *testing.T) {
	srv := vigiltest.Start(t)
	status, body := srv.Do(t, "POST", "/v1/rooms", srv.AdminKey, map[string]any{"name": "small", "kind": "conference", "max_participants": 1})
	if status != 201 {
		t.Fatalf("%d %s", status, body)
	}
	if _, err := srv.OpenSession(t, "small", srv.Token(t, "small", "a", "participant")); err != nil {
		t.Fatal(err)
	}
	status, body = srv.Do(t, "POST", "/v1/rooms/small/sessions", srv.Token(t, "small", "b", "participant"), nil)
	if status != 409 || vigiltest.ErrorCode(t, body) != "room_full" {
		t.Fatalf("second join: %d %s", status, body)
	}
	// The same identity again replaces the first session rather than
	// counting twice.
	if _, err := srv.OpenSession(t, "small", srv.Token(t, "small", "a", "participant")); err != nil {
		t.Fatalf("rejoin with the same identity: %v", err)
	}
}

func TestStaticPages(t *testing.T) {
	srv := vigiltest.Start(t)
	for _, p := range []string{"/", "/room/anything"} {
		status, body := srv.Do(t, "GET", p, "", nil)
		if status != 200 || !strings.Contains(string(body), "<html") {
			t.Fatalf("GET %s: %d %.100s", p, status, body)
		}
	}
}
