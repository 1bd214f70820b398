package signaling

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

	"github.com/gin-gonic/gin"
	"github.com/gorilla/websocket"
	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/cluster"
	"github.com/vigil-media/vigil/sfu"
)

// Cascaded broadcasts (docs/cluster.md). A broadcast room lives on its
// owner node; once the owner holds Config.EdgeViewers viewers of it, it
// sends each further viewer's join to an edge node (the node the client
// came through, or the least loaded other one) with HeaderEdge. The edge
// serves it from a local replica of the room, linked to the owner by one
// relay per (room, edge): the edge joins the owner's room as a viewer
// through the ordinary signaling (a session, its WebSocket, an ordinary
// PeerConnection, which the edge answers), and publishes each track it
// receives, under the identity and source the offer's track map gives
// it, as a track of a relayed participant of the replica (sfu.JoinRelayed).
// Keyframe requests of the edge's viewers are PLIs on the relay, which
// the owner passes on to the host. The relay is not a viewer at the
// owner: it is never cascaded, and not counted.

// HeaderRelay marks, with a valid peer auth, the session POST of a relay:
// an edge joining the owner's room for its replica.
const HeaderRelay = "X-Vigil-Relay"

// DefaultEdgeViewers is Config.EdgeViewers's default.
const DefaultEdgeViewers = 500

const (
	defaultEdgeIdle     = 10 * time.Second
	relayIdentityPrefix = "relay."
	relayLinkTimeout    = 10 * time.Second // to open the relay's session and socket
	msgRoomEvent        = "room_event"     // cluster.Message type of edge presence
)

// cascadeState is the cascade's part of the server: the replicas this
// node serves as an edge, and the relays the rooms it owns feed.
type cascadeState struct {
	mu       sync.Mutex
	replicas map[string]*replica // edge: by room name
	// closing counts, by room name, the replicas stopped whose room is
	// not closed yet: still replicas, not rooms of this node, so that the
	// cluster's reconcile does not take one for a room this node lost.
	closing map[string]int
	relays  map[*sfu.Participant]bool // owner: the relays' participants
	closed  bool
	wg      sync.WaitGroup // replica goroutines
	unsub   func()         // the bus subscription
}

func (s *Server) edgeViewers() int {
	if s.cfg.EdgeViewers == 0 {
		return DefaultEdgeViewers
	}
	return s.cfg.EdgeViewers
}

func (s *Server) edgeIdle() time.Duration {
	if s.cfg.EdgeIdle <= 0 {
		return defaultEdgeIdle
	}
	return s.cfg.EdgeIdle
}

// startCascade subscribes to the presence of the edges' viewers, which
// the owner adds to its rooms' admin feeds.
func (s *Server) startCascade() {
	if s.cfg.Cluster == nil {
		return
	}
	s.cascade.unsub = s.cfg.Cluster.Subscribe(msgRoomEvent, s.edgePresence)
}

// closeCascade ends every replica (its viewers leave with
// server_shutdown, its relay session ends) and waits for them.
func (s *Server) closeCascade() {
	s.cascade.mu.Lock()
	s.cascade.closed = true
	reps := make([]*replica, 0, len(s.cascade.replicas))
	for _, r := range s.cascade.replicas {
		reps = append(reps, r)
	}
	unsub := s.cascade.unsub
	s.cascade.unsub = nil
	s.cascade.mu.Unlock()
	if unsub != nil {
		unsub()
	}
	for _, r := range reps {
		// The broadcast goes on at its owner: the viewers start over
		// there (or at another edge).
		r.stop(ReasonRoomMoved)
	}
	s.cascade.wg.Wait()
}

// isReplica reports whether the local room called name is an edge
// replica of a broadcast another node owns.
func (s *Server) isReplica(name string) bool {
	s.cascade.mu.Lock()
	defer s.cascade.mu.Unlock()
	r := s.cascade.replicas[name]
	return (r != nil && !r.roomGone.Load()) || s.cascade.closing[name] > 0
}

// isRelayJoin reports whether a session POST is a relay's: a peer's
// request with HeaderRelay, whose token names that peer's relay.
func (s *Server) isRelayJoin(c *gin.Context, claims *Claims) bool {
	peer, ok := s.fromPeer(c)
	return ok && c.GetHeader(HeaderRelay) != "" && claims.Subject == relayIdentityPrefix+peer &&
		sfu.Role(claims.Role) == sfu.RoleViewer
}

