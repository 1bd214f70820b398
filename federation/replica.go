package federation

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
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
