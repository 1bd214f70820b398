package signaling_test

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/incidents"
	"github.com/vigil-media/vigil/signaling/vigiltest"
)

// cohort is one instance of the exam room with what it left behind.
type cohort struct {
	instance   string
	proctorTok string // the proctor's join token, minted by the API for this instance
	incident   incidents.Incident
	recording  string // the candidate's recording, named by the incident
	file       string
}

// runCohort creates room (a proctoring exam), admits cand, who publishes
// real VP8 and Opus and is recorded to disk; the proctor flags cand, and
// the incident names the recording.
func runCohort(t *testing.T, srv *vigiltest.Server, room, cand string) cohort {
	t.Helper()
	f := newSynthetic(t, cand)
	proctor, _ := examRoom(t, srv, room, cand, map[string]webrtc.TrackLocal{"camera": f.video, "microphone": f.audio})
	var r struct {
		Instance string `json:"instance"`
	}
	if err := json.Unmarshal(mustDo(t, srv, "GET", "/v1/rooms/"+room, nil), &r); err != nil || len(r.Instance) != 16 {
		t.Fatalf("room instance %q (%v)", r.Instance, err)
	}
	status, body := srv.Do(t, "POST", "/v1/rooms/"+room+"/tokens", srv.AdminKey, map[string]any{"identity": "proc", "role": "proctor"})
	var tok struct {
		Token    string `json:"token"`
		Instance string `json:"instance"`
	}
	if err := json.Unmarshal(body, &tok); status != http.StatusCreated || err != nil || tok.Instance != r.Instance {
		t.Fatalf("mint: %d %s", status, body)
	}
	vigiltest.WaitFor(t, 10*time.Second, "the candidate's recording", func() bool {
		var l struct{ Recordings []recordingJSON }
		_ = json.Unmarshal(mustDo(t, srv, "GET", "/v1/recordings?room="+room+"&identity="+cand, nil), &l)
		return len(l.Recordings) == 1 && len(l.Recordings[0].Segments) > 0
	})
	time.Sleep(1500 * time.Millisecond) // some of it on disk
	if status, body, _ := proctor.Post(vigiltest.MustJSON(map[string]any{"type": "flag_incident", "data": map[string]string{"identity": cand, "note": "cohort " + r.Instance}}), ""); status != http.StatusOK {
		t.Fatalf("flag_incident: %d %s", status, body)
	}
	inc := incidentEvent(t, proctor, 5*time.Second, func(i incidents.Incident) bool { return i.Type == incidents.Manual })
	if inc.Instance != r.Instance || inc.RecordingID == nil || inc.RecordingFile == nil {
		t.Fatalf("incident %+v, want it of instance %s and placed in a recording", inc, r.Instance)
	}
	return cohort{instance: r.Instance, proctorTok: tok.Token, incident: inc, recording: *inc.RecordingID, file: *inc.RecordingFile}
}

// incidentIDs lists the ids of the incidents of room that bearer sees
// with query; status is the reply's.
func incidentIDs(t *testing.T, srv *vigiltest.Server, room, query, bearer string) (int, map[string]bool, []byte) {
	t.Helper()
	status, list, body := listIncidents(t, srv, room, query, bearer)
	ids := map[string]bool{}
	for _, inc := range list {
		ids[inc.ID] = true
	}
	return status, ids, body
}

// recordingIDs lists the ids of the recordings GET /v1/recordings gives
// the admin for query.
func recordingIDs(t *testing.T, srv *vigiltest.Server, query string) map[string]string {
	t.Helper()
	var l struct {
		Recordings []struct {
			ID       string `json:"id"`
			Instance string `json:"instance"`
		} `json:"recordings"`
	}
	if err := json.Unmarshal(mustDo(t, srv, "GET", "/v1/recordings"+query, nil), &l); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, r := range l.Recordings {
		out[r.ID] = r.Instance
	}
	return out
}

