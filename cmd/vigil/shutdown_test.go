package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pion/webrtc/v4"
	"github.com/pion/webrtc/v4/pkg/media"
	"github.com/pion/webrtc/v4/pkg/media/ivfreader"
	"github.com/pion/webrtc/v4/pkg/media/oggreader"
	"github.com/vigil-media/vigil/recordings"
	"github.com/vigil-media/vigil/signaling/vigiltest"
)

// encodedFrames makes seconds of real VP8 (30 fps, a keyframe a second)
// or Opus (20 ms frames) with ffmpeg and returns its frames.
func encodedFrames(t *testing.T, kind string, seconds int) [][]byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "media")
	var args []string
	d := fmt.Sprint(seconds)
	if kind == "vp8" {
		out += ".ivf"
		args = []string{"-f", "lavfi", "-i", "testsrc=size=320x240:rate=30", "-t", d, "-pix_fmt", "yuv420p", "-g", "30", "-keyint_min", "30",
			"-c:v", "libvpx", "-b:v", "200k", "-deadline", "realtime", "-cpu-used", "8"}
	} else {
		out += ".ogg"
		args = []string{"-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", d,
			"-c:a", "libopus", "-b:a", "32k", "-ac", "2", "-frame_duration", "20", "-page_duration", "20000"}
	}
	if b, err := exec.Command("ffmpeg", append(append([]string{"-v", "error", "-y"}, args...), out)...).CombinedOutput(); err != nil {
		t.Fatalf("ffmpeg %s: %v\n%s", kind, err, b)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var frames [][]byte
	if kind == "vp8" {
		r, _, err := ivfreader.NewWith(f)
		if err != nil {
			t.Fatal(err)
		}
		for {
			fr, _, err := r.ParseNextFrame()
			if errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatal(err)
			}
			frames = append(frames, fr)
		}
	} else {
		r, _, err := oggreader.NewWith(f)
		if err != nil {
			t.Fatal(err)
		}
		for {
			page, _, err := r.ParseNextPage()
			if errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(page, []byte("OpusHead")) && !bytes.HasPrefix(page, []byte("OpusTags")) {
				frames = append(frames, page)
			}
		}
	}
	if len(frames) == 0 {
		t.Fatalf("no %s frames", kind)
	}
	return frames
}

// candidate is one publishing participant of the shutdown test, speaking
// the wire protocol over a WebSocket with a pion connection.
type candidate struct {
	identity string
	conn     *websocket.Conn
	pc       *webrtc.PeerConnection
	up       chan struct{} // closed when the connection is connected

	mu     sync.Mutex
	events []string // "type" or "left:<reason>"
	ended  chan struct{}
}

