package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// spawner builds vigil once and starts a fresh server for each step, on
// free loopback ports, pinned to one CPU.
type spawner struct {
	bin      string
	dir      string // scratch: recordings, the server log
	adminKey string
	cpu      int // -1: not pinned
	logPath  string
	// baseline: start "vigil-load baseline-server" (this binary) instead
	// of vigil.
	baseline bool
	// extraArgs are appended to the server's command line.
	extraArgs []string
	// env, when set, adds to the server's environment (a later value
	// wins), given its HTTP address: vigil-load cluster's node settings.
	env func(addr string) []string
}

// newBaselineSpawner starts the stock-pion baseline forwarder, this very
// binary's hidden baseline-server command, the way vigil is started.
func newBaselineSpawner(cpu int, adminKey string) (*spawner, error) {
	bin, err := os.Executable()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "vigil-load-baseline-")
	if err != nil {
		return nil, err
	}
	return &spawner{bin: bin, dir: dir, adminKey: adminKey, cpu: cpu, logPath: filepath.Join(dir, "baseline.log"), baseline: true}, nil
}

func newSpawner(ctx context.Context, bin string, cpu int) (*spawner, error) {
	dir, err := os.MkdirTemp("", "vigil-load-")
	if err != nil {
		return nil, err
	}
	if bin == "" {
		bin = filepath.Join(dir, "vigil")
		cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/vigil-media/vigil/cmd/vigil")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			_ = os.RemoveAll(dir)
			return nil, fmt.Errorf("building vigil (run from inside the module, or pass -vigil-bin): %w", err)
		}
	}
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return &spawner{bin: bin, dir: dir, adminKey: hex.EncodeToString(b), cpu: cpu, logPath: filepath.Join(dir, "vigil.log")}, nil
}

func (s *spawner) close() { _ = os.RemoveAll(s.dir) }

// server is one running vigil.
type server struct {
	cmd  *exec.Cmd
	addr string
	udp  int
	pid  int
	done chan struct{}
	err  error
}

// freePorts picks a free TCP and a free UDP port on 127.0.0.1.
func freePorts() (int, int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, 0, err
	}
	tcp := l.Addr().(*net.TCPAddr).Port
	u, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		_ = l.Close()
		return 0, 0, err
	}
	udp := u.LocalAddr().(*net.UDPAddr).Port
	_ = l.Close()
	_ = u.Close()
	return tcp, udp, nil
}

func (s *spawner) start(ctx context.Context) (*server, error) {
	tcp, udp, err := freePorts()
	if err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	addr := "127.0.0.1:" + strconv.Itoa(tcp)
	argv := []string{s.bin}
	if s.baseline {
		argv = append(argv, "baseline-server", "-http-addr", addr, "-udp-port", strconv.Itoa(udp))
	}
	argv = append(argv, s.extraArgs...)
	var cmd *exec.Cmd
	taskset, lookErr := exec.LookPath("taskset")
	if s.cpu >= 0 && lookErr == nil {
		cmd = exec.Command(taskset, append([]string{"-c", strconv.Itoa(s.cpu)}, argv...)...)
	} else {
		cmd = exec.Command(argv[0], argv[1:]...)
	}
	cmd.Env = append(os.Environ(),
		"VIGIL_HTTP_ADDR="+addr,
		"VIGIL_UDP_PORT="+strconv.Itoa(udp),
		"VIGIL_ADMIN_KEY="+s.adminKey,
		"VIGIL_RECORDINGS_DIR="+filepath.Join(s.dir, "recordings"),
		"VIGIL_LOG_LEVEL=warn",
		// Every generated client comes from 127.0.0.1: lift the per-address
		// and per-session rate limits, and the participant cap, that exist
		// for real traffic.
		"VIGIL_JOIN_RATE=0",
		"VIGIL_MINT_RATE=0",
		"VIGIL_MESSAGE_RATE=0",
		"VIGIL_MAX_PARTICIPANTS=0",
		"VIGIL_DATA_DIR="+filepath.Join(s.dir, "data"),
	)
	if s.env != nil {
		cmd.Env = append(cmd.Env, s.env(addr)...)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	srv := &server{cmd: cmd, addr: addr, udp: udp, pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		srv.err = cmd.Wait()
		close(srv.done)
	}()
	if s.cpu >= 0 && lookErr != nil {
		if err := pinProcess(srv.pid, s.cpu); err != nil {
			srv.stop()
			return nil, err
		}
	}
	a := &api{base: "http://" + addr, adminKey: s.adminKey, hc: newHTTPClient(nil, 4)}
	deadline := time.Now().Add(20 * time.Second)
	for !a.ready(ctx) {
		select {
		case <-srv.done:
			return nil, fmt.Errorf("vigil exited at start (%v); see %s", srv.err, s.logPath)
		case <-ctx.Done():
			srv.stop()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			srv.stop()
			return nil, errors.New("vigil did not answer within 20s")
		}
	}
	return srv, nil
}

// stop asks the server to shut down, and kills it after 10s.
func (srv *server) stop() {
	_ = srv.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-srv.done:
	case <-time.After(10 * time.Second):
		_ = srv.cmd.Process.Kill()
		<-srv.done
	}
}
