package federation

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/sfu"
	"github.com/vigil-media/vigil/signaling"
)

// The relay: the edge's session in the owner's room.

// run links the replica to the owner and applies the owner's events
// until the link ends or the replica is stopped; then it tears the
// replica down.
func (r *replica) run() {
	defer r.cs.wg.Done()
	defer r.teardown()
	ctx, cancel := context.WithTimeout(r.ctx, relayLinkTimeout)
	err := r.open(ctx)
	cancel()
	if err != nil {
		r.log.Warn("relay: cannot join the owner's room", "err", err)
		r.fail(fmt.Errorf("%w: %v", signaling.ErrNodeUnavailable, err))
		r.stop(signaling.ReasonRoomMoved)
		return
	}
	for {
		reason, resume := r.readEvents()
		if !resume || !r.reconnect() {
			r.stop(reason) // no-op when stopped already
			return
		}
	}
}

// open joins the owner's room as the relay (a session with a token the
// edge mints) and attaches its socket.
func (r *replica) open(ctx context.Context) error {
	cs := r.cs
	tok, _, err := cs.srv.Tokens().Mint(r.name, relayIdentityPrefix+cs.id, string(sfu.RoleViewer), 5*time.Minute)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost,
		strings.TrimRight(r.owner.URL, "/")+"/v1/rooms/"+url.PathEscape(r.name)+"/sessions", nil)
	if err != nil {
		return err
	}
	cs.router.signPeerRequest(req)
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set(HeaderRelay, "1")
	resp, err := cs.router.peerClient().Do(req)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("open the relay session: %d %s", resp.StatusCode, bytes.TrimSpace(body))
	}
	var out struct {
		SessionID string `json:"session_id"` // as POST /v1/rooms/{room}/sessions replies
	}
	if err := json.Unmarshal(body, &out); err != nil || out.SessionID == "" {
		return fmt.Errorf("open the relay session: reply %q", body)
	}
	r.mu.Lock()
	r.session = out.SessionID
	r.mu.Unlock()
	return r.dial(ctx)
}

// dial attaches a socket to the relay session, from the last event read.
func (r *replica) dial(ctx context.Context) error {
	r.mu.Lock()
	sid, cursor := r.session, r.cursor
	r.mu.Unlock()
	u := strings.TrimRight(r.owner.URL, "/") + "/v1/sessions/" + url.PathEscape(sid) + fmt.Sprintf("/ws?cursor=%d", cursor)
	u = "ws" + strings.TrimPrefix(u, "http") // http -> ws, https -> wss
	pu, err := url.Parse(u)
	if err != nil {
		return fmt.Errorf("relay socket: %w", err)
	}
	h := http.Header{}
	r.cs.router.signPeer(h, http.MethodGet, pu.RequestURI())
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second, NetDialContext: r.cs.router.peers.DialContext, TLSClientConfig: r.cs.router.peers.TLSClientConfig}
	conn, resp, err := d.DialContext(ctx, u, h)
	if err != nil {
		if resp != nil {
			return fmt.Errorf("relay socket: %w (%d)", err, resp.StatusCode)
		}
		return fmt.Errorf("relay socket: %w", err)
	}
	conn.SetReadLimit(relayReadLimit)
	r.wmu.Lock()
	defer r.wmu.Unlock()
	select {
	case <-r.quit:
		_ = conn.Close()
		return errors.New("replica stopped")
	default:
	}
	r.conn = conn
	return nil
}

// reconnect attaches a new socket after the last one broke: the owner
// keeps the session for its grace period. It gives up after a few tries.
func (r *replica) reconnect() bool {
	for i := range 3 {
		select {
		case <-r.quit:
			return false
		case <-time.After(time.Duration(i+1) * 300 * time.Millisecond):
		}
		ctx, cancel := context.WithTimeout(r.ctx, 2*time.Second)
		err := r.dial(ctx)
		cancel()
		if err == nil {
			r.log.Info("relay socket reattached")
			return true
		}
		r.log.Debug("relay socket", "err", err)
	}
	return false
}

