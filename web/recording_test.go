package web_test

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/vigil-media/vigil/signaling/vigiltest"
)

// recManifest is what the test reads of a recording's manifest.
type recManifest struct {
	ID         string `json:"id"`
	Identity   string `json:"identity"`
	Group      string `json:"group"`
	Status     string `json:"status"`
	DurationMs int64  `json:"duration_ms"`
	Segments   []struct {
		File       string `json:"file"`
		Container  string `json:"container"`
		DurationMs int64  `json:"duration_ms"`
		Finalized  bool   `json:"finalized"`
	} `json:"segments"`
}

// roomRecordings lists the recordings of room (GET /v1/recordings?room=).
func roomRecordings(t *testing.T, srv *vigiltest.Server, room string) []recManifest {
	t.Helper()
	status, body := srv.Do(t, http.MethodGet, "/v1/recordings?room="+room, srv.AdminKey, nil)
	if status != http.StatusOK {
		t.Fatalf("list recordings: %d %s", status, body)
	}
	var r struct {
		Recordings []recManifest `json:"recordings"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	return r.Recordings
}

// probed is what ffprobe says of a file.
type probed struct {
	Streams []struct {
		CodecType    string `json:"codec_type"`
		CodecName    string `json:"codec_name"`
		Width        int    `json:"width"`
		Height       int    `json:"height"`
		NbReadFrames string `json:"nb_read_frames"`
	} `json:"streams"`
	Format struct {
		Duration string `json:"duration"`
	} `json:"format"`
}

// TestRecordingFromChromium records a conference page that publishes
// Chromium's fake camera and microphone: recording is started through
// the API before the page joins, runs about 5 s, and is stopped through
// the API. The file the manifest lists (found through GET
// /v1/recordings?room= in the recordings directory) has a video stream
// whose frames decode and an Opus stream (ffprobe -count_frames), lasts
// the manifest's duration_ms within 5%, and decodes from end to end
// without an error (ffmpeg -f null).
func TestRecordingFromChromium(t *testing.T) {
	for _, tool := range []string{"ffprobe", "ffmpeg"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (apt-get install ffmpeg)", tool)
		}
	}
	dir := t.TempDir()
	srv := vigiltest.StartWith(t, vigiltest.Options{RecordingsDir: dir})
	const room = "rec-conf"
	srv.CreateRoom(t, room, "conference")
	// Record everyone, from the moment they publish.
	if status, body := srv.Do(t, http.MethodPost, "/v1/rooms/"+room+"/recordings", srv.AdminKey, nil); status != http.StatusOK {
		t.Fatalf("start recording: %d %s", status, body)
	}

	b := startBrowser(t)
	alice := b.open(t, "alice", srv.JoinURL(t, room, "alice", "participant"))
	waitState(t, alice, "alice", "joined")
	waitFor(t, 20*time.Second, "alice's camera and microphone recorded", func() (bool, string) {
		recs := roomRecordings(t, srv, room)
		return len(recs) == 1 && recs[0].Status == "recording", fmt.Sprintf("%+v", recs)
	})
	time.Sleep(5 * time.Second)

	status, body := srv.Do(t, http.MethodDelete, "/v1/rooms/"+room+"/recordings", srv.AdminKey, nil)
	if status != http.StatusOK {
		t.Fatalf("stop recording: %d %s", status, body)
	}
	recs := roomRecordings(t, srv, room)
	if len(recs) != 1 {
		t.Fatalf("recordings of %s: %+v", room, recs)
	}
	rec := recs[0]
	if rec.Identity != "alice" || rec.Group != "av" || rec.Status != "complete" || len(rec.Segments) != 1 || !rec.Segments[0].Finalized {
		t.Fatalf("manifest: %s", body)
	}
	if rec.DurationMs < 4000 || rec.DurationMs > 9000 {
		t.Errorf("duration_ms %d for about 5 s published", rec.DurationMs)
	}
	file := filepath.Join(dir, rec.ID, rec.Segments[0].File)

	out, err := exec.Command("ffprobe", "-v", "error", "-count_frames", "-show_streams", "-show_format", "-of", "json", file).Output()
	if err != nil {
		t.Fatalf("ffprobe %s: %v", file, err)
	}
	var p probed
	if err := json.Unmarshal(out, &p); err != nil {
		t.Fatalf("ffprobe output: %v\n%s", err, out)
	}
	secs, err := strconv.ParseFloat(p.Format.Duration, 64)
	if err != nil {
		t.Fatalf("file duration %q: %v", p.Format.Duration, err)
	}
	var video, audio bool
	for _, s := range p.Streams {
		frames, _ := strconv.Atoi(s.NbReadFrames)
		switch s.CodecType {
		case "video":
			video = true
			t.Logf("video: %s %dx%d, %d frames decoded", s.CodecName, s.Width, s.Height, frames)
			if frames <= 0 || s.Width <= 0 || s.Height <= 0 {
				t.Errorf("video stream %+v: no frames decoded", s)
			} else if float64(frames) < 5*secs {
				t.Errorf("video: %d frames in %.3f s, under 5 a second", frames, secs)
			}
		case "audio":
			audio = true
			t.Logf("audio: %s, %d frames", s.CodecName, frames)
			if s.CodecName != "opus" || frames <= 0 {
				t.Errorf("audio stream %+v: want opus frames", s)
			} else if float64(frames)*0.020 < 0.8*secs {
				t.Errorf("audio: %d frames of 20 ms in %.3f s: gaps", frames, secs)
			}
		}
	}
	if !video || !audio || len(p.Streams) != 2 {
		t.Errorf("streams: %s", out)
	}
	want := float64(rec.DurationMs) / 1000
	t.Logf("%s (%s): %.3f s, manifest %.3f s", rec.Segments[0].File, rec.Segments[0].Container, secs, want)
	if math.Abs(secs-want) > 0.05*want {
		t.Errorf("file lasts %.3f s, manifest says %.3f s: more than 5%% apart", secs, want)
	}

	if out, err := exec.Command("ffmpeg", "-v", "error", "-i", file, "-f", "null", "-").CombinedOutput(); err != nil {
		t.Errorf("ffmpeg decode: %v\n%s", err, out)
	} else if len(out) > 0 {
		t.Logf("ffmpeg decode (exit 0) said: %s", out)
	}
}
