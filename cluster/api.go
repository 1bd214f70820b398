package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// opTimeout bounds every call to Redis, so that a caller (an HTTP
// request on this node) gets ErrUnavailable quickly when Redis is gone.
const opTimeout = time.Second

// Cluster is this node's membership. Its methods are safe for concurrent
// use.
type Cluster struct {
	cfg    Config
	log    *slog.Logger
	rdb    *redis.Client
	keys   keys
	lease  time.Duration
	hb     time.Duration
	start  time.Time // when New registered the node
	loadFn func() Load

	available atomic.Bool

	// stop ends the bus and subscriber goroutines; hbStop ends the
	// heartbeat (apart, so that a test can stop a node's heartbeat
	// without Close, as a crash would).
	stop       chan struct{}
	hbStop     chan struct{}
	hbCancel   context.CancelFunc
	hbCtx      context.Context
	busCancel  context.CancelFunc
	busCtx     context.Context
	hbDone     chan struct{}
	busDone    chan struct{}
	stopHBOnce sync.Once
	closeOnce  sync.Once
	closeErr   error
	subWG      sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	ps      *redis.PubSub            // the bus subscription
	cache   map[string]Node          // live nodes at the last refresh
	cacheAt time.Time                // when cache was refreshed
	subs    map[string][]*subscriber // by Message.Type

	// Owned by the heartbeat goroutine (and by New before it starts).
	hbState heartbeatState
	// fresh: the rooms created since the write-back was armed
	// (heartbeat.go); its own lock.
	fresh freshRooms
}

// keys names every key under the prefix.
type keys struct{ prefix string }

func (k keys) node(id string) string   { return k.prefix + "node:" + id }
func (k keys) nodes() string           { return k.prefix + "nodes" }
func (k keys) room(name string) string { return k.prefix + "room:" + name }
func (k keys) rooms() string           { return k.prefix + "rooms" }
func (k keys) revoked() string         { return k.prefix + "revoked" }
func (k keys) instance() string        { return k.prefix + "instance" }
func (k keys) bus() string             { return k.prefix + "bus" }

// New connects to Redis, registers the node and starts its heartbeat. It
// fails (wrapping ErrUnavailable) when Redis cannot be reached at start,
// and with ErrInvalid when cfg cannot be used. The first heartbeat (which
// may call Adopt) runs right after New returns, in the heartbeat
// goroutine.
func New(ctx context.Context, cfg Config) (*Cluster, error) {
	if cfg.RedisURL == "" {
		return nil, fmt.Errorf("%w: RedisURL is required", ErrInvalid)
	}
	if cfg.URL == "" {
		return nil, fmt.Errorf("%w: URL is required", ErrInvalid)
	}
	if len(cfg.Key) == 0 {
		return nil, fmt.Errorf("%w: Key is required", ErrInvalid)
	}
	if cfg.NodeID == "" {
		cfg.NodeID = randomID()
	}
	if strings.Contains(cfg.NodeID, ".") {
		return nil, fmt.Errorf("%w: node id %q contains '.'", ErrInvalid, cfg.NodeID)
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = time.Second
	}
	if cfg.Lease == 0 {
		cfg.Lease = 5 * time.Second
	}
	if cfg.Heartbeat < 0 || cfg.Lease <= cfg.Heartbeat {
		return nil, fmt.Errorf("%w: Lease (%v) must be longer than Heartbeat (%v)",
			ErrInvalid, cfg.Lease, cfg.Heartbeat)
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "vigil:"
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	opt, err := redisOptions(cfg.RedisURL)
	if err != nil {
		return nil, err
	}

	c := &Cluster{
		cfg:     cfg,
		log:     log.With("node", cfg.NodeID),
		rdb:     redis.NewClient(opt),
		keys:    keys{cfg.Prefix},
		lease:   cfg.Lease,
		hb:      cfg.Heartbeat,
		start:   time.Now(),
		loadFn:  cfg.Load,
		stop:    make(chan struct{}),
		hbStop:  make(chan struct{}),
		hbDone:  make(chan struct{}),
		busDone: make(chan struct{}),
		subs:    make(map[string][]*subscriber),
	}
	if c.loadFn == nil {
		c.loadFn = func() Load { return Load{} }
	}
	if err := c.open(ctx); err != nil {
		_ = c.rdb.Close()
		return nil, err
	}
	c.hbCtx, c.hbCancel = context.WithCancel(context.Background())
	c.busCtx, c.busCancel = context.WithCancel(context.Background())
	go c.heartbeatLoop()
	go c.busLoop()
	return c, nil
}

// open pings Redis, registers the node, fills the node cache and
// subscribes to the bus; the first failure ends it.
func (c *Cluster) open(ctx context.Context) error {
	err := c.call(ctx, "ping", func(ctx context.Context) error {
		return c.rdb.Ping(ctx).Err()
	})
	if err != nil {
		return err
	}
	if err := c.renew(ctx); err != nil {
		return err
	}
	c.hbState.upSince = time.Now()
	live, err := c.Nodes(ctx)
	if err == nil {
		c.setCache(live)
		c.ps, err = c.subscribeBus(ctx)
	}
	if err != nil {
		// Registered, but not going to beat: leave now rather than be
		// picked until the lease runs out (best effort).
		_ = c.call(context.Background(), "deregister", c.deregister)
		return err
	}
	c.available.Store(true)
	return nil
}

// deregister removes this node from the registry.
func (c *Cluster) deregister(ctx context.Context) error {
	_, err := c.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, c.keys.node(c.ID()))
		p.SRem(ctx, c.keys.nodes(), c.ID())
		return nil
	})
	return err
}