// TestSIGTERMWithRecordings runs the built binary with 20 candidates
// (50 with VIGIL_SOAK=full) publishing real VP8 and Opus in a proctoring
// room with auto_record, every one of them recorded, and sends SIGTERM:
// the process exits 0, every client's socket got `left` with
// `server_shutdown` before it closed, and every recording's manifest is
// complete with every segment finalized and hashed, its files decoding
// cleanly with ffmpeg.
func TestSIGTERMWithRecordings(t *testing.T) {
	n := 20
	if os.Getenv("VIGIL_SOAK") == "full" {
		n = 50
	}
	for _, bin := range []string{"ffmpeg", "ffprobe"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is required (apt-get install ffmpeg): %v", bin, err)
		}
	}
	video, audio := encodedFrames(t, "vp8", 4), encodedFrames(t, "opus", 4)
	recDir := t.TempDir()
	p := startVigil(t, "-recordings-dir", recDir, "-max-participants", "0", "-join-rate", "0", "-mint-rate", "0")
	if code, body := p.do(t, "POST", "/v1/rooms", testAdminKey, `{"name":"exam","kind":"proctoring","auto_record":true}`); code != 201 {
		t.Fatalf("create room: %d %s", code, body)
	}
	api := vigiltest.PionAPI(t)

	stop := make(chan struct{})
	var writers sync.WaitGroup
	t.Cleanup(func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		writers.Wait()
	})
	// play writes frames in a loop at their pace until stop closes.
	play := func(tr *webrtc.TrackLocalStaticSample, frames [][]byte, each time.Duration) {
		defer writers.Done()
		tick := time.NewTicker(each)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			_ = tr.WriteSample(media.Sample{Data: frames[i%len(frames)], Duration: each})
		}
	}

	cands := make([]*candidate, n)
	for i := range cands {
		c := &candidate{identity: fmt.Sprintf("cand-%02d", i), up: make(chan struct{}), ended: make(chan struct{})}
		cands[i] = c
		_, tok := p.do(t, "POST", "/v1/rooms/exam/tokens", testAdminKey, fmt.Sprintf(`{"identity":%q,"role":"candidate"}`, c.identity))
		var minted struct{ Token string }
		_ = json.Unmarshal([]byte(tok), &minted)
		code, body := p.do(t, "POST", "/v1/rooms/exam/sessions", minted.Token, "")
		if code != 201 {
			t.Fatalf("open session: %d %s", code, body)
		}
		var opened struct {
			SessionID string `json:"session_id"`
		}
		_ = json.Unmarshal([]byte(body), &opened)
		if code, body := p.do(t, "POST", "/v1/rooms/exam/participants/"+c.identity+"/admit", testAdminKey, ""); code != 200 {
			t.Fatalf("admit: %d %s", code, body)
		}
		conn, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(p.url, "http")+"/v1/sessions/"+opened.SessionID+"/ws?cursor=0", nil)
		if err != nil {
			t.Fatal(err)
		}
		c.conn = conn
		t.Cleanup(func() { _ = conn.Close() })
		if c.pc, err = api.NewPeerConnection(webrtc.Configuration{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.pc.Close() })
		var once sync.Once
		c.pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
			if s == webrtc.PeerConnectionStateConnected {
				once.Do(func() { close(c.up) })
			}
		})
		var wmu sync.Mutex
		send := func(typ string, data any) {
			wmu.Lock()
			defer wmu.Unlock()
			_ = conn.WriteJSON(map[string]any{"type": typ, "data": data})
		}
		go func() {
			defer close(c.ended)
			for {
				var ev struct {
					Type string          `json:"type"`
					Data json.RawMessage `json:"data"`
				}
				if err := conn.ReadJSON(&ev); err != nil {
					return
				}
				var d struct {
					SDP    string `json:"sdp"`
					Reason string `json:"reason"`
				}
				_ = json.Unmarshal(ev.Data, &d)
				c.mu.Lock()
				if ev.Type == "left" {
					c.events = append(c.events, "left:"+d.Reason)
				} else {
					c.events = append(c.events, ev.Type)
				}
				c.mu.Unlock()
				switch ev.Type {
				case "answer":
					_ = c.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: d.SDP})
				case "offer":
					if c.pc.SignalingState() == webrtc.SignalingStateHaveLocalOffer {
						_ = c.pc.SetLocalDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeRollback})
					}
					if c.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: d.SDP}) == nil {
						if ans, err := c.pc.CreateAnswer(nil); err == nil && c.pc.SetLocalDescription(ans) == nil {
							send("answer", map[string]string{"sdp": ans.SDP})
						}
					}
				}
			}
		}()
		tracks := map[string]*webrtc.TrackLocalStaticSample{}
		for src, mime := range map[string]string{"camera": webrtc.MimeTypeVP8, "microphone": webrtc.MimeTypeOpus} {
			capab := webrtc.RTPCodecCapability{MimeType: mime, ClockRate: 90000}
			if src == "microphone" {
				capab = webrtc.RTPCodecCapability{MimeType: mime, ClockRate: 48000, Channels: 2}
			}
			tr, err := webrtc.NewTrackLocalStaticSample(capab, src, c.identity)
			if err != nil {
				t.Fatal(err)
			}
			tx, err := c.pc.AddTransceiverFromTrack(tr, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
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
			tracks[src] = tr
		}
		offer, err := c.pc.CreateOffer(nil)
		if err != nil {
			t.Fatal(err)
		}
		g := webrtc.GatheringCompletePromise(c.pc)
		if err := c.pc.SetLocalDescription(offer); err != nil {
			t.Fatal(err)
		}
		<-g
		sources := map[string]string{}
		for src := range tracks {
			sources[midOf(c.pc, src)] = src
		}
		send("offer", map[string]any{"sdp": c.pc.LocalDescription().SDP, "sources": sources})
		writers.Add(2)
		go play(tracks["camera"], video, time.Second/30)
		go play(tracks["microphone"], audio, 20*time.Millisecond)
	}
	for _, c := range cands {
		select {
		case <-c.up:
		case <-time.After(20 * time.Second):
			t.Fatalf("%s not connected in 20s", c.identity)
		}
	}
	// Every candidate recorded, and a few seconds of media in each.
	var listed string
	waitUntil(t, 20*time.Second, fmt.Sprintf("%d recordings in progress", n), func() bool {
		_, listed = p.do(t, "GET", "/v1/recordings?room=exam", testAdminKey, "")
		var list struct{ Recordings []recordings.Manifest }
		_ = json.Unmarshal([]byte(listed), &list)
		inProgress := 0
		for _, m := range list.Recordings {
			if m.Status == recordings.StatusRecording && len(m.Segments) > 0 {
				inProgress++
			}
		}
		return inProgress == n
	}, func() string { return listed })
	time.Sleep(3 * time.Second)

	sent := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v, want 0", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("still running 30s after SIGTERM")
	}
	exitAfter := time.Since(sent)
	close(stop)
	writers.Wait()

	for _, c := range cands {
		select {
		case <-c.ended:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: socket still open after the exit", c.identity)
		}
		c.mu.Lock()
		evs := c.events
		c.mu.Unlock()
		if len(evs) == 0 || evs[len(evs)-1] != "left:server_shutdown" {
			t.Errorf("%s: events %v, want the last to be left with server_shutdown", c.identity, evs)
		}
	}

	entries, err := os.ReadDir(recDir)
	if err != nil {
		t.Fatal(err)
	}
	var files, decoded int
	var recs int
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		recs++
		b, err := os.ReadFile(filepath.Join(recDir, e.Name(), recordings.ManifestName))
		if err != nil {
			t.Fatal(err)
		}
		var man recordings.Manifest
		if err := json.Unmarshal(b, &man); err != nil {
			t.Fatal(err)
		}
		if man.Status != recordings.StatusComplete || len(man.Segments) == 0 || man.DurationMs < 2000 {
			t.Errorf("%s: status %q, %d segments, %d ms, want complete and 2 s or more: %s", e.Name(), man.Status, len(man.Segments), man.DurationMs, b)
			continue
		}
		for _, s := range man.Segments {
			files++
			if !s.Finalized || s.SHA256 == "" || s.Bytes == 0 {
				t.Errorf("%s/%s: finalized %v, sha256 %q, %d bytes", e.Name(), s.File, s.Finalized, s.SHA256, s.Bytes)
				continue
			}
			path := filepath.Join(recDir, e.Name(), s.File)
			if out, err := exec.Command("ffmpeg", "-v", "error", "-i", path, "-f", "null", "-").CombinedOutput(); err != nil || len(out) > 0 {
				t.Errorf("%s: ffmpeg: %v\n%s", path, err, out)
				continue
			}
			decoded++
		}
	}
	if recs != n {
		t.Errorf("%d recordings, want %d (one per candidate)", recs, n)
	}
	t.Logf("%d candidates publishing, %d recordings, %d files, all decode: %v; SIGTERM to exit 0 in %v",
		n, recs, files, decoded == files, exitAfter.Round(time.Millisecond))
}

// midOf is the mid of the transceiver sending the track with id.
func midOf(pc *webrtc.PeerConnection, id string) string {
	for _, tx := range pc.GetTransceivers() {
		if tx.Sender() != nil && tx.Sender().Track() != nil && tx.Sender().Track().ID() == id {
			return tx.Mid()
		}
	}
	return ""
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool, why func() string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s: %s", d, what, why())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
