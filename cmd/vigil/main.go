// Command vigil runs the Vigil media server: the SFU on one UDP port, the
// admin API, the signaling transports and the web client on one HTTP
// address.
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/incidents"
	"github.com/vigil-media/vigil/metrics"
	"github.com/vigil-media/vigil/recordings"
	"github.com/vigil-media/vigil/relay"
	"github.com/vigil-media/vigil/sfu"
	"github.com/vigil-media/vigil/signaling"
	"github.com/vigil-media/vigil/webhooks"
)

// config is the server's configuration: each setting is a flag, an
// environment variable or a key of the config file (settings.go), in that
// order of precedence, then its default.
type config struct {
	File          string // the config file read, if any
	HTTPAddr      string
	AdminKey      string
	TokenSecret   string // "": kept in DataDir (secrets.go)
	UDPPort       int
	TCPPort       int // ICE over TCP, 0: off
	TURNPort      int // embedded TURN server, 0: off
	TURNSecret    string
	TURNTTL       time.Duration
	TURNMaxAllocs int  // per credential, 0: no limit
	TURNTCPRelay  bool // TCP allocations (RFC 6062)
	PublicIP      string
	RecordingsDir string
	DataDir       string // the incidents database
	Retention     time.Duration
	RecMaxBytes   int64 // per recording, 0: no cap
	RecMaxBitrate int64 // bits a second per recording, 0: no cap
	MinFreeDisk   int64 // bytes the recordings' disk keeps free, 0: no guard
	IncRetention  time.Duration
	MaxIncidents  int // per room instance, 0: no cap
	ICEServers    string
	LogLevel      string
	LogFormat     string
	WebhookURLs   []string
	WebhookSecret string
	DrainTimeout  time.Duration
	GracePeriod   time.Duration
	TLSCert       string
	TLSKey        string
	CORSOrigins   []string
	Proxies       []string // trusted proxies
	MaxRooms      int
	MaxPeople     int // participants per room
	MaxTracks     int
	MessageRate   float64
	JoinRate      float64
	MintRate      float64
	MaxBodyBytes  int64
	AuthFailures  int           // failed admin-key attempts a minute per address
	ReadTimeout   time.Duration // of a request, but for the streaming transports
	IdleTimeout   time.Duration // of a keep-alive connection
	MaxConns      int           // HTTP connections per client address, 0: no limit
	RedisURL      string        // cluster mode when set (cluster.go)
	NodeID        string
	NodeURL       string
	PeerCAFile    string // PEM roots for https node URLs; none: the system's
	Heartbeat     time.Duration
	Lease         time.Duration
	EdgeViewers   int // viewers of a broadcast before edges serve more (federation/cascade.go)
}

// parseICEServers reads VIGIL_ICE_SERVERS: a JSON array of RTCIceServer,
// or comma-separated URLs without credentials.
func parseICEServers(s string) ([]webrtc.ICEServer, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return []webrtc.ICEServer{}, nil
	}
	if strings.HasPrefix(s, "[") {
		var out []webrtc.ICEServer
		if err := json.Unmarshal([]byte(s), &out); err != nil {
			return nil, fmt.Errorf("ice servers JSON: %w", err)
		}
		return out, nil
	}
	var out []webrtc.ICEServer
	for _, u := range strings.Split(s, ",") {
		u = strings.TrimSpace(u)
		if !strings.HasPrefix(u, "stun:") && !strings.HasPrefix(u, "stuns:") && !strings.HasPrefix(u, "turn:") && !strings.HasPrefix(u, "turns:") {
			return nil, fmt.Errorf("ice server %q: want a stun:, stuns:, turn: or turns: URL", u)
		}
		out = append(out, webrtc.ICEServer{URLs: []string{u}})
	}
	return out, nil
}

func newLogger(c config, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return nil, fmt.Errorf("log level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch c.LogFormat {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: want text or json", c.LogFormat)
}

