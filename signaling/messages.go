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
	msg   any // a pointer to one of the *Message types above
	reply chan error
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
	switch env.Type {
	case "offer":
		m.msg = &OfferMessage{}
	case "answer":
		m.msg = &AnswerMessage{}
	case "candidate":
		m.msg = &CandidateMessage{}
	case "leave":
		m.msg = &LeaveMessage{}
	case "subscribe":
		m.msg = &SubscribeMessage{}
	case "unsubscribe":
		m.msg = &UnsubscribeMessage{}
	case "set_layer":
		m.msg = &SetLayerMessage{}
	case "chat":
		m.msg = &ChatMessage{}
	case "talk":
		m.msg = &TalkMessage{}
	case "admit":
		m.msg = &AdmitMessage{}
	case "reject":
		m.msg = &RejectMessage{}
	case "end_exam":
		m.msg = &EndExamMessage{}
	case "mute":
		m.msg = &MuteMessage{}
	case "report_incident":
		m.msg = &ReportIncidentMessage{}
	case "flag_incident":
		m.msg = &FlagIncidentMessage{}
	case "":
		return m, fmt.Errorf("%w: no type", ErrInvalidMessage)
	default:
		return m, fmt.Errorf("%w: %q", ErrUnknownType, env.Type)
	}
	data := env.Data
	if len(data) == 0 || bytes.Equal(data, []byte("null")) {
		data = []byte("{}")
	}
	if err := strictUnmarshal(data, m.msg); err != nil {
		return m, fmt.Errorf("%w: %s data: %v", ErrInvalidMessage, env.Type, err)
	}
	switch msg := m.msg.(type) {
	case *OfferMessage:
		if msg.SDP == "" || len(msg.SDP) > maxSDPBytes {
			return m, fmt.Errorf("%w: sdp must be 1 to %d bytes", ErrInvalidMessage, maxSDPBytes)
		}
		for mid, src := range msg.Sources {
			if !src.Valid() {
				return m, fmt.Errorf("%w: mid %q has unknown source %q", ErrInvalidMessage, mid, src)
			}
		}
	case *AnswerMessage:
		if msg.SDP == "" || len(msg.SDP) > maxSDPBytes {
			return m, fmt.Errorf("%w: sdp must be 1 to %d bytes", ErrInvalidMessage, maxSDPBytes)
		}
	case *SubscribeMessage:
		if msg.TrackID == "" || len(msg.TrackID) > maxIDBytes {
			return m, fmt.Errorf("%w: track_id must be 1 to %d bytes", ErrInvalidMessage, maxIDBytes)
		}
	case *UnsubscribeMessage:
		if msg.TrackID == "" || len(msg.TrackID) > maxIDBytes {
			return m, fmt.Errorf("%w: track_id must be 1 to %d bytes", ErrInvalidMessage, maxIDBytes)
		}
	case *SetLayerMessage:
		if msg.TrackID == "" || len(msg.TrackID) > maxIDBytes || msg.Layer == "" || len(msg.Layer) > maxIDBytes {
			return m, fmt.Errorf("%w: track_id and layer must be 1 to %d bytes", ErrInvalidMessage, maxIDBytes)
		}
	case *TalkMessage:
		if msg.To == "" || len(msg.To) > maxIDBytes {
			return m, fmt.Errorf("%w: to must be 1 to %d bytes", ErrInvalidMessage, maxIDBytes)
		}
	case *AdmitMessage:
		if msg.Identity == "" || len(msg.Identity) > maxIDBytes {
			return m, fmt.Errorf("%w: identity must be 1 to %d bytes", ErrInvalidMessage, maxIDBytes)
		}
	case *RejectMessage:
		if msg.Identity == "" || len(msg.Identity) > maxIDBytes || len(msg.Message) > maxReasonBytes {
			return m, fmt.Errorf("%w: identity must be 1 to %d bytes, message at most %d", ErrInvalidMessage, maxIDBytes, maxReasonBytes)
		}
	case *EndExamMessage:
		if msg.Identity == "" || len(msg.Identity) > maxIDBytes || len(msg.Message) > maxReasonBytes {
			return m, fmt.Errorf("%w: identity must be 1 to %d bytes, message at most %d", ErrInvalidMessage, maxIDBytes, maxReasonBytes)
		}
	case *MuteMessage:
		if !msg.Source.Valid() {
			return m, fmt.Errorf("%w: unknown source %q", ErrInvalidMessage, msg.Source)
		}
	case *ReportIncidentMessage:
		if !incidents.ClientType(msg.Type) {
			return m, fmt.Errorf("%w: type %q is not a client-reported incident type", ErrInvalidMessage, msg.Type)
		}
		if len(msg.Note) > maxNoteBytes || !utf8.ValidString(msg.Note) {
			return m, fmt.Errorf("%w: note must be UTF-8 of at most %d bytes", ErrInvalidMessage, maxNoteBytes)
		}
	case *FlagIncidentMessage:
		if msg.Identity == "" || len(msg.Identity) > maxIDBytes || len(msg.Note) > maxNoteBytes || !utf8.ValidString(msg.Note) {
			return m, fmt.Errorf("%w: identity must be 1 to %d bytes, note UTF-8 of at most %d", ErrInvalidMessage, maxIDBytes, maxNoteBytes)
		}
	}
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

// dispatch applies one client message of the participant: the incident
// messages go to the server's incidents Monitor, the others to the
// participant.
func (s *Server) dispatch(p *sfu.Participant, m clientMessage) error {
	switch msg := m.msg.(type) {
	case *ReportIncidentMessage:
		return s.reportIncident(p, msg)
	case *FlagIncidentMessage:
		return s.flagIncident(p, msg)
	}
	return dispatch(p, m)
}

// dispatch applies one client message to the participant.
func dispatch(p *sfu.Participant, m clientMessage) error {
	switch msg := m.msg.(type) {
	case *OfferMessage:
		return p.HandleOffer(msg.SDP, msg.Sources)
	case *AnswerMessage:
		return p.HandleAnswer(msg.SDP)
	case *CandidateMessage:
		return p.AddICECandidate(webrtc.ICECandidateInit{
			Candidate: msg.Candidate, SDPMid: msg.SDPMid, SDPMLineIndex: msg.SDPMLineIndex, UsernameFragment: msg.UsernameFragment,
		})
	case *LeaveMessage:
		p.Leave(sfu.ReasonLeft)
		return nil
	case *SubscribeMessage:
		return p.Subscribe(msg.TrackID)
	case *UnsubscribeMessage:
		return p.Unsubscribe(msg.TrackID)
	case *SetLayerMessage:
		return p.SetLayer(msg.TrackID, msg.Layer)
	case *ChatMessage:
		return p.Chat(msg.To, msg.Text)
	case *TalkMessage:
		return p.Talk(msg.To, msg.On)
	case *AdmitMessage:
		return p.Room().Admit(p, msg.Identity)
	case *RejectMessage:
		return p.Room().Reject(p, msg.Identity, msg.Message)
	case *EndExamMessage:
		return p.Room().EndExam(p, msg.Identity, msg.Message)
	case *MuteMessage:
		_, err := p.SetMuted(msg.Source, msg.Muted, "self")
		return err
	}
	return fmt.Errorf("%w: %T", ErrUnknownType, m.msg)
}
