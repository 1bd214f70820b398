// Package incidents records what happens during a proctored exam that a
// proctor has to look at: what the candidate's page reports (a hidden
// tab, a lost focus, a left full screen, an ended screen share, camera or
// microphone), what the server sees (a connection lost and restored, a
// required track missing or ended, a frozen camera) and what a proctor
// flags by hand. Each incident names the candidate, a wall-clock time,
// its offset into the candidate's recording and, for a VP8 camera, a
// JPEG snapshot of the camera decoded from its latest keyframe.
//
// Incidents are kept in SQLite (Store), pushed live to the room's
// proctors, and never shown to candidates. The Monitor is the sfu
// observer that runs the detectors and keeps the keyframes; it bounds how
// often each reporter may report (limit.go). This package imports sfu
// only.
package incidents

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"regexp"
	"time"

	"github.com/vigil-media/vigil/sfu"
)

// Type is what happened.
type Type string

// Incident types a candidate's page reports.
const (
	TabHidden        Type = "tab_hidden"         // visibilitychange to hidden
	WindowBlur       Type = "window_blur"        // the window lost focus
	FullscreenExit   Type = "fullscreen_exit"    // fullscreenchange out of full screen
	ScreenShareEnded Type = "screen_share_ended" // the screen track ended on the page
	CameraEnded      Type = "camera_ended"       // the camera track ended on the page
	MicrophoneEnded  Type = "microphone_ended"   // the microphone track ended on the page
)

// Incident types the server detects.
const (
	ConnectionLost     Type = "connection_lost"     // the candidate's connection went disconnected or failed
	ConnectionRestored Type = "connection_restored" // and came back
	TrackMissing       Type = "track_missing"       // a required source not published 10 s after admission
	TrackEnded         Type = "track_ended"         // a required source unpublished while the candidate is there
	VideoFrozen        Type = "video_frozen"        // no camera packet for 3 s while connected
	// IncidentsCapped is stored once, when a room instance reaches
	// Config.MaxPerRoom: the incidents after it are refused.
	IncidentsCapped Type = "incidents_capped"
)

// Manual is the type of an incident a proctor flags.
const Manual Type = "manual"

// Source is who raised an incident.
type Source string

// Sources of incidents.
const (
	SourceClient  Source = "client"  // the candidate's page
	SourceServer  Source = "server"  // a detector of the Monitor
	SourceProctor Source = "proctor" // a proctor, by hand
)

var clientTypes = map[Type]bool{
	TabHidden: true, WindowBlur: true, FullscreenExit: true,
	ScreenShareEnded: true, CameraEnded: true, MicrophoneEnded: true,
}

var serverTypes = map[Type]bool{
	ConnectionLost: true, ConnectionRestored: true, TrackMissing: true, TrackEnded: true, VideoFrozen: true,
	IncidentsCapped: true,
}

// ClientType reports whether a candidate's page may report t.
func ClientType(t Type) bool { return clientTypes[t] }

// ValidType reports whether t is an incident type.
func ValidType(t Type) bool { return clientTypes[t] || serverTypes[t] || t == Manual }

// Types lists every incident type: client-reported, server-detected, manual.
func Types() []Type {
	return []Type{
		TabHidden, WindowBlur, FullscreenExit, ScreenShareEnded, CameraEnded, MicrophoneEnded,
		ConnectionLost, ConnectionRestored, TrackMissing, TrackEnded, VideoFrozen, IncidentsCapped,
		Manual,
	}
}

// Errors of the incidents package. Refusals of the policy wrap
// sfu.ErrForbidden (but ErrNotAdmitted); an unknown candidate wraps
// sfu.ErrParticipantNotFound.
var (
	ErrNotFound         = errors.New("incident not found")
	ErrSnapshotNotFound = errors.New("incident has no snapshot")
	ErrRateLimited      = errors.New("too many incident reports")
	ErrInvalidType      = errors.New("invalid incident type")
	ErrClosed           = errors.New("incidents are shut down")
	// ErrNotAdmitted refuses a report from a candidate still waiting for
	// admission.
	ErrNotAdmitted = errors.New("candidate not admitted")
	// ErrCapped refuses an incident past the room's Config.MaxPerRoom.
	ErrCapped = errors.New("the room has reached its cap of incidents")
)

// Incident is one thing a proctor has to look at.
type Incident struct {
	ID   string `json:"id"`
	Room string `json:"room"`
	// Instance is the instance of the room it happened in
	// (sfu.Room.Instance): the evidence of one instance is never shown
	// through a token of another. Empty for an incident stored before
	// rooms had instances.
	Instance string `json:"instance"`
	// Identity is the candidate's.
	Identity string `json:"identity"`
	Type     Type   `json:"type"`
	Source   Source `json:"source"`
	// Track is the source a track_missing, track_ended or video_frozen
	// is about ("camera", "microphone", "screen"); empty otherwise.
	Track sfu.Source `json:"track,omitempty"`
	// Reporter is who reported it: the candidate (client), the proctor
	// (proctor), or "" (server).
	Reporter string `json:"reporter,omitempty"`
	Note     string `json:"note,omitempty"`
	// Time is when it happened (UTC, millisecond precision).
	Time time.Time `json:"time"`
	// RecordingID, RecordingFile and OffsetMs place the incident in the
	// candidate's recording (camera and microphone): the segment file
	// and the position in it. Null when nothing was recording the
	// candidate then.
	RecordingID   *string `json:"recording_id"`
	RecordingFile *string `json:"recording_file"`
	OffsetMs      *int64  `json:"offset_ms"`
	// HasSnapshot says a JPEG of the camera is stored; SnapshotTime is
	// when the keyframe it was decoded from arrived.
	HasSnapshot  bool       `json:"has_snapshot"`
	SnapshotTime *time.Time `json:"snapshot_time,omitempty"`
}

// Event is the live push of a new incident to the room's proctors and
// watchers: its data is the incident.
type Event struct {
	Incident
}

// Type implements sfu.Event.
func (Event) Type() string { return "incident" }

var idRE = regexp.MustCompile(`^inc_[0-9a-f]{24}$`)

// ValidID reports whether id can name an incident.
func ValidID(id string) bool { return idRE.MatchString(id) }

func newID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return "inc_" + hex.EncodeToString(b)
}

// ms rounds t to the millisecond, in UTC: what the store keeps.
func ms(t time.Time) time.Time { return time.UnixMilli(t.UnixMilli()).UTC() }
