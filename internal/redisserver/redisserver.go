// Package redisserver starts a private redis-server for the tests and
// the load lab: on a free loopback port, without persistence, waiting
// until it answers. Stop kills it (as a crash would: its data is lost)
// and Start starts it again, empty, on the same port: a Redis outage.
//
// It imports nothing of Vigil's and not "testing": the tests wrap it
// (signaling/vigiltest) and tools/vigil-load runs it as it is.
package redisserver

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Errors of Start.
var (
	// ErrExited: redis-server exited before it answered (its log is in
	// the error).
	ErrExited = errors.New("redis-server exited at start")
	// ErrNoAnswer: redis-server did not answer PING within the timeout.
	ErrNoAnswer = errors.New("redis-server does not answer")
	// ErrNoDir: Options.Dir is required.
	ErrNoDir = errors.New("redisserver: Options.Dir is required")
)

// DefaultTimeout is how long Start waits for an answer by default:
// generous, for a loaded 2-core machine.
const DefaultTimeout = 15 * time.Second

// portAttempts is how many free ports New tries: a port found free may
// be taken by someone else before redis-server binds it.
const portAttempts = 5

// Options say how to run redis-server.
type Options struct {
	// Path is the redis-server binary; "" is "redis-server" on PATH.
	Path string
	// Dir is its working directory (required); its output goes to
	// Dir/redis.log.
	Dir string
	// Prefix is a command to run it under, e.g. taskset -c 1.
	Prefix []string
	// Timeout is how long Start waits for PONG; 0 is DefaultTimeout.
	Timeout time.Duration
}

// Server is one private redis-server. It is safe for concurrent use.
type Server struct {
	opts Options
	addr string // 127.0.0.1:port, the same across restarts

	// mu serializes Start and Stop: it is held across the process's
	// start and its wait, on purpose, since they must not interleave.
	// It guards cmd and exited; no other lock is taken while holding it.
	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// Start starts a redis-server on a free 127.0.0.1 port and waits until
// it answers PING.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if opts.Dir == "" {
		return nil, ErrNoDir
	}
	if opts.Path == "" {
		opts.Path = "redis-server"
	}
	path, err := exec.LookPath(opts.Path)
	if err != nil {
		return nil, fmt.Errorf("redis-server: %w", err)
	}
	opts.Path = path
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		s := &Server{opts: opts, addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
		err = s.Start(ctx)
		if err == nil {
			return s, nil
		}
		// Another port only when this one may have been taken.
		if !errors.Is(err, ErrExited) || attempt == portAttempts {
			return nil, err
		}
	}
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Addr is host:port.
func (s *Server) Addr() string { return s.addr }

// URL is redis://host:port/0, as VIGIL_REDIS_URL takes it.
func (s *Server) URL() string { return "redis://" + s.addr + "/0" }

// LogPath is the file its output goes to.
func (s *Server) LogPath() string { return filepath.Join(s.opts.Dir, "redis.log") }

// Start starts the server (again), empty, on its port, and waits until
// it answers; it does nothing when the server runs.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return nil
	}
	_, port, _ := net.SplitHostPort(s.addr)
	argv := append([]string(nil), s.opts.Prefix...)
	argv = append(argv, s.opts.Path,
		"--port", port, "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no",
		"--daemonize", "no", "--protected-mode", "no",
		"--dir", s.opts.Dir)
	logf, err := os.OpenFile(s.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("redis-server: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	if err := s.await(ctx, exited); err != nil {
		_ = cmd.Process.Kill()
		<-exited
		return err
	}
	s.cmd, s.exited = cmd, exited
	return nil
}

// await pings until PONG, the process exits, or the timeout.
func (s *Server) await(ctx context.Context, exited <-chan struct{}) error {
	deadline := time.Now().Add(s.opts.Timeout)
	for {
		err := ping(ctx, s.addr)
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(s.LogPath())
			return fmt.Errorf("%w (port %s):\n%s", ErrExited, s.addr, log)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w on %s within %s: %v", ErrNoAnswer, s.addr, s.opts.Timeout, err)
		}
	}
}

// ping sends an inline PING on a connection of its own. A readiness
// probe, not a client: go-redis's pool would log every refused dial and
// keep a goroutine redialling after the client is closed.
func ping(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if _, err := io.WriteString(c, "PING\r\n"); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}

// Stop kills the server (its data is lost) and waits for it to exit; it
// does nothing when the server is stopped.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
	s.cmd, s.exited = nil, nil
}
