package signaling_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/sfu"
	"github.com/vigil-media/vigil/signaling"
	"github.com/vigil-media/vigil/signaling/vigiltest"
)

// request sends method path with headers and returns the response (body
// read into the second value).
func request(t *testing.T, srv *vigiltest.Server, method, path string, header map[string]string, body string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
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

func wantRateLimited(t *testing.T, what string, resp *http.Response, body []byte) {
	t.Helper()
	if resp.StatusCode != http.StatusTooManyRequests || vigiltest.ErrorCode(t, body) != "rate_limited" {
		t.Fatalf("%s: %d %s, want 429 rate_limited", what, resp.StatusCode, body)
	}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || s < 1 {
		t.Fatalf("%s: Retry-After %q", what, resp.Header.Get("Retry-After"))
	}
}

// TestMaxRoomsAndParticipants: the server's room cap refuses the next
// room with 409 too_many_rooms until one ends; its participant cap
// bounds a room that asks for more.
func TestMaxRoomsAndParticipants(t *testing.T) {
	srv := vigiltest.StartWith(t, vigiltest.Options{SFU: sfu.Config{MaxRooms: 2, MaxParticipants: 2}})
	srv.CreateRoom(t, "a", "conference")
	if status, body := srv.Do(t, "POST", "/v1/rooms", srv.AdminKey, map[string]any{"name": "b", "kind": "conference", "max_participants": 50}); status != 201 {
		t.Fatalf("room b: %d %s", status, body)
	}
	status, body := srv.Do(t, "POST", "/v1/rooms", srv.AdminKey, map[string]any{"name": "c", "kind": "conference"})
	if status != http.StatusConflict || vigiltest.ErrorCode(t, body) != "too_many_rooms" {
		t.Fatalf("third room: %d %s", status, body)
	}
	if status, body := srv.Do(t, "DELETE", "/v1/rooms/a", srv.AdminKey, nil); status != 204 {
		t.Fatalf("delete a: %d %s", status, body)
	}
	srv.CreateRoom(t, "c", "conference")
	for i := range 3 {
		_, err := srv.OpenSession(t, "b", srv.Token(t, "b", fmt.Sprint("p", i), "participant"))
		if (i < 2) != (err == nil) || (i == 2 && !strings.Contains(err.Error(), "room_full")) {
			t.Fatalf("join %d of a room capped at 2 by the server: %v", i, err)
		}
	}
}

// TestMaxTracks: an offer sending on more m-lines than the limit is
// refused whole with too_many_tracks; the socket and the room go on.
func TestMaxTracks(t *testing.T) {
	srv := vigiltest.StartWith(t, vigiltest.Options{SFU: sfu.Config{MaxTracks: 2}})
	srv.CreateRoom(t, "class", "conference")
	alice := vigiltest.Dial(t, srv, "class", "alice", "participant")
	bob := vigiltest.Dial(t, srv, "class", "bob", "participant")
	alice.WaitEvent("joined", nil)
	sources := map[string]string{}
	for i, src := range []string{"camera", "screen", "camera"} {
		tr, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000}, fmt.Sprint("v", i), "s")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := alice.PC.AddTransceiverFromTrack(tr, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly}); err != nil {
			t.Fatal(err)
		}
		sources[fmt.Sprint(i)] = src
	}
	offer, err := alice.PC.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.PC.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	alice.Send("offer", "o1", map[string]any{"sdp": offer.SDP, "sources": sources})
	e := alice.WaitEvent("error", func(d json.RawMessage) bool { return strings.Contains(string(d), `"ref":"o1"`) })
	if !strings.Contains(string(e.Data), `"code":"too_many_tracks"`) {
		t.Fatalf("three tracks with a limit of two: %s", e.Data)
	}
	if n := len(bob.EventsOf("track_published")); n != 0 {
		t.Fatalf("bob saw %d tracks published", n)
	}
	alice.Send("chat", "c1", map[string]string{"text": "still here"})
	bob.WaitEvent("chat", nil)
}