// readEvents applies the owner's events until the socket ends. It
// returns the reason the replica closes with, and whether to try the
// socket again (it broke; the relay's participant did not leave).
func (r *replica) readEvents() (reason string, resume bool) {
	r.wmu.Lock()
	conn := r.conn
	r.wmu.Unlock()
	defer conn.Close()
	for {
		var ev relayEvent
		if err := conn.ReadJSON(&ev); err != nil {
			select {
			case <-r.quit:
				return sfu.ReasonRoomClosed, false
			default:
			}
			var ce *websocket.CloseError
			if errors.As(err, &ce) && ce.Code != websocket.CloseAbnormalClosure {
				// Closed by the owner: the session ended (its left
				// event, if it came, was handled) or was replaced.
				return signaling.ReasonRoomMoved, false
			}
			r.log.Info("relay socket lost", "err", err)
			return signaling.ReasonRoomMoved, true
		}
		if ev.Seq == 0 {
			continue // an error frame without a sequence number
		}
		r.mu.Lock()
		if ev.Seq <= r.cursor {
			r.mu.Unlock()
			continue
		}
		r.cursor = ev.Seq
		r.mu.Unlock()
		if done, reason := r.apply(ev); done {
			return reason, false
		}
	}
}

// relayEvent is a server event as the relay reads it.
type relayEvent struct {
	Seq  uint64          `json:"seq"`
	Type string          `json:"type"`
	Data json.RawMessage `json:"data"`
}

// apply acts on one event of the owner; done when the relay's
// participant has left.
func (r *replica) apply(ev relayEvent) (done bool, reason string) {
	switch ev.Type {
	case "joined":
		var d sfu.JoinedEvent
		if json.Unmarshal(ev.Data, &d) != nil {
			break
		}
		for _, p := range d.Participants {
			if p.Role == sfu.RoleHost {
				r.host(p.Identity)
			}
		}
		r.mu.Lock()
		select {
		case <-r.ready:
		default:
			close(r.ready) // linked: joins may go on
			r.log.Info("relay linked", "took", time.Since(r.begun).Round(time.Millisecond))
		}
		r.mu.Unlock()
	case "participant_joined", "participant_updated":
		var d sfu.ParticipantJoinedEvent
		if json.Unmarshal(ev.Data, &d) == nil && d.Participant.Role == sfu.RoleHost {
			r.host(d.Participant.Identity)
		}
	case "participant_left":
		var d sfu.ParticipantLeftEvent
		if json.Unmarshal(ev.Data, &d) != nil {
			break
		}
		r.mu.Lock()
		p := r.hosts[d.Identity]
		delete(r.hosts, d.Identity)
		for id, t := range r.tracks {
			if t.p == p {
				delete(r.tracks, id)
			}
		}
		r.mu.Unlock()
		if p != nil {
			p.Leave(d.Reason)
		}
	case "track_unpublished":
		var d sfu.TrackUnpublishedEvent
		if json.Unmarshal(ev.Data, &d) != nil {
			break
		}
		r.mu.Lock()
		t, ok := r.tracks[d.Track.ID]
		delete(r.tracks, d.Track.ID)
		r.mu.Unlock()
		if ok {
			t.p.UnpublishRelayed(t.track)
		}
	case "track_muted":
		var d sfu.TrackMutedEvent
		if json.Unmarshal(ev.Data, &d) != nil {
			break
		}
		r.mu.Lock()
		p := r.hosts[d.Track.Identity]
		r.mu.Unlock()
		if p != nil {
			_, _ = p.SetMuted(d.Track.Source, d.Track.Muted, d.By)
		}
	case "offer":
		var d sfu.OfferEvent
		if json.Unmarshal(ev.Data, &d) != nil {
			break
		}
		if err := r.answer(d); err != nil {
			if errors.Is(err, webrtc.ErrConnectionClosed) || r.pc.SignalingState() == webrtc.SignalingStateClosed {
				// The owner closed the relay's connection as its room
				// closed, after this offer (its host's tracks going)
				// and before the left event that says why: that event,
				// or the socket's end, decides the reason.
				r.log.Debug("relay: the owner's offer came after the connection closed", "err", err)
				break
			}
			r.log.Warn("relay: cannot answer the owner's offer", "err", err)
			return true, signaling.ReasonRoomMoved
		}
	case "error":
		r.log.Debug("relay: the owner refused a message", "data", string(ev.Data))
	case "left":
		var d sfu.LeftEvent
		_ = json.Unmarshal(ev.Data, &d)
		r.log.Info("relay: left the owner's room", "reason", d.Reason)
		r.mu.Lock()
		r.gone = true
		r.mu.Unlock()
		if d.Reason == sfu.ReasonRoomClosed {
			return true, sfu.ReasonRoomClosed // the broadcast is over
		}
		return true, signaling.ReasonRoomMoved // the owner went (or lost the room): viewers come back through the routing
	}
	return false, ""
}