func main() {
	os.Exit(cli(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) error {
	cfg, err := parseConfig(args, stdout, stderr)
	if err != nil {
		return err
	}
	logger, err := newLogger(cfg, stderr)
	if err != nil {
		return err
	}
	iceServers, err := parseICEServers(cfg.ICEServers)
	if err != nil {
		return err
	}
	generated := false
	if cfg.AdminKey == "" {
		cfg.AdminKey, generated = randomSecret(), true
	}
	if cfg.TokenSecret == "" {
		secret, made, err := loadTokenSecret(cfg.DataDir)
		if err != nil {
			return err
		}
		if made {
			logger.Info("token secret generated", "file", filepath.Join(cfg.DataDir, tokenSecretFile))
		}
		cfg.TokenSecret = secret
	}
	// Each part is pushed on the stack as it is made and closed in the
	// reverse order when run returns, on every path: the signaling
	// server first (every room ends, every client is told why, and the
	// media core closes), then the cluster membership, the HTTP
	// listener, TURN, the incident monitor and its store, the recordings
	// (finalized once the rooms are gone) and last the webhooks, so that
	// the events of all of those still go out.
	var stack closers
	defer stack.close()
	hooks, err := webhooks.New(webhooks.Config{URLs: cfg.WebhookURLs, Secret: cfg.WebhookSecret, Logger: logger})
	if err != nil {
		return err
	}
	stack.push(func() { hooks.Close(5 * time.Second) })
	rec, err := recordings.New(recordings.Config{Dir: cfg.RecordingsDir, Retention: cfg.Retention, Logger: logger,
		MaxBytes: cfg.RecMaxBytes, MaxBitrate: cfg.RecMaxBitrate, MinFreeBytes: cfg.MinFreeDisk})
	if err != nil {
		return err
	}
	stack.push(func() { _ = rec.Close() })
	store, err := incidents.Open(cfg.DataDir)
	if err != nil {
		return err
	}
	stack.push(func() { _ = store.Close() })
	monitor, err := incidents.NewMonitor(incidents.Config{Store: store, Recordings: rec, Logger: logger,
		MaxPerRoom: cfg.MaxIncidents, Retention: cfg.IncRetention})
	if err != nil {
		return err
	}
	stack.push(monitor.Close)
	var publicIPs []string
	if cfg.PublicIP != "" {
		publicIPs = []string{cfg.PublicIP}
	}

	turnSrv, err := startTURN(cfg, logger)
	if err != nil {
		return err
	}
	if turnSrv != nil {
		stack.push(func() { _ = turnSrv.Close() })
	}
	media, err := sfu.New(sfu.Config{
		UDPAddr: fmt.Sprintf(":%d", cfg.UDPPort), PublicIPs: publicIPs, ICEServers: iceServers,
		IncludeLoopback: true, Logger: logger, Observer: sfu.Observers{rec, monitor},
		ReconnectGrace: cfg.GracePeriod, MaxRooms: cfg.MaxRooms, MaxParticipants: cfg.MaxPeople, MaxTracks: noLimit(cfg.MaxTracks),
		TCPAddr: tcpAddr(cfg.TCPPort), ICEServersFor: iceServersFor(turnSrv), RevokeICEServers: revokeICEServers(turnSrv),
	})
	if err != nil {
		return err
	}
	if turnSrv != nil {
		// TURN relays to the media ports of this host, nothing else.
		turnSrv.SetMediaPorts(portOf(media.LocalAddr()), portOf(media.TCPAddr()))
	}
	// The signaling server closes the media core once it exists (every
	// room ends with its reason); until then this does.
	mediaOwned := false
	stack.push(func() {
		if !mediaOwned {
			_ = media.Close()
		}
	})
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("http: %w", err)
	}
	ln = limitConns(ln, cfg.MaxConns, cfg.Proxies, logger)
	// ReadTimeout bounds every request but the streaming transports',
	// which lift it (signaling/deadlines.go); there is no WriteTimeout,
	// which would cut a long recording download: a client that does not
	// read holds one of its max_conns_per_addr connections.
	hs := &http.Server{ReadHeaderTimeout: min(10*time.Second, cfg.ReadTimeout), ReadTimeout: cfg.ReadTimeout,
		IdleTimeout: cfg.IdleTimeout, MaxHeaderBytes: 64 << 10}
	scheme := "http"
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			_ = ln.Close()
			return fmt.Errorf("tls: %w", err)
		}
		hs.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		ln, scheme = tls.NewListener(ln, hs.TLSConfig), "https"
	}
	// Until Serve owns it, closing the listener is the HTTP part's close;
	// then Shutdown is (it closes the listener too).
	serving := false
	stack.push(func() {
		if !serving {
			_ = ln.Close()
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := hs.Shutdown(ctx); err != nil {
			logger.Warn("http shutdown", "err", err)
		}
	})
	gin.SetMode(gin.ReleaseMode)
	// Cluster mode (redis_url): the server is a node, which joins
	// before serving.
	sig, cl, err := newServer(cfg, signaling.Config{
		SFU: media, AdminKey: cfg.AdminKey, TokenSecret: cfg.TokenSecret, Revocations: store,
		AdminAuthFailures: noLimit(cfg.AuthFailures), Logger: logger, Recordings: rec, Incidents: monitor,
		Metrics: metrics.New(version), Webhooks: hooks, DrainTimeout: cfg.DrainTimeout,
		GracePeriod: cfg.GracePeriod, MaxBodyBytes: cfg.MaxBodyBytes, CORSOrigins: cfg.CORSOrigins, TrustedProxies: cfg.Proxies,
		MessageRate: float64(noLimit(cfg.MessageRate)), JoinRate: float64(noLimit(cfg.JoinRate)), MintRate: float64(noLimit(cfg.MintRate)),
	}, ln.Addr(), scheme, logger)
	if err != nil {
		return err
	}
	mediaOwned = true
	// Leaving the cluster after the sessions are told: the rooms of this
	// node move to others at their next heartbeat, without waiting for
	// the lease.
	stack.push(func() { closeCluster(cl, logger) })
	// Sessions first, so every client is told why, then the rest.
	stack.push(func() { sig.Close(5 * time.Second) })
	hs.Handler = sig.Handler()

	fmt.Fprintf(stdout, "Vigil is running. Open %s in a browser.\n", strings.Replace(browseURL(ln.Addr()), "http:", scheme+":", 1))
	if generated {
		fmt.Fprintf(stdout, "Admin key (generated; set VIGIL_ADMIN_KEY to keep one): %s\n", cfg.AdminKey)
	}
	logger.Info("listening", "http", ln.Addr().String(), "media_udp", media.LocalAddr().String(), "media_tcp", fmt.Sprint(media.TCPAddr()),
		"turn_port", cfg.TURNPort, "version", version, "config_file", cfg.File)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	stopDrainSignal := notifyDrain(sig.Drain) // SIGUSR1 starts a drain
	defer stopDrainSignal()
	serveErr := make(chan error, 1)
	serving = true
	go func() { serveErr <- hs.Serve(ln) }()
	select {
	case err := <-serveErr:
		return fmt.Errorf("http: %w", err)
	case <-ctx.Done():
	case <-sig.Drained():
		logger.Info("drained")
	}
	logger.Info("shutting down")
	stack.close()
	logger.Info("stopped")
	return nil
}