// redisOptions parses the URL and bounds what the URL leaves unsaid so
// that a call fails within about opTimeout when Redis is gone.
func redisOptions(url string) (*redis.Options, error) {
	opt, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("%w: RedisURL: %w", ErrInvalid, err)
	}
	if opt.DialTimeout == 0 {
		opt.DialTimeout = opTimeout / 2
	}
	if opt.ReadTimeout == 0 {
		opt.ReadTimeout = opTimeout
	}
	if opt.WriteTimeout == 0 {
		opt.WriteTimeout = opTimeout
	}
	if opt.PoolTimeout == 0 {
		opt.PoolTimeout = opTimeout
	}
	if opt.MaxRetries == 0 {
		opt.MaxRetries = 1
	}
	if opt.PoolSize == 0 {
		// Plenty for this package's calls; and after PoolSize failed
		// dials go-redis stops dialing (and logging each failure) and
		// probes once a second until Redis answers.
		opt.PoolSize = 10
	}
	// One dial per attempt: the heartbeat is the retry loop.
	opt.DialerRetries = 1
	opt.ContextTimeoutEnabled = true
	// A single Redis, not a managed one that moves endpoints.
	opt.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	return opt, nil
}

func randomID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read does not fail
	return hex.EncodeToString(b[:])
}

// ID is this node's id.
func (c *Cluster) ID() string { return c.cfg.NodeID }

// URL is this node's URL.
func (c *Cluster) URL() string { return c.cfg.URL }

// Available tells whether Redis answers: false from the first failed call
// to Redis (by anyone on this node) until the next successful heartbeat.
func (c *Cluster) Available() bool { return c.available.Load() }

// Close stops the heartbeat, removes this node from the registry (its
// rooms are re-homed by the others at their next sweep: a clean Close
// does not wait for the lease) and closes the Redis client. It waits for
// the goroutines of New and Subscribe to end (including a callback that
// is running: a callback must not call Close). Calling it again returns
// the first call's result.
func (c *Cluster) Close() error {
	c.closeOnce.Do(func() {
		c.stopHeartbeat()

		c.mu.Lock()
		c.closed = true
		ps := c.ps
		subs := c.subs
		c.subs = nil
		c.mu.Unlock()
		close(c.stop)
		c.busCancel()
		if ps != nil {
			_ = ps.Close() // unblocks the bus goroutine's read
		}
		<-c.busDone
		for _, list := range subs {
			for _, s := range list {
				s.cancel()
			}
		}
		c.subWG.Wait()

		c.closeErr = c.call(context.Background(), "deregister", c.deregister)
		if err := c.rdb.Close(); err != nil && c.closeErr == nil {
			c.closeErr = fmt.Errorf("cluster: close redis client: %w", err)
		}
	})
	return c.closeErr
}

// stopHeartbeat ends the heartbeat goroutine and waits for it, leaving
// the node key to expire: what a crash does. Close calls it.
func (c *Cluster) stopHeartbeat() {
	c.stopHBOnce.Do(func() {
		close(c.hbStop)
		c.hbCancel()
	})
	<-c.hbDone
}

// fail turns the error of a Redis call made under parent into this
// package's: ErrUnavailable (and Available false) when Redis could not be
// reached or refused for a passing reason; the caller's own cancellation
// or an error reply (a bug) otherwise.
func (c *Cluster) fail(parent context.Context, op string, err error) error {
	if perr := parent.Err(); perr != nil {
		return fmt.Errorf("cluster: %s: %w", op, perr)
	}
	var rerr redis.Error
	if errors.As(err, &rerr) && !transientReply(rerr.Error()) {
		return fmt.Errorf("cluster: %s: %w", op, err)
	}
	c.available.Store(false)
	return fmt.Errorf("%w: %s: %w", ErrUnavailable, op, err)
}

// transientReply tells an error reply that means "Redis cannot serve now"
// from one that means "this command is wrong".
func transientReply(msg string) bool {
	for _, p := range []string{"LOADING", "BUSY", "MASTERDOWN", "READONLY",
		"TRYAGAIN", "CLUSTERDOWN", "OOM", "NOREPLICAS"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// isTimeout tells a read that timed out (nothing to read) from a broken
// connection.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// call runs f under opTimeout and maps its error through fail.
func (c *Cluster) call(parent context.Context, op string, f func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(parent, opTimeout)
	defer cancel()
	if err := f(ctx); err != nil {
		return c.fail(parent, op, err)
	}
	return nil
}

// hashesOf reads the members of the set at key set and then, in one
// pipeline, the hash at keyOf(member) of each: hashes[i] is members[i]'s,
// empty if its key is gone. It runs inside a call.
func (c *Cluster) hashesOf(ctx context.Context, set string, keyOf func(member string) string) (members []string, hashes []map[string]string, err error) {
	members, err = c.rdb.SMembers(ctx, set).Result()
	if err != nil {
		return nil, nil, err
	}
	cmds := make([]*redis.MapStringStringCmd, len(members))
	_, err = c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, m := range members {
			cmds[i] = p.HGetAll(ctx, keyOf(m))
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	hashes = make([]map[string]string, len(cmds))
	for i, cmd := range cmds {
		hashes[i] = cmd.Val()
	}
	return members, hashes, nil
}
