package signaling_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/signaling/vigiltest"
)

// TestUnadmittedCandidateCannotReport: a candidate with a real pion peer
// publishing, still waiting for admission, spams report_incident over
// real HTTP: each is refused 403 not_admitted, and nothing is stored or
// pushed to the proctor. Once admitted, its report is taken.
func TestUnadmittedCandidateCannotReport(t *testing.T) {
	leakCheck(t)
	srv := vigiltest.Start(t)
	f := newSynthetic(t, "cand")
	srv.CreateRoom(t, "exam-wait", "proctoring")
	proctor := dial(t, srv, "exam-wait", "proc", "proctor")
	proctor.waitEvent("joined", nil)
	candidate := dial(t, srv, "exam-wait", "cand", "candidate")
	candidate.waitEvent("joined", nil)
	candidate.publish(map[string]webrtc.TrackLocal{"camera": f.video, "microphone": f.audio})
	waitFor(t, 10*time.Second, "candidate connected", func() bool {
		return candidate.pc.ConnectionState() == webrtc.PeerConnectionStateConnected
	})
	msg := func(typ string) []byte {
		return mustJSON(map[string]any{"type": "report_incident", "data": map[string]string{"type": typ}})
	}
	for i, typ := range []string{"tab_hidden", "window_blur", "fullscreen_exit", "camera_ended", "tab_hidden"} {
		status, body, _ := candidate.post(msg(typ), "")
		if status != http.StatusForbidden || errorCode(t, body) != "not_admitted" {
			t.Fatalf("report %d before admission: %d %s", i, status, body)
		}
	}
	if status, all, body := listIncidents(t, srv, "exam-wait", "", srv.AdminKey); status != http.StatusOK || len(all) != 0 {
		t.Fatalf("incidents stored before admission: %d %d %s", status, len(all), body)
	}
	proctor.send("admit", "admit", map[string]string{"identity": "cand"})
	candidate.waitEvent("admission", nil)
	if status, body, _ := candidate.post(msg("window_blur"), ""); status != http.StatusOK {
		t.Fatalf("report once admitted: %d %s", status, body)
	}
	waitFor(t, 5*time.Second, "the admitted candidate's incident", func() bool { return len(proctor.eventsOf("incident")) == 1 })
	if n := len(proctor.eventsOf("incident")); n != 1 {
		t.Fatalf("%d incidents pushed, want only the one after admission", n)
	}
}