// TestMessageRate: a session over its message rate gets rate_limited
// (an error event with the message's ref on the socket; 429 with
// Retry-After on POST); another session in the room is not affected.
func TestMessageRate(t *testing.T) {
	srv := vigiltest.StartWith(t, vigiltest.Options{Configure: func(c *signaling.Config) { c.MessageRate = 5 }})
	srv.CreateRoom(t, "class", "conference")
	noisy := vigiltest.Dial(t, srv, "class", "noisy", "participant")
	calm := vigiltest.Dial(t, srv, "class", "calm", "participant")
	noisy.WaitEvent("joined", nil)
	start := time.Now()
	for i := range 30 {
		noisy.Send("chat", fmt.Sprint("m", i), map[string]string{"text": "spam"})
	}
	e := noisy.WaitEvent("error", func(d json.RawMessage) bool { return strings.Contains(string(d), `"code":"rate_limited"`) })
	if !strings.Contains(string(e.Data), `"ref":"m`) {
		t.Errorf("rate_limited without the message's ref: %s", e.Data)
	}
	count := func(c *vigiltest.Client, typ, substr string) int {
		n := 0
		for _, e := range c.EventsOf(typ) {
			if strings.Contains(string(e.Data), substr) {
				n++
			}
		}
		return n
	}
	// Each of the 30 is either delivered to calm or refused to noisy.
	vigiltest.WaitFor(t, 10*time.Second, "the 30 messages delivered or refused", func() bool {
		return count(calm, "chat", "spam")+count(noisy, "error", `"code":"rate_limited"`) == 30
	})
	elapsed := time.Since(start)
	if chats := count(calm, "chat", "spam"); chats < 10 || float64(chats) > 10+5*elapsed.Seconds() {
		t.Errorf("calm got %d of the 30 messages sent at once, taken within %v; want the burst of 10 and what 5/s refills meanwhile", chats, elapsed)
	}
	msg := `{"type":"chat","data":{"text":"hi"}}`
	var limited bool
	for range 30 {
		resp, body := request(t, srv, "POST", "/v1/sessions/"+noisy.Session+"/messages", map[string]string{"Content-Type": "application/json"}, msg)
		if resp.StatusCode == http.StatusTooManyRequests {
			wantRateLimited(t, "POST over the rate", resp, body)
			limited = true
			break
		}
	}
	if !limited {
		t.Fatal("30 POSTs at once were never limited")
	}
	resp, body := request(t, srv, "POST", "/v1/sessions/"+calm.Session+"/messages", map[string]string{"Content-Type": "application/json"}, msg)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("the other session's POST: %d %s", resp.StatusCode, body)
	}
}

// TestJoinAndMintRatePerAddress: session opens and token mints over
// their rate per client address get 429 rate_limited with Retry-After.
// X-Forwarded-For is ignored unless the peer is a trusted proxy; behind
// one, each forwarded address has its own bucket.
func TestJoinAndMintRatePerAddress(t *testing.T) {
	for _, trusted := range []bool{false, true} {
		t.Run(fmt.Sprint("trusted=", trusted), func(t *testing.T) {
			srv := vigiltest.StartWith(t, vigiltest.Options{Configure: func(c *signaling.Config) {
				c.JoinRate, c.MintRate = 2, 3 // bursts of 4 and 6
				if trusted {
					c.TrustedProxies = []string{"127.0.0.1"}
				}
			}})
			srv.CreateRoom(t, "class", "conference")
			var tokens []string
			for i := range 6 {
				tokens = append(tokens, srv.Token(t, "class", fmt.Sprint("p", i), "participant"))
			}
			resp, body := request(t, srv, "POST", "/v1/rooms/class/tokens", map[string]string{"Authorization": "Bearer " + srv.AdminKey},
				`{"identity":"late","role":"participant"}`)
			wantRateLimited(t, "seventh mint", resp, body)

			open := func(i int, forwarded string) (*http.Response, []byte) {
				h := map[string]string{"Authorization": "Bearer " + tokens[i]}
				if forwarded != "" {
					h["X-Forwarded-For"] = forwarded
				}
				return request(t, srv, "POST", "/v1/rooms/class/sessions", h, "")
			}
			for i := range 4 {
				if resp, body := open(i, "203.0.113.1"); resp.StatusCode != 201 {
					t.Fatalf("join %d: %d %s", i, resp.StatusCode, body)
				}
			}
			resp, body = open(4, "203.0.113.1")
			wantRateLimited(t, "fifth join", resp, body)
			resp, body = open(4, "203.0.113.2")
			if trusted && resp.StatusCode != 201 {
				t.Fatalf("a join from another address behind a trusted proxy: %d %s", resp.StatusCode, body)
			}
			if !trusted {
				wantRateLimited(t, "a spoofed X-Forwarded-For", resp, body)
			}
		})
	}
}

