package cluster

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestNewConfig(t *testing.T) {
	ctx := ctxT(t)
	bad := []struct {
		name string
		cfg  Config
	}{
		{"no redis url", Config{URL: "http://x", Key: testKey}},
		{"no url", Config{RedisURL: "redis://127.0.0.1:1", Key: testKey}},
		{"no key", Config{RedisURL: "redis://127.0.0.1:1", URL: "http://x"}},
		{"dot in id", Config{RedisURL: "redis://127.0.0.1:1", URL: "http://x", Key: testKey, NodeID: "a.b"}},
		{"lease not above heartbeat", Config{RedisURL: "redis://127.0.0.1:1", URL: "http://x", Key: testKey,
			Heartbeat: time.Second, Lease: time.Second}},
		{"bad scheme", Config{RedisURL: "http://127.0.0.1:1", URL: "http://x", Key: testKey}},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(ctx, tc.cfg)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("New: %v, want ErrInvalid", err)
			}
		})
	}

	t.Run("unreachable", func(t *testing.T) {
		url := "redis://127.0.0.1:" + strconv.Itoa(freePort(t))
		start := time.Now()
		_, err := New(ctx, Config{RedisURL: url, URL: "http://x", Key: testKey})
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("New: %v, want ErrUnavailable", err)
		}
		if d := time.Since(start); d > 1500*time.Millisecond {
			t.Errorf("New took %v to fail", d)
		}
	})

	t.Run("random id", func(t *testing.T) {
		r := startRedis(t)
		c := newNode(t, r.URL(), "", nil)
		if c.ID() == "" || strings.Contains(c.ID(), ".") {
			t.Fatalf("ID() = %q", c.ID())
		}
		if c.URL() != "http://.test:7880" {
			t.Errorf("URL() = %q", c.URL())
		}
		if !c.Available() {
			t.Error("not Available after New")
		}
	})
}

func TestRegistryAndLease(t *testing.T) {
	r := startRedis(t)
	ctx := ctxT(t)
	raw := rawClient(t, r.Addr())
	a := newNode(t, r.URL(), "a", nil)
	b := newNode(t, r.URL(), "b", nil, func(c *Config) {
		c.Load = func() Load { return Load{Rooms: 2, Participants: 5} }
	})

	nodes, err := a.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := nodeIDs(nodes); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("Nodes = %v", got)
	}
	if nodes[1].URL != "http://b.test:7880" || nodes[1].Load != (Load{Rooms: 2, Participants: 5}) ||
		time.Since(nodes[1].Started) > time.Minute {
		t.Errorf("node b = %+v", nodes[1])
	}
	n, err := a.Node(ctx, "b")
	if err != nil || n.URL != "http://b.test:7880" {
		t.Fatalf("Node(b) = %+v, %v", n, err)
	}
	if _, err := a.Node(ctx, "nobody"); !errors.Is(err, ErrNodeNotFound) {
		t.Fatalf("Node(nobody): %v", err)
	}

	// b's heartbeat stops, as in a crash: it is gone after its lease.
	b.stopHeartbeat()
	waitFor(t, "b to leave Nodes", func() bool {
		nodes, err := a.Nodes(ctx)
		return err == nil && slices.Equal(nodeIDs(nodes), []string{"a"})
	})
	waitFor(t, "Node(b) to fail", func() bool {
		_, err := a.Node(ctx, "b")
		return errors.Is(err, ErrNodeNotFound)
	})
	waitFor(t, "the sweep to prune b from the nodes set", func() bool {
		return !raw.SIsMember(ctx, testPrefix(t)+"nodes", "b").Val()
	})

	// A clean Close removes the node at once, and twice is fine.
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if n := raw.Exists(ctx, testPrefix(t)+"node:a").Val(); n != 0 {
		t.Error("node:a still there after Close")
	}
	if raw.SIsMember(ctx, testPrefix(t)+"nodes", "a").Val() {
		t.Error("a still in nodes after Close")
	}
	if err := a.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestUnsignedRegistration: a node record written into Redis by anyone