// closers is run's stack of things to close: pushed as they are made,
// closed last first, each once.
type closers []func()

func (c *closers) push(f func()) { *c = append(*c, f) }

// close closes everything pushed, in reverse order, and empties the
// stack (a second close does nothing).
func (c *closers) close() {
	for i := len(*c) - 1; i >= 0; i-- {
		(*c)[i]()
	}
	*c = nil
}

// tcpAddr is the ICE over TCP address of port, "" (off) for 0.
func tcpAddr(port int) string {
	if port == 0 {
		return ""
	}
	return fmt.Sprintf(":%d", port)
}

// startTURN starts the embedded TURN server, or returns nil when
// turn_port is 0. Its secret is turn_secret, else derived from the token
// secret (never from the admin key); clients are told to reach it at public_ip, else at this host's
// first non-loopback IPv4 address, else 127.0.0.1.
func startTURN(cfg config, logger *slog.Logger) (*relay.Server, error) {
	if cfg.TURNPort == 0 {
		return nil, nil
	}
	secret := cfg.TURNSecret
	if secret == "" {
		secret = turnSecret(cfg.TokenSecret)
	}
	rc := relay.Config{Addr: fmt.Sprintf(":%d", cfg.TURNPort), Secret: secret, TTL: cfg.TURNTTL, Host: cfg.PublicIP,
		MaxAllocations: noLimit(cfg.TURNMaxAllocs), TCPRelay: cfg.TURNTCPRelay, Logger: logger}
	if cfg.PublicIP != "" {
		rc.PublicIP = net.ParseIP(cfg.PublicIP)
	} else {
		rc.Host = firstHostIPv4()
	}
	return relay.New(rc)
}