// TestRoomInstancesKeepCohortsApart performs the cohort attack on a
// real server (real SQLite, real recordings on disk): a proctoring room
// is deleted and created again under the same name for a new cohort.
// The old cohort's proctor token joins nothing and reads none of the new
// cohort's incidents, snapshots or recordings; the new cohort's proctor
// reads none of the old ones; the admin key still lists both instances.
// Once the room is gone, its proctor's tokens can still be revoked.
func TestRoomInstancesKeepCohortsApart(t *testing.T) {
	vigiltest.LeakCheck(t)
	dir := t.TempDir()
	srv := vigiltest.StartWith(t, vigiltest.Options{RecordingsDir: dir})

	old := runCohort(t, srv, "exam", "cand-a")
	mustDo(t, srv, "DELETE", "/v1/rooms/exam", nil)
	cur := runCohort(t, srv, "exam", "cand-b")
	if old.instance == cur.instance {
		t.Fatalf("both cohorts have instance %s", cur.instance)
	}
	mustDo(t, srv, "DELETE", "/v1/rooms/exam/recordings", nil) // finalize the new cohort's files
	for _, c := range []cohort{old, cur} {
		// Its size depends on how busy the machine is: only that it is
		// there, with at least its header, matters here.
		if fi, err := os.Stat(filepath.Join(dir, c.recording, c.file)); err != nil || fi.Size() < 100 {
			t.Fatalf("recording %s on disk: %v (%v)", c.recording, fi, err)
		} else {
			t.Logf("instance %s: incident %s, recording %s (%d bytes on disk)", c.instance, c.incident.ID, c.recording, fi.Size())
		}
	}

	// The old proctor's token does not join the new room.
	status, body := srv.Do(t, "POST", "/v1/rooms/exam/sessions", old.proctorTok, nil)
	if status != http.StatusForbidden || vigiltest.ErrorCode(t, body) != "token_room_instance" {
		t.Fatalf("old proctor token joins the new room: %d %s", status, body)
	}

	// Each proctor's token sees its own cohort's incidents and nothing
	// of the other's, whatever it asks for.
	for _, tc := range []struct {
		name      string
		own, them cohort
	}{{"old proctor", old, cur}, {"new proctor", cur, old}} {
		status, ids, body := incidentIDs(t, srv, "exam", "", tc.own.proctorTok)
		if status != http.StatusOK || !ids[tc.own.incident.ID] || ids[tc.them.incident.ID] || len(ids) != 1 {
			t.Errorf("%s lists %d %s", tc.name, status, body)
		}
		t.Logf("%s lists %d incident(s) of room exam", tc.name, len(ids))
		for _, q := range []string{"?instance=" + tc.them.instance, "?instance=all"} {
			status, _, body := incidentIDs(t, srv, "exam", q, tc.own.proctorTok)
			if status != http.StatusForbidden || vigiltest.ErrorCode(t, body) != "token_room_instance" {
				t.Errorf("%s lists %s: %d %s", tc.name, q, status, body)
			}
		}
		for _, path := range []string{"/v1/rooms/exam/incidents/" + tc.them.incident.ID, "/v1/rooms/exam/incidents/" + tc.them.incident.ID + "/snapshot"} {
			status, body, _ := fetchAs(t, srv, path, tc.own.proctorTok, "")
			if status != http.StatusNotFound || vigiltest.ErrorCode(t, body) != "incident_not_found" {
				t.Errorf("%s reads %s: %d %.200s", tc.name, path, status, body)
			}
		}
		status, body, _ = fetchAs(t, srv, "/v1/rooms/exam/incidents/"+tc.own.incident.ID, tc.own.proctorTok, "")
		if inc := incidentOf(t, body); status != http.StatusOK || inc.ID != tc.own.incident.ID {
			t.Errorf("%s reads its own incident: %d %s", tc.name, status, body)
		}
		// Through the other cohort's recording_id: neither the manifest
		// nor a file.
		for _, path := range []string{"/v1/recordings/" + tc.them.recording, "/v1/recordings/" + tc.them.recording + "/files/" + tc.them.file} {
			status, body, _ := fetchAs(t, srv, path, tc.own.proctorTok, "")
			if status != http.StatusForbidden || vigiltest.ErrorCode(t, body) != "token_room_instance" {
				t.Errorf("%s reads %s: %d %.200s", tc.name, path, status, body)
			}
		}
		status, body, _ = fetchAs(t, srv, "/v1/recordings/"+tc.own.recording+"/files/"+tc.own.file, tc.own.proctorTok, "bytes=0-9")
		if status != http.StatusPartialContent || len(body) != 10 {
			t.Errorf("%s reads its own recording: %d", tc.name, status)
		}
	}

	// A proctor's token minted offline with no instance reads no evidence.
	unbound, _, err := srv.Sig.Tokens().Mint("exam", "proc", "proctor", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if status, _, body := incidentIDs(t, srv, "exam", "", unbound); status != http.StatusForbidden || vigiltest.ErrorCode(t, body) != "token_room_instance" {
		t.Errorf("unbound proctor token lists incidents: %d %s", status, body)
	}
	if status, body, _ := fetchAs(t, srv, "/v1/recordings/"+cur.recording, unbound, ""); status != http.StatusForbidden || vigiltest.ErrorCode(t, body) != "token_room_instance" {
		t.Errorf("unbound proctor token reads a recording: %d %s", status, body)
	}

	// The admin key: the live instance by default, any one, or all.
	for _, tc := range []struct {
		query string
		want  []cohort
	}{{"", []cohort{cur}}, {"?instance=" + cur.instance, []cohort{cur}}, {"?instance=" + old.instance, []cohort{old}}, {"?instance=all", []cohort{old, cur}}} {
		status, ids, body := incidentIDs(t, srv, "exam", tc.query, srv.AdminKey)
		if status != http.StatusOK || len(ids) != len(tc.want) {
			t.Errorf("admin lists %q: %d %s", tc.query, status, body)
			continue
		}
		for _, c := range tc.want {
			if !ids[c.incident.ID] {
				t.Errorf("admin lists %q: no incident of instance %s: %s", tc.query, c.instance, body)
			}
		}
	}
	if status, _, body := incidentIDs(t, srv, "exam", "?instance=nope", srv.AdminKey); status != http.StatusBadRequest || vigiltest.ErrorCode(t, body) != "invalid_request" {
		t.Errorf("admin lists a malformed instance: %d %s", status, body)
	}
	if recs := recordingIDs(t, srv, "?room=exam&instance="+old.instance); len(recs) != 1 || recs[old.recording] != old.instance {
		t.Errorf("admin recordings of the old instance: %v", recs)
	}
	if recs := recordingIDs(t, srv, "?room=exam&instance=all"); len(recs) != 2 || recs[old.recording] != old.instance || recs[cur.recording] != cur.instance {
		t.Errorf("admin recordings of every instance: %v", recs)
	}
	if status, body := srv.Do(t, "GET", "/v1/recordings?room=exam&instance=x", srv.AdminKey, nil); status != http.StatusBadRequest || vigiltest.ErrorCode(t, body) != "invalid_request" {
		t.Errorf("admin recordings of a malformed instance: %d %s", status, body)
	}
	if status, body, _ := fetchAs(t, srv, "/v1/recordings/"+old.recording, srv.AdminKey, ""); status != http.StatusOK {
		t.Errorf("admin reads the old recording: %d %s", status, body)
	}

	// The room ends; its proctor's tokens can still be revoked, and then
	// read nothing.
	mustDo(t, srv, "DELETE", "/v1/rooms/exam", nil)
	if status, _, body := incidentIDs(t, srv, "exam", "", srv.AdminKey); status != http.StatusOK {
		t.Fatalf("admin lists a deleted room: %d %s", status, body)
	} else if _, ids, _ := incidentIDs(t, srv, "exam", "", srv.AdminKey); len(ids) != 2 {
		t.Errorf("admin lists %d incidents of a deleted room, want every instance's 2", len(ids))
	}
	status, body = srv.Do(t, "POST", "/v1/rooms/exam/tokens/revoke", srv.AdminKey, map[string]any{"identity": "proc"})
	var rv struct {
		Room         string `json:"room"`
		Identity     string `json:"identity"`
		Disconnected bool   `json:"disconnected"`
	}
	if err := json.Unmarshal(body, &rv); status != http.StatusOK || err != nil || rv.Room != "exam" || rv.Identity != "proc" || rv.Disconnected {
		t.Fatalf("revoke in a deleted room: %d %s", status, body)
	}
	for _, c := range []cohort{old, cur} {
		if status, _, body := incidentIDs(t, srv, "exam", "", c.proctorTok); status != http.StatusUnauthorized || vigiltest.ErrorCode(t, body) != "token_revoked" {
			t.Errorf("revoked token of instance %s: %d %s", c.instance, status, body)
		}
	}
	if status, body := srv.Do(t, "POST", "/v1/rooms/bad%20name/tokens/revoke", srv.AdminKey, map[string]any{"identity": "proc"}); status != http.StatusBadRequest || vigiltest.ErrorCode(t, body) != "invalid_request" {
		t.Errorf("revoke in a malformed room name: %d %s", status, body)
	}
}