// but a node holding the cluster key (no signature, a node's signature
// copied onto another URL, or one made with another key) is not a node:
// not listed, not picked, not found; its rooms are left alone.
func TestUnsignedRegistration(t *testing.T) {
	r := startRedis(t)
	ctx := ctxT(t)
	raw := rawClient(t, r.Addr())
	p := testPrefix(t)
	a := newNode(t, r.URL(), "a", newHolder(), func(c *Config) {
		c.Load = func() Load { return Load{Rooms: 9, Participants: 90} } // every forged node is less loaded
	})
	aSig := raw.HGet(ctx, p+"node:a", "sig").Val()
	if aSig != hex.EncodeToString(registrationSig(testKey, "a", "http://a.test:7880")) {
		t.Fatalf("a's registration: sig %q", aSig)
	}
	forged := map[string]string{
		"0none":     "",
		"0copied":   aSig, // a's signature, another URL
		"0otherkey": hex.EncodeToString(registrationSig([]byte("another key"), "0otherkey", "http://attacker.test")),
	}
	for id, sig := range forged {
		raw.HSet(ctx, p+"node:"+id, "url", "http://attacker.test", "rooms", 0, "participants", 0, "started", 0, "sig", sig)
		raw.SAdd(ctx, p+"nodes", id)
	}
	raw.HSet(ctx, p+"room:stolen", "kind", "conference", "max_participants", 0, "auto_record", 0,
		"owner", "0copied", "epoch", 1, "created", time.Now().UnixMilli())
	raw.SAdd(ctx, p+"rooms", "stolen")
	// A record signed with the cluster key is a node: the test can fail.
	raw.HSet(ctx, p+"node:b", "url", "http://b.test:7880", "rooms", 0, "participants", 0, "started", 0,
		"sig", hex.EncodeToString(registrationSig(testKey, "b", "http://b.test:7880")))
	raw.PExpire(ctx, p+"node:b", time.Minute)
	raw.SAdd(ctx, p+"nodes", "b")

	time.Sleep(3 * testHeartbeat) // the cache refreshed
	nodes, err := a.Nodes(ctx)
	if err != nil || !slices.Equal(nodeIDs(nodes), []string{"a", "b"}) {
		t.Fatalf("Nodes = %v, %v; want [a b]", nodeIDs(nodes), err)
	}
	for id := range forged {
		if n, err := a.Node(ctx, id); !errors.Is(err, ErrNodeNotFound) {
			t.Errorf("Node(%s) = %+v, %v; want ErrNodeNotFound", id, n, err)
		}
	}
	if n, err := a.Pick(ctx, "b"); err != nil || n.ID != "a" {
		t.Errorf("Pick = %+v, %v; want a", n, err)
	}
	time.Sleep(testLease + 3*testHeartbeat) // past the sweep's wait
	if rec, err := a.Room(ctx, "stolen"); err != nil || rec.Owner != "0copied" || rec.Epoch != 1 {
		t.Errorf("the forged owner's room: %+v, %v; want it left alone", rec, err)
	}
}

func nodeIDs(nodes []Node) []string {
	ids := make([]string, len(nodes))
	for i, n := range nodes {
		ids[i] = n.ID
	}
	return ids
}

func TestPick(t *testing.T) {
	r := startRedis(t)
	ctx := ctxT(t)
	loads := map[string]Load{
		"a": {Rooms: 1, Participants: 10},
		"b": {Rooms: 5, Participants: 3},
		"c": {Rooms: 2, Participants: 3},
		"d": {Rooms: 2, Participants: 3},
	}
	var a *Cluster
	for _, id := range []string{"a", "b", "c", "d"} {
		c := newNode(t, r.URL(), id, nil, func(c *Config) {
			c.Load = func() Load { return loads[id] }
		})
		if id == "a" {
			a = c
		}
	}
	for _, tc := range []struct {
		except []string
		want   string
	}{
		{nil, "c"}, // fewest participants, then rooms, then id
		{[]string{"c"}, "d"},
		{[]string{"c", "d"}, "b"},
		{[]string{"b", "c", "d"}, "a"},
	} {
		n, err := a.Pick(ctx, tc.except...)
		if err != nil || n.ID != tc.want {
			t.Errorf("Pick(%v) = %q, %v; want %q", tc.except, n.ID, err, tc.want)
		}
	}
	if _, err := a.Pick(ctx, "a", "b", "c", "d"); !errors.Is(err, ErrNodeNotFound) {
		t.Errorf("Pick(all): %v, want ErrNodeNotFound", err)
	}
}