// firstHostIPv4 is this host's first non-loopback IPv4 address, or
// 127.0.0.1.
func firstHostIPv4() string {
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			return n.IP.String()
		}
	}
	return "127.0.0.1"
}

// iceServersFor hands each participant the TURN server with credentials
// minted for it; nil when there is no TURN server.
func iceServersFor(r *relay.Server) func(room, identity string) []webrtc.ICEServer {
	if r == nil {
		return nil
	}
	return r.ICEServers
}

// revokeICEServers makes the TURN credentials of a kicked or revoked
// participant stop working; nil when there is no TURN server.
func revokeICEServers(r *relay.Server) func(room, identity string) {
	if r == nil {
		return nil
	}
	return r.Revoke
}

// portOf is the port of a UDP or TCP address, 0 for nil.
func portOf(a net.Addr) int {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.Port
	case *net.TCPAddr:
		return a.Port
	}
	return 0
}

// noLimit maps a setting's 0 (no limit) to the negative value the
// packages take for it (their 0 is their default).
func noLimit[T int | float64](v T) T {
	if v == 0 {
		return -1
	}
	return v
}

// browseURL is the address to print for a person: localhost for a
// wildcard listener.
func browseURL(a net.Addr) string {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return "http://" + a.String() + "/"
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() || ip.IsLoopback() {
		host = "localhost"
	}
	return "http://" + net.JoinHostPort(host, port) + "/"
}

const verifyHelp = `Checks the files of every recording (or of the ids given) against the
SHA-256 in their manifests, prints one line per file (ok, or what is
wrong) and a total, and exits 1 if any file is missing or differs.
`

// runVerify is `vigil verify [-recordings-dir DIR] [id...]`: it checks the
// files of every recording (or of the ids given) against the SHA-256 in
// their manifests, prints one line per file, and returns 1 if any file is
// missing or differs.
func runVerify(args []string, stdout, stderr io.Writer) int {
	l, err := resolve("vigil verify", []string{"recordings-dir"}, nil, args, os.LookupEnv, stdout, stderr,
		helpFor("vigil verify [-recordings-dir DIR | -config FILE] [id...]", verifyHelp))
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case err != nil:
		fmt.Fprintln(stderr, "vigil verify:", err)
		return 2
	}
	checks, err := recordings.VerifyDir(l.get("recordings-dir"), l.args...)
	failed := 0
	for _, c := range checks {
		line := strings.ToUpper(c.Result)
		if c.Result == recordings.CheckOK {
			line = "ok"
		}
		fmt.Fprintf(stdout, "%s %s/%s\n", line, c.Recording, c.File)
		if c.Failed() {
			failed++
		}
	}
	if err != nil {
		fmt.Fprintln(stderr, "vigil verify:", err)
		return 1
	}
	fmt.Fprintf(stdout, "%d files checked, %d failed\n", len(checks), failed)
	if failed > 0 {
		return 1
	}
	return 0
}
