package signaling_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"
	"github.com/pion/webrtc/v4/pkg/media"
	"github.com/pion/webrtc/v4/pkg/media/ivfreader"
	"github.com/pion/webrtc/v4/pkg/media/oggreader"
	"github.com/vigil-media/vigil/signaling/vigiltest"
	"go.uber.org/goleak"
)

// recSample is one encoded frame and how long it lasts.
type recSample struct {
	data []byte
	dur  time.Duration
}

// recMedia makes seconds of real VP8 video and Opus audio with ffmpeg.
func recMedia(t *testing.T, seconds int) (video, audio []recSample) {
	t.Helper()
	dir := t.TempDir()
	d := fmt.Sprint(seconds)
	ivf, ogg := filepath.Join(dir, "v.ivf"), filepath.Join(dir, "a.ogg")
	for _, args := range [][]string{
		{"-f", "lavfi", "-i", "testsrc=size=320x240:rate=30", "-t", d, "-pix_fmt", "yuv420p", "-g", "30",
			"-c:v", "libvpx", "-b:v", "300k", "-deadline", "realtime", "-cpu-used", "8", ivf},
		{"-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", d, "-c:a", "libopus", "-ac", "2",
			"-frame_duration", "20", "-page_duration", "20000", ogg},
	} {
		if out, err := exec.Command("ffmpeg", append([]string{"-v", "error", "-y"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ffmpeg (apt-get install ffmpeg): %v\n%s", err, out)
		}
	}
	f, err := os.Open(ivf)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	vr, _, err := ivfreader.NewWith(f)
	if err != nil {
		t.Fatal(err)
	}
	for {
		fr, _, err := vr.ParseNextFrame()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		video = append(video, recSample{fr, time.Second / 30})
	}
	g, err := os.Open(ogg)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	or, _, err := oggreader.NewWith(g)
	if err != nil {
		t.Fatal(err)
	}
	for {
		page, _, err := or.ParseNextPage()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(page, []byte("OpusTags")) {
			audio = append(audio, recSample{page, 20 * time.Millisecond})
		}
	}
	return video, audio
}

// sendRealTime writes samples to a track at their pace.
func sendRealTime(tr *webrtc.TrackLocalStaticSample, samples []recSample, done chan<- struct{}) {
	next := time.Now()
	for _, s := range samples {
		time.Sleep(time.Until(next))
		_ = tr.WriteSample(media.Sample{Data: s.data, Duration: s.dur})
		next = next.Add(s.dur)
	}
	done <- struct{}{}
}

type recordingJSON struct {
	ID       string `json:"id"`
	Room     string `json:"room"`
	Identity string `json:"identity"`
	Status   string `json:"status"`
	Segments []struct {
		File      string `json:"file"`
		SHA256    string `json:"sha256"`
		Bytes     int64  `json:"bytes"`
		Finalized bool   `json:"finalized"`
		Verified  *bool  `json:"verified"`
		Check     string `json:"check"`
	} `json:"segments"`
}

func decodeJSON[T any](t *testing.T, status, want int, body []byte) T {
	t.Helper()
	if status != want {
		t.Fatalf("status %d, want %d: %s", status, want, body)
	}
	var v T
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	return v
}

// get fetches path with the admin key and optional extra headers.
func get(t *testing.T, srv *vigiltest.Server, path string, header map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+srv.AdminKey)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// TestRecordingsAPI drives recording on demand in a conference room
// through the API, with a real publisher: start one identity, stop it (the
// file is finalized), list and filter, the manifest with its files
// verified, a download with and without Range, tampering detected, the
// file API confined to the recording, and delete.
func TestRecordingsAPI(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) }) // runs last, after the server closed
	dir := t.TempDir()
	srv := vigiltest.StartWith(t, vigiltest.Options{RecordingsDir: dir})
	srv.CreateRoom(t, "talk", "conference")
	video, audio := recMedia(t, 3)

	alice := vigiltest.Dial(t, srv, "talk", "alice", "participant")
	vt, err := webrtc.NewTrackLocalStaticSample(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000}, "v", "alice")
	if err != nil {
		t.Fatal(err)
	}
	at, err := webrtc.NewTrackLocalStaticSample(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}, "a", "alice")
	if err != nil {
		t.Fatal(err)
	}
	alice.Publish(map[string]webrtc.TrackLocal{"camera": vt, "microphone": at})
	vigiltest.WaitFor(t, 10*time.Second, "alice connected", func() bool { return alice.PC.ConnectionState() == webrtc.PeerConnectionStateConnected })
	// Tracks are announced to the server when their first packets arrive.
	done := make(chan struct{}, 2)
	go sendRealTime(vt, video, done)
	go sendRealTime(at, audio, done)
	vigiltest.WaitFor(t, 10*time.Second, "alice's tracks", func() bool {
		p := srv.SFU.Rooms()[0].Participant("alice")
		return p != nil && len(p.Tracks()) == 2
	})

	// A conference room records nothing until asked.
	list := decodeJSON[struct{ Recordings []recordingJSON }](t, 200, 200, mustDo(t, srv, "GET", "/v1/recordings", nil))
	if len(list.Recordings) != 0 {
		t.Fatalf("recording before start: %+v", list)
	}
	status, body := srv.Do(t, "POST", "/v1/rooms/talk/recordings", srv.AdminKey, map[string]any{"identity": "alice"})
	started := decodeJSON[struct {
		Room       string
		Recordings []recordingJSON
	}](t, status, 200, body)
	if started.Room != "talk" || len(started.Recordings) != 1 || started.Recordings[0].Identity != "alice" {
		t.Fatalf("start: %s", body)
	}
	id := started.Recordings[0].ID
	<-done
	<-done

	status, body = srv.Do(t, "DELETE", "/v1/rooms/talk/recordings?identity=alice", srv.AdminKey, nil)
	stopped := decodeJSON[struct{ Recordings []recordingJSON }](t, status, 200, body)
	if len(stopped.Recordings) != 1 || stopped.Recordings[0].Status != "complete" || !stopped.Recordings[0].Segments[0].Finalized {
		t.Fatalf("stop: %s", body)
	}

	for q, n := range map[string]int{"": 1, "?room=talk": 1, "?identity=alice": 1, "?identity=bob": 0, "?room=other": 0} {
		l := decodeJSON[struct{ Recordings []recordingJSON }](t, 200, 200, mustDo(t, srv, "GET", "/v1/recordings"+q, nil))
		if len(l.Recordings) != n {
			t.Errorf("GET /v1/recordings%s: %d recordings, want %d", q, len(l.Recordings), n)
		}
	}
	man := decodeJSON[recordingJSON](t, 200, 200, mustDo(t, srv, "GET", "/v1/recordings/"+id, nil))
	if len(man.Segments) != 1 || man.Segments[0].Verified == nil || !*man.Segments[0].Verified || man.Segments[0].Check != "ok" {
		t.Fatalf("manifest: %+v", man)
	}
	name := man.Segments[0].File
	onDisk, err := os.ReadFile(filepath.Join(dir, id, name))
	if err != nil || int64(len(onDisk)) != man.Segments[0].Bytes {
		t.Fatalf("file on disk: %d bytes, %v", len(onDisk), err)
	}

	// Download whole, then a range, then the last bytes.
	resp := get(t, srv, "/v1/recordings/"+id+"/files/"+name, nil)
	whole, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Equal(whole, onDisk) || resp.Header.Get("Content-Type") != "video/webm" || resp.Header.Get("Accept-Ranges") != "bytes" {
		t.Fatalf("download: %d %q %q, %d bytes", resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Accept-Ranges"), len(whole))
	}
	resp = get(t, srv, "/v1/recordings/"+id+"/files/"+name, map[string]string{"Range": "bytes=100-1123"})
	part, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	wantRange := fmt.Sprintf("bytes 100-1123/%d", len(onDisk))
	if resp.StatusCode != http.StatusPartialContent || resp.Header.Get("Content-Range") != wantRange || !bytes.Equal(part, onDisk[100:1124]) {
		t.Fatalf("range: %d %q (want %q), %d bytes", resp.StatusCode, resp.Header.Get("Content-Range"), wantRange, len(part))
	}
	resp = get(t, srv, "/v1/recordings/"+id+"/files/"+name, map[string]string{"Range": "bytes=-64"})
	tail, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(tail, onDisk[len(onDisk)-64:]) {
		t.Fatalf("suffix range: %d, %d bytes", resp.StatusCode, len(tail))
	}
	resp = get(t, srv, "/v1/recordings/"+id+"/files/"+name, map[string]string{"Range": fmt.Sprintf("bytes=%d-", len(onDisk)+10)})
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		t.Fatalf("range past the end: %d", resp.StatusCode)
	}
	// What was downloaded plays.
	if out, err := exec.Command("ffmpeg", "-v", "error", "-i", filepath.Join(dir, id, name), "-f", "null", "-").CombinedOutput(); err != nil || len(out) > 0 {
		t.Fatalf("decode: %v %s", err, out)
	}

	// The file API serves only the recording's files.
	for _, p := range []string{
		"/v1/recordings/" + id + "/files/manifest.json",
		"/v1/recordings/" + id + "/files/..",
		"/v1/recordings/" + id + "/files/..%2F..%2Fetc%2Fpasswd",
		"/v1/recordings/" + id + "/files/%2e%2e",
		"/v1/recordings/" + id + "/files/av-009.webm",
		"/v1/recordings/rec_000000000000000000000000/files/" + name,
		"/v1/recordings/..%2F" + id + "/files/" + name,
	} {
		resp := get(t, srv, p, nil)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 404 {
			t.Errorf("GET %s: %d %s", p, resp.StatusCode, b)
			continue
		}
		if code := vigiltest.ErrorCode(t, b); code != "file_not_found" && code != "recording_not_found" && code != "not_found" {
			t.Errorf("GET %s: code %q", p, code)
		}
	}

	// A tampered file fails its check.
	tampered := append([]byte(nil), onDisk...)
	tampered[len(tampered)/2] ^= 0xff
	if err := os.WriteFile(filepath.Join(dir, id, name), tampered, 0o600); err != nil {
		t.Fatal(err)
	}
	man = decodeJSON[recordingJSON](t, 200, 200, mustDo(t, srv, "GET", "/v1/recordings/"+id, nil))
	if *man.Segments[0].Verified || man.Segments[0].Check != "mismatch" {
		t.Fatalf("tampered file verified: %+v", man.Segments[0])
	}

	// Recording everyone starts alice again, in a new recording; it cannot
	// be deleted while it runs.
	go sendRealTime(vt, video[:30], done)
	go sendRealTime(at, audio[:50], done)
	status, body = srv.Do(t, "POST", "/v1/rooms/talk/recordings", srv.AdminKey, nil)
	all := decodeJSON[struct{ Recordings []recordingJSON }](t, status, 200, body)
	if len(all.Recordings) != 1 || all.Recordings[0].ID == id {
		t.Fatalf("start all: %s", body)
	}
	status, body = srv.Do(t, "DELETE", "/v1/recordings/"+all.Recordings[0].ID, srv.AdminKey, nil)
	if status != 409 || vigiltest.ErrorCode(t, body) != "recording_active" {
		t.Fatalf("delete active: %d %s", status, body)
	}
	<-done
	<-done
	if status, body := srv.Do(t, "DELETE", "/v1/rooms/talk/recordings", srv.AdminKey, nil); status != 200 {
		t.Fatalf("stop all: %d %s", status, body)
	}

	// Delete.
	if status, body := srv.Do(t, "DELETE", "/v1/recordings/"+id, srv.AdminKey, nil); status != 204 {
		t.Fatalf("delete: %d %s", status, body)
	}
	if _, err := os.Stat(filepath.Join(dir, id)); !os.IsNotExist(err) {
		t.Fatalf("files still on disk: %v", err)
	}
	status, body = srv.Do(t, "GET", "/v1/recordings/"+id, srv.AdminKey, nil)
	if status != 404 || vigiltest.ErrorCode(t, body) != "recording_not_found" {
		t.Fatalf("get deleted: %d %s", status, body)
	}

	// Errors.
	for _, tt := range []struct {
		method, path string
		body         any
		status       int
		code         string
	}{
		{"POST", "/v1/rooms/ghost/recordings", nil, 404, "room_not_found"},
		{"DELETE", "/v1/rooms/ghost/recordings", nil, 404, "room_not_found"},
		{"POST", "/v1/rooms/talk/recordings", map[string]any{"identity": "a b"}, 400, "invalid_request"},
		{"POST", "/v1/rooms/talk/recordings", map[string]any{"who": "alice"}, 400, "invalid_request"},
		{"POST", "/v1/rooms/talk/recordings", `{"identity":`, 400, "invalid_request"},
		{"DELETE", "/v1/rooms/talk/recordings?identity=../x", nil, 400, "invalid_request"},
		{"DELETE", "/v1/recordings/rec_000000000000000000000000", nil, 404, "recording_not_found"},
		{"GET", "/v1/recordings/nope", nil, 404, "recording_not_found"},
	} {
		status, body := srv.Do(t, tt.method, tt.path, srv.AdminKey, tt.body)
		if status != tt.status || vigiltest.ErrorCode(t, body) != tt.code {
			t.Errorf("%s %s: %d %s, want %d %s", tt.method, tt.path, status, body, tt.status, tt.code)
		}
	}
	alice.Close()
}

func mustDo(t *testing.T, srv *vigiltest.Server, method, path string, body any) []byte {
	t.Helper()
	status, b := srv.Do(t, method, path, srv.AdminKey, body)
	if status/100 != 2 {
		t.Fatalf("%s %s: %d %s", method, path, status, b)
	}
	return b
}
