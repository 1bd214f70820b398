// Package cluster joins Vigil nodes through Redis: a registry of live
// nodes (a heartbeat with a load figure, under a lease), the map of rooms
// to the node that owns each (re-homed when its owner's lease runs out),
// token revocations, and a bus (Redis pub/sub) on which nodes tell each
// other of room events. It knows nothing of HTTP, WebRTC or the media
// core: signaling decides what to do with what it says.
//
// What is in Redis (every key under Config.Prefix, "vigil:" by default):
//
//	node:{id}        hash: url, rooms, participants (the load figure),
//	                 started (unix ms), sig (the registration's signature,
//	                 below); PX lease, renewed at every heartbeat
//	nodes            set of node ids ever registered (pruned by the sweep)
//	room:{name}      hash: kind, max_participants, auto_record (0/1), owner,
//	                 epoch, created (unix ms); no expiry: it lives until
//	                 deleted
//	rooms            set of room names
//	revoked          sorted set: JSON {room, identity} scored by the
//	                 revocation's unix time in ms; members older than
//	                 24 h + 1 s are trimmed
//	instance         a random string, no expiry, set by the first node that
//	                 finds it missing: it tells a Redis that lost its data
//	                 from one that did not (see below)
//	bus              the pub/sub channel of Message values (JSON)
//
// # The heartbeat
//
// Each node runs one heartbeat goroutine. Every Config.Heartbeat it
//
//  1. renews its node key (with the Config.Load figure) for one
//     Config.Lease, and reads the instance key (creating it if missing);
//  2. reads the live nodes (those whose node key exists) into the cache
//     that Node answers from, and prunes dead ids from the nodes set;
//  3. reads Config.Rooms, then the room map;
//  4. sweeps: every room whose owner is not live is re-homed, by a script
//     that changes the owner only if it is still the dead one and the dead
//     one is still dead, to the least loaded live node (Pick's order), with
//     epoch+1. Every node sweeps; the compare-and-set makes concurrent
//     sweeps safe (a room is re-homed once). A node sweeps only after it
//     has reached Redis for one whole Lease without a failure, so that
//     after an outage (all leases lapsed while Redis was away, or Redis
//     restarted from a snapshot) the other nodes have time to renew before
//     anyone takes their rooms;
//  5. reconciles this node: Config.Adopt for each room the map gives to
//     this node that Config.Rooms does not list; Config.Lost for each room
//     Config.Rooms lists that the map gives to another node, or (see the
//     rule below) that the map no longer has.
//
// # Signed registrations
//
// Whoever can write to Redis could otherwise point a node id at any URL,
// and every node would relay that node's calls there, admin key and all.
// So a node signs its registration with the cluster key (Config.Key):
// sig is the hex HMAC-SHA256, keyed with Config.Key, of "vigil node v1",
// the node id and its URL, each followed by a newline. A registration
// whose sig does not verify is not a node: Nodes, Pick and Node leave it
// out (the heartbeat logs it once), so nothing is placed on it, relayed
// to it or asked of it. Its rooms are not re-homed while its key exists
// (a live node whose record was overwritten signs it again at its next
// heartbeat; one that lies keeps its rooms unreachable, which anyone who
// can write to Redis could do by deleting them).
//
// # Redis restarted empty, or a room deleted?
//
// A room that Config.Rooms lists and the map lacks was either deleted
// through another node (Lost) or lost by Redis (restarted without its
// data, flushed): then the node writes the room back, owner itself, with
// the epoch and creation time its record has, and Lost is not called. The
// rule that tells them apart is the instance key. A node remembers the
// value it read at its last heartbeat; if the value changed, or the node
// found it missing (it creates it then), Redis lost its data since, and
// the node writes back every room of its own that the map lacks, until one
// heartbeat has written them all, but for the rooms it created itself
// since it found out: those were written in this Redis, so one the map
// lacks was deleted. If the value is the one remembered, the
// map is intact and a missing room was deleted. The value is read in the
// same transaction as the room records, so a Redis that restarts in the
// middle of a heartbeat is not mistaken for mass deletion. Neither "this
// node's key had expired" nor "the map is empty" is used as the sign: a
// node cut off from Redis longer than its lease comes back to an intact
// map (its rooms re-homed, some perhaps deleted), and an empty map is also
// what deleting the last room leaves.
//
// Consequences: Redis must not evict keys without an expiry (use the
// default noeviction, or a volatile-* policy), and a Redis restarted from
// an old snapshot (same instance value, rooms created since missing) makes
// their owners call Lost. Since Config.Rooms is read before the map,
// signaling must put a room in the map (CreateRoom) before it lists it
// locally, and take it out of the map (DeleteRoom) before it stops
// listing it; otherwise a heartbeat in between calls Lost or Adopt for it.
// Even in that order, a heartbeat that reads Rooms just before a room
// created here is listed, and the map just after CreateRoom wrote it,
// calls Adopt for it: Adopt must ignore a room its caller is creating
// (signaling remembers the names it is creating).
//
// # Outages
//
// Every call to Redis runs under a timeout of about one second, and the
// client dials once per attempt and retries a command at most once, so a
// caller gets an error wrapping ErrUnavailable quickly when Redis is gone
// (a caller whose own context ends first gets that context's error).
// go-redis logs failed dials through its own process-wide logger
// (redis.SetLogger is main's to call, not this package's); after ten of
// them it stops dialing and probes once a second, so it may take about a
// second after Redis returns for calls to succeed again.
// Available turns false at the first failed call and true again at the
// next successful heartbeat. The heartbeat keeps trying at its own pace
// and logs once when Redis goes away and once when it returns. The bus
// goroutine reconnects and subscribes again by itself; messages published
// while a node was away from Redis are not delivered to it (the bus is
// Redis pub/sub: at most once, no history).
package cluster

