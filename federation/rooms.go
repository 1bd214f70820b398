package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/vigil-media/vigil/cluster"
	"github.com/vigil-media/vigil/sfu"
	"github.com/vigil-media/vigil/signaling"
	"github.com/vigil-media/vigil/webhooks"
)

// roomMap is the node's side of the cluster's room map: the rooms it
// holds and their records, placement of new rooms, listing, adoption,
// loss and hand-off, and revocations told over the bus. Its methods
// include the membership's callbacks (load, heldRooms, adopt, lose).
type roomMap struct {
	*core
	router  *router  // peer auth and relaying
	cascade *cascade // which rooms are edge replicas

	// mu guards the fields below it. Nothing else is locked while it
	// is held: it is taken under a room's lock (clusterWatcher), so a
	// room's lock must never be taken under it.
	mu       sync.Mutex
	records  map[string]cluster.RoomRecord // the records of the rooms held here
	creating map[string]bool               // rooms being created here: not to adopt
	deleting map[string]bool               // rooms ended here whose record is still to delete
	revokes  []cluster.Revocation          // revocations not yet told to the cluster

	// Set by startCluster, before the loop starts; not guarded.
	stop  chan struct{} // closed by stopCluster
	done  chan struct{} // closed when clusterLoop returns
	unsub func()        // the "revoked" subscription
	once  sync.Once     // stopCluster
}

// newRoomMap makes the maps, before the membership's callbacks may use
// them; New links router and cascade.
func newRoomMap(co *core) *roomMap {
	return &roomMap{core: co, creating: map[string]bool{}, deleting: map[string]bool{},
		records: map[string]cluster.RoomRecord{}}
}

// startCluster subscribes to the revocations of the other nodes and
// starts the loop that loads them (now, and again whenever Redis comes
// back). New calls it once the node has joined.
func (rm *roomMap) startCluster() {
	rm.stop, rm.done = make(chan struct{}), make(chan struct{})
	rm.unsub = rm.cl.Subscribe(msgRevoked, rm.onRevoked)
	go rm.clusterLoop()
}

// stopCluster stops what startCluster started, if it did; Close calls
// it.
func (rm *roomMap) stopCluster() {
	if rm.stop == nil {
		return
	}
	rm.once.Do(func() {
		close(rm.stop)
		<-rm.done
		rm.unsub()
	})
}

// clusterPoll is how often the loop looks whether Redis came back.
const clusterPoll = 250 * time.Millisecond

// clusterLoop resynchronizes with Redis at start and whenever it comes
// back after an outage: it loads the revocations, tells the cluster of
// those made here meanwhile, and deletes the records of the rooms that
// ended here meanwhile.
func (rm *roomMap) clusterLoop() {
	defer close(rm.done)
	t := time.NewTicker(clusterPoll)
	defer t.Stop()
	synced := false
	for {
		switch {
		case !rm.cl.Available():
			if synced {
				rm.log.Warn("cluster: Redis is unreachable; rooms here go on, cross-node calls fail until it is back")
			}
			synced = false
		case !synced:
			synced = rm.resync() == nil
			if synced {
				rm.log.Info("cluster: in sync with Redis", "node", rm.id)
			}
		}
		select {
		case <-rm.stop:
			return
		case <-t.C:
		}
	}
}

// resync is one resynchronization (clusterLoop).
func (rm *roomMap) resync() error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*clusterTimeout)
	defer cancel()
	cl := rm.cl
	revs, err := cl.Revocations(ctx)
	if err != nil {
		return err
	}
	for _, rv := range revs {
		rm.applyRevocation(rv)
	}
	rm.mu.Lock()
	pending := rm.revokes
	rm.revokes = nil
	var deleting []string
	for name := range rm.deleting {
		deleting = append(deleting, name)
	}
	rm.mu.Unlock()
	for i, rv := range pending {
		if err := cl.Revoke(ctx, rv); err != nil {
			rm.mu.Lock()
			rm.revokes = append(pending[i:], rm.revokes...)
			rm.mu.Unlock()
			return err
		}
	}
	for _, name := range deleting {
		if err := rm.forgetRoom(name); err != nil {
			return err
		}
	}
	return nil
}

