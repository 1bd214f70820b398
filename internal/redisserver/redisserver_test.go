package redisserver

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// A real redis-server: the test fails (it does not skip) without one.
func TestStartStopStart(t *testing.T) {
	ctx := context.Background()
	s, err := Start(ctx, Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	if s.URL() != "redis://"+s.Addr()+"/0" {
		t.Errorf("URL %q, Addr %q", s.URL(), s.Addr())
	}
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr()})
	if err := rdb.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err != nil { // running: nothing to do
		t.Fatal(err)
	}
	if v, err := rdb.Get(ctx, "k").Result(); err != nil || v != "v" {
		t.Fatalf("GET after a Start of a running server = %q, %v", v, err)
	}
	_ = rdb.Close()
	s.Stop()
	s.Stop() // stopped: nothing to do
	if err := ping(ctx, s.Addr()); err == nil {
		t.Fatal("PING answered with the server stopped")
	}
	addr := s.Addr()
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if s.Addr() != addr {
		t.Errorf("restarted on %s, was %s", s.Addr(), addr)
	}
	rdb = redis.NewClient(&redis.Options{Addr: s.Addr()})
	defer rdb.Close()
	if _, err := rdb.Get(ctx, "k").Result(); !errors.Is(err, redis.Nil) {
		t.Fatalf("GET after a restart: %v, want empty (redis.Nil)", err)
	}
}

func TestOptions(t *testing.T) {
	if _, err := Start(context.Background(), Options{}); !errors.Is(err, ErrNoDir) {
		t.Errorf("no Dir: %v", err)
	}
	if _, err := Start(context.Background(), Options{Dir: t.TempDir(), Path: "/nonexistent/redis-server"}); err == nil {
		t.Error("a missing binary: no error")
	}
	// A server that cannot start (a bad option) is reported with its log.
	_, err := Start(context.Background(), Options{Dir: t.TempDir(), Prefix: []string{"sh", "-c", `echo "bad config" >&2; exit 1`, "sh"}, Timeout: 5 * time.Second})
	if !errors.Is(err, ErrExited) {
		t.Errorf("a server that exits: %v", err)
	}
}