func TestRooms(t *testing.T) {
	r := startRedis(t)
	ctx := ctxT(t)
	ha, hb := newHolder(), newHolder()
	a := newNode(t, r.URL(), "a", ha)
	b := newNode(t, r.URL(), "b", hb)

	before := time.Now().Add(-time.Second)
	want := RoomRecord{Name: "r1", Kind: "broadcast", MaxParticipants: 50, AutoRecord: true, Owner: "a", Instance: "0123456789abcdef"}
	rec := createHeld(t, ctx, a, ha, want)
	want.Epoch, want.Created = 1, rec.Created
	if rec != want || rec.Created.Before(before) || rec.Created.After(time.Now()) {
		t.Fatalf("CreateRoom = %+v", rec)
	}
	if got, err := b.Room(ctx, "r1"); err != nil || got != want {
		t.Fatalf("Room(r1) = %+v, %v; want %+v", got, err, want)
	}
	if _, err := b.CreateRoom(ctx, RoomRecord{Name: "r1", Owner: "b"}); !errors.Is(err, ErrRoomExists) {
		t.Fatalf("CreateRoom(r1) again: %v", err)
	}
	if _, err := b.CreateRoom(ctx, RoomRecord{Name: "r9", Owner: "ghost"}); !errors.Is(err, ErrNodeNotFound) {
		t.Fatalf("CreateRoom with a dead owner: %v", err)
	}
	if _, err := b.CreateRoom(ctx, RoomRecord{Owner: "b"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("CreateRoom without a name: %v", err)
	}

	// Created through b for a: a adopts it at its next heartbeat.
	r0, err := b.CreateRoom(ctx, RoomRecord{Name: "r0", Kind: "proctoring", Owner: "a"})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a to adopt r0", func() bool { return slices.Contains(ha.names(), "r0") })

	recs, err := b.Rooms(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[0] != r0 || recs[1] != want {
		t.Fatalf("Rooms = %+v", recs)
	}

	if err := b.DeleteRoom(ctx, "r1", "b"); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("DeleteRoom by a non-owner: %v", err)
	}
	if err := b.DeleteRoom(ctx, "r1", "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Room(ctx, "r1"); !errors.Is(err, ErrRoomNotFound) {
		t.Fatalf("Room(r1) after delete: %v", err)
	}
	if err := b.DeleteRoom(ctx, "r1", "a"); !errors.Is(err, ErrRoomNotFound) {
		t.Fatalf("DeleteRoom again: %v", err)
	}
	// Deleted through b: a loses it (the map is intact: no write-back).
	waitFor(t, "a to lose r1", func() bool { return !slices.Contains(ha.names(), "r1") })
	time.Sleep(3 * testHeartbeat)
	if _, err := a.Room(ctx, "r1"); !errors.Is(err, ErrRoomNotFound) {
		t.Fatalf("r1 came back: %v", err)
	}
	adopted, lost := ha.counts()
	if adopted["r0"] != 1 || lost["r1"] != 1 || len(adopted) != 1 || len(lost) != 1 {
		t.Errorf("a adopted %v, lost %v", adopted, lost)
	}
	if adopted, lost := hb.counts(); len(adopted)+len(lost) != 0 {
		t.Errorf("b adopted %v, lost %v", adopted, lost)
	}
}

// A dead node's rooms are re-homed once each, by racing sweepers.
func TestRehomeDeadNode(t *testing.T) {
	r := startRedis(t)
	ctx := ctxT(t)
	hd := newHolder()
	d := newNode(t, r.URL(), "d", hd)
	for i := range 12 {
		name := fmt.Sprintf("room%02d", i)
		createHeld(t, ctx, d, hd, RoomRecord{Name: name, Kind: "conference", Owner: "d"})
	}
	sweepers := map[string]*holder{"a": newHolder(), "b": newHolder(), "c": newHolder()}
	var a *Cluster
	for id, h := range sweepers {
		c := newNode(t, r.URL(), id, h)
		if id == "a" {
			a = c
		}
	}

	d.stopHeartbeat() // a crash: its key expires after the lease
	waitFor(t, "d's rooms to be re-homed", func() bool {
		recs, err := a.Rooms(ctx)
		return err == nil && len(recs) == 12 &&
			!slices.ContainsFunc(recs, func(r RoomRecord) bool { return r.Owner == "d" })
	})
	// Let the other sweepers and reconciles run: no second re-homing,
	// no second adoption.
	time.Sleep(5 * testHeartbeat)
	recs, err := a.Rooms(ctx)
	if err != nil {
		t.Fatal(err)
	}
	owners := map[string]bool{}
	for _, rec := range recs {
		owners[rec.Owner] = true
		if rec.Epoch != 2 {
			t.Errorf("%s: epoch %d, want 2", rec.Name, rec.Epoch)
		}
		total := 0
		for id, h := range sweepers {
			adopted, lost := h.counts()
			total += adopted[rec.Name]
			if adopted[rec.Name] > 0 && id != rec.Owner {
				t.Errorf("%s: adopted by %s, owned by %s", rec.Name, id, rec.Owner)
			}
			if len(lost) > 0 {
				t.Errorf("%s lost %v", id, lost)
			}
		}
		if total != 1 {
			t.Errorf("%s adopted %d times", rec.Name, total)
		}
	}
	if len(owners) < 2 {
		t.Errorf("all of d's rooms went to %v", owners)
	}
}

// A node cut off from Redis longer than its lease comes back to an intact
// map: it loses the rooms re-homed away and those deleted meanwhile, and
// writes nothing back.
func TestCutOffNodeLosesRooms(t *testing.T) {
	r := startRedis(t)
	ctx := ctxT(t)
	p := startProxy(t, r.Addr())
	ha, hb := newHolder(), newHolder()
	a := newNode(t, p.URL(), "a", ha)
	b := newNode(t, r.URL(), "b", hb)
	for _, name := range []string{"r1", "r2"} {
		createHeld(t, ctx, a, ha, RoomRecord{Name: name, Owner: "a"})
	}

	p.Cut()
	waitFor(t, "a to see Redis unavailable", func() bool { return !a.Available() })
	start := time.Now()
	if _, err := a.Room(ctx, "r1"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Room while cut off: %v", err)
	}
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Errorf("Room took %v to fail", d)
	}
	waitFor(t, "b to adopt a's rooms", func() bool {
		return slices.Equal(hb.names(), []string{"r1", "r2"})
	})
	if err := b.DeleteRoom(ctx, "r2", "b"); err != nil {
		t.Fatal(err)
	}
	hb.remove("r2")

	p.Restore()
	waitFor(t, "a to lose r1 and r2", func() bool { return len(ha.names()) == 0 })
	if !a.Available() {
		t.Error("a not Available after the cut")
	}
	time.Sleep(3 * testHeartbeat)
	if _, err := a.Room(ctx, "r2"); !errors.Is(err, ErrRoomNotFound) {
		t.Errorf("r2 came back: %v", err)
	}
	rec, err := a.Room(ctx, "r1")
	if err != nil || rec.Owner != "b" || rec.Epoch != 2 {
		t.Errorf("r1 = %+v, %v", rec, err)
	}
	if adopted, lost := ha.counts(); len(adopted) != 0 || lost["r1"] != 1 || lost["r2"] != 1 {
		t.Errorf("a adopted %v, lost %v", adopted, lost)
	}
}