// answer applies the owner's offer, after noting which host and source
// each of its mids carries.
func (r *replica) answer(d sfu.OfferEvent) error {
	r.mu.Lock()
	for mid, ti := range d.Tracks {
		r.mids[mid] = ti
	}
	r.mu.Unlock()
	if err := r.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: d.SDP}); err != nil {
		return err
	}
	ans, err := r.pc.CreateAnswer(nil)
	if err != nil {
		return err
	}
	gathered := webrtc.GatheringCompletePromise(r.pc)
	if err := r.pc.SetLocalDescription(ans); err != nil {
		return err
	}
	select {
	case <-gathered:
	case <-time.After(5 * time.Second):
	}
	return r.send("answer", signaling.AnswerMessage{SDP: r.pc.LocalDescription().SDP})
}

// send writes one client message on the relay's socket.
func (r *replica) send(typ string, data any) error {
	b, err := json.Marshal(map[string]any{"type": typ, "data": data})
	if err != nil {
		return err
	}
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if r.conn == nil {
		return errors.New("no relay socket")
	}
	_ = r.conn.SetWriteDeadline(time.Now().Add(relayWriteWait))
	return r.conn.WriteMessage(websocket.TextMessage, b)
}

// leaveOwner ends the relay's session at the owner: a leave message on
// its socket, else a DELETE.
func (r *replica) leaveOwner() {
	r.mu.Lock()
	sid := r.session
	r.mu.Unlock()
	if sid == "" {
		return
	}
	if err := r.send("leave", signaling.LeaveMessage{}); err == nil {
		r.wmu.Lock()
		_ = r.conn.Close()
		r.wmu.Unlock()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, strings.TrimRight(r.owner.URL, "/")+"/v1/sessions/"+url.PathEscape(sid), nil)
	if err != nil {
		return
	}
	r.cs.router.signPeerRequest(req)
	if resp, err := r.cs.router.peerClient().Do(req); err == nil {
		resp.Body.Close()
	}
}

// host returns the relayed participant of a host, joining it first.
func (r *replica) host(identity string) *sfu.Participant {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closing {
		return nil
	}
	if p := r.hosts[identity]; p != nil {
		select {
		case <-p.Done():
		default:
			return p
		}
	}
	p, err := r.room.JoinRelayed(identity, sfu.RoleHost, r.pc)
	if err != nil {
		r.log.Warn("relay: cannot add a host", "participant", identity, "err", err)
		return nil
	}
	r.hosts[identity] = p
	return p
}

// onTrack publishes a track the owner forwards to the relay as the
// host's, with the source the offer's track map gives its mid.
func (r *replica) onTrack(track *webrtc.TrackRemote, recv *webrtc.RTPReceiver) {
	mid := ""
	for _, t := range r.pc.GetTransceivers() {
		if t.Receiver() == recv {
			mid = t.Mid()
			break
		}
	}
	r.mu.Lock()
	info, ok := r.mids[mid]
	first := !r.firstMedia
	r.firstMedia = true
	r.mu.Unlock()
	if !ok {
		r.log.Warn("relay: a track on an unmapped mid", "mid", mid)
		return
	}
	if first {
		r.log.Info("relay: first track", "after", time.Since(r.begun).Round(time.Millisecond))
	}
	p := r.host(info.Identity)
	if p == nil {
		return
	}
	if _, err := p.PublishRelayed(track, info.Source); err != nil {
		r.log.Debug("relay: publish", "participant", info.Identity, "source", info.Source, "err", err)
		return
	}
	r.mu.Lock()
	r.tracks[info.ID] = relayedTrack{p: p, track: track}
	r.mu.Unlock()
}
