package cluster

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// CreateRoom adds rec to the map (rec.Owner must be a live node, else
// ErrNodeNotFound; Epoch and Created are set here, Created to the
// millisecond) unless a room of that name exists (ErrRoomExists). It
// returns the record as stored; an empty Name is ErrInvalid.
func (c *Cluster) CreateRoom(ctx context.Context, rec RoomRecord) (RoomRecord, error) {
	if rec.Name == "" {
		return RoomRecord{}, fmt.Errorf("%w: empty room name", ErrInvalid)
	}
	rec.Epoch = 1
	rec.Created = time.UnixMilli(time.Now().UnixMilli()).UTC()
	if err := c.insertRoom(ctx, "create room", rec); err != nil {
		return RoomRecord{}, err
	}
	c.fresh.created(rec.Name)
	return rec, nil
}

// insertRoom writes rec as it is, if no room of its name exists and its
// owner is live.
func (c *Cluster) insertRoom(ctx context.Context, op string, rec RoomRecord) error {
	var res int64
	err := c.call(ctx, op, func(ctx context.Context) error {
		var err error
		res, err = createScript.Run(ctx, c.rdb,
			[]string{c.keys.room(rec.Name), c.keys.rooms(), c.keys.node(rec.Owner)},
			rec.Name, rec.Kind, rec.MaxParticipants, boolArg(rec.AutoRecord),
			rec.Owner, rec.Epoch, rec.Created.UnixMilli(), rec.Instance,
		).Int64()
		return err
	})
	switch {
	case err != nil:
		return err
	case res == 0:
		return fmt.Errorf("%w: %q", ErrRoomExists, rec.Name)
	case res < 0:
		return fmt.Errorf("%w: owner %q of room %q", ErrNodeNotFound, rec.Owner, rec.Name)
	}
	return nil
}

// Room returns a room's record, ErrRoomNotFound when it has none.
func (c *Cluster) Room(ctx context.Context, name string) (RoomRecord, error) {
	var h map[string]string
	err := c.call(ctx, "room", func(ctx context.Context) error {
		var err error
		h, err = c.rdb.HGetAll(ctx, c.keys.room(name)).Result()
		return err
	})
	if err != nil {
		return RoomRecord{}, err
	}
	if len(h) == 0 {
		return RoomRecord{}, fmt.Errorf("%w: %q", ErrRoomNotFound, name)
	}
	return parseRoom(name, h), nil
}

// Rooms lists every room's record, sorted by name.
func (c *Cluster) Rooms(ctx context.Context) ([]RoomRecord, error) {
	var recs []RoomRecord
	err := c.call(ctx, "rooms", func(ctx context.Context) error {
		names, hashes, err := c.hashesOf(ctx, c.keys.rooms(), c.keys.room)
		if err != nil {
			return err
		}
		for i, name := range names {
			if h := hashes[i]; len(h) > 0 {
				recs = append(recs, parseRoom(name, h))
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(recs, func(a, b RoomRecord) int { return cmp.Compare(a.Name, b.Name) })
	return recs, nil
}

// DeleteRoom removes a room from the map if owner still owns it
// (ErrNotOwner otherwise; ErrRoomNotFound when it is gone already).
func (c *Cluster) DeleteRoom(ctx context.Context, name, owner string) error {
	var res int64
	err := c.call(ctx, "delete room", func(ctx context.Context) error {
		var err error
		res, err = deleteScript.Run(ctx, c.rdb,
			[]string{c.keys.room(name), c.keys.rooms()}, name, owner).Int64()
		return err
	})
	switch {
	case err != nil:
		return err
	case res == 0:
		return fmt.Errorf("%w: %q", ErrRoomNotFound, name)
	case res < 0:
		return fmt.Errorf("%w: room %q, owner %q", ErrNotOwner, name, owner)
	}
	return nil
}

// readMap reads, in one transaction, the instance key and the records of
// the rooms in the map and of names (the rooms this node lists). ok is
// false when the instance key is not the one the heartbeat last saw:
// Redis lost its data in the middle of the heartbeat, and nothing read
// may be trusted.
func (c *Cluster) readMap(ctx context.Context, names []string) (recs map[string]RoomRecord, ok bool, err error) {
	err = c.call(ctx, "read rooms", func(ctx context.Context) error {
		members, err := c.rdb.SMembers(ctx, c.keys.rooms()).Result()
		if err != nil {
			return err
		}
		all := slices.Concat(members, names)
		slices.Sort(all)
		all = slices.Compact(all)
		var inst *redis.StringCmd
		cmds := make([]*redis.MapStringStringCmd, len(all))
		_, err = c.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
			inst = p.Get(ctx, c.keys.instance())
			for i, name := range all {
				cmds[i] = p.HGetAll(ctx, c.keys.room(name))
			}
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		if inst.Val() != c.hbState.instance {
			return nil
		}
		ok = true
		recs = make(map[string]RoomRecord, len(all))
		for i, name := range all {
			if h := cmds[i].Val(); len(h) > 0 {
				recs[name] = parseRoom(name, h)
			}
		}
		return nil
	})
	return recs, ok, err
}

// rehome moves a room from a dead owner to a live one; see rehomeScript.
func (c *Cluster) rehome(ctx context.Context, name, from, to string) (int64, error) {
	var epoch int64
	err := c.call(ctx, "re-home room", func(ctx context.Context) error {
		var err error
		epoch, err = rehomeScript.Run(ctx, c.rdb,
			[]string{c.keys.room(name), c.keys.node(from), c.keys.node(to)},
			from, to).Int64()
		return err
	})
	return epoch, err
}

func parseRoom(name string, h map[string]string) RoomRecord {
	maxp, _ := strconv.Atoi(h["max_participants"])
	epoch, _ := strconv.ParseInt(h["epoch"], 10, 64)
	created, _ := strconv.ParseInt(h["created"], 10, 64)
	return RoomRecord{
		Name:            name,
		Kind:            h["kind"],
		MaxParticipants: maxp,
		AutoRecord:      h["auto_record"] == "1",
		Owner:           h["owner"],
		Epoch:           epoch,
		Created:         time.UnixMilli(created).UTC(),
		Instance:        h["instance"],
	}
}

func boolArg(b bool) int {
	if b {
		return 1
	}
	return 0
}
