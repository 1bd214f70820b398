// Package spawn starts the servers the load lab measures: a fresh vigil
// (built once) or the stock-pion baseline forwarder per step, on free
// loopback ports, pinned to one CPU.
package spawn

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vigil-media/vigil/tools/vigil-load/internal/api"
	"github.com/vigil-media/vigil/tools/vigil-load/internal/procstat"
)

// Spawner builds vigil once and starts a fresh server for each step, on
// free loopback ports, pinned to one CPU.
type Spawner struct {
	Bin      string
	Dir      string // scratch: recordings, the server log
	AdminKey string
	// TokenSecret signs the join tokens of every server it starts (the
	// nodes of a cluster need the same one).
	TokenSecret string
	CPU         int // -1: not pinned
	LogPath     string
	// Baseline: start "vigil-load baseline-server" (this binary) instead
	// of vigil.
	Baseline bool
	// ExtraArgs are appended to the server's command line.
	ExtraArgs []string
	// Env, when set, adds to the server's environment (a later value
	// wins), given its HTTP address: vigil-load cluster's node settings.
	Env func(addr string) []string
}

// NewBaseline starts the stock-pion baseline forwarder, this very
// binary's hidden baseline-server command, the way vigil is started.
func NewBaseline(cpu int, adminKey string) (*Spawner, error) {
	bin, err := os.Executable()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "vigil-load-baseline-")
	if err != nil {
		return nil, err
	}
	return &Spawner{Bin: bin, Dir: dir, AdminKey: adminKey, CPU: cpu, LogPath: filepath.Join(dir, "baseline.log"), Baseline: true}, nil
}

// New builds vigil (unless bin names one) into a scratch directory.
func New(ctx context.Context, bin string, cpu int) (*Spawner, error) {
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
	secret := func() string { // 32 random bytes: vigil refuses weaker ones
		b := make([]byte, 32)
		_, _ = rand.Read(b)
		return hex.EncodeToString(b)
	}
	return &Spawner{Bin: bin, Dir: dir, AdminKey: secret(), TokenSecret: secret(), CPU: cpu, LogPath: filepath.Join(dir, "vigil.log")}, nil
}

// Close removes the scratch directory.
func (s *Spawner) Close() { _ = os.RemoveAll(s.Dir) }

// Server is one running vigil (or baseline forwarder).
type Server struct {
	cmd  *exec.Cmd
	Addr string // 127.0.0.1:port, HTTP
	UDP  int    // its media port
	PID  int
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

// Start starts a fresh server and waits until it answers.
func (s *Spawner) Start(ctx context.Context) (*Server, error) {
	tcp, udp, err := freePorts()
	if err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(s.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	addr := "127.0.0.1:" + strconv.Itoa(tcp)
	argv := []string{s.Bin}
	if s.Baseline {
		argv = append(argv, "baseline-server", "-http-addr", addr, "-udp-port", strconv.Itoa(udp))
	}
	argv = append(argv, s.ExtraArgs...)
	var cmd *exec.Cmd
	taskset, lookErr := exec.LookPath("taskset")
	if s.CPU >= 0 && lookErr == nil {
		cmd = exec.Command(taskset, append([]string{"-c", strconv.Itoa(s.CPU)}, argv...)...)
	} else {
		cmd = exec.Command(argv[0], argv[1:]...)
	}
	cmd.Env = append(os.Environ(),
		"VIGIL_HTTP_ADDR="+addr,
		"VIGIL_UDP_PORT="+strconv.Itoa(udp),
		"VIGIL_ADMIN_KEY="+s.AdminKey,
		"VIGIL_TOKEN_SECRET="+s.TokenSecret,
		"VIGIL_RECORDINGS_DIR="+filepath.Join(s.Dir, "recordings"),
		"VIGIL_LOG_LEVEL=warn",
		// Every generated client comes from 127.0.0.1: lift the per-address
		// and per-session rate limits, and the participant cap, that exist
		// for real traffic.
		"VIGIL_JOIN_RATE=0",
		"VIGIL_MINT_RATE=0",
		"VIGIL_MESSAGE_RATE=0",
		"VIGIL_MAX_PARTICIPANTS=0",
		"VIGIL_MAX_CONNS_PER_ADDR=0",
		"VIGIL_DATA_DIR="+filepath.Join(s.Dir, "data"),
	)
	if s.Env != nil {
		cmd.Env = append(cmd.Env, s.Env(addr)...)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	srv := &Server{cmd: cmd, Addr: addr, UDP: udp, PID: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		srv.err = cmd.Wait()
		close(srv.done)
	}()
	if s.CPU >= 0 && lookErr != nil {
		if err := procstat.PinProcess(srv.PID, s.CPU); err != nil {
			srv.Stop()
			return nil, err
		}
	}
	a := &api.API{Base: "http://" + addr, AdminKey: s.AdminKey, HC: api.NewHTTPClient(nil, 4)}
	deadline := time.Now().Add(20 * time.Second)
	for !a.Ready(ctx) {
		select {
		case <-srv.done:
			return nil, fmt.Errorf("vigil exited at start (%v); see %s", srv.err, s.LogPath)
		case <-ctx.Done():
			srv.Stop()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			srv.Stop()
			return nil, errors.New("vigil did not answer within 20s")
		}
	}
	return srv, nil
}

// Stop asks the server to shut down, and kills it after 10s.
func (srv *Server) Stop() {
	_ = srv.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-srv.done:
	case <-time.After(10 * time.Second):
		_ = srv.cmd.Process.Kill()
		<-srv.done
	}
}

// RandHex is n random bytes in hex.
func RandHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// LogSummary prints what the spawned servers logged at warn and above,
// each distinct line once with its count (the first 20).
func (s *Spawner) LogSummary(w io.Writer) {
	b, err := os.ReadFile(s.LogPath)
	if err != nil {
		return
	}
	counts := map[string]int{}
	var order []string
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.Contains(line, "level=WARN") && !strings.Contains(line, "level=ERROR") && !strings.Contains(line, "panic") {
			continue
		}
		key := line
		if i := strings.Index(line, "level="); i >= 0 {
			key = line[i:]
		}
		if len(key) > 160 {
			key = key[:160]
		}
		if counts[key] == 0 {
			order = append(order, key)
		}
		counts[key]++
	}
	name := "vigil"
	if s.Baseline {
		name = "baseline"
	}
	fmt.Fprintf(w, "\n# %s server log (warn and above): %d distinct lines\n", name, len(order))
	for i, k := range order {
		if i == 20 {
			fmt.Fprintf(w, "#   ... %d more\n", len(order)-20)
			break
		}
		fmt.Fprintf(w, "#   %6dx %s\n", counts[k], k)
	}
}