// CreateRoom is the node's signaling.Federation.CreateRoom: it serves POST /v1/rooms.
// The room goes to the least loaded live node (this one included), which
// writes its record in the map first (so that the name is taken
// cluster-wide) and then opens it. A draining node places every new room
// elsewhere.
func (rm *roomMap) CreateRoom(c *gin.Context) bool {
	rm.createRoom(c)
	return true
}

func (rm *roomMap) createRoom(c *gin.Context) {
	req, raw, err := rm.srv.ReadRoomRequest(c)
	if err != nil {
		writeError(c, err)
		return
	}
	switch {
	case req.MaxParticipants < 0:
		writeError(c, fmt.Errorf("%w: max_participants must not be negative", signaling.ErrInvalidRequest))
		return
	case !sfu.ValidName(req.Name):
		writeError(c, fmt.Errorf("%w: room name %q", sfu.ErrInvalidName, req.Name))
		return
	case !sfu.ValidKind(req.Kind):
		writeError(c, fmt.Errorf("%w: %q", sfu.ErrInvalidKind, req.Kind))
		return
	}
	cl := rm.cl
	me := rm.id
	ctx, cancel, err := rm.router.redisCtx(c)
	if err != nil {
		refuseUnavailable(c, err)
		return
	}
	defer cancel()
	if _, peer := rm.router.fromPeer(c); !peer {
		var except []string
		if rm.srv.Draining() {
			except = []string{me}
		}
		to, err := cl.Pick(ctx, except...)
		switch {
		case errors.Is(err, cluster.ErrNodeNotFound) && len(except) > 0:
			writeError(c, signaling.ErrDraining) // no other node to place it on
			return
		case err != nil:
			refuseUnavailable(c, unavailable(err))
			return
		case to.ID != me:
			c.Request.Body = io.NopCloser(strings.NewReader(raw))
			c.Request.ContentLength = int64(len(raw))
			rm.router.proxyTo(c, to, http.Header{HeaderPlaced: {to.ID}})
			return
		}
	}
	if err := rm.srv.AdmitRoom(); err != nil {
		writeError(c, err)
		return
	}
	if _, err := rm.sfu.Room(req.Name); err == nil {
		writeError(c, fmt.Errorf("%w: %q", sfu.ErrRoomExists, req.Name))
		return
	}
	rm.mu.Lock()
	if rm.creating[req.Name] {
		rm.mu.Unlock()
		writeError(c, fmt.Errorf("%w: %q", sfu.ErrRoomExists, req.Name))
		return
	}
	rm.creating[req.Name] = true
	rm.mu.Unlock()
	defer func() {
		rm.mu.Lock()
		delete(rm.creating, req.Name)
		rm.mu.Unlock()
	}()
	rec, err := cl.CreateRoom(ctx, cluster.RoomRecord{Name: req.Name, Kind: string(req.Kind),
		MaxParticipants: req.MaxParticipants, AutoRecord: req.AutoRecord, Owner: me, Instance: sfu.NewInstance()})
	switch {
	case errors.Is(err, cluster.ErrRoomExists):
		writeError(c, fmt.Errorf("%w: %q", sfu.ErrRoomExists, req.Name))
		return
	case err != nil:
		refuseUnavailable(c, unavailable(err))
		return
	}
	r, err := rm.sfu.CreateRoom(req.Name, req.Kind, sfu.RoomOptions{MaxParticipants: req.MaxParticipants, AutoRecord: req.AutoRecord, Instance: rec.Instance})
	if err != nil {
		if derr := cl.DeleteRoom(context.WithoutCancel(ctx), req.Name, me); derr != nil && !errors.Is(derr, cluster.ErrRoomNotFound) {
			rm.log.Warn("cluster: undo a room record", "room", req.Name, "err", derr)
		}
		writeError(c, err)
		return
	}
	rm.keepRecord(rec)
	rm.srv.RoomCreated(r)
	rm.watchRoom(r)
	c.JSON(http.StatusCreated, rm.srv.DescribeRoom(r))
}

