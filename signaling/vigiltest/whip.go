package vigiltest

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/pion/webrtc/v4"
)

// WHIPClient is a pion peer that publishes or plays through WHIP/WHEP.
type WHIPClient struct {
	// PC is the client's PeerConnection.
	PC *webrtc.PeerConnection
	// Location is the resource's path (the Location of the POST's reply).
	Location string
	// ETag is the resource's ETag from the POST's reply.
	ETag string

	t *testing.T

	// mu guards seqs; no other lock is taken while holding it.
	mu   sync.Mutex
	seqs map[string][]uint16 // by kind
}

// Packets is how many packets were received of kind ("video", "audio").
func (w *WHIPClient) Packets(kind string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.seqs[kind])
}

// Seqs returns a copy of the sequence numbers received, by kind.
func (w *WHIPClient) Seqs() map[string][]uint16 {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string][]uint16, len(w.seqs))
	for k, s := range w.seqs {
		out[k] = append([]uint16(nil), s...)
	}
	return out
}

// WHIPRequest sends an SDP-ish body (with contentType, a bearer token
// and the headers hdr, each when given) and returns the response and
// body.
func WHIPRequest(t *testing.T, method, url, token, contentType, body string, hdr map[string]string) (*http.Response, string) {
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

// NewWHIPClient makes an offer with the transceivers setup adds, posts it
// to path with token and applies the answer; the test fails unless the
// reply is a 201 with an SDP answer, a Location under path and an ETag.
// The connection is closed when the test ends.
func NewWHIPClient(t *testing.T, srv *Server, path, token string, setup func(pc *webrtc.PeerConnection)) *WHIPClient {
	t.Helper()
	pc, err := PionAPI(t).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	w := &WHIPClient{t: t, PC: pc, seqs: map[string][]uint16{}}
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
	resp, body := WHIPRequest(t, "POST", srv.URL+path, token, "application/sdp", pc.LocalDescription().SDP, nil)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST %s: %d %s", path, resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/sdp" {
		t.Fatalf("answer Content-Type %q", ct)
	}
	w.Location, w.ETag = resp.Header.Get("Location"), resp.Header.Get("ETag")
	if !strings.HasPrefix(w.Location, path+"/") || w.ETag == "" {
		t.Fatalf("Location %q ETag %q", w.Location, w.ETag)
	}
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: body}); err != nil {
		t.Fatal(err)
	}
	return w
}

// PlayWHEP plays room through WHEP as identity (a viewer), receiving
// video and audio.
//
// query is not sent: the helper has always ignored it (the copies it
// replaces did too), so the request carries only the token's identity.
// Callers pass it to say which host they mean; sending it would change
// what their tests exercise.
func PlayWHEP(t *testing.T, srv *Server, room, identity, query string) *WHIPClient {
	t.Helper()
	return NewWHIPClient(t, srv, "/whep/"+room, srv.Token(t, room, identity, "viewer"), func(pc *webrtc.PeerConnection) {
		for _, k := range []webrtc.RTPCodecType{webrtc.RTPCodecTypeVideo, webrtc.RTPCodecTypeAudio} {
			if _, err := pc.AddTransceiverFromKind(k, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
				t.Fatal(err)
			}
		}
	})
}
