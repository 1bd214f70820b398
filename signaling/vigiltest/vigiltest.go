// Package vigiltest starts a whole Vigil server in-process for tests: the
// media core on a loopback UDP port and the HTTP API on a loopback TCP
// port, closed when the test ends. It also holds the clients those tests
// drive it with: a participant over every transport (Client, client.go
// and transports.go), WHIP/WHEP peers (whip.go), real VP8 media and a
// goroutine-leak check (media.go).
package vigiltest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/vigil-media/vigil/incidents"
	"github.com/vigil-media/vigil/recordings"
	"github.com/vigil-media/vigil/sfu"
	"github.com/vigil-media/vigil/signaling"
	"github.com/vigil-media/vigil/webhooks"
)

// Server is a running test server.
type Server struct {
	URL      string
	AdminKey string
	// TokenSecret signs the server's join tokens.
	TokenSecret string
	SFU         *sfu.SFU
	Sig         *signaling.Server
	HTTP        *httptest.Server
	// Recordings is the recordings manager (the SFU's observer).
	Recordings *recordings.Manager
	// Incidents is the incidents monitor (an observer too), on a
	// database in Options.DataDir.
	Incidents *incidents.Monitor
	// DataDir holds the incidents database.
	DataDir string

	closeOnce sync.Once
	closeFn   func()
}

// Options tune a test server.
type Options struct {
	GracePeriod    time.Duration
	Now            func() time.Time
	MaxLongPolls   int
	OutboxCapacity int
	RecordingsDir  string               // where recordings go; "" means t.TempDir()
	DataDir        string               // where the incidents database goes; "" means t.TempDir()
	Webhooks       *webhooks.Dispatcher // receives the server's events; nil: none
	// SFU tunes the media core: its UDPAddr, IncludeLoopback, Logger and
	// Observer are set by StartWith; ReconnectGrace defaults to
	// GracePeriod.
	SFU sfu.Config
	// Configure, if set, adjusts the signaling configuration last. The
	// rate limits (joins and mints per address, messages per session,
	// failed admin-key attempts per address) are off unless it sets them:
	// tests open many sessions from 127.0.0.1 and send bursts of messages.
	Configure func(*signaling.Config)
	// NewServer, if set, builds the signaling server from its
	// configuration instead of signaling.New: a node of a cluster
	// (federation.New) is a test server too.
	NewServer func(signaling.Config) (*signaling.Server, error)
	// ConfigureRecordings, if set, adjusts the recordings configuration
	// (its Dir and Logger set) before the manager starts: a test injects
	// write faults through its OpenFile.
	ConfigureRecordings func(*recordings.Config)
}

// Start runs a server with default options.
func Start(t testing.TB) *Server { return StartWith(t, Options{}) }

// StartWith runs a server with opts. Set VIGIL_TEST_LOG=1 to see its logs.
func StartWith(t testing.TB, opts Options) *Server {
	t.Helper()
	gin.SetMode(gin.ReleaseMode)
	logger := slog.New(slog.DiscardHandler)
	if os.Getenv("VIGIL_TEST_LOG") != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if opts.RecordingsDir == "" {
		opts.RecordingsDir = t.TempDir()
	}
	rc := recordings.Config{Dir: opts.RecordingsDir, Logger: logger}
	if opts.ConfigureRecordings != nil {
		opts.ConfigureRecordings(&rc)
	}
	rec, err := recordings.New(rc)
	if err != nil {
		t.Fatal(err)
	}
	if opts.DataDir == "" {
		opts.DataDir = t.TempDir()
	}
	store, err := incidents.Open(opts.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	mon, err := incidents.NewMonitor(incidents.Config{Store: store, Recordings: rec, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	sc := opts.SFU
	sc.UDPAddr, sc.IncludeLoopback, sc.Logger, sc.Observer = "127.0.0.1:0", true, logger, sfu.Observers{rec, mon}
	if sc.ReconnectGrace == 0 {
		sc.ReconnectGrace = opts.GracePeriod
	}
	media, err := sfu.New(sc)
	if err != nil {
		t.Fatal(err)
	}
	const key, secret = "test-admin-key", "test-token-secret"
	sigCfg := signaling.Config{
		SFU: media, AdminKey: key, TokenSecret: secret, Revocations: store, AdminAuthFailures: -1, Logger: logger, GracePeriod: opts.GracePeriod, Now: opts.Now,
		MaxLongPolls: opts.MaxLongPolls, OutboxCapacity: opts.OutboxCapacity, Recordings: rec, Incidents: mon,
		Webhooks: opts.Webhooks, JoinRate: -1, MintRate: -1, MessageRate: -1,
	}
	if opts.Configure != nil {
		opts.Configure(&sigCfg)
	}
	newServer := signaling.New
	if opts.NewServer != nil {
		newServer = opts.NewServer
	}
	sig, err := newServer(sigCfg)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(sig.Handler())
	s := &Server{URL: hs.URL, AdminKey: key, TokenSecret: sigCfg.TokenSecret, SFU: media, Sig: sig, HTTP: hs, Recordings: rec, Incidents: mon, DataDir: opts.DataDir}
	s.closeFn = func() {
		sig.Close(5 * time.Second)
		hs.Close()
		_ = rec.Close() // after the rooms: finalizes what they recorded
		mon.Close()
		_ = store.Close()
	}
	t.Cleanup(s.Close)
	return s
}

// Close stops the server (as the end of the test does), so that a test
// can start another on the same directories.
func (s *Server) Close() { s.closeOnce.Do(s.closeFn) }

// Do sends a JSON request with an optional bearer and returns the status
// and body.
func (s *Server) Do(t testing.TB, method, path, bearer string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = bytes.NewBufferString(b)
	default:
		buf, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(buf)
	}
	req, err := http.NewRequest(method, s.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, out
}

// CreateRoom creates a room or fails the test.
func (s *Server) CreateRoom(t testing.TB, name, kind string) {
	t.Helper()
	status, body := s.Do(t, http.MethodPost, "/v1/rooms", s.AdminKey, map[string]any{"name": name, "kind": kind})
	if status != http.StatusCreated {
		t.Fatalf("create room %s: %d %s", name, status, body)
	}
}

type tokenReply struct {
	Token   string `json:"token"`
	JoinURL string `json:"join_url"`
}

func (s *Server) mint(t testing.TB, room, identity, role string) tokenReply {
	t.Helper()
	status, body := s.Do(t, http.MethodPost, "/v1/rooms/"+room+"/tokens", s.AdminKey,
		map[string]any{"identity": identity, "role": role, "ttl_seconds": 600})
	if status != http.StatusCreated {
		t.Fatalf("mint token: %d %s", status, body)
	}
	var r tokenReply
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// Token mints a join token or fails the test.
func (s *Server) Token(t testing.TB, room, identity, role string) string {
	t.Helper()
	return s.mint(t, room, identity, role).Token
}

// JoinURL is the absolute URL of the room page for a fresh token.
func (s *Server) JoinURL(t testing.TB, room, identity, role string) string {
	t.Helper()
	return s.URL + s.mint(t, room, identity, role).JoinURL
}

// OpenSession opens a session with token and returns its id, or the
// status and body on failure.
func (s *Server) OpenSession(t testing.TB, room, token string) (string, error) {
	t.Helper()
	status, body := s.Do(t, http.MethodPost, "/v1/rooms/"+room+"/sessions", token, nil)
	if status != http.StatusCreated {
		return "", fmt.Errorf("open session: %d %s", status, body)
	}
	var r struct {
		SessionID string `json:"session_id"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return "", err
	}
	return r.SessionID, nil
}
