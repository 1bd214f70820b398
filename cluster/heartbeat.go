package cluster

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"time"
)

// heartbeatState is owned by the heartbeat goroutine (and by New before
// the goroutine starts): no lock.
type heartbeatState struct {
	// instance is the value of the instance key at the last renewal.
	instance string
	// writeBack: Redis lost its data since; write back the rooms this
	// node lists that the map lacks (instead of calling Lost), but for
	// the rooms created since it was armed (Cluster.fresh).
	writeBack bool
	// down: the last heartbeat failed (the outage was logged).
	down      bool
	downSince time.Time
	// upSince: when the heartbeat last found Redis after a failure (or
	// New registered). The sweep waits for one lease after it.
	upSince time.Time
	// unsigned: the ids whose registration did not verify at the last
	// heartbeat (each logged once, when first seen); no more than the
	// nodes set holds.
	unsigned map[string]bool
}

// heartbeatLoop beats at once, then every Heartbeat, until hbStop.
func (c *Cluster) heartbeatLoop() {
	defer close(c.hbDone)
	t := time.NewTicker(c.hb)
	defer t.Stop()
	for {
		c.beat(c.hbCtx)
		select {
		case <-c.hbStop:
			return
		case <-t.C:
		}
	}
}

// beat is one heartbeat; see the package doc. A failure ends it (the
// next one starts over) and is logged once per outage.
func (c *Cluster) beat(ctx context.Context) {
	st := &c.hbState
	err := c.renew(ctx)
	var live []Node
	if err == nil {
		var dead, unsigned []string
		live, dead, unsigned, err = c.readNodes(ctx)
		if err == nil {
			c.noteUnsigned(unsigned)
			c.setCache(live)
			c.available.Store(true)
			if st.down {
				st.down = false
				st.upSince = time.Now()
				c.log.Info("cluster: redis is back",
					"after", time.Since(st.downSince).Round(time.Millisecond))
			}
			err = c.prune(ctx, dead)
		}
	}
	if err == nil {
		err = c.sweepAndReconcile(ctx, live)
	}
	if err == nil || ctx.Err() != nil {
		return
	}
	if !st.down {
		st.down = true
		st.downSince = time.Now()
		c.log.Warn("cluster: redis unavailable; retrying at every heartbeat", "err", err)
	}
}

// noteUnsigned logs, once each, the registrations that do not verify:
// someone who can write to Redis, or a node with another cluster key.
func (c *Cluster) noteUnsigned(ids []string) {
	st := &c.hbState
	seen := make(map[string]bool, len(ids))
	for _, id := range ids {
		seen[id] = true
		if !st.unsigned[id] {
			c.log.Warn("cluster: a node's registration is not signed with this cluster's key; ignoring it (is its admin key another?)", "peer", id)
		}
	}
	st.unsigned = seen
}

// sweepAndReconcile re-homes the rooms of dead owners, then tells this
// node what it gained and lost.
func (c *Cluster) sweepAndReconcile(ctx context.Context, live []Node) error {
	// Rooms is read before the map: a room this node lists was in the
	// map before, so a room missing from the map was taken out of it.
	var local []RoomRecord
	if c.cfg.Rooms != nil {
		local = c.cfg.Rooms()
	}
	names := make([]string, len(local))
	for i, r := range local {
		names[i] = r.Name
	}
	recs, ok, err := c.readMap(ctx, names)
	if err != nil || !ok {
		return err
	}
	if time.Since(c.hbState.upSince) >= c.lease {
		if err := c.sweep(ctx, recs, live); err != nil {
			return err
		}
	}
	return c.reconcile(ctx, recs, local)
}

