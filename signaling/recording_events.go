package signaling

import (
	"encoding/json"

	"github.com/vigil-media/vigil/recordings"
)

// Room feed event types for recordings.
const (
	feedRecordingStarted   = "recording_started"
	feedRecordingCompleted = "recording_completed"
	feedRecordingFailed    = "recording_failed"
	feedRecordingRefused   = "recording_refused"
)

// recordingEvent is the data of a recording_* event on the room feed.
type recordingEvent struct {
	ID       string `json:"id"`
	Identity string `json:"identity"`
	Group    string `json:"group"`
	Status   string `json:"status"`
	Error    string `json:"error,omitempty"`
	Reason   string `json:"reason,omitempty"`
}

// recordingToFeed appends a recording event to its room's admin feed, if
// an admin has started that feed (events before it are not kept). It is
// a recordings.Manager event handler: called on a writer goroutine, it
// only appends to an in-memory log.
func (a *evidenceAPI) recordingToFeed(ev recordings.Event) {
	var typ string
	switch ev.Type {
	case recordings.EventStarted:
		typ = feedRecordingStarted
	case recordings.EventCompleted:
		typ = feedRecordingCompleted
	case recordings.EventFailed:
		typ = feedRecordingFailed
	case recordings.EventRefused:
		typ = feedRecordingRefused
	default:
		return
	}
	f := a.feed(ev.Recording.Room)
	if f == nil {
		return
	}
	man := ev.Recording
	data, err := json.Marshal(recordingEvent{ID: man.ID, Identity: man.Identity, Group: man.Group, Status: man.Status, Error: man.Error, Reason: man.Reason})
	if err != nil {
		return
	}
	_, _ = f.out.Append(typ, data) // fails only once the feed closed with its room
}