// ListRooms is the node's signaling.Federation.ListRooms: it serves GET /v1/rooms,
// unless a peer asks or ?scope=local does (this node's rooms only).
func (rm *roomMap) ListRooms(c *gin.Context) bool {
	if _, peer := rm.router.fromPeer(c); peer || c.Query("scope") == "local" {
		return false
	}
	rm.listRooms(c)
	return true
}

// listRooms is GET /v1/rooms on a node: every room of the map, each
// described by the node that holds it (asked with ?scope=local), or from
// its record alone when that node does not answer.
func (rm *roomMap) listRooms(c *gin.Context) {
	ctx, cancel, err := rm.router.redisCtx(c)
	if err != nil {
		refuseUnavailable(c, err)
		return
	}
	defer cancel()
	cl := rm.cl
	recs, err := cl.Rooms(ctx)
	if err != nil {
		refuseUnavailable(c, unavailable(err))
		return
	}
	nodes, err := cl.Nodes(ctx)
	if err != nil {
		refuseUnavailable(c, unavailable(err))
		return
	}
	type listed struct {
		node  string
		rooms []signaling.RoomResponse
	}
	results := make(chan listed, len(nodes))
	asked := 0
	for _, peer := range nodes {
		if peer.ID == rm.id {
			continue
		}
		asked++
		go func() {
			results <- listed{node: peer.ID, rooms: rm.peerRooms(c, peer)}
		}()
	}
	byNode := map[string]map[string]signaling.RoomResponse{rm.id: {}}
	for _, r := range rm.srv.DescribeRooms() {
		byNode[rm.id][r.Name] = r
	}
	for range asked {
		l := <-results
		m := map[string]signaling.RoomResponse{}
		for _, r := range l.rooms {
			m[r.Name] = r
		}
		byNode[l.node] = m
	}
	out := signaling.ListRoomsResponse{Rooms: make([]signaling.RoomResponse, 0, len(recs))}
	for _, rec := range recs {
		r, ok := byNode[rec.Owner][rec.Name]
		if !ok {
			r = signaling.RoomResponse{Name: rec.Name, Kind: sfu.Kind(rec.Kind), MaxParticipants: rec.MaxParticipants,
				AutoRecord: rec.AutoRecord, Instance: rec.Instance, Participants: []signaling.ParticipantResponse{}}
		}
		r.Node = rec.Owner
		out.Rooms = append(out.Rooms, r)
	}
	sort.Slice(out.Rooms, func(i, j int) bool { return out.Rooms[i].Name < out.Rooms[j].Name })
	c.JSON(http.StatusOK, out)
}

// peerRooms asks node peer for the rooms it holds (GET
// /v1/rooms?scope=local with the caller's admin key and this node's peer
// auth); nil if it does not answer within clusterTimeout.
func (rm *roomMap) peerRooms(c *gin.Context, peer cluster.Node) []signaling.RoomResponse {
	ctx, cancel := context.WithTimeout(c.Request.Context(), clusterTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(peer.URL, "/")+"/v1/rooms?scope=local", nil)
	if err != nil {
		return nil
	}
	req.Header.Set("Authorization", c.GetHeader("Authorization"))
	rm.router.signPeerRequest(req)
	req.Header.Set(HeaderClientIP, rm.router.ClientAddr(c))
	resp, err := rm.router.peers.RoundTrip(req)
	if err != nil {
		rm.log.Warn("cluster: list the rooms of a node", "node", peer.ID, "err", err)
		return nil
	}
	defer resp.Body.Close()
	var out signaling.ListRoomsResponse
	if resp.StatusCode != http.StatusOK || json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&out) != nil {
		rm.log.Warn("cluster: list the rooms of a node", "node", peer.ID, "status", resp.StatusCode)
		return nil
	}
	return out.Rooms
}