// isEdgeJoin reports whether the request asks this node to serve a join
// as an edge: a peer's request with HeaderEdge.
func (s *Server) isEdgeJoin(c *gin.Context) bool {
	_, ok := s.fromPeer(c)
	return ok && c.GetHeader(HeaderEdge) == "1"
}

// noteRelay remembers, at the owner, that p is a relay: not a viewer.
func (s *Server) noteRelay(p *sfu.Participant) {
	s.cascade.mu.Lock()
	defer s.cascade.mu.Unlock()
	if s.cascade.relays == nil {
		s.cascade.relays = map[*sfu.Participant]bool{}
	}
	s.cascade.relays[p] = true
}

// localViewers counts the viewers of room on this node, relays aside.
func (s *Server) localViewers(room *sfu.Room) int {
	ps := room.List()
	s.cascade.mu.Lock()
	defer s.cascade.mu.Unlock()
	for p := range s.cascade.relays {
		select {
		case <-p.Done():
			delete(s.cascade.relays, p)
		default:
		}
	}
	n := 0
	for _, p := range ps {
		if p.Role() == sfu.RoleViewer && !s.cascade.relays[p] {
			n++
		}
	}
	return n
}

// spillToEdge sends a viewer's join of a full broadcast room this node
// owns to an edge node, and reports whether it did (it has replied
// then). The edge is the node the client came through, when a peer
// relayed the join, else the least loaded other node; with no other
// live node the join is served here.
func (s *Server) spillToEdge(c *gin.Context, claims *Claims, room *sfu.Room) bool {
	cl := s.cfg.Cluster
	limit := s.edgeViewers()
	if cl == nil || limit < 0 || room.Kind() != sfu.KindBroadcast || sfu.Role(claims.Role) != sfu.RoleViewer ||
		s.isReplica(room.Name()) || s.isEdgeJoin(c) || s.isRelayJoin(c, claims) {
		return false
	}
	if s.localViewers(room) < limit {
		return false
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), clusterTimeout)
	defer cancel()
	var edge cluster.Node
	var err error
	if peer, ok := s.fromPeer(c); ok && peer != cl.ID() {
		edge, err = cl.Node(ctx, peer)
	} else {
		edge, err = cl.Pick(ctx, cl.ID())
	}
	if err != nil {
		s.log.Debug("no edge node: serving the viewer here", "room", room.Name(), "err", err)
		return false
	}
	s.log.Debug("viewer sent to an edge", "room", room.Name(), "participant", claims.Subject, "edge", edge.ID)
	s.proxyTo(c, edge, http.Header{HeaderEdge: {"1"}})
	return true
}

// prepareEdge readies, for a join this node serves as an edge, the
// room's replica and its relay. It returns a func to call once the join
// is done (the replica does not close for idleness before), or nil when
// the request is not an edge join.
func (s *Server) prepareEdge(c *gin.Context) (func(), error) {
	if !s.isEdgeJoin(c) || s.cfg.Cluster == nil {
		return nil, nil
	}
	name := c.Param("room")
	tok, ok := bearer(c.Request)
	if !ok {
		return nil, fmt.Errorf("%w: no bearer token", ErrInvalidToken)
	}
	claims, err := s.tokens.Verify(tok)
	if err != nil {
		return nil, err
	}
	if claims.Room != name {
		return nil, fmt.Errorf("%w: the token is for another room", ErrForbidden)
	}
	if sfu.Role(claims.Role) != sfu.RoleViewer {
		return nil, fmt.Errorf("%w: only viewers are served by edges", ErrForbidden)
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), relayLinkTimeout)
	defer cancel()
	r, err := s.ensureReplica(ctx, name)
	if err != nil || r == nil {
		return nil, err
	}
	return r.joinDone, nil
}

