package vigiltest

import (
	"context"
	"os/exec"
	"testing"

	"github.com/vigil-media/vigil/internal/redisserver"
)

// RedisServerPath is the redis-server the cluster tests run.
const RedisServerPath = "/usr/bin/redis-server"

// Redis is a private redis-server on a free loopback port, without
// persistence, stopped when the test ends. Stop and Start stop it and
// start it again, empty, on the same port (a Redis outage). It is a
// testing.TB wrapper over internal/redisserver.
type Redis struct {
	URL  string
	Addr string

	t   testing.TB
	srv *redisserver.Server
}

// StartRedis starts a private redis-server; the test fails (it is not
// skipped) when there is none at RedisServerPath.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	if _, err := exec.LookPath(RedisServerPath); err != nil {
		t.Fatalf("redis-server is required at %s (apt-get install redis-server): %v", RedisServerPath, err)
	}
	srv, err := redisserver.Start(context.Background(), redisserver.Options{Path: RedisServerPath, Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	r := &Redis{URL: srv.URL(), Addr: srv.Addr(), t: t, srv: srv}
	t.Cleanup(r.Stop)
	return r
}

// Start starts the server (again), empty, and waits until it answers.
func (r *Redis) Start() {
	r.t.Helper()
	if err := r.srv.Start(context.Background()); err != nil {
		r.t.Fatalf("start redis-server: %v", err)
	}
}

// Stop kills the server (its data is lost) and waits for it to exit.
func (r *Redis) Stop() { r.srv.Stop() }
