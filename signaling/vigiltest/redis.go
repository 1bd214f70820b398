package vigiltest

import (
	"bufio"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// RedisServerPath is the redis-server the cluster tests run.
const RedisServerPath = "/usr/bin/redis-server"

// Redis is a private redis-server on a free loopback port, without
// persistence, stopped when the test ends. Stop and Start stop it and
// start it again, empty, on the same port (a Redis outage).
type Redis struct {
	URL  string
	Addr string

	t   testing.TB
	mu  sync.Mutex
	cmd *exec.Cmd
}

// StartRedis starts a private redis-server; the test fails (it is not
// skipped) when there is none at RedisServerPath.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	if _, err := exec.LookPath(RedisServerPath); err != nil {
		t.Fatalf("redis-server is required at %s (apt-get install redis-server): %v", RedisServerPath, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	r := &Redis{URL: "redis://" + addr + "/0", Addr: addr, t: t}
	r.Start()
	t.Cleanup(r.Stop)
	return r
}

// Start starts the server (again), empty, and waits until it answers.
func (r *Redis) Start() {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil {
		return
	}
	_, port, _ := net.SplitHostPort(r.Addr)
	cmd := exec.Command(RedisServerPath, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--daemonize", "no", "--protected-mode", "no", "--loglevel", "warning")
	if err := cmd.Start(); err != nil {
		r.t.Fatalf("start redis-server: %v", err)
	}
	r.cmd = cmd
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := ping(r.Addr); err == nil {
			return
		} else if time.Now().After(deadline) {
			r.t.Fatalf("redis-server on %s does not answer: %v", r.Addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop kills the server (its data is lost) and waits for it to exit.
func (r *Redis) Stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	_ = r.cmd.Wait()
	r.cmd = nil
}

func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := fmt.Fprint(c, "PING\r\n"); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}