// clusterWatcher makes a room's record follow the room: when the room
// ends here (deleted, drained), its record leaves the map. A room that
// moved, or that ends because this node shuts down, keeps its record:
// another node holds it, or will.
type clusterWatcher struct {
	rm   *roomMap
	room string
}

// Deliver implements sfu.Sink; it runs under the room's lock.
func (w *clusterWatcher) Deliver(ev sfu.Event) {
	ce, ok := ev.(sfu.RoomClosedEvent)
	if !ok {
		return
	}
	w.rm.mu.Lock()
	defer w.rm.mu.Unlock()
	delete(w.rm.records, w.room)
	if ce.Reason == signaling.ReasonRoomMoved || ce.Reason == sfu.ReasonShutdown {
		return
	}
	w.rm.deleting[w.room] = true
	go func() {
		if err := w.rm.forgetRoom(w.room); err != nil {
			w.rm.log.Warn("cluster: delete a room's record; retried when Redis is back", "room", w.room, "err", err)
		}
	}()
}

// watchRoom makes r's record follow it (clusterWatcher).
func (rm *roomMap) watchRoom(r *sfu.Room) {
	if err := r.Watch(&clusterWatcher{rm: rm, room: r.Name()}); err != nil {
		rm.log.Debug("watch room for the cluster", "room", r.Name(), "err", err)
	}
}

// deletingRoom reports whether the room ended here and its record is
// still to delete.
func (rm *roomMap) deletingRoom(name string) bool {
	rm.mu.Lock()
	defer rm.mu.Unlock()
	return rm.deleting[name]
}

// forgetRoom deletes the record of a room that ended here, if this node
// still owns it. A failure to reach Redis keeps it to retry
// (clusterLoop); until then the room is not adopted again.
func (rm *roomMap) forgetRoom(name string) error {
	rm.mu.Lock()
	rm.deleting[name] = true
	rm.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	err := rm.cl.DeleteRoom(ctx, name, rm.id)
	if err != nil && !errors.Is(err, cluster.ErrRoomNotFound) && !errors.Is(err, cluster.ErrNotOwner) {
		return err
	}
	rm.mu.Lock()
	delete(rm.deleting, name)
	rm.mu.Unlock()
	return nil
}

// RoomDeleted is the node's signaling.Federation.RoomDeleted: the record of a room
// deleted here leaves the map (or will, once Redis is back).
func (rm *roomMap) RoomDeleted(name string) {
	if err := rm.forgetRoom(name); err != nil {
		rm.log.Warn("cluster: delete a room's record; retried when Redis is back", "room", name, "err", err)
	}
}

// adopt opens here a room the map gives to this node that it does not
// hold: one re-homed here from a node that died (cluster.Config.Adopt).
// An edge replica of it gives way to it.
func (rm *roomMap) adopt(rec cluster.RoomRecord) {
	if rm.srv.AdmitRoom() == signaling.ErrShuttingDown {
		return // its rooms go to the other nodes
	}
	rm.mu.Lock()
	creating, deleting := rm.creating[rec.Name], rm.deleting[rec.Name]
	rm.mu.Unlock()
	switch {
	case creating:
		return
	case deleting:
		go func() { _ = rm.forgetRoom(rec.Name) }()
		return
	}
	if r, err := rm.sfu.Room(rec.Name); err == nil {
		if !rm.cascade.isReplica(rec.Name) {
			return
		}
		r.Close(signaling.ReasonRoomMoved)
	}
	// The instance goes with the room: its tokens and evidence stay its
	// own (a record of an older node has none: a new one is drawn).
	r, err := rm.sfu.CreateRoom(rec.Name, sfu.Kind(rec.Kind), sfu.RoomOptions{MaxParticipants: rec.MaxParticipants, AutoRecord: rec.AutoRecord, Instance: rec.Instance})
	if err != nil {
		rm.log.Error("cluster: adopt a room", "room", rec.Name, "err", err)
		return
	}
	rec.Instance = r.Instance()
	rm.log.Info("cluster: room re-homed here", "room", rec.Name, "epoch", rec.Epoch, "instance", rec.Instance)
	rm.keepRecord(rec)
	rm.roomAdopted(r, rec)
	rm.watchRoom(r)
}