// sweep re-homes every room of recs whose owner is not among live, and
// updates recs with what it did.
func (c *Cluster) sweep(ctx context.Context, recs map[string]RoomRecord, live []Node) error {
	// A copy of the load figures: each re-homed room counts on its new
	// owner, so that a dead node's rooms spread over the live ones.
	cand := slices.Clone(live)
	isLive := func(id string) bool {
		return slices.ContainsFunc(cand, func(n Node) bool { return n.ID == id })
	}
	for _, name := range slices.Sorted(maps.Keys(recs)) {
		rec := recs[name]
		if rec.Owner == c.ID() || isLive(rec.Owner) || c.hbState.unsigned[rec.Owner] {
			// An owner whose registration does not verify is not dead
			// (its key is there; the re-homing script would refuse):
			// its rooms stay until its key expires or is signed again.
			continue
		}
		to, found := pick(cand)
		if !found {
			return nil
		}
		epoch, err := c.rehome(ctx, name, rec.Owner, to.ID)
		if err != nil {
			return err
		}
		switch {
		case epoch > 0:
			c.log.Info("cluster: room re-homed", "room", name,
				"from", rec.Owner, "to", to.ID, "epoch", epoch)
			rec.Owner, rec.Epoch = to.ID, epoch
			recs[name] = rec
			i := slices.IndexFunc(cand, func(n Node) bool { return n.ID == to.ID })
			cand[i].Load.Rooms++
		case epoch == 0:
			// Another node re-homed it first (or deleted it, or its
			// owner came back): read what it is now.
			c.log.Debug("cluster: room changed before re-homing", "room", name)
			now, err := c.Room(ctx, name)
			switch {
			case err == nil:
				recs[name] = now
			case errors.Is(err, ErrRoomNotFound):
				delete(recs, name)
			default:
				return err
			}
		}
		// epoch < 0: the chosen node died meanwhile; the next sweep
		// picks another.
	}
	return nil
}

// reconcile calls Adopt and Lost, and writes rooms back after Redis lost
// its data.
func (c *Cluster) reconcile(ctx context.Context, recs map[string]RoomRecord, local []RoomRecord) error {
	st := &c.hbState
	listed := make(map[string]bool, len(local))
	for _, r := range local {
		listed[r.Name] = true
	}
	for _, name := range slices.Sorted(maps.Keys(recs)) {
		rec := recs[name]
		if rec.Owner != c.ID() || listed[name] {
			continue
		}
		c.log.Info("cluster: adopting room", "room", name, "epoch", rec.Epoch)
		if c.cfg.Adopt != nil {
			c.cfg.Adopt(rec)
		}
	}
	for _, l := range local {
		rec, inMap := recs[l.Name]
		switch {
		case inMap && rec.Owner == c.ID():
		case inMap:
			c.log.Info("cluster: room lost to another node", "room", l.Name,
				"owner", rec.Owner, "epoch", rec.Epoch)
			c.lost(l.Name)
		case st.writeBack && !c.fresh.has(l.Name):
			if err := c.writeBack(ctx, l); err != nil {
				return err
			}
		default:
			c.log.Info("cluster: room deleted through another node", "room", l.Name)
			c.lost(l.Name)
		}
	}
	st.writeBack = false
	c.fresh.disarm()
	return nil
}

func (c *Cluster) lost(name string) {
	if c.cfg.Lost != nil {
		c.cfg.Lost(name)
	}
}

// writeBack puts a room this node holds back in the map (after Redis lost
// its data), owned by this node, with the epoch and creation time of its
// record. A room of that name created meanwhile wins (the next heartbeat
// calls Lost).
func (c *Cluster) writeBack(ctx context.Context, rec RoomRecord) error {
	rec.Owner = c.ID()
	if rec.Epoch < 1 {
		rec.Epoch = 1
	}
	if rec.Created.IsZero() {
		rec.Created = time.Now()
	}
	err := c.insertRoom(ctx, "write room back", rec)
	switch {
	case err == nil:
		c.log.Info("cluster: room written back", "room", rec.Name, "epoch", rec.Epoch)
	case errors.Is(err, ErrRoomExists):
	default:
		return err
	}
	return nil
}

// freshRooms are the rooms this node created in the map since a heartbeat
// found Redis empty and armed the write-back, until the next reconcile
// has written back. They are in this Redis already: one the map lacks
// was deleted through another node meanwhile, not lost with Redis's
// data, and must not be written back (a node that creates rooms before
// its first reconcile, then loses Redis, would otherwise bring back the
// rooms deleted while it was away).
type freshRooms struct {
	// mu guards armed and names; nothing is locked while holding it.
	mu    sync.Mutex
	armed bool
	names map[string]bool
}

// arm starts counting the rooms created from now on.
func (f *freshRooms) arm() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.armed, f.names = true, map[string]bool{}
}

// disarm stops counting and forgets them.
func (f *freshRooms) disarm() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.armed, f.names = false, nil
}

// created notes a room this node has just written in the map.
func (f *freshRooms) created(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.armed {
		f.names[name] = true
	}
}

func (f *freshRooms) has(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.names[name]
}
