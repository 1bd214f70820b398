package sfu

import (
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/pion/webrtc/v4"
)

// ErrGlare is returned for a client offer that crossed an offer of ours.
// The server is the impolite side of perfect negotiation: it keeps its own
// offer, and the client rolls its back and offers again after answering.
var ErrGlare = errors.New("offer collided with a pending server offer")

const maxPendingCandidates = 64

// negotiation is the SDP offer/answer exchange and the ICE of one
// participant's PeerConnection: who has an offer out, what must be
// offered next, the candidates trickled before a remote description.
// The participant changes its transceivers holding mu, then calls
// negotiateLocked.
type negotiation struct {
	pc       *webrtc.PeerConnection
	sink     Sink
	log      *slog.Logger
	signaled bool            // the peer takes our offers (ModeSignaled)
	quit     <-chan struct{} // closed when the participant starts leaving

	// mu serializes every negotiation step and every transceiver change
	// of pc, and guards the fields below. While holding it one may take
	// the participant's mu, an up-track's or down-track's mu, and a
	// player's mu; it is never taken while holding any of those, nor the
	// room's mu.
	mu             sync.Mutex
	awaitingAnswer bool // our offer is out, no answer yet
	needOffer      bool // something changed while awaiting an answer
	needRestart    bool // the next offer restarts ICE
	restartOut     bool // our pending offer restarts ICE
	pendingICE     []webrtc.ICECandidateInit
}

// closed reports whether the participant has started leaving.
func (n *negotiation) closed() bool {
	select {
	case <-n.quit:
		return true
	default:
		return false
	}
}

// applyOffer applies a client offer and delivers our answer. record runs
// under mu once the offer is applied (SetRemoteDescription succeeded),
// before the answer is made: the participant records the offer's
// declared sources there, and an offer refused records nothing.
func (n *negotiation) applyOffer(offer string, record func()) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed() {
		return ErrClosed
	}
	if n.awaitingAnswer {
		return ErrGlare
	}
	if err := n.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidSDP, err)
	}
	record()
	n.flushICELocked()
	answer, err := n.pc.CreateAnswer(nil)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidSDP, err)
	}
	sdpText, err := n.setLocalLocked(answer)
	if err != nil {
		return err
	}
	n.sink.Deliver(AnswerEvent{SDP: sdpText, Tracks: n.trackMapLocked()})
	if n.needOffer {
		n.needOffer = false
		n.negotiateLocked()
	}
	return nil
}

// applyAnswer applies the client's answer to our pending offer.
func (n *negotiation) applyAnswer(answer string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed() {
		return ErrClosed
	}
	if !n.awaitingAnswer {
		return fmt.Errorf("%w: no offer is pending", ErrInvalidState)
	}
	if err := n.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: answer}); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidSDP, err)
	}
	n.awaitingAnswer = false
	restarted := n.restartOut
	n.restartOut = false
	n.flushICELocked()
	if restarted && n.pc.ICEConnectionState() == webrtc.ICEConnectionStateFailed {
		// Our restart failed before its answer came (the client was
		// away longer than the ICE failed timeout): restart again, now
		// that the client is there to answer.
		n.needRestart, n.needOffer = true, true
	}
	if n.needOffer {
		n.needOffer = false
		n.negotiateLocked()
	}
	return nil
}

// addCandidate adds a trickled remote candidate; before a remote
// description exists it is kept (up to a bound) and added after.
func (n *negotiation) addCandidate(c webrtc.ICECandidateInit) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed() {
		return ErrClosed
	}
	if n.pc.RemoteDescription() == nil {
		if len(n.pendingICE) >= maxPendingCandidates {
			return fmt.Errorf("%w: too many candidates before a description", ErrInvalidState)
		}
		n.pendingICE = append(n.pendingICE, c)
		return nil
	}
	if err := n.pc.AddICECandidate(c); err != nil {
		return fmt.Errorf("%w: candidate: %v", ErrInvalidSDP, err)
	}
	return nil
}

func (n *negotiation) flushICELocked() {
	for _, c := range n.pendingICE {
		if err := n.pc.AddICECandidate(c); err != nil {
			n.log.Debug("dropping candidate", "err", err)
		}
	}
	n.pendingICE = nil
}