// HandOff is the node's signaling.Federation.HandOff: it moves an empty room this
// node holds to the least loaded other node, for a drain: the room goes
// on there instead of ending. It reports whether it did; false for an
// edge replica, or with no other node (or no Redis): the room ends then,
// as on a single node.
func (rm *roomMap) HandOff(r *sfu.Room) bool {
	cl := rm.cl
	name := r.Name()
	if rm.cascade.isReplica(name) || !cl.Available() {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*clusterTimeout)
	defer cancel()
	to, err := cl.Pick(ctx, rm.id)
	if err != nil {
		return false
	}
	rm.mu.Lock()
	rec, ok := rm.records[name]
	rm.creating[name] = true // not to adopt back meanwhile
	rm.mu.Unlock()
	defer func() {
		rm.mu.Lock()
		delete(rm.creating, name)
		rm.mu.Unlock()
	}()
	if !ok {
		opts := r.Options()
		rec = cluster.RoomRecord{Name: name, Kind: string(r.Kind()), MaxParticipants: opts.MaxParticipants, AutoRecord: opts.AutoRecord, Instance: opts.Instance}
	}
	r.Close(signaling.ReasonRoomMoved) // its record stays
	if err := cl.DeleteRoom(ctx, name, rm.id); err != nil && !errors.Is(err, cluster.ErrRoomNotFound) {
		rm.log.Warn("cluster: hand a room over", "room", name, "err", err)
		return true // closed here; its record is re-homed when this node leaves
	}
	rec.Owner = to.ID
	if _, err := cl.CreateRoom(ctx, rec); err != nil {
		rm.log.Warn("cluster: hand a room over", "room", name, "to", to.ID, "err", err)
		return true
	}
	rm.log.Info("cluster: draining: room handed over", "room", name, "to", to.ID)
	return true
}

// lose closes a room this node held that the map gives to another
// node (re-homed while this node was cut off from Redis) or no longer
// has (deleted through another node): each participant leaves with
// reason room_moved, and their clients open new sessions, which reach
// the room where it is now (cluster.Config.Lost).
func (rm *roomMap) lose(name string) {
	r, err := rm.sfu.Room(name)
	if err != nil || rm.cascade.isReplica(name) {
		return
	}
	rm.log.Warn("cluster: room moved to another node", "room", name)
	go r.Close(signaling.ReasonRoomMoved) // not on the heartbeat: leaving takes a while
}

// heldRooms lists the rooms this node holds, as records
// (cluster.Config.Rooms): edge replicas and rooms ending here are not.
func (rm *roomMap) heldRooms() []cluster.RoomRecord {
	me := rm.id
	var out []cluster.RoomRecord
	for _, r := range rm.sfu.Rooms() {
		if rm.cascade.isReplica(r.Name()) || rm.deletingRoom(r.Name()) {
			continue
		}
		rm.mu.Lock()
		rec, ok := rm.records[r.Name()]
		rm.mu.Unlock()
		if !ok {
			opts := r.Options()
			rec = cluster.RoomRecord{Name: r.Name(), Kind: string(r.Kind()), MaxParticipants: opts.MaxParticipants, AutoRecord: opts.AutoRecord, Instance: opts.Instance}
		}
		rec.Owner = me
		out = append(out, rec)
	}
	return out
}

