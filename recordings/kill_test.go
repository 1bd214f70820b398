package recordings_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/recordings"
	"github.com/vigil-media/vigil/sfu"
)

// buildVigil builds cmd/vigil into a temporary directory, with the race
// detector when the tests run with it (the build cache is then shared).
func buildVigil(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "vigil")
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, "../cmd/vigil")...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/vigil: %v\n%s", err, out)
	}
	return bin
}

func freePort(t *testing.T, network string) int {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port
	}
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// syncBuffer collects a process's output.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// api calls the server's HTTP API and decodes the reply.
func api(t *testing.T, base, method, path, bearer string, body any, want int, out any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+bearer)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
}

// TestKillLeavesPlayableFile runs the real server binary, has a proctoring
// candidate publish real VP8 and Opus over the WebSocket protocol for six
// seconds, kills the server with SIGKILL, and checks that the file it was
// writing decodes cleanly and covers all but the last few seconds. Then a
// restart's index marks the recording interrupted and seals it, and
// `vigil verify` passes it, until a byte is changed.
func TestKillLeavesPlayableFile(t *testing.T) {
	needFFmpeg(t)
	bin := buildVigil(t)
	dir := t.TempDir()
	httpPort, udpPort := freePort(t, "tcp"), freePort(t, "udp")
	const key = "5b0e9d2c7a4f1e8d3c6b9a2f5e8d1c4b7a0f3e6d9c2b5a8f1e4d7c0b3a6f9e2d" // 32 bytes: vigil refuses weaker keys
	base := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	var logs syncBuffer
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(),
		fmt.Sprintf("VIGIL_HTTP_ADDR=127.0.0.1:%d", httpPort), fmt.Sprintf("VIGIL_UDP_PORT=%d", udpPort),
		"VIGIL_ADMIN_KEY="+key, "VIGIL_RECORDINGS_DIR="+dir, "VIGIL_LOG_LEVEL=debug")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	killed := false
	t.Cleanup(func() {
		if !killed {
			_ = cmd.Process.Kill()
		}
		<-exited
		if t.Failed() {
			t.Logf("server log:\n%s", logs.String())
		}
	})
	waitFor(t, 30*time.Second, "the server to listen", func() bool {
		resp, err := http.Get(base + "/v1/openapi.json")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})

	api(t, base, "POST", "/v1/rooms", key, map[string]any{"name": "final-exam", "kind": "proctoring"}, 201, nil)
	var tok struct{ Token string }
	api(t, base, "POST", "/v1/rooms/final-exam/tokens", key, map[string]any{"identity": "cand-9", "role": "candidate"}, 201, &tok)
	var sess struct {
		SessionID string `json:"session_id"`
		WSURL     string `json:"ws_url"`
	}
	api(t, base, "POST", "/v1/rooms/final-exam/sessions", tok.Token, nil, 201, &sess)
	// Candidates are recorded from their admission.
	api(t, base, "POST", "/v1/rooms/final-exam/participants/cand-9/admit", key, nil, 200, nil)
	conn, _, err := websocket.DefaultDialer.Dial(strings.Replace(base, "http", "ws", 1)+sess.WSURL+"?cursor=0", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	pc, err := pionAPI(t).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	connected := make(chan struct{})
	var once sync.Once
	pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
		if s == webrtc.PeerConnectionStateConnected {
			once.Do(func() { close(connected) })
		}
	})
	// Events: apply the answer to our offer; nothing else is expected.
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			var ev struct {
				Type string          `json:"type"`
				Data json.RawMessage `json:"data"`
			}
			if err := conn.ReadJSON(&ev); err != nil {
				return
			}
			switch ev.Type {
			case "answer":
				var a struct{ SDP string }
				_ = json.Unmarshal(ev.Data, &a)
				if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: a.SDP}); err != nil {
					t.Errorf("answer: %v", err)
				}
			case "error":
				t.Errorf("server error event: %s", ev.Data)
			}
		}
	}()
	pub := &publisher{t: t, pc: pc, tracks: map[sfu.Source]*webrtc.TrackLocalStaticSample{},
		kinds: map[sfu.Source]string{sfu.SourceCamera: "vp8", sfu.SourceMicrophone: "opus"}}
	sources := map[string]sfu.Source{}
	for src, kind := range pub.kinds {
		tr := localTrack(t, kind, string(src), "cand-9")
		pub.tracks[src] = tr
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
	offer, err := pc.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	g := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	<-g
	for _, tx := range pc.GetTransceivers() {
		for src, tr := range pub.tracks {
			if tx.Sender() != nil && tx.Sender().Track() == tr {
				sources[tx.Mid()] = src
			}
		}
	}
	msg := map[string]any{"type": "offer", "id": "pub", "data": map[string]any{"sdp": pc.LocalDescription().SDP, "sources": sources}}
	if err := conn.WriteJSON(msg); err != nil {
		t.Fatal(err)
	}
	select {
	case <-connected:
	case <-time.After(15 * time.Second):
		t.Fatal("not connected to the server in 15s")
	}

	first, _ := pub.play(6 * time.Second)
	if err := cmd.Process.Kill(); err != nil { // SIGKILL: no chance to finalize
		t.Fatal(err)
	}
	killed = true
	killAt := time.Now()
	<-exited
	exited <- nil // for the cleanup
	elapsed := killAt.Sub(first)
	_ = conn.Close()
	_ = pc.Close()
	<-readerDone

	// What the killed server left.
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 1 {
		t.Fatalf("recordings dir: %v %v", entries, err)
	}
	id := entries[0].Name()
	b, err := os.ReadFile(filepath.Join(dir, id, recordings.ManifestName))
	if err != nil {
		t.Fatal(err)
	}
	var man recordings.Manifest
	if err := json.Unmarshal(b, &man); err != nil {
		t.Fatal(err)
	}
	if man.Status != recordings.StatusRecording || len(man.Segments) != 1 || man.Segments[0].Finalized || man.Segments[0].SHA256 != "" {
		t.Fatalf("manifest left by the killed server: %s", b)
	}
	path := filepath.Join(dir, id, man.Segments[0].File)
	p := ffprobe(t, path)
	d, finalized := p.duration()
	t.Logf("killed file: ffprobe duration %q, streams %v", p.Format.Duration, p.codecs())
	if finalized {
		t.Logf("(ffprobe estimated a duration of %v without a Duration element)", d)
	}
	decodes(t, path)
	ends, counts := streamEnds(t, path)
	t.Logf("published %v before the kill; the file plays to %v (audio) and %v (video), %v frames", elapsed, ends["audio"], ends["video"], counts)
	for _, kind := range []string{"audio", "video"} {
		if ends[kind] < elapsed-3*time.Second {
			t.Errorf("%s plays to %v, want at least %v (the %v before the kill, less 3s)", kind, ends[kind], elapsed-3*time.Second, elapsed)
		}
	}

	// A restart rebuilds the index: the recording is interrupted, and its
	// open file unverified: the server never hashed it and does not vouch
	// for what is there now, so it gives no hash.
	m, err := recordings.New(recordings.Config{Dir: dir, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	got, err := m.Get(id)
	if err != nil || got.Status != recordings.StatusInterrupted || got.Segments[0].SHA256 != "" || !got.Segments[0].Unverified || got.Segments[0].Bytes == 0 {
		t.Fatalf("after restart: %+v %v", got, err)
	}
	checks, err := m.Verify(id)
	if err != nil || len(checks) != 1 || checks[0].Result != recordings.CheckUnverified {
		t.Fatalf("verify: %+v %v", checks, err)
	}
	_ = m.Close()

	// vigil verify agrees: unverified, which is not a failure. (It sees
	// tampering of hashed files: TestVerifySeesTampering.)
	c := exec.Command(bin, "verify")
	c.Env = append(os.Environ(), "VIGIL_RECORDINGS_DIR="+dir)
	out, err := c.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "UNVERIFIED "+id+"/av-001.webm") {
		t.Fatalf("vigil verify: %v\n%s", err, out)
	}
	t.Logf("vigil verify: %s", strings.TrimSpace(string(out)))
}
