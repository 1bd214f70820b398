package signaling_test

import (
	"bytes"
	"encoding/json"
	"image/jpeg"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/incidents"
	"github.com/vigil-media/vigil/signaling/vigiltest"
)

// incidentOf decodes an incident event or REST body.
func incidentOf(t *testing.T, b []byte) incidents.Incident {
	t.Helper()
	var inc incidents.Incident
	if err := json.Unmarshal(b, &inc); err != nil {
		t.Fatalf("incident %s: %v", b, err)
	}
	return inc
}

// listIncidents GETs the incidents of room with a query, as bearer.
func listIncidents(t *testing.T, srv *vigiltest.Server, room, query, bearer string) (int, []incidents.Incident, []byte) {
	t.Helper()
	status, body := srv.Do(t, http.MethodGet, "/v1/rooms/"+room+"/incidents"+query, bearer, nil)
	var r struct {
		Room      string               `json:"room"`
		Incidents []incidents.Incident `json:"incidents"`
	}
	if status == http.StatusOK {
		if err := json.Unmarshal(body, &r); err != nil {
			t.Fatal(err)
		}
		if r.Room != room || r.Incidents == nil {
			t.Fatalf("list reply %s", body)
		}
	}
	return status, r.Incidents, body
}

// examRoom makes a proctoring room with a proctor on a WebSocket and an
// admitted candidate who publishes tracks (source -> track).
func examRoom(t *testing.T, srv *vigiltest.Server, room, cand string, tracks map[string]webrtc.TrackLocal) (proctor, candidate *vigiltest.Client) {
	t.Helper()
	srv.CreateRoom(t, room, "proctoring")
	proctor = vigiltest.Dial(t, srv, room, "proc", "proctor")
	proctor.WaitEvent("joined", nil)
	candidate = vigiltest.Dial(t, srv, room, cand, "candidate")
	candidate.WaitEvent("joined", nil)
	candidate.Publish(tracks)
	vigiltest.WaitFor(t, 10*time.Second, "candidate connected", func() bool {
		return candidate.PC.ConnectionState() == webrtc.PeerConnectionStateConnected
	})
	for src := range tracks {
		proctor.WaitEvent("track_published", func(d json.RawMessage) bool {
			var e struct {
				Track vigiltest.TrackInfo `json:"track"`
			}
			_ = json.Unmarshal(d, &e)
			return e.Track.Identity == cand && e.Track.Source == src
		})
	}
	proctor.Send("admit", "admit", map[string]string{"identity": cand})
	candidate.WaitEvent("admission", nil)
	return proctor, candidate
}

// incidentEvent waits for the proctor's incident event matching cond.
func incidentEvent(t *testing.T, c *vigiltest.Client, d time.Duration, cond func(incidents.Incident) bool) incidents.Incident {
	t.Helper()
	var found incidents.Incident
	vigiltest.WaitFor(t, d, "incident event", func() bool {
		for _, e := range c.EventsOf("incident") {
			if inc := incidentOf(t, e.Data); cond(inc) {
				found = inc
				return true
			}
		}
		return false
	})
	return found
}

// TestVideoFrozen: an admitted candidate stops sending camera video but
// keeps its microphone and connection; the proctor gets video_frozen
// over its WebSocket within 5 s of the last frame, and the REST API lists
// it.
func TestVideoFrozen(t *testing.T) {
	vigiltest.LeakCheck(t)
	srv := vigiltest.Start(t)
	f := newSynthetic(t, "cand")
	proctor, candidate := examRoom(t, srv, "exam-frozen", "cand", map[string]webrtc.TrackLocal{"camera": f.video, "microphone": f.audio})

	time.Sleep(1500 * time.Millisecond) // flowing, and admitted
	if n := len(proctor.EventsOf("incident")); n != 0 {
		t.Fatalf("incidents before the freeze: %d", n)
	}
	f.pauseVideo.Store(true)
	time.Sleep(50 * time.Millisecond) // a write under way ends
	last := time.Unix(0, f.lastVideo.Load())
	inc := incidentEvent(t, proctor, 5*time.Second, func(i incidents.Incident) bool { return i.Type == incidents.VideoFrozen })
	took := time.Since(last)
	t.Logf("video_frozen pushed %v after the last video packet was written", took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Fatalf("video_frozen after %v, want within 5s", took)
	}
	if inc.Identity != "cand" || inc.Source != incidents.SourceServer || inc.Track != "camera" || inc.Room != "exam-frozen" {
		t.Fatalf("incident %+v", inc)
	}
	if inc.RecordingID == nil || inc.OffsetMs == nil || *inc.OffsetMs < 0 {
		t.Errorf("no recording offset: %+v", inc)
	}
	if d := inc.Time.Sub(last); d < -time.Second || d > time.Second {
		t.Errorf("incident time %v, last video packet %v", inc.Time, last)
	}
	// Audio still flows and the connection is up: nothing else.
	if candidate.PC.ConnectionState() != webrtc.PeerConnectionStateConnected {
		t.Fatal("candidate lost its connection")
	}
	status, list, body := listIncidents(t, srv, "exam-frozen", "?type=video_frozen", srv.AdminKey)
	if status != http.StatusOK || len(list) != 1 || list[0].ID != inc.ID {
		t.Fatalf("list: %d %s", status, body)
	}

	// Once per freeze: no second one while frozen; video again re-arms.
	time.Sleep(2 * time.Second)
	if n := len(typed(proctor, incidents.VideoFrozen)); n != 1 {
		t.Fatalf("%d video_frozen while frozen once", n)
	}
	f.pauseVideo.Store(false)
	time.Sleep(1500 * time.Millisecond)
	f.pauseVideo.Store(true)
	vigiltest.WaitFor(t, 6*time.Second, "a second video_frozen", func() bool { return len(typed(proctor, incidents.VideoFrozen)) == 2 })
	if n := len(candidate.EventsOf("incident")); n != 0 {
		t.Fatalf("the candidate got %d incident events", n)
	}
}