import (
	"encoding/json"
	"errors"
	"log/slog"
	"time"
)

// Errors.
var (
	// ErrUnavailable wraps every failure to reach Redis.
	ErrUnavailable = errors.New("cluster: redis unavailable")
	// ErrRoomExists: a room of that name is already in the map.
	ErrRoomExists = errors.New("cluster: room exists")
	// ErrRoomNotFound: no room of that name in the map.
	ErrRoomNotFound = errors.New("cluster: room not found")
	// ErrNodeNotFound: no live node of that id.
	ErrNodeNotFound = errors.New("cluster: node not found")
	// ErrNotOwner: a room changed owner since it was read (a lost race or
	// a re-homing).
	ErrNotOwner = errors.New("cluster: not the room's owner")
	// ErrInvalid: a Config or an argument that cannot be used (a node id
	// with '.', an empty room name...).
	ErrInvalid = errors.New("cluster: invalid argument")
)

// Config configures a node's membership.
type Config struct {
	// RedisURL is a redis:// URL (go-redis ParseURL); required.
	RedisURL string
	// NodeID names this node; "" picks a random one. Node ids must not
	// contain '.', which separates them from the rest of a session id.
	NodeID string
	// URL is how other nodes reach this node's HTTP server, e.g.
	// http://10.0.0.5:7880; required.
	URL string
	// Key is the cluster key, the same on every node; required. It
	// signs this node's registration (id and URL), and a registration
	// it does not verify is ignored (see "Signed registrations").
	Key []byte
	// Heartbeat is how often the node renews its lease, publishes its
	// load and sweeps for dead owners; 0 means 1 s.
	Heartbeat time.Duration
	// Lease is how long a node is live after its last heartbeat; 0 means
	// 5 s. A dead node's rooms are re-homed after it. It must be longer
	// than Heartbeat; keep it to several heartbeats and well above one
	// second, the time a call to an unresponsive Redis takes to fail (a
	// heartbeat stuck that long must not let the lease run out).
	Lease time.Duration
	// Prefix is put before every key and the bus channel; "" means
	// "vigil:". Tests use their own.
	Prefix string
	// Load is sampled at every heartbeat (by New, then from the heartbeat
	// goroutine); nil reports zeros.
	//
	// Load, Rooms, Adopt and Lost run on the heartbeat goroutine and must
	// be quick (hand long work to another goroutine): a heartbeat held up
	// for longer than the Lease lets this node's lease run out, and the
	// other nodes take its rooms.
	Load func() Load
	// Rooms lists the rooms this node holds; at every heartbeat the node
	// writes back any of them that Redis lost (Redis restarted empty)
	// and learns of those it no longer owns. nil: none. It is called from
	// the heartbeat goroutine, before the map is read: a room must be in
	// the map before Rooms lists it (see the package doc).
	Rooms func() []RoomRecord
	// Adopt is called (from the heartbeat goroutine, never concurrently)
	// for each room the map says this node owns that Rooms does not list:
	// a room re-homed here, or created here through another node. Rooms
	// should list the room once Adopt returns, or Adopt is called again
	// at the next heartbeat; Adopt should be idempotent (a room this node
	// is creating itself may be adopted too).
	Adopt func(RoomRecord)
	// Lost is called (from the heartbeat goroutine, never concurrently
	// with Adopt) for each room Rooms lists that the map gives to another
	// node (re-homed while this node was cut off) or no longer has
	// (deleted through another node). Rooms should stop listing it, or
	// Lost is called again at the next heartbeat.
	Lost func(name string)
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// Load is a node's load figure, compared when a room is placed: fewer
// participants first, then fewer rooms.
type Load struct {
	Rooms        int `json:"rooms"`
	Participants int `json:"participants"`
}

// Node is a live node.
type Node struct {
	ID      string    `json:"id"`
	URL     string    `json:"url"`
	Load    Load      `json:"load"`
	Started time.Time `json:"started"`
}

// RoomRecord is a room's entry in the map.
type RoomRecord struct {
	Name            string    `json:"name"`
	Kind            string    `json:"kind"`
	MaxParticipants int       `json:"max_participants"`
	AutoRecord      bool      `json:"auto_record"`
	Owner           string    `json:"owner"`
	Epoch           int64     `json:"epoch"` // +1 at every re-homing
	Created         time.Time `json:"created"`
	// Instance is the room instance's id (sfu.RoomOptions.Instance),
	// kept when the room is re-homed or handed over: the join tokens
	// and the evidence of this instance stay its own. Empty in a record
	// written by an older node.
	Instance string `json:"instance,omitempty"`
}

// Message is what nodes say to each other on the bus.
type Message struct {
	Type   string          `json:"type"`   // e.g. "revoked", "room_event"
	Origin string          `json:"origin"` // the sending node's id
	Room   string          `json:"room,omitempty"`
	Data   json.RawMessage `json:"data,omitempty"`
}