// Every node cut off longer than its lease while Redis keeps its data
// (as after a Redis restart from a snapshot): when they come back, none
// takes the others' rooms, since a node sweeps only after one lease of
// good heartbeats.
func TestAllCutOffNoRehoming(t *testing.T) {
	r := startRedis(t)
	ctx := ctxT(t)
	raw := rawClient(t, r.Addr())
	p := startProxy(t, r.Addr())
	longer := func(c *Config) { c.Lease = time.Second }
	ha, hb := newHolder(), newHolder()
	a := newNode(t, p.URL(), "a", ha, longer)
	b := newNode(t, p.URL(), "b", hb, longer)
	var want []RoomRecord
	for _, n := range []struct {
		c *Cluster
		h *holder
	}{{a, ha}, {b, hb}} {
		want = append(want, createHeld(t, ctx, n.c, n.h, RoomRecord{Name: "room-" + n.c.ID(), Owner: n.c.ID()}))
	}

	p.Cut()
	waitFor(t, "both leases to run out", func() bool {
		return raw.Exists(ctx, testPrefix(t)+"node:a", testPrefix(t)+"node:b").Val() == 0
	})
	p.Restore()
	waitFor(t, "both nodes back", func() bool {
		nodes, err := a.Nodes(ctx)
		return err == nil && len(nodes) == 2 && a.Available() && b.Available()
	})
	time.Sleep(2 * time.Second) // past the sweep's wait, and some
	recs, err := a.Rooms(ctx)
	if err != nil || !slices.Equal(recs, want) {
		t.Errorf("Rooms = %+v, %v; want %+v", recs, err, want)
	}
	for _, h := range []*holder{ha, hb} {
		if adopted, lost := h.counts(); len(adopted)+len(lost) != 0 {
			t.Errorf("adopted %v, lost %v", adopted, lost)
		}
	}
}