// ensureReplica returns the linked replica of room name, starting it
// (and its relay) when there is none; nil when this node owns the room
// (it is served as any local room). The replica counts one join under
// way, which the caller ends with joinDone.
func (s *Server) ensureReplica(ctx context.Context, name string) (*replica, error) {
	cl := s.cfg.Cluster
	rec, err := cl.Room(ctx, name)
	switch {
	case errors.Is(err, cluster.ErrRoomNotFound):
		return nil, fmt.Errorf("%w: %q", sfu.ErrRoomNotFound, name)
	case err != nil:
		return nil, fmt.Errorf("%w: %v", ErrClusterUnavailable, err)
	case rec.Owner == cl.ID():
		return nil, nil
	case sfu.Kind(rec.Kind) != sfu.KindBroadcast:
		return nil, fmt.Errorf("%w: only broadcasts are cascaded", ErrForbidden)
	}
	owner, err := cl.Node(ctx, rec.Owner)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNodeUnavailable, err)
	}

	s.cascade.mu.Lock()
	r := s.cascade.replicas[name]
	if r != nil && r.roomGone.Load() {
		r = nil // its room was closed under it (an adoption): it is closing
	}
	if r == nil {
		if s.cascade.closed {
			s.cascade.mu.Unlock()
			return nil, ErrShuttingDown
		}
		room, err := s.sfu.CreateRoom(name, sfu.KindBroadcast, sfu.RoomOptions{})
		if err != nil {
			s.cascade.mu.Unlock()
			if errors.Is(err, sfu.ErrRoomExists) {
				return nil, ErrRoomMoved // a room of ours by that name: it was moved away
			}
			return nil, err
		}
		if r, err = s.newReplica(room, owner); err != nil {
			s.cascade.mu.Unlock()
			room.Close(sfu.ReasonRoomClosed)
			return nil, err
		}
		if s.cascade.replicas == nil {
			s.cascade.replicas = map[string]*replica{}
		}
		s.cascade.replicas[name] = r
		s.cascade.wg.Add(2)
		go r.run()
		go r.watch()
	}
	r.mu.Lock()
	r.pending++
	r.mu.Unlock()
	s.cascade.mu.Unlock()

	select {
	case <-r.ready:
		if r.err == nil {
			return r, nil
		}
		err = r.err
	case <-ctx.Done():
		err = fmt.Errorf("%w: the relay to %s is not up: %v", ErrNodeUnavailable, owner.ID, ctx.Err())
	}
	r.joinDone()
	return nil, err
}

// replica is an edge's copy of a broadcast room, fed by its relay.
type replica struct {
	srv   *Server
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

	wmu  sync.Mutex // writes to the socket
	conn *websocket.Conn

	qmu    sync.Mutex
	queue  []sfu.Event // the replica's room events, for watch
	notify chan struct{}

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

func (s *Server) newReplica(room *sfu.Room, owner cluster.Node) (*replica, error) {
	pc, err := s.sfu.NewRelayConnection()
	if err != nil {
		return nil, err
	}
	r := &replica{
		srv: s, name: room.Name(), owner: owner, room: room, pc: pc,
		log:   s.log.With("room", room.Name(), "owner", owner.ID),
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
			time.AfterFunc(relayFailedGrace, func() { r.stop(ReasonRoomMoved) })
		}
	})
	return r, nil
}

// relayFailedGrace is how long a replica whose relay connection failed
// waits for the relay's socket to say why before it closes as moved.
const relayFailedGrace = time.Second

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
	defer r.srv.cascade.wg.Done()
	idle := r.srv.edgeIdle()
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
	s := r.srv
	s.cascade.mu.Lock()
	r.mu.Lock()
	if r.closing || (ifIdle && r.pending > 0) {
		r.mu.Unlock()
		s.cascade.mu.Unlock()
		return false
	}
	r.closing, r.reason = true, reason
	r.mu.Unlock()
	if s.cascade.replicas[r.name] == r {
		delete(s.cascade.replicas, r.name)
	}
	if s.cascade.closing == nil {
		s.cascade.closing = map[string]int{}
	}
	s.cascade.closing[r.name]++ // until teardown has closed the room
	s.cascade.mu.Unlock()
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
	r.fail(fmt.Errorf("%w: the replica closed (%s)", ErrRoomMoved, reason))
	r.room.Close(reason)
	s := r.srv
	s.cascade.mu.Lock()
	if s.cascade.closing[r.name]--; s.cascade.closing[r.name] <= 0 {
		delete(s.cascade.closing, r.name)
	}
	s.cascade.mu.Unlock()
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
	if err := r.srv.cfg.Cluster.Publish(ctx, cluster.Message{Type: msgRoomEvent, Room: r.name, Data: data}); err != nil {
		r.log.Debug("publish edge presence", "err", err)
	}
}

// presenceData is the Data of a room_event Message.
type presenceData struct {
	Type  string `json:"type"`
	Event any    `json:"event"`
}

// edgeJoinedEvent and edgeLeftEvent are the owner's admin feed events of
// an edge's viewers: participant_joined and participant_left, with the
// edge's node id.
type edgeJoinedEvent struct {
	Participant sfu.ParticipantInfo `json:"participant"`
	Node        string              `json:"node,omitempty"`
}

// Type implements sfu.Event.
func (edgeJoinedEvent) Type() string { return "participant_joined" }

