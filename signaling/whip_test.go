package signaling_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/signaling/vigiltest"
)

func publishWHIP(t *testing.T, srv *vigiltest.Server, room, identity string) (*vigiltest.WHIPClient, *synthetic) {
	t.Helper()
	media := newSynthetic(t, identity)
	w := vigiltest.NewWHIPClient(t, srv, "/whip/"+room, srv.Token(t, room, identity, "host"), func(pc *webrtc.PeerConnection) {
		for _, tr := range []webrtc.TrackLocal{media.video, media.audio} {
			tx, err := pc.AddTransceiverFromTrack(tr, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
			if err != nil {
				t.Fatal(err)
			}
			go func() {
				for {
					if _, _, err := tx.Sender().ReadRTCP(); err != nil {
						return
					}
				}
			}()
		}
	})
	return w, media
}

func TestWHIPToWHEPAndTheWebClient(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "live", "broadcast")
	viewer := vigiltest.Dial(t, srv, "live", "web-viewer", "viewer")
	pub, _ := publishWHIP(t, srv, "live", "obs")
	player := vigiltest.PlayWHEP(t, srv, "live", "player", "")

	vigiltest.WaitFor(t, 10*time.Second, "WHEP plays the WHIP stream", func() bool {
		return player.Packets("video") > 30 && player.Packets("audio") > 30
	})
	vigiltest.WaitFor(t, 10*time.Second, "web viewer sees the WHIP stream", func() bool {
		return viewer.Packets("obs/camera") > 30 && viewer.Packets("obs/microphone") > 30
	})
	viewer.WaitEvent("participant_joined", func(d json.RawMessage) bool { return strings.Contains(string(d), `"identity":"obs"`) })

	// The host republishes (a new WHIP session): the player follows
	// without renegotiation, and its sequence numbers go on unbroken.
	if resp, body := vigiltest.WHIPRequest(t, "DELETE", srv.URL+pub.Location, "", "", "", nil); resp.StatusCode != 200 {
		t.Fatalf("DELETE: %d %s", resp.StatusCode, body)
	}
	if resp, _ := vigiltest.WHIPRequest(t, "DELETE", srv.URL+pub.Location, "", "", "", nil); resp.StatusCode != 404 {
		t.Fatalf("second DELETE: %d, want 404", resp.StatusCode)
	}
	before := player.Packets("video")
	publishWHIP(t, srv, "live", "obs")
	vigiltest.WaitFor(t, 10*time.Second, "player follows the republished host", func() bool { return player.Packets("video") > before+30 })
	for kind, seqs := range player.Seqs() {
		if !continuous(seqs) {
			t.Errorf("%s sequence numbers broken across the republish: %v", kind, seqs)
		}
	}
	if resp, _ := vigiltest.WHIPRequest(t, "DELETE", srv.URL+player.Location, "", "", "", nil); resp.StatusCode != 200 {
		t.Fatalf("DELETE player: %d", resp.StatusCode)
	}
}

func continuous(seqs []uint16) bool {
	for i := 1; i < len(seqs); i++ {
		if seqs[i] != seqs[i-1]+1 {
			return false
		}
	}
	return true
}

func TestWHEPPlaysAWebClientHost(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "live", "broadcast")
	host := vigiltest.Dial(t, srv, "live", "anna", "host")
	media := newSynthetic(t, "anna")
	host.Publish(map[string]webrtc.TrackLocal{"camera": media.video, "microphone": media.audio})
	// Named explicitly, the way a player picks one host of several.
	player := vigiltest.PlayWHEP(t, srv, "live", "p1", "?identity=anna")
	vigiltest.WaitFor(t, 10*time.Second, "WHEP plays the web client's host", func() bool {
		return player.Packets("video") > 30 && player.Packets("audio") > 30
	})
	// The player is a participant: admins see it in the room.
	status, body := srv.Do(t, "GET", "/v1/rooms/live", srv.AdminKey, nil)
	if status != 200 || !strings.Contains(string(body), `"identity":"p1"`) {
		t.Fatalf("room: %d %s", status, body)
	}
}

