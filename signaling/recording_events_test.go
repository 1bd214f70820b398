package signaling_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/recordings"
	"github.com/vigil-media/vigil/signaling/vigiltest"
	"github.com/vigil-media/vigil/webhooks"
)

// adminFeed drains a room's admin feed by long poll, keeping every event.
type adminFeed struct {
	t      *testing.T
	srv    *vigiltest.Server
	room   string
	mu     sync.Mutex
	events []vigiltest.Event
	cursor uint64
}

// poll reads what is new on the feed, waiting up to wait for it.
func (f *adminFeed) poll(wait time.Duration) {
	f.t.Helper()
	path := fmt.Sprintf("/v1/rooms/%s/events/poll?cursor=%d&wait=%g", f.room, f.cursor, wait.Seconds())
	status, body := f.srv.Do(f.t, http.MethodGet, path, f.srv.AdminKey, nil)
	if status != http.StatusOK {
		f.t.Fatalf("poll the feed: %d %s", status, body)
	}
	var r struct {
		Events []vigiltest.Event `json:"events"`
		Cursor uint64            `json:"cursor"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		f.t.Fatal(err)
	}
	f.mu.Lock()
	f.events = append(f.events, r.Events...)
	f.cursor = r.Cursor
	f.mu.Unlock()
}

// waitEvent polls until an event of type typ matching cond is on the feed.
func (f *adminFeed) waitEvent(typ string, d time.Duration, cond func(json.RawMessage) bool) vigiltest.Event {
	f.t.Helper()
	deadline := time.Now().Add(d)
	for seen := 0; ; {
		f.mu.Lock()
		evs := f.events[seen:]
		seen = len(f.events)
		f.mu.Unlock()
		for _, e := range evs {
			if e.Type == typ && (cond == nil || cond(e.Data)) {
				return e
			}
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("timed out after %v waiting for %s on the room feed", d, typ)
		}
		f.poll(time.Second)
	}
}

// recordingEventData is the data of a recording_* feed event.
type recordingEventData struct {
	ID       string `json:"id"`
	Identity string `json:"identity"`
	Group    string `json:"group"`
	Status   string `json:"status"`
	Error    string `json:"error"`
}

func recordingOf(identity string, out *recordingEventData) func(json.RawMessage) bool {
	return func(d json.RawMessage) bool {
		var r recordingEventData
		if err := json.Unmarshal(d, &r); err != nil || r.Identity != identity {
			return false
		}
		*out = r
		return true
	}
}

// TestRecordingFailedOnRoomFeed: in a proctoring room (every candidate
// recorded), one candidate's recording file lands on /dev/full (every
// write fails with ENOSPC). The admin draining the room feed gets
// recording_failed for it, with the error; the other candidate's
// recording_started, then recording_completed when it is stopped; and
// the media of both candidates keeps reaching the proctor. The webhook
// receiver gets recording.failed too: the recordings' events have two
// subscribers.
func TestRecordingFailedOnRoomFeed(t *testing.T) {
	vigiltest.LeakCheck(t)
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full on this system")
	}
	rc := &hookReceiver{secret: "hook-secret", tries: map[string]int{}}
	hs := httptest.NewServer(rc)
	t.Cleanup(hs.Close)
	hooks, err := webhooks.New(webhooks.Config{URLs: []string{hs.URL + "/vigil"}, Secret: "hook-secret", MinBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hooks.Close(5 * time.Second) })
	var injected atomic.Bool
	srv := vigiltest.StartWith(t, vigiltest.Options{Webhooks: hooks, ConfigureRecordings: func(c *recordings.Config) {
		c.OpenFile = func(path string) (*os.File, error) {
			man, _ := os.ReadFile(filepath.Join(filepath.Dir(path), recordings.ManifestName))
			if strings.Contains(string(man), `"identity": "full"`) {
				injected.Store(true)
				return os.OpenFile("/dev/full", os.O_WRONLY, 0)
			}
			return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		}
	}})
	srv.CreateRoom(t, "exam-rec", "proctoring")
	// The feed starts when an admin first asks: before anyone publishes.
	rf := &adminFeed{t: t, srv: srv, room: "exam-rec"}
	rf.waitEvent("room_snapshot", 5*time.Second, nil)

	proctor := vigiltest.Dial(t, srv, "exam-rec", "proc", "proctor")
	proctor.WaitEvent("joined", nil)
	cands := map[string]*vigiltest.Client{}
	for _, id := range []string{"full", "fine"} {
		f := newSynthetic(t, id)
		c := vigiltest.Dial(t, srv, "exam-rec", id, "candidate")
		c.WaitEvent("joined", nil)
		c.Publish(map[string]webrtc.TrackLocal{"camera": f.video, "microphone": f.audio})
		cands[id] = c
	}
	for id, c := range cands {
		vigiltest.WaitFor(t, 10*time.Second, id+" connected", func() bool {
			return c.PC.ConnectionState() == webrtc.PeerConnectionStateConnected
		})
		proctor.Send("admit", "admit-"+id, map[string]string{"identity": id})
	}

	var failed, started, completed recordingEventData
	rf.waitEvent("recording_failed", 15*time.Second, recordingOf("full", &failed))
	t.Logf("recording_failed: %+v", failed)
	if !injected.Load() {
		t.Fatal("the fault was never injected")
	}
	if !strings.HasPrefix(failed.ID, "rec_") || failed.Group != "av" || failed.Status != "failed" ||
		!strings.Contains(failed.Error, "no space left on device") {
		t.Fatalf("recording_failed %+v", failed)
	}
	rf.waitEvent("recording_started", 10*time.Second, recordingOf("fine", &started))
	if !strings.HasPrefix(started.ID, "rec_") || started.Group != "av" || started.Status != "recording" || started.Error != "" {
		t.Fatalf("recording_started %+v", started)
	}
	// The manifest says the same as the event.
	status, body := srv.Do(t, http.MethodGet, "/v1/recordings/"+failed.ID, srv.AdminKey, nil)
	if man := decodeJSON[struct{ Status, Error string }](t, status, http.StatusOK, body); man.Status != "failed" || man.Error != failed.Error {
		t.Fatalf("manifest of the failed recording: %s", body)
	}

	vigiltest.WaitFor(t, 5*time.Second, "recording.failed webhook", func() bool { return slices.Contains(rc.types(), webhooks.RecordingFailed) })

	// Media goes on: the proctor still receives both candidates.
	for _, key := range []string{"full/camera", "full/microphone", "fine/camera", "fine/microphone"} {
		keepsFlowing(t, proctor, key)
	}

	// Stopping the good recording completes it, on the feed too.
	status, body = srv.Do(t, http.MethodDelete, "/v1/rooms/exam-rec/recordings?identity=fine", srv.AdminKey, nil)
	if status != http.StatusOK {
		t.Fatalf("stop: %d %s", status, body)
	}
	rf.waitEvent("recording_completed", 5*time.Second, recordingOf("fine", &completed))
	if completed.ID != started.ID || completed.Status != "complete" || completed.Error != "" {
		t.Fatalf("recording_completed %+v, started %+v", completed, started)
	}
	// Nothing else failed.
	rf.mu.Lock()
	for _, e := range rf.events {
		if e.Type == "recording_failed" && !strings.Contains(string(e.Data), `"identity":"full"`) {
			t.Errorf("unexpected %s %s", e.Type, e.Data)
		}
	}
	rf.mu.Unlock()
	for _, c := range cands {
		c.Close()
	}
	proctor.Close()
}