type edgeLeftEvent struct {
	Identity string `json:"identity"`
	Reason   string `json:"reason,omitempty"`
	Node     string `json:"node,omitempty"`
	// Identities, on the bus only, are many viewers leaving at once
	// (their replica closed); the feed gets one event each.
	Identities []string `json:"identities,omitempty"`
}

// Type implements sfu.Event.
func (edgeLeftEvent) Type() string { return "participant_left" }

// edgePresence adds an edge's viewer coming or going to the admin feed
// of the room, if this node owns it and the feed is on.
func (s *Server) edgePresence(m cluster.Message) {
	if m.Origin == s.cfg.Cluster.ID() || s.isReplica(m.Room) {
		return
	}
	f := s.hub.feed(m.Room)
	if f == nil {
		return
	}
	var d struct {
		Type  string          `json:"type"`
		Event json.RawMessage `json:"event"`
	}
	if err := json.Unmarshal(m.Data, &d); err != nil {
		return
	}
	switch d.Type {
	case "participant_joined":
		var ev edgeJoinedEvent
		if json.Unmarshal(d.Event, &ev) == nil {
			ev.Node = m.Origin
			f.Deliver(ev)
		}
	case "participant_left":
		var ev edgeLeftEvent
		if json.Unmarshal(d.Event, &ev) != nil {
			break
		}
		ev.Node = m.Origin
		ids := ev.Identities
		ev.Identities = nil
		if len(ids) == 0 {
			ids = []string{ev.Identity}
		}
		for _, id := range ids {
			ev.Identity = id
			f.Deliver(ev)
		}
	}
}

// The relay: the edge's session in the owner's room.

// run links the replica to the owner and applies the owner's events
// until the link ends or the replica is stopped; then it tears the
// replica down.
func (r *replica) run() {
	defer r.srv.cascade.wg.Done()
	defer r.teardown()
	ctx, cancel := context.WithTimeout(r.ctx, relayLinkTimeout)
	err := r.open(ctx)
	cancel()
	if err != nil {
		r.log.Warn("relay: cannot join the owner's room", "err", err)
		r.fail(fmt.Errorf("%w: %v", ErrNodeUnavailable, err))
		r.stop(ReasonRoomMoved)
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

// peerHeader is what the edge's requests to the owner carry.
func (r *replica) peerHeader() http.Header {
	s := r.srv
	id := s.cfg.Cluster.ID()
	return http.Header{HeaderPeer: {id}, HeaderPeerAuth: {s.peerAuth(id)}}
}

// open joins the owner's room as the relay (a session with a token the
// edge mints) and attaches its socket.
func (r *replica) open(ctx context.Context) error {
	s := r.srv
	tok, _, err := s.tokens.Mint(r.name, relayIdentityPrefix+s.cfg.Cluster.ID(), string(sfu.RoleViewer), 5*time.Minute)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost,
		strings.TrimRight(r.owner.URL, "/")+"/v1/rooms/"+url.PathEscape(r.name)+"/sessions", nil)
	if err != nil {
		return err
	}
	req.Header = r.peerHeader()
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set(HeaderRelay, "1")
	resp, err := (&http.Client{Transport: s.peers}).Do(req)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("open the relay session: %d %s", resp.StatusCode, bytes.TrimSpace(body))
	}
	var out openSessionResponse
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
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second, NetDialContext: r.srv.peers.DialContext, TLSClientConfig: r.srv.peers.TLSClientConfig}
	conn, resp, err := d.DialContext(ctx, u, r.peerHeader())
	if err != nil {
		if resp != nil {
			return fmt.Errorf("relay socket: %w (%d)", err, resp.StatusCode)
		}
		return fmt.Errorf("relay socket: %w", err)
	}
	conn.SetReadLimit(maxMessageBytes)
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
				return ReasonRoomMoved, false
			}
			r.log.Info("relay socket lost", "err", err)
			return ReasonRoomMoved, true
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
			r.log.Warn("relay: cannot answer the owner's offer", "err", err)
			return true, ReasonRoomMoved
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
		return true, ReasonRoomMoved // the owner went (or lost the room): viewers come back through the routing
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
	return r.send("answer", AnswerMessage{SDP: r.pc.LocalDescription().SDP})
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
	_ = r.conn.SetWriteDeadline(time.Now().Add(wsWriteWait))
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
	if err := r.send("leave", LeaveMessage{}); err == nil {
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
	req.Header = r.peerHeader()
	if resp, err := (&http.Client{Transport: r.srv.peers}).Do(req); err == nil {
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
