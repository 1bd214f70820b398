package federation

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/cluster"
	"github.com/vigil-media/vigil/sfu"
	"github.com/vigil-media/vigil/signaling"
)

// replica is an edge's copy of a broadcast room, fed by its relay.
type replica struct {
	cs    *cascade
	name  string
	owner cluster.Node
	room  *sfu.Room
	pc    *webrtc.PeerConnection // the relay's media, answering the owner's offers
	log   *slog.Logger
	ready chan struct{} // closed once linked (err nil) or failed (err set)
	err   error
	quit  chan struct{} // closed when the replica is stopped
	// ctx ends when the replica is stopped: a link being opened gives up.
	ctx    context.Context
	cancel context.CancelFunc
	// roomGone is set as the room closes, whoever closes it: the name
	// is no longer a replica's (a room adopted here may take it).
	roomGone atomic.Bool
	begun    time.Time // when the link started, for the relay's figures

	// wmu guards conn and serializes writes to it; nothing is locked
	// while it is held.
	wmu  sync.Mutex
	conn *websocket.Conn

	// qmu guards queue. It is taken under the room's lock (Deliver);
	// nothing is locked while it is held.
	qmu    sync.Mutex
	queue  []sfu.Event // the replica's room events, for watch
	notify chan struct{}

	// mu guards the fields below. It is taken under the cascade's lock
	// (ensureReplica, stopUnless); while it is held, the room's lock may
	// be taken (host joins a relayed participant), never the cascade's
	// or wmu.
	mu         sync.Mutex
	session    string                      // the relay's session on the owner
	cursor     uint64                      // the last event read
	mids       map[string]sfu.TrackInfo    // the owner's track map, by mid
	hosts      map[string]*sfu.Participant // relayed participants, by identity
	tracks     map[string]relayedTrack     // by the owner's track id
	viewers    map[string]bool             // local viewers (presence)
	pending    int                         // joins under way
	closing    bool                        // stopped: run tears it down
	reason     string                      // why, for its viewers
	gone       bool                        // the relay's participant left the owner's room
	firstMedia bool                        // a first track arrived (logged once)
}

type relayedTrack struct {
	p     *sfu.Participant
	track *webrtc.TrackRemote
}

