package signaling_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/signaling/vigiltest"
)

// whipClient is a pion peer that publishes or plays through WHIP/WHEP.
type whipClient struct {
	t        *testing.T
	pc       *webrtc.PeerConnection
	location string
	etag     string

	mu   sync.Mutex
	seqs map[string][]uint16 // by kind
}

func (w *whipClient) packets(kind string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.seqs[kind])
}

// whipRequest sends an SDP-ish body and returns the response and body.
func whipRequest(t *testing.T, method, url, token, contentType, body string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// newWHIPClient makes an offer with the given transceivers and posts it.
func newWHIPClient(t *testing.T, srv *vigiltest.Server, path, token string, setup func(pc *webrtc.PeerConnection)) *whipClient {
	t.Helper()
	pc, err := vigiltest.PionAPI(t).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	w := &whipClient{t: t, pc: pc, seqs: map[string][]uint16{}}
	t.Cleanup(func() { _ = pc.Close() })
	pc.OnTrack(func(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
		for {
			pkt, _, err := tr.ReadRTP()
			if err != nil {
				return
			}
			w.mu.Lock()
			w.seqs[tr.Kind().String()] = append(w.seqs[tr.Kind().String()], pkt.SequenceNumber)
			w.mu.Unlock()
		}
	})
	setup(pc)
	offer, err := pc.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	g := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	<-g
	resp, body := whipRequest(t, "POST", srv.URL+path, token, "application/sdp", pc.LocalDescription().SDP, nil)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST %s: %d %s", path, resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/sdp" {
		t.Fatalf("answer Content-Type %q", ct)
	}
	w.location, w.etag = resp.Header.Get("Location"), resp.Header.Get("ETag")
	if !strings.HasPrefix(w.location, path+"/") || w.etag == "" {
		t.Fatalf("Location %q ETag %q", w.location, w.etag)
	}
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: body}); err != nil {
		t.Fatal(err)
	}
	return w
}

