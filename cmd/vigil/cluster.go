package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"regexp"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/vigil-media/vigil/cluster"
	"github.com/vigil-media/vigil/federation"
	"github.com/vigil-media/vigil/signaling"
)

// Cluster mode (docs/cluster.md): with redis_url set, this process is one
// node of a cluster joined through Redis.

var nodeIDRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// clusterConfig reads and checks the cluster settings.
func clusterConfig(l *layered, c *config, where func(string) string) error {
	c.RedisURL, c.NodeID, c.NodeURL = l.get("redis-url"), l.get("node-id"), l.get("node-url")
	c.PeerCAFile = l.get("peer-ca-file")
	if c.PeerCAFile != "" {
		if _, err := peerRoots(c.PeerCAFile); err != nil {
			return fmt.Errorf("%s: %w", where("peer-ca-file"), err)
		}
	}
	var err error
	if c.Heartbeat, err = time.ParseDuration(l.get("cluster-heartbeat")); err != nil || c.Heartbeat <= 0 {
		return fmt.Errorf("%s: heartbeat %q: want a positive duration", where("cluster-heartbeat"), l.get("cluster-heartbeat"))
	}
	if c.Lease, err = time.ParseDuration(l.get("cluster-lease")); err != nil || c.Lease < 2*c.Heartbeat {
		return fmt.Errorf("%s: lease %q: want a duration of at least two heartbeats (%v)", where("cluster-lease"), l.get("cluster-lease"), 2*c.Heartbeat)
	}
	if c.NodeID != "" && !nodeIDRE.MatchString(c.NodeID) {
		return fmt.Errorf("%s: node id %q: want 1 to 64 letters, digits, '_' or '-'", where("node-id"), c.NodeID)
	}
	if c.NodeURL != "" {
		u, err := url.Parse(c.NodeURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("%s: node url %q: want http://host:port or https://host:port", where("node-url"), c.NodeURL)
		}
	}
	if c.RedisURL != "" {
		u, err := url.Parse(c.RedisURL)
		if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") {
			return fmt.Errorf("%s: want a redis:// or rediss:// URL", where("redis-url"))
		}
	}
	return nil
}

// peerRoots reads the certificate authorities of peer_ca_file: nil (the
// system's) for no file.
func peerRoots(file string) (*x509.CertPool, error) {
	if file == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("peer CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("peer CA file %s: no PEM certificate in it", file)
	}
	return pool, nil
}

// nodeURL is how other nodes reach this one: node_url, else the listen
// address with this host's first non-loopback IPv4 address for a
// wildcard one.
func nodeURL(c config, addr net.Addr, scheme string) string {
	if c.NodeURL != "" {
		return c.NodeURL
	}
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return scheme + "://" + addr.String()
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = firstHostIPv4()
	}
	return scheme + "://" + net.JoinHostPort(host, port)
}

// newServer builds the signaling server of sc: alone on a single node,
// or, with redis_url set, as a node of the cluster (federation.New joins
// it, before anything is served), with its membership.
func newServer(c config, sc signaling.Config, addr net.Addr, scheme string, logger *slog.Logger) (*signaling.Server, *cluster.Cluster, error) {
	if c.RedisURL == "" {
		s, err := signaling.New(sc)
		return s, nil, err
	}
	// go-redis logs each failed dial; the cluster logs an outage once.
	redis.SetLogger(redisLog{logger})
	roots, err := peerRoots(c.PeerCAFile)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := federation.New(ctx, federation.Config{
		Signaling: sc,
		Cluster: cluster.Config{
			RedisURL: c.RedisURL, NodeID: c.NodeID, URL: nodeURL(c, addr, scheme),
			Heartbeat: c.Heartbeat, Lease: c.Lease, Logger: logger,
		},
		EdgeViewers: noLimit(c.EdgeViewers),
		PeerRootCAs: roots,
	})
	if err != nil {
		return nil, nil, err
	}
	logger.Info("cluster: joined", "node", n.Cluster().ID(), "url", n.Cluster().URL())
	return n.Server(), n.Cluster(), nil
}

// closeCluster leaves the cluster, if this node is in one.
func closeCluster(cl *cluster.Cluster, logger *slog.Logger) {
	if cl == nil {
		return
	}
	if err := cl.Close(); err != nil {
		logger.Warn("cluster: leave", "err", err)
	}
}

// redisLog passes go-redis's own log lines (a failed dial each) on at
// debug level.
type redisLog struct{ log *slog.Logger }

func (l redisLog) Printf(_ context.Context, format string, v ...any) {
	l.log.Debug("redis client: " + fmt.Sprintf(format, v...))
}
