package sfu

import (
	"errors"

	"github.com/pion/webrtc/v4"
)

// Errors of the media core. Callers map them to wire codes in one place.
var (
	ErrRoomNotFound   = errors.New("room not found")
	ErrRoomExists     = errors.New("room already exists")
	ErrRoomClosed     = errors.New("room is closed")
	ErrRoomFull       = errors.New("room is full")
	ErrForbidden      = errors.New("forbidden by the room's policy")
	ErrInvalidSDP     = errors.New("invalid session description")
	ErrInvalidState   = errors.New("not expected in the current negotiation state")
	ErrClosed         = errors.New("participant has left")
	ErrInvalidName    = errors.New("invalid name")
	ErrInvalidKind    = errors.New("unknown room kind")
	ErrInvalidRole    = errors.New("role not valid for this room kind")
	ErrServerClosed   = errors.New("server is shutting down")
	ErrTooManyTracks  = errors.New("too many tracks")
	ErrTooManyRooms   = errors.New("too many rooms")
	ErrInvalidMessage = errors.New("invalid message")
)

// Event is something the media core has to tell one participant. Each
// concrete type is one message of the signaling protocol; Type names it.
type Event interface {
	Type() string
}

// Sink receives a participant's events. Deliver must only enqueue: it is
// called with room locks held and must never block or call back into sfu.
type Sink interface {
	Deliver(ev Event)
}

// ParticipantInfo describes a participant as others may see it.
type ParticipantInfo struct {
	Identity string      `json:"identity"`
	Role     Role        `json:"role"`
	Tracks   []TrackInfo `json:"tracks"`
	// State is a proctoring candidate's: "waiting" until a proctor
	// admits it, then "admitted".
	State string `json:"state,omitempty"`
	// Connection is the state of its media connection: absent until it
	// first connects, then "connected", or "reconnecting" while it is
	// lost and the participant is in its reconnect grace period.
	// Everyone who sees the participant gets a participant_updated when
	// it turns "reconnecting" and when it is "connected" again.
	Connection string `json:"connection,omitempty"`
}

// Connection states of ParticipantInfo.Connection.
const (
	ConnectionConnected    = "connected"
	ConnectionReconnecting = "reconnecting"
)

// TrackInfo describes a published track.
type TrackInfo struct {
	ID       string `json:"id"`
	Identity string `json:"identity"`
	Source   Source `json:"source"`
	Kind     string `json:"kind"`
	Codec    string `json:"codec,omitempty"`
	Muted    bool   `json:"muted"`
	// Layers are the simulcast layers (rids), low to high; empty
	// without simulcast.
	Layers []string `json:"layers,omitempty"`
}

// Permissions is what a participant's role allows in its room.
type Permissions struct {
	Publish   []Source `json:"publish"`
	Subscribe bool     `json:"subscribe"`
}

// JoinedEvent is the first event of every participant.
type JoinedEvent struct {
	Room         string             `json:"room"`
	Kind         Kind               `json:"kind"`
	Identity     string             `json:"identity"`
	Role         Role               `json:"role"`
	Permissions  Permissions        `json:"permissions"`
	ICEServers   []webrtc.ICEServer `json:"ice_servers"`
	Participants []ParticipantInfo  `json:"participants"`
}

// Type implements Event.
func (JoinedEvent) Type() string { return "joined" }

// OfferEvent carries a server offer. Tracks maps each mid that carries a
// forwarded track to what it carries.
type OfferEvent struct {
	SDP    string               `json:"sdp"`
	Tracks map[string]TrackInfo `json:"tracks"`
}

// Type implements Event.
func (OfferEvent) Type() string { return "offer" }

// AnswerEvent carries the server's answer to a client offer.
type AnswerEvent struct {
	SDP    string               `json:"sdp"`
	Tracks map[string]TrackInfo `json:"tracks"`
}

// Type implements Event.
func (AnswerEvent) Type() string { return "answer" }

// ParticipantJoinedEvent tells that someone the receiver may see joined.
type ParticipantJoinedEvent struct {
	Participant ParticipantInfo `json:"participant"`
}

// Type implements Event.
func (ParticipantJoinedEvent) Type() string { return "participant_joined" }

// ParticipantLeftEvent tells that someone the receiver could see left.
type ParticipantLeftEvent struct {
	Identity string `json:"identity"`
	Reason   string `json:"reason,omitempty"`
}

// Type implements Event.
func (ParticipantLeftEvent) Type() string { return "participant_left" }

// TrackPublishedEvent tells that a participant the receiver may see
// published a track.
type TrackPublishedEvent struct {
	Track TrackInfo `json:"track"`
}

// Type implements Event.
func (TrackPublishedEvent) Type() string { return "track_published" }

// TrackUnpublishedEvent tells that a track is gone.
type TrackUnpublishedEvent struct {
	Track TrackInfo `json:"track"`
}

// Type implements Event.
func (TrackUnpublishedEvent) Type() string { return "track_unpublished" }

// ErrorEvent reports an asynchronous failure to the participant.
type ErrorEvent struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Type implements Event.
func (ErrorEvent) Type() string { return "error" }

// LeftEvent is the last event of a participant: it has left the room.
type LeftEvent struct {
	Reason string `json:"reason"`
	// Message is free text for the participant, e.g. why an admin
	// removed it.
	Message string `json:"message,omitempty"`
}

// Type implements Event.
func (LeftEvent) Type() string { return "left" }

// Reasons a participant leaves.
const (
	ReasonLeft       = "left"
	ReasonReplaced   = "replaced"
	ReasonFailed     = "connection_failed"
	ReasonRoomClosed = "room_closed"
	ReasonShutdown   = "server_shutdown"
	ReasonTimeout    = "timeout"
)
