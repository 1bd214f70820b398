package cluster

import (
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"time"
)

// renew registers or renews this node's key for one lease, with the load
// figure, and reads the instance key; it records in hbState whether Redis
// lost its data since the last renewal. Called by New, then only by the
// heartbeat goroutine.
func (c *Cluster) renew(parent context.Context) error {
	load := c.loadFn()
	fresh := randomID()
	var res []any
	err := c.call(parent, "renew", func(ctx context.Context) error {
		var err error
		res, err = renewScript.Run(ctx, c.rdb,
			[]string{c.keys.node(c.ID()), c.keys.nodes(), c.keys.instance()},
			c.ID(), c.lease.Milliseconds(), fresh, c.cfg.URL,
			load.Rooms, load.Participants, c.start.UnixMilli(),
			hex.EncodeToString(registrationSig(c.cfg.Key, c.ID(), c.cfg.URL)),
		).Slice()
		return err
	})
	if err != nil {
		return err
	}
	if len(res) != 3 {
		return fmt.Errorf("cluster: renew: unexpected reply %v", res)
	}
	inst, _ := res[0].(string)
	created, _ := res[1].(int64)
	existed, _ := res[2].(int64)

	st := &c.hbState
	switch {
	case st.instance == "" && created == 1:
		// New found no instance key: a new or an emptied Redis; write
		// back whatever Rooms lists.
		st.writeBack = true
		c.fresh.arm()
	case st.instance != "" && inst != st.instance:
		st.writeBack = true
		c.fresh.arm()
		c.log.Warn("cluster: redis lost its data; writing this node's rooms back")
	case st.instance != "" && existed == 0:
		c.log.Warn("cluster: this node's lease had run out; registered again")
	}
	st.instance = inst
	return nil
}

// registrationLabel starts the signed text of a registration.
const registrationLabel = "vigil node v1"

// registrationSig is the signature of node id's registration at url
// (see "Signed registrations" in the package doc).
func registrationSig(key []byte, id, url string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(registrationLabel + "\n" + id + "\n" + url + "\n"))
	return m.Sum(nil)
}

// signed reports whether the registration h of node id carries a
// signature of its URL with the cluster key (compared in constant time).
func (c *Cluster) signed(id string, h map[string]string) bool {
	got, err := hex.DecodeString(h["sig"])
	return err == nil && hmac.Equal(got, registrationSig(c.cfg.Key, id, h["url"]))
}

// Nodes lists the live nodes (lease not expired, registration signed),
// this one included, sorted by id.
func (c *Cluster) Nodes(ctx context.Context) ([]Node, error) {
	live, _, _, err := c.readNodes(ctx)
	return live, err
}

// readNodes reads the nodes set: the live nodes sorted by id, the ids
// whose key is gone, and the ids whose registration is not signed with
// the cluster key (left out of live).
func (c *Cluster) readNodes(ctx context.Context) (live []Node, dead, unsigned []string, err error) {
	err = c.call(ctx, "nodes", func(ctx context.Context) error {
		ids, hashes, err := c.hashesOf(ctx, c.keys.nodes(), c.keys.node)
		if err != nil {
			return err
		}
		for i, id := range ids {
			switch h := hashes[i]; {
			case len(h) == 0:
				dead = append(dead, id)
			case !c.signed(id, h):
				unsigned = append(unsigned, id)
			default:
				live = append(live, parseNode(id, h))
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, nil, err
	}
	slices.SortFunc(live, func(a, b Node) int { return cmp.Compare(a.ID, b.ID) })
	return live, dead, unsigned, nil
}

// Node returns a live node, ErrNodeNotFound when its lease ran out or its
// registration is not signed with the cluster key. It
// may answer from a cache no older than one heartbeat (refreshed by the
// heartbeat); a node missing from the cache, or a cache gone stale
// (Redis unreachable), is asked of Redis.
func (c *Cluster) Node(ctx context.Context, id string) (Node, error) {
	c.mu.Lock()
	n, ok := c.cache[id]
	fresh := time.Since(c.cacheAt) <= c.hb
	c.mu.Unlock()
	if ok && fresh {
		return n, nil
	}
	var h map[string]string
	err := c.call(ctx, "node", func(ctx context.Context) error {
		var err error
		h, err = c.rdb.HGetAll(ctx, c.keys.node(id)).Result()
		return err
	})
	if err != nil {
		return Node{}, err
	}
	if len(h) == 0 {
		return Node{}, fmt.Errorf("%w: %q", ErrNodeNotFound, id)
	}
	if !c.signed(id, h) {
		c.log.Debug("cluster: a node's registration is not signed with the cluster key; ignored", "peer", id)
		return Node{}, fmt.Errorf("%w: %q: its registration is not signed with the cluster key", ErrNodeNotFound, id)
	}
	return parseNode(id, h), nil
}

// Pick returns the least loaded live node (fewest participants, then
// rooms, then id), skipping those in except; ErrNodeNotFound when none is
// left.
func (c *Cluster) Pick(ctx context.Context, except ...string) (Node, error) {
	nodes, err := c.Nodes(ctx)
	if err != nil {
		return Node{}, err
	}
	n, ok := pick(nodes, except...)
	if !ok {
		return Node{}, fmt.Errorf("%w: no live node to pick", ErrNodeNotFound)
	}
	return n, nil
}

// pick is Pick's choice among nodes.
func pick(nodes []Node, except ...string) (Node, bool) {
	var best Node
	found := false
	for _, n := range nodes {
		if slices.Contains(except, n.ID) {
			continue
		}
		if !found || lessLoaded(n, best) {
			best, found = n, true
		}
	}
	return best, found
}

func lessLoaded(a, b Node) bool {
	if a.Load.Participants != b.Load.Participants {
		return a.Load.Participants < b.Load.Participants
	}
	if a.Load.Rooms != b.Load.Rooms {
		return a.Load.Rooms < b.Load.Rooms
	}
	return a.ID < b.ID
}

func parseNode(id string, h map[string]string) Node {
	rooms, _ := strconv.Atoi(h["rooms"])
	parts, _ := strconv.Atoi(h["participants"])
	started, _ := strconv.ParseInt(h["started"], 10, 64)
	return Node{
		ID:      id,
		URL:     h["url"],
		Load:    Load{Rooms: rooms, Participants: parts},
		Started: time.UnixMilli(started).UTC(),
	}
}

// setCache replaces the cache of live nodes.
func (c *Cluster) setCache(nodes []Node) {
	m := make(map[string]Node, len(nodes))
	for _, n := range nodes {
		m[n.ID] = n
	}
	c.mu.Lock()
	c.cache = m
	c.cacheAt = time.Now()
	c.mu.Unlock()
}

// prune takes the ids of dead nodes out of the nodes set, each only if
// its key is still gone (a node that comes back adds itself again).
func (c *Cluster) prune(ctx context.Context, dead []string) error {
	for _, id := range dead {
		err := c.call(ctx, "prune", func(ctx context.Context) error {
			return pruneScript.Run(ctx, c.rdb,
				[]string{c.keys.node(id), c.keys.nodes()}, id).Err()
		})
		if err != nil {
			return err
		}
	}
	return nil
}
