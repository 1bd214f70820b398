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
	vigiltest.LeakCheck(t)
	srv := vigiltest.Start(t)
	f := newSynthetic(t, "cand")
	srv.CreateRoom(t, "exam-wait", "proctoring")
	proctor := vigiltest.Dial(t, srv, "exam-wait", "proc", "proctor")
	proctor.WaitEvent("joined", nil)
	candidate := vigiltest.Dial(t, srv, "exam-wait", "cand", "candidate")
	candidate.WaitEvent("joined", nil)
	candidate.Publish(map[string]webrtc.TrackLocal{"camera": f.video, "microphone": f.audio})
	vigiltest.WaitFor(t, 10*time.Second, "candidate connected", func() bool {
		return candidate.PC.ConnectionState() == webrtc.PeerConnectionStateConnected
	})
	msg := func(typ string) []byte {
		return vigiltest.MustJSON(map[string]any{"type": "report_incident", "data": map[string]string{"type": typ}})
	}
	for i, typ := range []string{"tab_hidden", "window_blur", "fullscreen_exit", "camera_ended", "tab_hidden"} {
		status, body, _ := candidate.Post(msg(typ), "")
		if status != http.StatusForbidden || vigiltest.ErrorCode(t, body) != "not_admitted" {
			t.Fatalf("report %d before admission: %d %s", i, status, body)
		}
	}
	if status, all, body := listIncidents(t, srv, "exam-wait", "", srv.AdminKey); status != http.StatusOK || len(all) != 0 {
		t.Fatalf("incidents stored before admission: %d %d %s", status, len(all), body)
	}
	proctor.Send("admit", "admit", map[string]string{"identity": "cand"})
	candidate.WaitEvent("admission", nil)
	if status, body, _ := candidate.Post(msg("window_blur"), ""); status != http.StatusOK {
		t.Fatalf("report once admitted: %d %s", status, body)
	}
	vigiltest.WaitFor(t, 5*time.Second, "the admitted candidate's incident", func() bool { return len(proctor.EventsOf("incident")) == 1 })
	if n := len(proctor.EventsOf("incident")); n != 1 {
		t.Fatalf("%d incidents pushed, want only the one after admission", n)
	}
}