// keepRecord keeps the record of a room held here, for heldRooms
// (written back as it was if Redis loses it); watchRoom's watcher
// forgets it when the room ends.
func (rm *roomMap) keepRecord(rec cluster.RoomRecord) {
	rm.mu.Lock()
	defer rm.mu.Unlock()
	rm.records[rec.Name] = rec
}

// load is this node's load figure (cluster.Config.Load): its rooms
// (edge replicas included) and their participants; a draining node,
// which takes no new room, reports the most there is.
func (rm *roomMap) load() cluster.Load {
	if rm.srv.Draining() {
		return cluster.Load{Rooms: math.MaxInt32, Participants: math.MaxInt32}
	}
	var l cluster.Load
	for _, r := range rm.sfu.Rooms() {
		l.Rooms++
		l.Participants += len(r.List())
	}
	return l
}

// Revocations across nodes.

// msgRevoked is the bus message of a revocation (cluster.Revoke).
const msgRevoked = "revoked"

// Revoked is the node's signaling.Federation.Revoked: it tells every node of a
// revocation made here. While Redis is away it is kept and told when
// Redis is back; this node, which holds the room, applies it at once
// either way.
func (rm *roomMap) Revoked(room, identity string, at time.Time) {
	rv := cluster.Revocation{Room: room, Identity: identity, At: at}
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	if err := rm.cl.Revoke(ctx, rv); err != nil {
		rm.log.Warn("cluster: revocation not told to the other nodes yet; retried when Redis is back", "room", room, "participant", identity, "err", err)
		rm.mu.Lock()
		rm.revokes = append(rm.revokes, rv)
		rm.mu.Unlock()
	}
}

// onRevoked applies a revocation made on another node.
func (rm *roomMap) onRevoked(m cluster.Message) {
	if m.Origin == rm.id {
		return // applied when it was made
	}
	var rv cluster.Revocation
	if err := json.Unmarshal(m.Data, &rv); err != nil || rv.Room == "" || rv.Identity == "" {
		rm.log.Warn("cluster: bad revocation message", "origin", m.Origin, "err", err)
		return
	}
	rm.applyRevocation(rv)
}

// applyRevocation refuses the tokens a revocation covers and the TURN
// credentials this node handed that identity, and disconnects
// the participant of that identity in that room here, if there is one
// (in an edge replica too).
func (rm *roomMap) applyRevocation(rv cluster.Revocation) {
	rm.srv.Tokens().RevokeAt(rv.Room, rv.Identity, rv.At)
	rm.sfu.RevokeICEServers(rv.Room, rv.Identity)
	r, err := rm.sfu.Room(rv.Room)
	if err != nil {
		return
	}
	if p := r.Participant(rv.Identity); p != nil {
		p.Leave(sfu.ReasonRevoked)
	}
}

// roomAdopted tells the webhooks of a room re-homed here (room.rehomed)
// and watches it for them.
func (rm *roomMap) roomAdopted(r *sfu.Room, rec cluster.RoomRecord) {
	h := rm.cfg.Signaling.Webhooks
	if !h.Enabled() {
		return
	}
	opts := r.Options()
	h.Emit(webhooks.RoomRehomed, roomRehomedHook{
		Room: r.Name(), Kind: r.Kind(), MaxParticipants: opts.MaxParticipants, AutoRecord: opts.AutoRecord,
		Node: rm.id, Epoch: rec.Epoch,
	})
	rm.srv.WatchHooks(r)
}

// roomRehomedHook is the payload of room.rehomed: the room (as in
// room.created), the node that holds it now, and its epoch (one more at
// each re-homing).
type roomRehomedHook struct {
	Room            string   `json:"room"`
	Kind            sfu.Kind `json:"kind,omitempty"`
	MaxParticipants int      `json:"max_participants,omitempty"`
	AutoRecord      bool     `json:"auto_record,omitempty"`
	Node            string   `json:"node"`
	Epoch           int64    `json:"epoch"`
}
