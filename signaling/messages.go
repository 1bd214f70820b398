package signaling

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/incidents"
	"github.com/vigil-media/vigil/sfu"
)

// Limits on what a client message may carry.
const (
	maxMessageBytes = 256 << 10
	maxSDPBytes     = 128 << 10
	maxIDBytes      = 64
	maxReasonBytes  = 1024
)

// envelope is the frame of every client message.
type envelope struct {
	Type string          `json:"type"`
	ID   string          `json:"id,omitempty"`
	Data json.RawMessage `json:"data"`
}

// OfferMessage publishes: the client's offer and the source of each mid
// it sends on.
type OfferMessage struct {
	SDP     string                `json:"sdp"`
	Sources map[string]sfu.Source `json:"sources"`
}

// AnswerMessage answers the server's last offer.
type AnswerMessage struct {
	SDP string `json:"sdp"`
}

// CandidateMessage is a trickled ICE candidate.
type CandidateMessage struct {
	Candidate        string  `json:"candidate"`
	SDPMid           *string `json:"sdpMid,omitempty"`
	SDPMLineIndex    *uint16 `json:"sdpMLineIndex,omitempty"`
	UsernameFragment *string `json:"usernameFragment,omitempty"`
}

// LeaveMessage leaves the room.
type LeaveMessage struct{}

// SubscribeMessage asks to receive one track (again).
type SubscribeMessage struct {
	TrackID string `json:"track_id"`
}

// UnsubscribeMessage asks to stop receiving one track.
type UnsubscribeMessage struct {
	TrackID string `json:"track_id"`
}

// ErrorReply is the event the server appends when it refuses a client
// message; Ref is the message's id.
type ErrorReply struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Ref     string `json:"ref,omitempty"`
}

// Type implements sfu.Event.
func (ErrorReply) Type() string { return "error" }

// SetLayerMessage picks the simulcast layer of a received track: "low",
// "medium", "high" or one of its rids.
type SetLayerMessage struct {
	TrackID string `json:"track_id"`
	Layer   string `json:"layer"`
}

// TalkMessage starts or stops a proctor talking to a candidate (or "*":
// every candidate) over its microphone.
type TalkMessage struct {
	To string `json:"to"`
	On bool   `json:"on"`
}

// AdmitMessage lets a waiting candidate in (proctors only).
type AdmitMessage struct {
	Identity string `json:"identity"`
}

// RejectMessage turns a waiting candidate away (proctors only).
type RejectMessage struct {
	Identity string `json:"identity"`
	Message  string `json:"message,omitempty"`
}

// EndExamMessage ends a candidate's exam, or every candidate's with "*"
// (proctors only).
type EndExamMessage struct {
	Identity string `json:"identity"`
	Message  string `json:"message,omitempty"`
}

// ChatMessage sends a chat message; To names one recipient, or is empty.
type ChatMessage struct {
	To   string `json:"to,omitempty"`
	Text string `json:"text"`
}

// MuteMessage mutes or unmutes one's own track of a source: the server
// stops forwarding it.
type MuteMessage struct {
	Source sfu.Source `json:"source"`
	Muted  bool       `json:"muted"`
}

// ReportIncidentMessage reports an incident the candidate's page saw
// (candidates of proctoring rooms only): one of the client-reported
// types (incidents.ClientType), with an optional note.
type ReportIncidentMessage struct {
	Type incidents.Type `json:"type"`
	Note string         `json:"note,omitempty"`
}

// FlagIncidentMessage flags a candidate by hand, with a note (proctors
// only): a manual incident.
type FlagIncidentMessage struct {
	Identity string `json:"identity"`
	Note     string `json:"note,omitempty"`
}

// clientMessage is a decoded client message. reply, when set, receives
// the outcome instead of an error event in the outbox (request-response).
type clientMessage struct {
	id    string
	msg   message // a pointer to one of the *Message types above
	reply chan error
}

// message is one client message type: its data decodes into it, it checks
// its own fields, and it applies itself for the participant that sent it.
type message interface {
	// validate checks the decoded fields against the limits above; its
	// error wraps ErrInvalidMessage.
	validate() error
	// apply carries the message out for the participant in env.
	apply(env messageEnv) error
}

// messageEnv is what a message is applied with: the participant whose
// session sent it, and the server parts some messages need.
type messageEnv struct {
	p         *sfu.Participant
	incidents *incidents.Monitor // nil: incidents are disabled
}

