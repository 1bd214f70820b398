package signaling

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/sfu"
)

// Limits on what a client message may carry.
const (
	maxMessageBytes = 256 << 10
	maxSDPBytes     = 128 << 10
	maxIDBytes      = 64
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

// clientMessage is a decoded client message.
type clientMessage struct {
	id  string
	msg any // a pointer to one of the *Message types above
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
	}
	return fmt.Errorf("%w: %T", ErrUnknownType, m.msg)
}