func publishWHIP(t *testing.T, srv *vigiltest.Server, room, identity string) (*whipClient, *synthetic) {
	t.Helper()
	media := newSynthetic(t, identity)
	w := newWHIPClient(t, srv, "/whip/"+room, srv.Token(t, room, identity, "host"), func(pc *webrtc.PeerConnection) {
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

func playWHEP(t *testing.T, srv *vigiltest.Server, room, identity, query string) *whipClient {
	t.Helper()
	return newWHIPClient(t, srv, "/whep/"+room, srv.Token(t, room, identity, "viewer"), func(pc *webrtc.PeerConnection) {
		for _, k := range []webrtc.RTPCodecType{webrtc.RTPCodecTypeVideo, webrtc.RTPCodecTypeAudio} {
			if _, err := pc.AddTransceiverFromKind(k, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
				t.Fatal(err)
			}
		}
	})
}

func TestWHIPToWHEPAndTheWebClient(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "live", "broadcast")
	viewer := dial(t, srv, "live", "web-viewer", "viewer")
	pub, _ := publishWHIP(t, srv, "live", "obs")
	player := playWHEP(t, srv, "live", "player", "")

	waitFor(t, 10*time.Second, "WHEP plays the WHIP stream", func() bool {
		return player.packets("video") > 30 && player.packets("audio") > 30
	})
	waitFor(t, 10*time.Second, "web viewer sees the WHIP stream", func() bool {
		return viewer.packets("obs/camera") > 30 && viewer.packets("obs/microphone") > 30
	})
	viewer.waitEvent("participant_joined", func(d json.RawMessage) bool { return strings.Contains(string(d), `"identity":"obs"`) })

	// The host republishes (a new WHIP session): the player follows
	// without renegotiation, and its sequence numbers go on unbroken.
	if resp, body := whipRequest(t, "DELETE", srv.URL+pub.location, "", "", "", nil); resp.StatusCode != 200 {
		t.Fatalf("DELETE: %d %s", resp.StatusCode, body)
	}
	if resp, _ := whipRequest(t, "DELETE", srv.URL+pub.location, "", "", "", nil); resp.StatusCode != 404 {
		t.Fatalf("second DELETE: %d, want 404", resp.StatusCode)
	}
	before := player.packets("video")
	publishWHIP(t, srv, "live", "obs")
	waitFor(t, 10*time.Second, "player follows the republished host", func() bool { return player.packets("video") > before+30 })
	player.mu.Lock()
	for kind, seqs := range player.seqs {
		if !continuous(seqs) {
			t.Errorf("%s sequence numbers broken across the republish: %v", kind, seqs)
		}
	}
	player.mu.Unlock()
	if resp, _ := whipRequest(t, "DELETE", srv.URL+player.location, "", "", "", nil); resp.StatusCode != 200 {
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
	host := dial(t, srv, "live", "anna", "host")
	media := newSynthetic(t, "anna")
	host.publish(map[string]webrtc.TrackLocal{"camera": media.video, "microphone": media.audio})
	// Named explicitly, the way a player picks one host of several.
	player := playWHEP(t, srv, "live", "p1", "?identity=anna")
	waitFor(t, 10*time.Second, "WHEP plays the web client's host", func() bool {
		return player.packets("video") > 30 && player.packets("audio") > 30
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
			resp, body := whipRequest(t, tt.method, srv.URL+tt.path, tt.token, tt.ctype, tt.body, nil)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.status, body)
			}
			if got := errorCode(t, []byte(body)); got != tt.code {
				t.Fatalf("code %q, want %q", got, tt.code)
			}
		})
	}

	// OPTIONS and CORS.
	resp, _ := whipRequest(t, "OPTIONS", srv.URL+"/whip/live", "", "", "", map[string]string{"Origin": "https://example.org"})
	if resp.StatusCode != 204 || !strings.Contains(resp.Header.Get("Allow"), "POST") || resp.Header.Get("Access-Control-Allow-Origin") != "*" {
		t.Fatalf("OPTIONS: %d %v", resp.StatusCode, resp.Header)
	}

	// PATCH on a live resource: type, If-Match, trickle, ICE restart.
	w, _ := publishWHIP(t, srv, "live", "h")
	url := srv.URL + w.location
	if resp, body := whipRequest(t, "PATCH", url, "", "application/sdp", "a=ice-ufrag:x\r\n", nil); resp.StatusCode != 415 {
		t.Fatalf("PATCH wrong type: %d %s", resp.StatusCode, body)
	}
	if resp, body := whipRequest(t, "PATCH", url, "", "application/trickle-ice-sdpfrag", "a=mid:0\r\n", map[string]string{"If-Match": `"stale"`}); resp.StatusCode != 412 {
		t.Fatalf("PATCH stale If-Match: %d %s", resp.StatusCode, body)
	}
	frag := "a=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n"
	if resp, body := whipRequest(t, "PATCH", url, "", "application/trickle-ice-sdpfrag", frag, map[string]string{"If-Match": w.etag}); resp.StatusCode != 204 {
		t.Fatalf("PATCH trickle: %d %s", resp.StatusCode, body)
	}
	restart := "a=ice-ufrag:newufrag1\r\na=ice-pwd:newpasswordnewpassword12\r\n"
	resp, body := whipRequest(t, "PATCH", url, "", "application/trickle-ice-sdpfrag", restart, map[string]string{"If-Match": "*"})
	if resp.StatusCode != 200 || !strings.Contains(body, "a=ice-ufrag:") || !strings.Contains(body, "a=ice-pwd:") {
		t.Fatalf("PATCH ICE restart: %d %s", resp.StatusCode, body)
	}
	if resp.Header.Get("ETag") == w.etag || resp.Header.Get("ETag") == "" {
		t.Fatalf("ICE restart kept ETag %q", resp.Header.Get("ETag"))
	}
}