// messageTypes is the registry of client messages: for each wire type,
// the Go type its data decodes into. It is the only place a wire type is
// named; each Go type carries its validation and its handler. Read-only.
var messageTypes = map[string]func() message{
	"offer":           func() message { return &OfferMessage{} },
	"answer":          func() message { return &AnswerMessage{} },
	"candidate":       func() message { return &CandidateMessage{} },
	"leave":           func() message { return &LeaveMessage{} },
	"subscribe":       func() message { return &SubscribeMessage{} },
	"unsubscribe":     func() message { return &UnsubscribeMessage{} },
	"set_layer":       func() message { return &SetLayerMessage{} },
	"chat":            func() message { return &ChatMessage{} },
	"talk":            func() message { return &TalkMessage{} },
	"admit":           func() message { return &AdmitMessage{} },
	"reject":          func() message { return &RejectMessage{} },
	"end_exam":        func() message { return &EndExamMessage{} },
	"mute":            func() message { return &MuteMessage{} },
	"report_incident": func() message { return &ReportIncidentMessage{} },
	"flag_incident":   func() message { return &FlagIncidentMessage{} },
}

// decodeMessage parses one client frame. The id is returned even when the
// data is refused, so that the error can refer to it.
func decodeMessage(b []byte) (clientMessage, error) {
	var env envelope
	if err := strictUnmarshal(b, &env); err != nil {
		// Still name the message in the error, if it has a usable id.
		var id struct {
			ID string `json:"id"`
		}
		_ = json.Unmarshal(b, &id)
		if len(id.ID) > maxIDBytes {
			id.ID = ""
		}
		return clientMessage{id: id.ID}, fmt.Errorf("%w: %v", ErrInvalidMessage, err)
	}
	m := clientMessage{id: env.ID}
	if len(env.ID) > maxIDBytes {
		m.id = ""
		return m, fmt.Errorf("%w: id longer than %d bytes", ErrInvalidMessage, maxIDBytes)
	}
	newMsg, ok := messageTypes[env.Type]
	switch {
	case env.Type == "":
		return m, fmt.Errorf("%w: no type", ErrInvalidMessage)
	case !ok:
		return m, fmt.Errorf("%w: %q", ErrUnknownType, env.Type)
	}
	msg := newMsg()
	data := env.Data
	if len(data) == 0 || bytes.Equal(data, []byte("null")) {
		data = []byte("{}")
	}
	if err := strictUnmarshal(data, msg); err != nil {
		return m, fmt.Errorf("%w: %s data: %v", ErrInvalidMessage, env.Type, err)
	}
	if err := msg.validate(); err != nil {
		return m, err
	}
	m.msg = msg
	return m, nil
}

func strictUnmarshal(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data")
	}
	return nil
}

// dispatch applies one decoded client message.
func dispatch(env messageEnv, m clientMessage) error {
	if m.msg == nil {
		return fmt.Errorf("%w: no message", ErrUnknownType)
	}
	return m.msg.apply(env)
}

// Validation and handling, one pair per message type.

// idField checks a required identifier of at most maxIDBytes.
func idField(v string) bool { return v != "" && len(v) <= maxIDBytes }

func validSDP(sdp string) error {
	if sdp == "" || len(sdp) > maxSDPBytes {
		return fmt.Errorf("%w: sdp must be 1 to %d bytes", ErrInvalidMessage, maxSDPBytes)
	}
	return nil
}

func (msg *OfferMessage) validate() error {
	if err := validSDP(msg.SDP); err != nil {
		return err
	}
	for mid, src := range msg.Sources {
		if !src.Valid() {
			return fmt.Errorf("%w: mid %q has unknown source %q", ErrInvalidMessage, mid, src)
		}
	}
	return nil
}

func (msg *OfferMessage) apply(env messageEnv) error { return env.p.HandleOffer(msg.SDP, msg.Sources) }

func (msg *AnswerMessage) validate() error            { return validSDP(msg.SDP) }
func (msg *AnswerMessage) apply(env messageEnv) error { return env.p.HandleAnswer(msg.SDP) }

func (msg *CandidateMessage) validate() error { return nil }
func (msg *CandidateMessage) apply(env messageEnv) error {
	return env.p.AddICECandidate(webrtc.ICECandidateInit{
		Candidate: msg.Candidate, SDPMid: msg.SDPMid, SDPMLineIndex: msg.SDPMLineIndex, UsernameFragment: msg.UsernameFragment,
	})
}

func (msg *LeaveMessage) validate() error { return nil }
func (msg *LeaveMessage) apply(env messageEnv) error {
	env.p.Leave(sfu.ReasonLeft)
	return nil
}

func (msg *SubscribeMessage) validate() error {
	if !idField(msg.TrackID) {
		return fmt.Errorf("%w: track_id must be 1 to %d bytes", ErrInvalidMessage, maxIDBytes)
	}
	return nil
}