// TestCORS: by default no other origin may use the API or open a
// WebSocket; a configured origin may (preflight answered, headers
// exposed); WHIP and WHEP answer any origin.
func TestCORS(t *testing.T) {
	for _, configured := range []bool{false, true} {
		t.Run(fmt.Sprint("configured=", configured), func(t *testing.T) {
			srv := vigiltest.StartWith(t, vigiltest.Options{Configure: func(c *signaling.Config) {
				if configured {
					c.CORSOrigins = []string{"https://app.example"}
				}
			}})
			srv.CreateRoom(t, "class", "conference")
			pre := map[string]string{"Origin": "https://app.example", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
			resp, _ := request(t, srv, "OPTIONS", "/v1/rooms", pre, "")
			got := resp.Header.Get("Access-Control-Allow-Origin")
			if configured && (resp.StatusCode != 204 || got != "https://app.example" || !strings.Contains(resp.Header.Get("Access-Control-Allow-Headers"), "Authorization")) {
				t.Errorf("preflight from a configured origin: %d %v", resp.StatusCode, resp.Header)
			}
			if !configured && got != "" {
				t.Errorf("preflight allowed by default: %v", resp.Header)
			}
			resp, _ = request(t, srv, "GET", "/v1/rooms", map[string]string{"Origin": "https://evil.example", "Authorization": "Bearer " + srv.AdminKey}, "")
			if resp.Header.Get("Access-Control-Allow-Origin") != "" {
				t.Errorf("an unlisted origin got %v", resp.Header)
			}
			resp, _ = request(t, srv, "GET", "/v1/rooms", map[string]string{"Origin": "https://app.example", "Authorization": "Bearer " + srv.AdminKey}, "")
			if configured != (resp.Header.Get("Access-Control-Allow-Origin") == "https://app.example") {
				t.Errorf("GET from app.example: %v", resp.Header)
			}
			resp, _ = request(t, srv, "OPTIONS", "/whip/class", map[string]string{"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}, "")
			if resp.Header.Get("Access-Control-Allow-Origin") != "*" {
				t.Errorf("WHIP preflight: %v", resp.Header)
			}

			sid, err := srv.OpenSession(t, "class", srv.Token(t, "class", "alice", "participant"))
			if err != nil {
				t.Fatal(err)
			}
			for origin, want := range map[string]bool{"https://evil.example": false, "https://app.example": configured, srv.URL: true} {
				conn, resp, err := websocket.DefaultDialer.Dial(vigiltest.WSURL(srv, sid, 0), http.Header{"Origin": {origin}})
				if (err == nil) != want {
					t.Errorf("WebSocket from %s: %v (%v), want allowed=%v", origin, err, resp, want)
				}
				if conn != nil {
					_ = conn.Close()
				}
			}
		})
	}
}