// A heartbeat that reads Rooms before a room this node is creating is
// held, and the map after its record is written, calls Adopt for it
// (see Config.Adopt); the caller, creating it, ignores that, and no
// later heartbeat adopts or loses it. The interleaving is forced: the
// heartbeat is held inside Rooms while the record is written.
func TestHeartbeatDuringCreation(t *testing.T) {
	r := startRedis(t)
	ctx := ctxT(t)
	ha := newHolder()
	var hold atomic.Bool
	var listed atomic.Int64
	entered, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	adopts := make(chan RoomRecord, 16)
	a := newNode(t, r.URL(), "a", ha, func(c *Config) {
		c.Lease = 5 * time.Second // a heartbeat held up must not lose a's lease
		c.Rooms = func() []RoomRecord {
			if hold.CompareAndSwap(true, false) {
				entered <- struct{}{}
				<-release
			}
			defer listed.Add(1)
			return ha.list()
		}
		c.Adopt = func(rec RoomRecord) {
			adopts <- rec
			ha.adopt(rec)
		}
	})
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) }) // before a's Close

	hold.Store(true)
	select {
	case <-entered:
	case <-time.After(testDeadline):
		t.Fatal("no heartbeat")
	}
	ha.mu.Lock()
	ha.creating["r"] = true
	ha.mu.Unlock()
	rec, err := a.CreateRoom(ctx, RoomRecord{Name: "r", Owner: "a"})
	if err != nil {
		t.Fatal(err)
	}
	releaseOnce.Do(func() { close(release) })
	select {
	case got := <-adopts:
		if got != rec {
			t.Fatalf("Adopt(%+v), want %+v", got, rec)
		}
	case <-time.After(testDeadline):
		t.Fatal("the held heartbeat did not call Adopt for the room being created")
	}
	ha.add(rec)
	// The next heartbeat lists the room; the one after it has reconciled
	// that one.
	n := listed.Load()
	waitFor(t, "two more heartbeats", func() bool { return listed.Load() >= n+2 })
	if adopted, lost := ha.counts(); len(adopted)+len(lost) != 0 {
		t.Errorf("adopted %v, lost %v", adopted, lost)
	}
	if len(adopts) != 0 {
		t.Errorf("Adopt called again for %+v", <-adopts)
	}
	if !slices.Equal(ha.names(), []string{"r"}) {
		t.Errorf("holding %v", ha.names())
	}
}