func (msg *SubscribeMessage) apply(env messageEnv) error { return env.p.Subscribe(msg.TrackID) }

func (msg *UnsubscribeMessage) validate() error {
	if !idField(msg.TrackID) {
		return fmt.Errorf("%w: track_id must be 1 to %d bytes", ErrInvalidMessage, maxIDBytes)
	}
	return nil
}

func (msg *UnsubscribeMessage) apply(env messageEnv) error { return env.p.Unsubscribe(msg.TrackID) }

func (msg *SetLayerMessage) validate() error {
	if !idField(msg.TrackID) || !idField(msg.Layer) {
		return fmt.Errorf("%w: track_id and layer must be 1 to %d bytes", ErrInvalidMessage, maxIDBytes)
	}
	return nil
}

func (msg *SetLayerMessage) apply(env messageEnv) error {
	return env.p.SetLayer(msg.TrackID, msg.Layer)
}

func (msg *ChatMessage) validate() error            { return nil }
func (msg *ChatMessage) apply(env messageEnv) error { return env.p.Chat(msg.To, msg.Text) }

func (msg *TalkMessage) validate() error {
	if !idField(msg.To) {
		return fmt.Errorf("%w: to must be 1 to %d bytes", ErrInvalidMessage, maxIDBytes)
	}
	return nil
}

func (msg *TalkMessage) apply(env messageEnv) error { return env.p.Talk(msg.To, msg.On) }

func (msg *AdmitMessage) validate() error {
	if !idField(msg.Identity) {
		return fmt.Errorf("%w: identity must be 1 to %d bytes", ErrInvalidMessage, maxIDBytes)
	}
	return nil
}

func (msg *AdmitMessage) apply(env messageEnv) error { return env.p.Room().Admit(env.p, msg.Identity) }

func (msg *RejectMessage) validate() error {
	if !idField(msg.Identity) || len(msg.Message) > maxReasonBytes {
		return fmt.Errorf("%w: identity must be 1 to %d bytes, message at most %d", ErrInvalidMessage, maxIDBytes, maxReasonBytes)
	}
	return nil
}

func (msg *RejectMessage) apply(env messageEnv) error {
	return env.p.Room().Reject(env.p, msg.Identity, msg.Message)
}

func (msg *EndExamMessage) validate() error {
	if !idField(msg.Identity) || len(msg.Message) > maxReasonBytes {
		return fmt.Errorf("%w: identity must be 1 to %d bytes, message at most %d", ErrInvalidMessage, maxIDBytes, maxReasonBytes)
	}
	return nil
}

func (msg *EndExamMessage) apply(env messageEnv) error {
	return env.p.Room().EndExam(env.p, msg.Identity, msg.Message)
}

func (msg *MuteMessage) validate() error {
	if !msg.Source.Valid() {
		return fmt.Errorf("%w: unknown source %q", ErrInvalidMessage, msg.Source)
	}
	return nil
}

func (msg *MuteMessage) apply(env messageEnv) error {
	_, err := env.p.SetMuted(msg.Source, msg.Muted, "self")
	return err
}

func (msg *ReportIncidentMessage) validate() error {
	if !incidents.ClientType(msg.Type) {
		return fmt.Errorf("%w: type %q is not a client-reported incident type", ErrInvalidMessage, msg.Type)
	}
	if len(msg.Note) > maxNoteBytes || !utf8.ValidString(msg.Note) {
		return fmt.Errorf("%w: note must be UTF-8 of at most %d bytes", ErrInvalidMessage, maxNoteBytes)
	}
	return nil
}

// apply records the incident with the server's incidents Monitor.
func (msg *ReportIncidentMessage) apply(env messageEnv) error {
	if env.incidents == nil {
		return ErrIncidentsDisabled
	}
	_, err := env.incidents.Report(env.p, msg.Type, msg.Note)
	return err
}

func (msg *FlagIncidentMessage) validate() error {
	if !idField(msg.Identity) || len(msg.Note) > maxNoteBytes || !utf8.ValidString(msg.Note) {
		return fmt.Errorf("%w: identity must be 1 to %d bytes, note UTF-8 of at most %d", ErrInvalidMessage, maxIDBytes, maxNoteBytes)
	}
	return nil
}

// apply records the manual incident with the server's incidents Monitor.
func (msg *FlagIncidentMessage) apply(env messageEnv) error {
	if env.incidents == nil {
		return ErrIncidentsDisabled
	}
	_, err := env.incidents.Flag(env.p, msg.Identity, msg.Note)
	return err
}
