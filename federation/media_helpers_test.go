package federation_test

// Test clients copied from signaling's tests (incidents_test.go,
// whip_test.go): the cascade tests join real pion peers through WHEP and
// play real VP8.

import (
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"
	"github.com/pion/webrtc/v4/pkg/media"
	"github.com/pion/webrtc/v4/pkg/media/ivfreader"
	"github.com/vigil-media/vigil/signaling/vigiltest"
	"go.uber.org/goleak"
)

// leakCheck fails the test if it leaves goroutines behind once every
// cleanup (the server's included) has run.
func leakCheck(t *testing.T) {
	opts := []goleak.Option{goleak.IgnoreCurrent()}
	t.Cleanup(func() { goleak.VerifyNone(t, opts...) })
}

// vp8File makes 3 s of real VP8 with ffmpeg (a keyframe every second).
func vp8File(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("ffmpeg"); err != nil {
		t.Fatalf("ffmpeg is required (apt-get install ffmpeg): %v", err)
	}
	out := filepath.Join(t.TempDir(), "out.ivf")
	cmd := exec.Command("ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=15", "-t", "3",
		"-c:v", "libvpx", "-g", "15", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ffmpeg: %v\n%s", err, b)
	}
	return out
}

// vp8Player sends the frames of an IVF file in a loop, at 15 fps, through
// pion's VP8 packetizer, with Opus beside it. Once wantKey is set (by a
// publisher that passes keyframe requests on: publishVP8), the next frame
// sent is a keyframe (the file's next one), as an encoder would do.
type vp8Player struct {
	video, audio *webrtc.TrackLocalStaticSample
	wantKey      atomic.Bool
	stop, done   chan struct{}
}

func playVP8(t *testing.T, path, stream string) *vp8Player {
	t.Helper()
	fh, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	r, _, err := ivfreader.NewWith(fh)
	if err != nil {
		t.Fatal(err)
	}
	var frames [][]byte
	for {
		fr, _, err := r.ParseNextFrame()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		frames = append(frames, fr)
	}
	v, err := webrtc.NewTrackLocalStaticSample(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000}, "v", stream)
	if err != nil {
		t.Fatal(err)
	}
	a, err := webrtc.NewTrackLocalStaticSample(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}, "a", stream)
	if err != nil {
		t.Fatal(err)
	}
	p := &vp8Player{video: v, audio: a, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		vt := time.NewTicker(time.Second / 15)
		defer vt.Stop()
		at := time.NewTicker(20 * time.Millisecond)
		defer at.Stop()
		for i := 0; ; {
			select {
			case <-p.stop:
				return
			case <-vt.C:
				if p.wantKey.Swap(false) {
					for frames[i%len(frames)][0]&0x01 != 0 { // the P bit of the frame tag: 0 on a keyframe
						i++
					}
				}
				_ = v.WriteSample(media.Sample{Data: frames[i%len(frames)], Duration: time.Second / 15})
				i++
			case <-at.C:
				_ = a.WriteSample(media.Sample{Data: []byte{0xf8, 0xff, 0xfe}, Duration: 20 * time.Millisecond})
			}
		}
	}()
	t.Cleanup(func() {
		select {
		case <-p.stop:
		default:
			close(p.stop)
		}
		<-p.done
	})
	return p
}

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