func TestWHIPAndWHEPErrors(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "live", "broadcast")
	host := srv.Token(t, "live", "h", "host")
	viewerTok := srv.Token(t, "live", "v", "viewer")
	ghost, _, _ := srv.Sig.Tokens().Mint("ghost", "h", "host", time.Minute)
	pc, _ := vigiltest.PionAPI(t).NewPeerConnection(webrtc.Configuration{})
	defer pc.Close()
	if _, err := pc.AddTransceiverFromKind(webrtc.RTPCodecTypeVideo, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly}); err != nil {
		t.Fatal(err)
	}
	offer, _ := pc.CreateOffer(nil)
	pcmu := "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\na=rtpmap:0 PCMU/8000\r\n"

	tests := []struct {
		name, method, path, token, ctype, body string
		status                                 int
		code                                   string
	}{
		{"wrong content type", "POST", "/whip/live", host, "application/json", offer.SDP, 415, "unsupported_media_type"},
		{"no token", "POST", "/whip/live", "", "application/sdp", offer.SDP, 401, "invalid_token"},
		{"forged token", "POST", "/whip/live", host + "x", "application/sdp", offer.SDP, 401, "invalid_token"},
		{"viewer may not publish", "POST", "/whip/live", viewerTok, "application/sdp", offer.SDP, 403, "forbidden"},
		{"token for another room", "POST", "/whip/other", host, "application/sdp", offer.SDP, 403, "forbidden"},
		{"unknown room", "POST", "/whip/ghost", ghost, "application/sdp", offer.SDP, 404, "room_not_found"},
		{"broken SDP", "POST", "/whip/live", host, "application/sdp", "hello", 400, "invalid_sdp"},
		{"no codec we forward", "POST", "/whip/live", host, "application/sdp", pcmu, 422, "unsupported_codec"},
		{"empty WHIP body", "POST", "/whip/live", host, "application/sdp", "", 400, "invalid_sdp"},
		{"blank WHIP body", "POST", "/whip/live", host, "application/sdp", "\r\n \r\n", 400, "invalid_sdp"},
		{"empty WHEP body", "POST", "/whep/live", viewerTok, "application/sdp", "", 400, "invalid_sdp"},
		{"WHEP offer that receives nothing", "POST", "/whep/live", viewerTok, "application/sdp", offer.SDP, 400, "invalid_sdp"},
		{"unknown resource DELETE", "DELETE", "/whip/live/nope", "", "", "", 404, "resource_not_found"},
		{"unknown resource PATCH", "PATCH", "/whep/live/nope", "", "application/trickle-ice-sdpfrag", "a=ice-ufrag:x\r\n", 404, "resource_not_found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := vigiltest.WHIPRequest(t, tt.method, srv.URL+tt.path, tt.token, tt.ctype, tt.body, nil)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.status, body)
			}
			if got := vigiltest.ErrorCode(t, []byte(body)); got != tt.code {
				t.Fatalf("code %q, want %q", got, tt.code)
			}
		})
	}

	// OPTIONS and CORS.
	resp, _ := vigiltest.WHIPRequest(t, "OPTIONS", srv.URL+"/whip/live", "", "", "", map[string]string{"Origin": "https://example.org"})
	if resp.StatusCode != 204 || !strings.Contains(resp.Header.Get("Allow"), "POST") || resp.Header.Get("Access-Control-Allow-Origin") != "*" {
		t.Fatalf("OPTIONS: %d %v", resp.StatusCode, resp.Header)
	}

	// PATCH on a live resource: type, If-Match, trickle, ICE restart.
	w, _ := publishWHIP(t, srv, "live", "h")
	url := srv.URL + w.Location
	if resp, body := vigiltest.WHIPRequest(t, "PATCH", url, "", "application/sdp", "a=ice-ufrag:x\r\n", nil); resp.StatusCode != 415 {
		t.Fatalf("PATCH wrong type: %d %s", resp.StatusCode, body)
	}
	if resp, body := vigiltest.WHIPRequest(t, "PATCH", url, "", "application/trickle-ice-sdpfrag", "a=mid:0\r\n", map[string]string{"If-Match": `"stale"`}); resp.StatusCode != 412 {
		t.Fatalf("PATCH stale If-Match: %d %s", resp.StatusCode, body)
	}
	frag := "a=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n"
	if resp, body := vigiltest.WHIPRequest(t, "PATCH", url, "", "application/trickle-ice-sdpfrag", frag, map[string]string{"If-Match": w.ETag}); resp.StatusCode != 204 {
		t.Fatalf("PATCH trickle: %d %s", resp.StatusCode, body)
	}
	restart := "a=ice-ufrag:newufrag1\r\na=ice-pwd:newpasswordnewpassword12\r\n"
	resp, body := vigiltest.WHIPRequest(t, "PATCH", url, "", "application/trickle-ice-sdpfrag", restart, map[string]string{"If-Match": "*"})
	if resp.StatusCode != 200 || !strings.Contains(body, "a=ice-ufrag:") || !strings.Contains(body, "a=ice-pwd:") {
		t.Fatalf("PATCH ICE restart: %d %s", resp.StatusCode, body)
	}
	if resp.Header.Get("ETag") == w.ETag || resp.Header.Get("ETag") == "" {
		t.Fatalf("ICE restart kept ETag %q", resp.Header.Get("ETag"))
	}
}
