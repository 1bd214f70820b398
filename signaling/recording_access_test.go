package signaling_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/incidents"
	"github.com/vigil-media/vigil/signaling"
	"github.com/vigil-media/vigil/signaling/vigiltest"
)

// fetchAs GETs path with bearer ("" for none) and an optional Range, and
// returns the status, the body and the reply's headers.
func fetchAs(t *testing.T, srv *vigiltest.Server, path, bearer, rng string) (int, []byte, http.Header) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b, resp.Header
}

type signedFile struct {
	Name      string    `json:"name"`
	URL       string    `json:"url"`
	ExpiresAt time.Time `json:"expires_at"`
}

// TestProctorReadsRoomRecordings: a proctor flags an admitted candidate;
// the incident names the candidate's recording, which the proctor's own
// join token reads (manifest and file, with Range), with a signed URL for
// each file that plays without any Authorization (Range too) for 10
// minutes. A candidate's token, a proctor's token for another room, no
// key, a forged, re-dated, re-targeted or expired signed URL are refused.
func TestProctorReadsRoomRecordings(t *testing.T) {
	vigiltest.LeakCheck(t)
	var skew atomic.Int64 // the server's clock runs this far ahead
	dir := t.TempDir()
	srv := vigiltest.StartWith(t, vigiltest.Options{RecordingsDir: dir, Now: func() time.Time {
		return time.Now().Add(time.Duration(skew.Load()))
	}})
	f := newSynthetic(t, "cand")
	proctor, _ := examRoom(t, srv, "exam", "cand", map[string]webrtc.TrackLocal{"camera": f.video, "microphone": f.audio})
	srv.CreateRoom(t, "other", "proctoring")
	proctorTok := srv.Token(t, "exam", "proc", "proctor")
	otherProctor := srv.Token(t, "other", "proc", "proctor")
	candTok := srv.Token(t, "exam", "cand", "candidate")

	// The candidate is recorded from its admission; a flag then is placed
	// in the recording.
	vigiltest.WaitFor(t, 10*time.Second, "the candidate's recording", func() bool {
		var l struct{ Recordings []recordingJSON }
		_ = json.Unmarshal(mustDo(t, srv, "GET", "/v1/recordings?room=exam&identity=cand", nil), &l)
		return len(l.Recordings) == 1 && len(l.Recordings[0].Segments) > 0
	})
	time.Sleep(1500 * time.Millisecond) // some of it on disk
	if status, body, _ := proctor.Post(vigiltest.MustJSON(map[string]any{"type": "flag_incident", "data": map[string]string{"identity": "cand", "note": "looked away"}}), ""); status != http.StatusOK {
		t.Fatalf("flag_incident: %d %s", status, body)
	}
	inc := incidentEvent(t, proctor, 5*time.Second, func(i incidents.Incident) bool { return i.Type == incidents.Manual })
	if inc.RecordingID == nil || inc.RecordingFile == nil || inc.OffsetMs == nil || *inc.OffsetMs <= 0 {
		t.Fatalf("incident not placed in a recording: %+v", inc)
	}
	id, file := *inc.RecordingID, *inc.RecordingFile
	// Stopped, the file is finalized and no longer changes.
	mustDo(t, srv, "DELETE", "/v1/rooms/exam/recordings", nil)
	onDisk, err := os.ReadFile(filepath.Join(dir, id, file))
	if err != nil || len(onDisk) < 2000 {
		t.Fatalf("recorded file: %d bytes, %v", len(onDisk), err)
	}

	// The proctor's token reads the manifest, with a signed URL per file.
	status, body, _ := fetchAs(t, srv, "/v1/recordings/"+id, proctorTok, "")
	man := decodeJSON[struct {
		recordingJSON
		Files []signedFile `json:"files"`
	}](t, status, 200, body)
	if man.ID != id || man.Room != "exam" || len(man.Segments) != 1 || man.Segments[0].File != file || len(man.Files) != 1 {
		t.Fatalf("manifest for the proctor: %s", body)
	}
	sf := man.Files[0]
	if sf.Name != file || !strings.HasPrefix(sf.URL, "/v1/recordings/"+id+"/files/"+file+"?exp=") || !strings.Contains(sf.URL, "&sig=") {
		t.Fatalf("signed file %+v", sf)
	}
	if left := time.Until(sf.ExpiresAt); left < 9*time.Minute || left > 10*time.Minute+time.Second {
		t.Errorf("signed URL expires in %v, want 10 minutes", left)
	}
	// The admin's reply has them too.
	status, body, _ = fetchAs(t, srv, "/v1/recordings/"+id, srv.AdminKey, "")
	if status != 200 || !bytes.Contains(body, []byte(`"files":[{"name":"`+file+`"`)) {
		t.Fatalf("manifest for the admin: %d %s", status, body)
	}

	// The proctor's token reads the file, whole and by range.
	filePath := "/v1/recordings/" + id + "/files/" + file
	status, body, h := fetchAs(t, srv, filePath, proctorTok, "")
	if status != 200 || !bytes.Equal(body, onDisk) || h.Get("Content-Type") != "video/webm" {
		t.Fatalf("proctor download: %d %q, %d bytes of %d", status, h.Get("Content-Type"), len(body), len(onDisk))
	}
	status, body, h = fetchAs(t, srv, filePath, proctorTok, "bytes=10-109")
	if status != http.StatusPartialContent || !bytes.Equal(body, onDisk[10:110]) {
		t.Fatalf("proctor range: %d %q, %d bytes", status, h.Get("Content-Range"), len(body))
	}

	// The signed URL, with no Authorization at all: whole, a range, the tail.
	status, body, h = fetchAs(t, srv, sf.URL, "", "")
	if status != 200 || !bytes.Equal(body, onDisk) || h.Get("Accept-Ranges") != "bytes" {
		t.Fatalf("signed download: %d, %d bytes of %d", status, len(body), len(onDisk))
	}
	status, body, h = fetchAs(t, srv, sf.URL, "", "bytes=100-1123")
	if want := fmt.Sprintf("bytes 100-1123/%d", len(onDisk)); status != http.StatusPartialContent || h.Get("Content-Range") != want || !bytes.Equal(body, onDisk[100:1124]) {
		t.Fatalf("signed range: %d %q (want %q), %d bytes", status, h.Get("Content-Range"), want, len(body))
	}
	status, body, _ = fetchAs(t, srv, sf.URL, "", "bytes=-64")
	if status != http.StatusPartialContent || !bytes.Equal(body, onDisk[len(onDisk)-64:]) {
		t.Fatalf("signed suffix range: %d, %d bytes", status, len(body))
	}

	// Refused: who may not read this room's recordings, and bad URLs.
	exp, sig, _ := strings.Cut(strings.TrimPrefix(sf.URL, filePath+"?"), "&")
	sig = strings.TrimPrefix(sig, "sig=")
	flip := func(s string) string {
		c := byte('0')
		if s[0] == '0' {
			c = '1'
		}
		return string(c) + s[1:]
	}
	expN, err := strconv.ParseInt(strings.TrimPrefix(exp, "exp="), 10, 64)
	if err != nil {
		t.Fatalf("exp of %s: %v", sf.URL, err)
	}
	for _, tt := range []struct {
		what, path, bearer string
		status             int
		code               string
	}{
		{"no key, manifest", "/v1/recordings/" + id, "", 401, "unauthorized"},
		{"no key, file", filePath, "", 401, "unauthorized"},
		{"a junk token", filePath, "not-a-token", 401, "unauthorized"},
		{"a candidate's token, manifest", "/v1/recordings/" + id, candTok, 403, "forbidden"},
		{"a candidate's token, file", filePath, candTok, 403, "forbidden"},
		{"another room's proctor, manifest", "/v1/recordings/" + id, otherProctor, 403, "forbidden"},
		{"another room's proctor, file", filePath, otherProctor, 403, "forbidden"},
		{"another room's proctor, signed URL on the manifest", "/v1/recordings/" + id + "?" + exp + "&sig=" + sig, otherProctor, 403, "forbidden"},
		{"an unknown recording", "/v1/recordings/rec_000000000000000000000000", proctorTok, 404, "recording_not_found"},
		{"a forged signature", filePath + "?" + exp + "&sig=" + flip(sig), "", 403, "forbidden"},
		{"a truncated signature", filePath + "?" + exp + "&sig=" + sig[:20], "", 403, "forbidden"},
		{"no signature", filePath + "?" + exp, "", 403, "forbidden"},
		{"a later expiry", filePath + fmt.Sprintf("?exp=%d&sig=", expN+3600) + sig, "", 403, "forbidden"},
		{"another file", "/v1/recordings/" + id + "/files/av-002.webm?" + exp + "&sig=" + sig, "", 403, "forbidden"},
		{"another recording", "/v1/recordings/rec_000000000000000000000000/files/" + file + "?" + exp + "&sig=" + sig, "", 403, "forbidden"},
		{"a forged signature with a candidate's token", filePath + "?" + exp + "&sig=" + flip(sig), candTok, 403, "forbidden"},
	} {
		status, body, _ := fetchAs(t, srv, tt.path, tt.bearer, "")
		if status != tt.status || vigiltest.ErrorCode(t, body) != tt.code {
			t.Errorf("%s: GET %s: %d %s, want %d %s", tt.what, tt.path, status, body, tt.status, tt.code)
		}
	}

	// Ten minutes on, the signed URL has expired; a fresh manifest (with
	// a proctor token valid then) gives a fresh URL.
	skew.Store(int64(signaling.RecordingURLTTL + time.Second))
	status, body, _ = fetchAs(t, srv, sf.URL, "", "bytes=0-99")
	if status != 403 || vigiltest.ErrorCode(t, body) != "forbidden" || !bytes.Contains(body, []byte("expired")) {
		t.Fatalf("expired signed URL: %d %s", status, body)
	}
	later := srv.Token(t, "exam", "proc-2", "proctor")
	status, body, _ = fetchAs(t, srv, "/v1/recordings/"+id, later, "")
	fresh := decodeJSON[struct {
		Files []signedFile `json:"files"`
	}](t, status, 200, body)
	if len(fresh.Files) != 1 || fresh.Files[0].URL == sf.URL {
		t.Fatalf("fresh manifest: %s", body)
	}
	if status, body, _ := fetchAs(t, srv, fresh.Files[0].URL, "", "bytes=0-99"); status != http.StatusPartialContent || !bytes.Equal(body, onDisk[:100]) {
		t.Fatalf("fresh signed URL: %d, %d bytes", status, len(body))
	}
	skew.Store(0)

	// A revoked proctor token no longer reads.
	mustDo(t, srv, "POST", "/v1/rooms/exam/tokens/revoke", map[string]string{"identity": "proc"})
	if status, body, _ := fetchAs(t, srv, filePath, proctorTok, "bytes=0-9"); status != 401 || vigiltest.ErrorCode(t, body) != "token_revoked" {
		t.Fatalf("revoked proctor token: %d %s", status, body)
	}
}