// setLocalLocked sets a local description and waits for gathering, so
// that the description carries our candidates (no server-side trickle).
func (n *negotiation) setLocalLocked(d webrtc.SessionDescription) (string, error) {
	gathered := webrtc.GatheringCompletePromise(n.pc)
	if err := n.pc.SetLocalDescription(d); err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalidSDP, err)
	}
	select {
	case <-gathered:
	case <-time.After(5 * time.Second):
		n.log.Warn("ICE gathering did not complete in 5s")
	}
	return n.pc.LocalDescription().SDP, nil
}

// negotiateLocked sends a new offer, or marks one as needed when an
// exchange is under way. mu must be held.
func (n *negotiation) negotiateLocked() {
	if n.closed() || !n.signaled {
		return // WHIP and WHEP peers cannot take our offers
	}
	if n.awaitingAnswer || n.pc.SignalingState() != webrtc.SignalingStateStable {
		n.needOffer = true
		return
	}
	var opts *webrtc.OfferOptions
	if n.needRestart {
		opts = &webrtc.OfferOptions{ICERestart: true}
		n.needRestart = false
	}
	offer, err := n.pc.CreateOffer(opts)
	if err != nil {
		n.log.Warn("create offer", "err", err)
		n.sink.Deliver(ErrorEvent{Code: "negotiation_failed", Message: err.Error()})
		return
	}
	sdpText, err := n.setLocalLocked(offer)
	if err != nil {
		n.log.Warn("set local offer", "err", err)
		n.sink.Deliver(ErrorEvent{Code: "negotiation_failed", Message: err.Error()})
		return
	}
	n.awaitingAnswer = true
	n.restartOut = opts != nil
	n.sink.Deliver(OfferEvent{SDP: sdpText, Tracks: n.trackMapLocked()})
}

// trackMapLocked maps each mid that forwards a track to that track.
func (n *negotiation) trackMapLocked() map[string]TrackInfo {
	m := map[string]TrackInfo{}
	for _, t := range n.pc.GetTransceivers() {
		if t.Sender() == nil || t.Mid() == "" {
			continue
		}
		if dt, ok := t.Sender().Track().(*DownTrack); ok {
			m[t.Mid()] = dt.trackInfo()
		}
	}
	return m
}

// restartICE offers an ICE restart to a signaled client whose connection
// is still lost; while an offer of ours is pending, the next one
// restarts (unless the pending one does already).
func (n *negotiation) restartICE() {
	if !n.signaled {
		return // WHIP and WHEP clients restart by PATCH
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed() || n.pc.ConnectionState() == webrtc.PeerConnectionStateConnected {
		return
	}
	if n.awaitingAnswer && n.restartOut {
		return
	}
	n.log.Info("offering an ICE restart")
	n.needRestart = true
	n.negotiateLocked()
}

var iceCredRE = regexp.MustCompile(`(?m)^a=ice-(ufrag|pwd):.*$`)

// restartWith applies an ICE restart asked for by a WHIP or WHEP client
// with new credentials: the current remote offer is re-applied with them,
// and the new answer returned.
func (n *negotiation) restartWith(ufrag, pwd string) (string, error) {
	if ufrag == "" || pwd == "" || strings.ContainsAny(ufrag+pwd, "\r\n") {
		return "", fmt.Errorf("%w: ICE restart needs a ufrag and a pwd", ErrInvalidSDP)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed() {
		return "", ErrClosed
	}
	cur := n.pc.RemoteDescription()
	if cur == nil || cur.Type != webrtc.SDPTypeOffer {
		return "", fmt.Errorf("%w: no offer to restart", ErrInvalidState)
	}
	next := iceCredRE.ReplaceAllStringFunc(cur.SDP, func(line string) string {
		if strings.HasPrefix(line, "a=ice-ufrag:") {
			return "a=ice-ufrag:" + ufrag
		}
		return "a=ice-pwd:" + pwd
	})
	return n.answerLocked(next)
}

// answerLocked applies a remote offer and returns our answer, set as the
// local description.
func (n *negotiation) answerLocked(offer string) (string, error) {
	if err := n.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalidSDP, err)
	}
	answer, err := n.pc.CreateAnswer(nil)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalidSDP, err)
	}
	return n.setLocalLocked(answer)
}

// remoteUfrag is the client's current ICE username fragment.
func (n *negotiation) remoteUfrag() string {
	d := n.pc.RemoteDescription()
	if d == nil {
		return ""
	}
	for _, line := range strings.Split(d.SDP, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimRight(line, "\r"), "a=ice-ufrag:"); ok {
			return v
		}
	}
	return ""
}