func typed(c *vigiltest.Client, typ incidents.Type) []vigiltest.Event {
	var out []vigiltest.Event
	for _, e := range c.EventsOf("incident") {
		var inc incidents.Incident
		if json.Unmarshal(e.Data, &inc) == nil && inc.Type == typ {
			out = append(out, e)
		}
	}
	return out
}

// snapshotOf GETs an incident's snapshot and decodes it.
func snapshotOf(t *testing.T, srv *vigiltest.Server, room, id string) (int, int) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v1/rooms/"+room+"/incidents/"+id+"/snapshot", nil)
	req.Header.Set("Authorization", "Bearer "+srv.AdminKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "image/jpeg" {
		t.Fatalf("snapshot: %d %s %.200s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	img, err := jpeg.Decode(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("snapshot does not decode as JPEG: %v", err)
	}
	return img.Bounds().Dx(), img.Bounds().Dy()
}

// flagWithSnapshot has the proctor flag cand until an incident with a
// snapshot comes back (the first keyframe may still be on its way).
func flagWithSnapshot(t *testing.T, proctor *vigiltest.Client, cand, note string) incidents.Incident {
	t.Helper()
	var inc incidents.Incident
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; ; i++ {
		status, body, _ := proctor.Post(vigiltest.MustJSON(map[string]any{"type": "flag_incident", "data": map[string]string{"identity": cand, "note": note}}), "")
		if status != http.StatusOK {
			t.Fatalf("flag_incident: %d %s", status, body)
		}
		n := i + 1
		vigiltest.WaitFor(t, 5*time.Second, "the manual incident", func() bool { return len(typed(proctor, incidents.Manual)) >= n })
		evs := typed(proctor, incidents.Manual)
		inc = incidentOf(t, evs[len(evs)-1].Data)
		if inc.HasSnapshot || time.Now().After(deadline) {
			return inc
		}
		time.Sleep(1100 * time.Millisecond) // the rate: one flag of a candidate a second
	}
}

// TestIncidentSnapshotJPEG: a candidate publishes real VP8; a proctor
// flags it; the incident's snapshot is a JPEG of the camera's size.
func TestIncidentSnapshotJPEG(t *testing.T) {
	vigiltest.LeakCheck(t)
	srv := vigiltest.Start(t)
	p := vigiltest.PlayVP8(t, vigiltest.VP8File(t), "cand")
	proctor, _ := examRoom(t, srv, "exam-snap", "cand", map[string]webrtc.TrackLocal{"camera": p.Video, "microphone": p.Audio})
	inc := flagWithSnapshot(t, proctor, "cand", "looked away")
	if !inc.HasSnapshot || inc.SnapshotTime == nil || inc.Type != incidents.Manual || inc.Source != incidents.SourceProctor ||
		inc.Reporter != "proc" || inc.Note != "looked away" {
		t.Fatalf("incident %+v", inc)
	}
	if age := inc.Time.Sub(*inc.SnapshotTime); age < 0 || age > 2*time.Second {
		t.Errorf("snapshot from %v before the incident, want the latest keyframe (one a second)", age)
	}
	if w, h := snapshotOf(t, srv, "exam-snap", inc.ID); w != 320 || h != 240 {
		t.Fatalf("snapshot %dx%d, want 320x240", w, h)
	}
}

// TestIncidentsSurviveRestart: a server records incidents (one with a
// snapshot), stops, starts again on the same data directory, and lists
// them, snapshot and all, for a room that no longer exists.
func TestIncidentsSurviveRestart(t *testing.T) {
	vigiltest.LeakCheck(t)
	dir := t.TempDir()
	srv := vigiltest.StartWith(t, vigiltest.Options{DataDir: dir})
	p := vigiltest.PlayVP8(t, vigiltest.VP8File(t), "cand")
	proctor, candidate := examRoom(t, srv, "exam-restart", "cand", map[string]webrtc.TrackLocal{"camera": p.Video, "microphone": p.Audio})
	flagged := flagWithSnapshot(t, proctor, "cand", "second person in view")
	status, body, _ := candidate.Post(vigiltest.MustJSON(map[string]any{"type": "report_incident", "data": map[string]string{"type": "tab_hidden"}}), "")
	if status != http.StatusOK {
		t.Fatalf("report_incident: %d %s", status, body)
	}
	incidentEvent(t, proctor, 5*time.Second, func(i incidents.Incident) bool { return i.Type == incidents.TabHidden })
	_, before, _ := listIncidents(t, srv, "exam-restart", "", srv.AdminKey)
	srv.Close()

	again := vigiltest.StartWith(t, vigiltest.Options{DataDir: dir})
	if _, err := again.SFU.Room("exam-restart"); err == nil {
		t.Fatal("the room outlived the restart")
	}
	status, after, body := listIncidents(t, again, "exam-restart", "", again.AdminKey)
	if status != http.StatusOK || len(after) != len(before) || len(after) < 2 {
		t.Fatalf("after restart: %d %s (before: %d)", status, body, len(before))
	}
	for i := range before {
		b, _ := json.Marshal(before[i])
		a, _ := json.Marshal(after[i])
		if !bytes.Equal(a, b) {
			t.Errorf("incident changed across the restart:\n%s\n%s", b, a)
		}
	}
	if w, h := snapshotOf(t, again, "exam-restart", flagged.ID); w != 320 || h != 240 {
		t.Fatalf("snapshot after restart %dx%d", w, h)
	}
	if fi, err := os.Stat(filepath.Join(dir, incidents.DBName)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("database file: %v %v", fi.Mode(), err)
	}
}

// TestIncidentMessagesAndAPI: client-reported and manual incidents, the
// filters, the rate limit, what candidates may not do, proctor tokens on
// the REST API, and unknown incidents.
func TestIncidentMessagesAndAPI(t *testing.T) {
	vigiltest.LeakCheck(t)
	srv := vigiltest.Start(t)
	f := newSynthetic(t, "cand")
	proctor, candidate := examRoom(t, srv, "exam-api", "cand", map[string]webrtc.TrackLocal{"camera": f.video, "microphone": f.audio})
	msg := func(typ string, data any) []byte {
		return vigiltest.MustJSON(map[string]any{"type": typ, "data": data})
	}

	// The candidate's page reports; the proctor gets each one live.
	for _, typ := range []string{"tab_hidden", "window_blur", "fullscreen_exit"} {
		if status, body, _ := candidate.Post(msg("report_incident", map[string]string{"type": typ, "note": "page says " + typ}), ""); status != http.StatusOK {
			t.Fatalf("report %s: %d %s", typ, status, body)
		}
	}
	vigiltest.WaitFor(t, 5*time.Second, "three client incidents", func() bool { return len(proctor.EventsOf("incident")) >= 3 })
	first := incidentOf(t, proctor.EventsOf("incident")[0].Data)
	if first.Type != incidents.TabHidden || first.Source != incidents.SourceClient || first.Reporter != "cand" || first.Note != "page says tab_hidden" {
		t.Fatalf("client incident %+v", first)
	}

	// One of a type a second: the same type at once is refused.
	status, body, _ := candidate.Post(msg("report_incident", map[string]string{"type": "tab_hidden"}), "")
	if status != http.StatusTooManyRequests || vigiltest.ErrorCode(t, body) != "rate_limited" {
		t.Fatalf("second tab_hidden at once: %d %s", status, body)
	}
	// Types the page may not report, and malformed ones.
	for _, data := range []any{map[string]string{"type": "video_frozen"}, map[string]string{"type": "manual"}, map[string]string{}} {
		status, body, _ := candidate.Post(msg("report_incident", data), "")
		if status != http.StatusBadRequest || vigiltest.ErrorCode(t, body) != "invalid_message" {
			t.Fatalf("report %v: %d %s", data, status, body)
		}
	}
	// A candidate cannot flag; a proctor cannot report; nor flag a stranger.
	status, body, _ = candidate.Post(msg("flag_incident", map[string]string{"identity": "cand", "note": "me"}), "")
	if status != http.StatusForbidden || vigiltest.ErrorCode(t, body) != "forbidden" {
		t.Fatalf("candidate flag: %d %s", status, body)
	}
	status, body, _ = proctor.Post(msg("report_incident", map[string]string{"type": "tab_hidden"}), "")
	if status != http.StatusForbidden || vigiltest.ErrorCode(t, body) != "forbidden" {
		t.Fatalf("proctor report: %d %s", status, body)
	}
	status, body, _ = proctor.Post(msg("flag_incident", map[string]string{"identity": "nobody"}), "")
	if status != http.StatusNotFound || vigiltest.ErrorCode(t, body) != "participant_not_found" {
		t.Fatalf("flag of no one: %d %s", status, body)
	}
	// Over the WebSocket, a refusal is an error event with the ref.
	candidate.Send("flag_incident", "f1", map[string]string{"identity": "cand"})
	candidate.WaitEvent("error", func(d json.RawMessage) bool {
		var e struct{ Code, Ref string }
		_ = json.Unmarshal(d, &e)
		return e.Ref == "f1" && e.Code == "forbidden"
	})

	// A manual incident.
	proctor.Send("flag_incident", "m1", map[string]string{"identity": "cand", "note": "talking"})
	manual := incidentEvent(t, proctor, 5*time.Second, func(i incidents.Incident) bool { return i.Type == incidents.Manual })
	if manual.Source != incidents.SourceProctor || manual.Reporter != "proc" || manual.Note != "talking" || manual.HasSnapshot {
		t.Fatalf("manual %+v (synthetic VP8 does not decode: no snapshot)", manual)
	}

	// Filters, with the admin key and with the proctor's token.
	procToken := srv.Token(t, "exam-api", "proc", "proctor")
	for _, bearer := range []string{srv.AdminKey, procToken} {
		status, all, body := listIncidents(t, srv, "exam-api", "?candidate=cand", bearer)
		if status != http.StatusOK || len(all) != 4 {
			t.Fatalf("list: %d %s", status, body)
		}
		for i := 1; i < len(all); i++ {
			if all[i].Time.Before(all[i-1].Time) {
				t.Fatalf("not oldest first: %s", body)
			}
		}
		if _, l, _ := listIncidents(t, srv, "exam-api", "?type=window_blur", bearer); len(l) != 1 || l[0].Type != incidents.WindowBlur {
			t.Fatalf("type filter: %+v", l)
		}
		if _, l, _ := listIncidents(t, srv, "exam-api", "?type=manual&candidate=cand", bearer); len(l) != 1 || l[0].ID != manual.ID {
			t.Fatalf("both filters: %+v", l)
		}
		if _, l, _ := listIncidents(t, srv, "exam-api", "?candidate=other", bearer); len(l) != 0 {
			t.Fatalf("other candidate: %+v", l)
		}
		if _, l, _ := listIncidents(t, srv, "exam-api", "?limit=2", bearer); len(l) != 2 || l[1].ID != all[3].ID {
			t.Fatalf("limit keeps the newest: %+v", l)
		}
		status, body = srv.Do(t, http.MethodGet, "/v1/rooms/exam-api/incidents/"+manual.ID, bearer, nil)
		if status != http.StatusOK || incidentOf(t, body).ID != manual.ID {
			t.Fatalf("get: %d %s", status, body)
		}
	}
	for _, q := range []string{"?type=bogus", "?candidate=" + "%2F..", "?limit=0", "?limit=1001"} {
		if status, _, body := listIncidents(t, srv, "exam-api", q, srv.AdminKey); status != http.StatusBadRequest || vigiltest.ErrorCode(t, body) != "invalid_request" {
			t.Fatalf("list %s: %d %s", q, status, body)
		}
	}

	// A candidate sees nothing: its token is refused, and it never got
	// an incident event.
	candToken := srv.Token(t, "exam-api", "cand", "candidate")
	for _, path := range []string{"", "/" + manual.ID, "/" + manual.ID + "/snapshot"} {
		status, body := srv.Do(t, http.MethodGet, "/v1/rooms/exam-api/incidents"+path, candToken, nil)
		if status != http.StatusForbidden || vigiltest.ErrorCode(t, body) != "forbidden" {
			t.Fatalf("candidate GET %s: %d %s", path, status, body)
		}
	}
	if n := len(candidate.EventsOf("incident")); n != 0 {
		t.Fatalf("the candidate got %d incident events", n)
	}
	// A proctor's token for another room, no key, a wrong key.
	srv.CreateRoom(t, "other", "proctoring")
	for bearer, want := range map[string]string{srv.Token(t, "other", "proc", "proctor"): "forbidden", "": "unauthorized", "wrong": "unauthorized"} {
		status, body := srv.Do(t, http.MethodGet, "/v1/rooms/exam-api/incidents", bearer, nil)
		if vigiltest.ErrorCode(t, body) != want {
			t.Fatalf("bearer %q: %d %s, want %s", bearer, status, body, want)
		}
	}

	// Unknown incidents, and one without a snapshot.
	for _, path := range []string{"/inc_000000000000000000000000", "/nonsense", "/inc_000000000000000000000000/snapshot"} {
		status, body := srv.Do(t, http.MethodGet, "/v1/rooms/exam-api/incidents"+path, srv.AdminKey, nil)
		if status != http.StatusNotFound || vigiltest.ErrorCode(t, body) != "incident_not_found" {
			t.Fatalf("GET %s: %d %s", path, status, body)
		}
	}
	status, body = srv.Do(t, http.MethodGet, "/v1/rooms/exam-api/incidents/"+manual.ID+"/snapshot", srv.AdminKey, nil)
	if status != http.StatusNotFound || vigiltest.ErrorCode(t, body) != "snapshot_not_found" {
		t.Fatalf("no snapshot: %d %s", status, body)
	}
	// Another room's incident is not found through this one.
	status, body = srv.Do(t, http.MethodGet, "/v1/rooms/other/incidents/"+manual.ID, srv.AdminKey, nil)
	if status != http.StatusNotFound || vigiltest.ErrorCode(t, body) != "incident_not_found" {
		t.Fatalf("cross-room GET: %d %s", status, body)
	}

	// The admin room feed carries incidents too.
	status, body = srv.Do(t, http.MethodGet, "/v1/rooms/exam-api/events/poll", srv.AdminKey, nil)
	if status != http.StatusOK {
		t.Fatalf("feed: %d %s", status, body)
	}
	time.Sleep(1100 * time.Millisecond) // one flag of a candidate a second
	proctor.Send("flag_incident", "m2", map[string]string{"identity": "cand", "note": "again"})
	vigiltest.WaitFor(t, 5*time.Second, "incident on the admin feed", func() bool {
		_, body := srv.Do(t, http.MethodGet, "/v1/rooms/exam-api/events/poll", srv.AdminKey, nil)
		return bytes.Contains(body, []byte(`"type":"incident"`))
	})
}

// TestTrackEnded: a candidate who unpublishes its microphone and stays
// gets track_ended, pushed to the proctor; one who leaves gets nothing.
// (track_missing, 10 s after admission, is tested with a short delay in
// the incidents package.)
func TestTrackEnded(t *testing.T) {
	vigiltest.LeakCheck(t)
	srv := vigiltest.Start(t)
	f := newSynthetic(t, "cand")
	proctor, candidate := examRoom(t, srv, "exam-ended", "cand", map[string]webrtc.TrackLocal{"camera": f.video, "microphone": f.audio})
	var mic *webrtc.RTPSender
	for _, s := range candidate.PC.GetSenders() {
		if s.Track() == f.audio {
			mic = s
		}
	}
	if err := candidate.PC.RemoveTrack(mic); err != nil {
		t.Fatal(err)
	}
	candidate.Offer(map[string]webrtc.TrackLocal{"camera": f.video})
	start := time.Now()
	inc := incidentEvent(t, proctor, 8*time.Second, func(i incidents.Incident) bool { return i.Type == incidents.TrackEnded })
	t.Logf("track_ended pushed %v after the renegotiation", time.Since(start).Round(time.Millisecond))
	if inc.Track != "microphone" || inc.Source != incidents.SourceServer {
		t.Fatalf("incident %+v", inc)
	}
	// Leaving is neither a lost connection nor an ended track.
	before := len(proctor.EventsOf("incident"))
	candidate.Send("leave", "", map[string]string{})
	proctor.WaitEvent("participant_left", nil)
	time.Sleep(2500 * time.Millisecond)
	if evs := proctor.EventsOf("incident"); len(evs) != before {
		t.Fatalf("incidents after leaving: %s", evs[before].Data)
	}
}