// Redis stops: calls fail fast, Available turns false. Redis comes back
// empty: the nodes register again, write their rooms back, and the bus
// works again.
func TestRedisOutageAndEmptyRestart(t *testing.T) {
	r := startRedis(t)
	ctx := ctxT(t)
	ha, hb := newHolder(), newHolder()
	a := newNode(t, r.URL(), "a", ha)
	b := newNode(t, r.URL(), "b", hb)
	var want []RoomRecord
	for _, n := range []struct {
		c *Cluster
		h *holder
	}{{a, ha}, {b, hb}} {
		want = append(want, createHeld(t, ctx, n.c, n.h, RoomRecord{Name: "room-" + n.c.ID(), Kind: "broadcast", Owner: n.c.ID()}))
	}
	var mu sync.Mutex
	var got []string
	cancel := b.Subscribe("ping", func(m Message) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, string(m.Data))
	})
	defer cancel()
	goroutines := runtime.NumGoroutine()

	r.Stop()
	start := time.Now()
	waitFor(t, "both nodes to see Redis unavailable", func() bool { return !a.Available() && !b.Available() })
	t.Logf("Available false after %v", time.Since(start))
	calls := map[string]func() error{
		"Room":        func() error { _, err := a.Room(ctx, "room-a"); return err },
		"Rooms":       func() error { _, err := a.Rooms(ctx); return err },
		"CreateRoom":  func() error { _, err := a.CreateRoom(ctx, RoomRecord{Name: "x", Owner: "a"}); return err },
		"DeleteRoom":  func() error { return a.DeleteRoom(ctx, "room-a", "a") },
		"Nodes":       func() error { _, err := a.Nodes(ctx); return err },
		"Pick":        func() error { _, err := a.Pick(ctx); return err },
		"Node":        func() error { _, err := a.Node(ctx, "nobody"); return err },
		"Publish":     func() error { return a.Publish(ctx, Message{Type: "ping"}) },
		"Revoke":      func() error { return a.Revoke(ctx, Revocation{Room: "r", Identity: "u"}) },
		"Revocations": func() error { _, err := a.Revocations(ctx); return err },
	}
	for name, call := range calls {
		start := time.Now()
		err := call()
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("%s: %v, want ErrUnavailable", name, err)
		}
		if d := time.Since(start); d > 1500*time.Millisecond {
			t.Errorf("%s took %v to fail", name, d)
		}
	}
	time.Sleep(10 * testHeartbeat) // the heartbeats keep failing
	if n := runtime.NumGoroutine(); n > goroutines+10 {
		t.Errorf("%d goroutines during the outage, %d before", n, goroutines)
	}

	r.Start() // empty
	waitFor(t, "the nodes to register again and write their rooms back", func() bool {
		nodes, err := a.Nodes(ctx)
		if err != nil || !slices.Equal(nodeIDs(nodes), []string{"a", "b"}) {
			return false
		}
		recs, err := a.Rooms(ctx)
		return err == nil && slices.Equal(recs, want)
	})
	waitFor(t, "both nodes Available", func() bool { return a.Available() && b.Available() })
	for _, h := range []*holder{ha, hb} {
		if adopted, lost := h.counts(); len(adopted)+len(lost) != 0 {
			t.Errorf("adopted %v, lost %v", adopted, lost)
		}
	}
	// go-redis subscribes the bus again; until it has, messages are
	// missed, so keep publishing.
	i := 0
	waitFor(t, "the bus to deliver again", func() bool {
		i++
		if err := a.Publish(ctx, Message{Type: "ping", Data: json.RawMessage(strconv.Itoa(i))}); err != nil {
			t.Logf("Publish: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
		mu.Lock()
		defer mu.Unlock()
		return len(got) > 0
	})
}

func TestRevocations(t *testing.T) {
	r := startRedis(t)
	ctx := ctxT(t)
	raw := rawClient(t, r.Addr())
	a := newNode(t, r.URL(), "a", nil)
	b := newNode(t, r.URL(), "b", nil)
	msgs := make(chan Message, 10)
	defer b.Subscribe("revoked", func(m Message) { msgs <- m })()

	now := time.Now()
	r1 := Revocation{Room: "exam", Identity: "u1", At: now.Add(-time.Hour)}
	r2 := Revocation{Room: "exam", Identity: "u2", At: now}
	for _, r := range []Revocation{r1, r2, {Room: "exam", Identity: "u1", At: now.Add(-2 * time.Hour)}} {
		if err := a.Revoke(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	ms := func(t time.Time) time.Time { return time.UnixMilli(t.UnixMilli()).UTC() }
	r1.At, r2.At = ms(r1.At), ms(r2.At)
	for i, want := range []Revocation{r1, r2} {
		select {
		case m := <-msgs:
			var got Revocation
			if err := json.Unmarshal(m.Data, &got); err != nil || got != want || m.Origin != "a" || m.Room != "exam" {
				t.Errorf("message %d = %+v (%+v, %v), want %+v", i, m, got, err, want)
			}
		case <-time.After(testDeadline):
			t.Fatal("no revoked message")
		}
	}
	list, err := b.Revocations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(list, []Revocation{r1, r2}) {
		t.Errorf("Revocations = %+v, want %+v (the later u1 kept)", list, []Revocation{r1, r2})
	}

	// Older than 24 h + 1 s: trimmed on write and on read.
	if err := a.Revoke(ctx, Revocation{Room: "exam", Identity: "old", At: now.Add(-RevocationTTL - time.Second)}); err != nil {
		t.Fatal(err)
	}
	key := testPrefix(t) + "revoked"
	if n := raw.ZCard(ctx, key).Val(); n != 2 {
		t.Errorf("%d members after revoking an old one, want 2", n)
	}
	raw.ZAdd(ctx, key, redis.Z{Score: float64(now.Add(-RevocationTTL - time.Minute).UnixMilli()), Member: `{"room":"exam","identity":"stale"}`})
	keep := Revocation{Room: "exam", Identity: "recent", At: ms(now.Add(-RevocationTTL + time.Minute))}
	raw.ZAdd(ctx, key, redis.Z{Score: float64(keep.At.UnixMilli()), Member: `{"room":"exam","identity":"recent"}`})
	list, err = a.Revocations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(list, []Revocation{keep, r1, r2}) {
		t.Errorf("Revocations = %+v", list)
	}
	if n := raw.ZCard(ctx, key).Val(); n != 3 {
		t.Errorf("%d members after reading, want 3", n)
	}
}

func TestBus(t *testing.T) {
	r := startRedis(t)
	ctx := ctxT(t)
	a := newNode(t, r.URL(), "a", nil)
	b := newNode(t, r.URL(), "b", nil)

	type rec struct {
		mu   sync.Mutex
		msgs []Message
	}
	collect := func(c *Cluster, typ string) (*rec, func()) {
		r := &rec{}
		cancel := c.Subscribe(typ, func(m Message) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.msgs = append(r.msgs, m)
		})
		return r, cancel
	}
	count := func(r *rec) int {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.msgs)
	}
	ax, cancelAX := collect(a, "x")
	ay, cancelAY := collect(a, "y")
	defer cancelAY()
	bx, cancelBX := collect(b, "x")
	defer cancelBX()

	const n = 200
	for i := range n {
		if err := a.Publish(ctx, Message{Type: "x", Room: "r", Data: json.RawMessage(strconv.Itoa(i))}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "every message on both nodes", func() bool { return count(ax) == n && count(bx) == n })
	for _, r := range []*rec{ax, bx} {
		for i, m := range r.msgs {
			if m.Type != "x" || m.Origin != "a" || m.Room != "r" || string(m.Data) != strconv.Itoa(i) {
				t.Fatalf("message %d = %+v", i, m)
			}
		}
	}
	if count(ay) != 0 {
		t.Errorf("the y subscriber got %d x messages", count(ay))
	}

	// A subscriber may cancel itself from its callback.
	var once rec
	var cancelOnce func()
	ready := make(chan struct{})
	cancelOnce = a.Subscribe("once", func(m Message) {
		<-ready
		once.mu.Lock()
		once.msgs = append(once.msgs, m)
		once.mu.Unlock()
		cancelOnce()
	})
	close(ready)
	for range 3 {
		if err := a.Publish(ctx, Message{Type: "once"}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the once subscriber", func() bool { return count(&once) == 1 })
	time.Sleep(3 * testHeartbeat)
	if n := count(&once); n != 1 {
		t.Errorf("a subscriber that cancelled itself got %d messages", n)
	}

	// Unsubscribed: no more messages.
	cancelAX()
	ax2, cancelAX2 := collect(a, "x")
	defer cancelAX2()
	if err := b.Publish(ctx, Message{Type: "x", Data: json.RawMessage(`"last"`)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the last message", func() bool { return count(ax2) == 1 })
	if count(ax) != n {
		t.Errorf("a cancelled subscriber got %d messages, want %d", count(ax), n)
	}
	if ax2.msgs[0].Origin != "b" {
		t.Errorf("origin %q", ax2.msgs[0].Origin)
	}
}

// A bus connection that goes silent (its Redis vanished without closing
// it) is replaced.
func TestBusReplacesSilentConnection(t *testing.T) {
	r := startRedis(t)
	ctx := ctxT(t)
	p := startProxy(t, r.Addr())
	a := newNode(t, p.URL(), "a", nil)
	b := newNode(t, r.URL(), "b", nil)
	got := make(chan Message, 100)
	defer a.Subscribe("x", func(m Message) { got <- m })()

	p.Freeze()
	deadline := time.After(testDeadline)
	for i := 0; ; i++ {
		if err := b.Publish(ctx, Message{Type: "x", Data: json.RawMessage(strconv.Itoa(i))}); err != nil {
			t.Fatal(err)
		}
		select {
		case <-got:
			waitFor(t, "a Available again", a.Available)
			return
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatal("a never got a message after its bus connection froze")
		}
	}
}

// A subscriber that blocks delays nobody else; past its queue, its
// messages are dropped.
func TestSlowSubscriber(t *testing.T) {
	r := startRedis(t)
	ctx := ctxT(t)
	a := newNode(t, r.URL(), "a", nil)
	release := make(chan struct{})
	var mu sync.Mutex
	slow, fast := 0, 0
	defer a.Subscribe("x", func(Message) {
		<-release
		mu.Lock()
		slow++
		mu.Unlock()
	})()
	defer a.Subscribe("x", func(Message) {
		mu.Lock()
		fast++
		mu.Unlock()
	})()
	const n = SubscriberQueue + 50
	for range n {
		if err := a.Publish(ctx, Message{Type: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the fast subscriber to get everything", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return fast == n
	})
	close(release)
	// The slow one had a full queue and (most likely) one message in
	// hand; the rest was dropped.
	waitFor(t, "the slow subscriber to drain its queue", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slow >= SubscriberQueue
	})
	time.Sleep(3 * testHeartbeat)
	mu.Lock()
	defer mu.Unlock()
	if slow > SubscriberQueue+1 {
		t.Errorf("slow subscriber got %d messages, want at most %d", slow, SubscriberQueue+1)
	}
}

// Close ends every goroutine of New and Subscribe.
func TestCloseLeavesNoGoroutine(t *testing.T) {
	r := startRedis(t)
	ctx := ctxT(t)
	ignore := goleak.IgnoreCurrent()
	ha := newHolder()
	a := newNode(t, r.URL(), "a", ha)
	b := newNode(t, r.URL(), "b", nil)
	got := make(chan Message, 1)
	a.Subscribe("x", func(m Message) { got <- m })
	b.Subscribe("x", func(Message) {})
	if err := b.Publish(ctx, Message{Type: "x"}); err != nil {
		t.Fatal(err)
	}
	<-got
	rec, err := b.CreateRoom(ctx, RoomRecord{Name: "r", Owner: "a"})
	if err != nil {
		t.Fatal(err)
	}
	ha.add(rec)

	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	a.Subscribe("x", func(Message) { t.Error("called after Close") })()
	// a's room goes to b without waiting for a's lease to run out...
	waitFor(t, "b to take a's room", func() bool {
		rec, err := b.Room(ctx, "r")
		return err == nil && rec.Owner == "b"
	})
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Room(ctx, "r"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Room after Close: %v", err)
	}
	verifyNoGoroutines(t, ignore)
}

// Closing while Redis is away still ends every goroutine.
func TestCloseDuringOutage(t *testing.T) {
	r := startRedis(t)
	ignore := goleak.IgnoreCurrent()
	a := newNode(t, r.URL(), "a", nil)
	a.Subscribe("x", func(Message) {})
	r.Stop()
	waitFor(t, "a to see Redis unavailable", func() bool { return !a.Available() })
	// Long enough for go-redis to stop dialing and start its once a
	// second probe, which must end with Close too.
	time.Sleep(15 * testHeartbeat)
	if err := a.Close(); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Close: %v, want ErrUnavailable (it could not deregister)", err)
	}
	verifyNoGoroutines(t, ignore)
}

func TestPickOrder(t *testing.T) {
	n := func(id string, parts, rooms int) Node {
		return Node{ID: id, Load: Load{Rooms: rooms, Participants: parts}}
	}
	for _, tc := range []struct {
		nodes  []Node
		except []string
		want   string
	}{
		{nil, nil, ""},
		{[]Node{n("a", 1, 0)}, []string{"a"}, ""},
		{[]Node{n("a", 2, 0), n("b", 1, 9)}, nil, "b"},
		{[]Node{n("a", 1, 3), n("b", 1, 2)}, nil, "b"},
		{[]Node{n("b", 1, 2), n("a", 1, 2)}, nil, "a"},
		{[]Node{n("b", 1, 2), n("a", 1, 2)}, []string{"a"}, "b"},
	} {
		got, ok := pick(tc.nodes, tc.except...)
		if got.ID != tc.want || ok != (tc.want != "") {
			t.Errorf("pick(%v, %v) = %q, %v; want %q", tc.nodes, tc.except, got.ID, ok, tc.want)
		}
	}
}

// verifyNoGoroutines fails t if goroutines other than ignored ones are
// still running after a few seconds. go-redis's dial probe (started
// after repeated failed dials) notices a closed client within a second,
// which is longer than goleak waits by itself.
func verifyNoGoroutines(t *testing.T, ignore goleak.Option) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := goleak.Find(ignore)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestNoWriteBackOfRoomsCreatedSince: a node that found Redis empty
// (here: the first node of a new prefix) writes back, at its next
// reconcile, the rooms it holds that the map lacks. A room it created
// after that is in this Redis: if it is gone from the map, it was
// deleted through another node and must be lost, not written back. The
// node's first heartbeat is held in Rooms while the room is created,
// Redis is cut off from it and the room is deleted through another node,
// so that no reconcile runs between the arming and the deletion.
func TestNoWriteBackOfRoomsCreatedSince(t *testing.T) {
	r := startRedis(t)
	ctx := ctxT(t)
	p := startProxy(t, r.Addr())
	ha := newHolder()
	var hold atomic.Bool
	hold.Store(true)
	entered, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	a := newNode(t, p.URL(), "a", ha, func(c *Config) {
		c.Lease = 5 * time.Second // a held heartbeat must not lose a's lease
		c.Rooms = func() []RoomRecord {
			if hold.CompareAndSwap(true, false) {
				entered <- struct{}{}
				<-release
			}
			return ha.list()
		}
	})
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) }) // before a's Close
	b := newNode(t, r.URL(), "b", newHolder())

	select {
	case <-entered:
	case <-time.After(testDeadline):
		t.Fatal("no heartbeat")
	}
	createHeld(t, ctx, a, ha, RoomRecord{Name: "r1", Owner: "a"})
	p.Cut()
	if err := b.DeleteRoom(ctx, "r1", "a"); err != nil {
		t.Fatal(err)
	}
	releaseOnce.Do(func() { close(release) }) // its map read fails: cut off
	waitFor(t, "a to see Redis unavailable", func() bool { return !a.Available() })

	p.Restore()
	waitFor(t, "a to lose r1", func() bool { return len(ha.names()) == 0 })
	time.Sleep(3 * testHeartbeat)
	if _, err := b.Room(ctx, "r1"); !errors.Is(err, ErrRoomNotFound) {
		t.Errorf("r1 was written back: %v", err)
	}
	if adopted, lost := ha.counts(); len(adopted) != 0 || lost["r1"] != 1 {
		t.Errorf("a adopted %v, lost %v", adopted, lost)
	}
}