func (cs *cascade) newReplica(room *sfu.Room, owner cluster.Node) (*replica, error) {
	pc, err := cs.sfu.NewRelayConnection()
	if err != nil {
		return nil, err
	}
	r := &replica{
		cs: cs, name: room.Name(), owner: owner, room: room, pc: pc,
		log:   cs.log.With("room", room.Name(), "owner", owner.ID),
		ready: make(chan struct{}), quit: make(chan struct{}), notify: make(chan struct{}, 1),
		begun: time.Now(),
		mids:  map[string]sfu.TrackInfo{}, hosts: map[string]*sfu.Participant{},
		tracks: map[string]relayedTrack{}, viewers: map[string]bool{},
	}
	if err := room.Watch(r); err != nil {
		_ = pc.Close()
		return nil, err
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	pc.OnTrack(r.onTrack)
	pc.OnConnectionStateChange(func(st webrtc.PeerConnectionState) {
		if st == webrtc.PeerConnectionStateFailed {
			// The owner closing the relay's connection (its room
			// closed) fails it here too, and may do so before the
			// relay's socket delivers the left event that says why:
			// give the socket a moment to tell room_closed from a lost
			// owner (stop is a no-op once stopped).
			r.log.Warn("relay media connection failed")
			time.AfterFunc(relayFailedGrace, func() { r.stop(signaling.ReasonRoomMoved) })
		}
	})
	return r, nil
}

const (
	// relayFailedGrace is how long a replica whose relay connection
	// failed waits for the relay's socket to say why before it closes as
	// moved.
	relayFailedGrace = time.Second
	// relayReadLimit caps one event read on the relay's socket (a
	// signaling message's cap).
	relayReadLimit = 256 << 10
	// relayWriteWait bounds one write on it (as signaling's own).
	relayWriteWait = 10 * time.Second
)

// joinDone ends a join under way.
func (r *replica) joinDone() {
	r.mu.Lock()
	r.pending--
	r.mu.Unlock()
}

// Deliver implements sfu.Sink for the replica's room: it only queues.
func (r *replica) Deliver(ev sfu.Event) {
	if _, ok := ev.(sfu.RoomClosedEvent); ok {
		r.roomGone.Store(true)
	}
	r.qmu.Lock()
	r.queue = append(r.queue, ev)
	r.qmu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

// watch tells the bus of the replica's viewers coming and going, and
// closes the replica once it has had no viewer for Config.EdgeIdle.
func (r *replica) watch() {
	defer r.cs.wg.Done()
	idle := r.cs.edgeIdle()
	tick := time.NewTicker(min(idle/4, time.Second))
	defer tick.Stop()
	idleSince := time.Now()
	for {
		select {
		case <-r.notify:
		case <-tick.C:
		case <-r.quit:
			return
		}
		r.qmu.Lock()
		evs := r.queue
		r.queue = nil
		r.qmu.Unlock()
		for _, ev := range evs {
			switch ev := ev.(type) {
			case sfu.ParticipantJoinedEvent:
				if ev.Participant.Role == sfu.RoleViewer {
					r.mu.Lock()
					r.viewers[ev.Participant.Identity] = true
					r.mu.Unlock()
					r.presence(edgeJoinedEvent{Participant: ev.Participant})
				}
			case sfu.ParticipantLeftEvent:
				r.mu.Lock()
				was := r.viewers[ev.Identity]
				delete(r.viewers, ev.Identity)
				r.mu.Unlock()
				if was {
					r.presence(edgeLeftEvent{Identity: ev.Identity, Reason: ev.Reason})
				}
			case sfu.RoomClosedEvent:
				r.stop(ev.Reason) // closed from elsewhere (an adoption): end the relay
				return
			}
		}
		viewers := 0
		for _, p := range r.room.List() {
			if p.Role() == sfu.RoleViewer {
				viewers++
			}
		}
		r.mu.Lock()
		busy := viewers > 0 || r.pending > 0
		r.mu.Unlock()
		if busy {
			idleSince = time.Now()
			continue
		}
		if time.Since(idleSince) >= idle && r.stopIfIdle() {
			r.log.Info("replica idle: closing it and its relay", "idle", idle)
			return
		}
	}
}

// stopIfIdle stops the replica if no join is under way.
func (r *replica) stopIfIdle() bool {
	r.mu.Lock()
	busy := r.pending > 0
	r.mu.Unlock()
	return !busy && r.stopUnless(sfu.ReasonRoomClosed, true)
}

// stop ends the replica: its run goroutine tears it down (viewers leave
// with reason, the relay session ends). It does not wait; calling it
// again does nothing.
func (r *replica) stop(reason string) { r.stopUnless(reason, false) }

// stopUnless is stop; with ifIdle it does nothing while a join is under
// way (checked under the same locks as ensureReplica counts one). It
// reports whether it stopped the replica.
func (r *replica) stopUnless(reason string, ifIdle bool) bool {
	cs := r.cs
	cs.mu.Lock()
	r.mu.Lock()
	if r.closing || (ifIdle && r.pending > 0) {
		r.mu.Unlock()
		cs.mu.Unlock()
		return false
	}
	r.closing, r.reason = true, reason
	r.mu.Unlock()
	if cs.replicas[r.name] == r {
		delete(cs.replicas, r.name)
	}
	if cs.closing == nil {
		cs.closing = map[string]int{}
	}
	cs.closing[r.name]++ // until teardown has closed the room
	cs.mu.Unlock()
	close(r.quit)
	r.cancel() // a link being opened
	r.wmu.Lock()
	if r.conn != nil {
		_ = r.conn.Close() // the reader returns
	}
	r.wmu.Unlock()
	return true
}

// teardown is the end of run: the room closes (viewers told why), the
// relay's session at the owner ends, the relay's connection closes.
func (r *replica) teardown() {
	r.mu.Lock()
	reason, gone := r.reason, r.gone
	r.mu.Unlock()
	r.fail(fmt.Errorf("%w: the replica closed (%s)", signaling.ErrRoomMoved, reason))
	r.room.Close(reason)
	cs := r.cs
	cs.mu.Lock()
	if cs.closing[r.name]--; cs.closing[r.name] <= 0 {
		delete(cs.closing, r.name)
	}
	cs.mu.Unlock()
	// The viewers that were here leave the owner's feed at once (watch
	// has stopped: it would tell one at a time).
	r.mu.Lock()
	var left []string
	for id := range r.viewers {
		left = append(left, id)
	}
	r.viewers = map[string]bool{}
	r.mu.Unlock()
	if len(left) > 0 {
		r.presence(edgeLeftEvent{Identities: left, Reason: reason})
	}
	if !gone {
		r.leaveOwner()
	}
	if err := r.pc.Close(); err != nil {
		r.log.Debug("close relay connection", "err", err)
	}
	r.log.Info("replica closed", "reason", reason)
}

// fail marks the link failed unless it is up already.
func (r *replica) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-r.ready:
	default:
		r.err = err
		close(r.ready)
	}
}

// presence tells the owner's admin feed, over the bus, of a viewer of
// this edge.
func (r *replica) presence(ev sfu.Event) {
	data, err := json.Marshal(presenceData{Type: ev.Type(), Event: ev})
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	if err := r.cs.cl.Publish(ctx, cluster.Message{Type: msgRoomEvent, Room: r.name, Data: data}); err != nil {
		r.log.Debug("publish edge presence", "err", err)
	}
}

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
