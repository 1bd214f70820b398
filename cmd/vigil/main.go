// Command vigil runs the Vigil media server: the SFU on one UDP port, the
// admin API, the signaling transports and the web client on one HTTP
// address.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
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
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/sfu"
	"github.com/vigil-media/vigil/signaling"
)

// config is the server's configuration: each flag defaults to its
// environment variable, which defaults to the built-in value.
type config struct {
	HTTPAddr      string
	AdminKey      string
	UDPPort       int
	PublicIP      string
	RecordingsDir string
	ICEServers    string
	LogLevel      string
	LogFormat     string
}

func env(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

func parseConfig(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("vigil", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.HTTPAddr, "http-addr", env("VIGIL_HTTP_ADDR", ":8080"), "HTTP listen address (VIGIL_HTTP_ADDR)")
	fs.StringVar(&c.AdminKey, "admin-key", env("VIGIL_ADMIN_KEY", ""), "admin API bearer key; random and printed when empty (VIGIL_ADMIN_KEY)")
	port, err := strconv.Atoi(env("VIGIL_UDP_PORT", "7882"))
	if err != nil {
		return c, fmt.Errorf("VIGIL_UDP_PORT: %w", err)
	}
	fs.IntVar(&c.UDPPort, "udp-port", port, "the one UDP port for all media (VIGIL_UDP_PORT)")
	fs.StringVar(&c.PublicIP, "public-ip", env("VIGIL_PUBLIC_IP", ""), "address advertised to clients, behind NAT (VIGIL_PUBLIC_IP)")
	fs.StringVar(&c.RecordingsDir, "recordings-dir", env("VIGIL_RECORDINGS_DIR", "recordings/data"), "where recordings are written (VIGIL_RECORDINGS_DIR)")
	fs.StringVar(&c.ICEServers, "ice-servers", env("VIGIL_ICE_SERVERS", ""), "ICE servers for clients: comma-separated URLs, or a JSON array of RTCIceServer (VIGIL_ICE_SERVERS)")
	fs.StringVar(&c.LogLevel, "log-level", env("VIGIL_LOG_LEVEL", "info"), "debug, info, warn or error (VIGIL_LOG_LEVEL)")
	fs.StringVar(&c.LogFormat, "log-format", env("VIGIL_LOG_FORMAT", "text"), "text or json (VIGIL_LOG_FORMAT)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if c.UDPPort < 0 || c.UDPPort > 65535 {
		return c, fmt.Errorf("udp port %d out of range", c.UDPPort)
	}
	if c.PublicIP != "" && net.ParseIP(c.PublicIP) == nil {
		return c, fmt.Errorf("public ip %q is not an IP address", c.PublicIP)
	}
	return c, nil
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
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "vigil:", err)
			os.Exit(1)
		}
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	cfg, err := parseConfig(args, stderr)
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
		b := make([]byte, 24)
		_, _ = rand.Read(b)
		cfg.AdminKey, generated = hex.EncodeToString(b), true
	}
	if err := os.MkdirAll(cfg.RecordingsDir, 0o700); err != nil {
		return fmt.Errorf("recordings dir: %w", err)
	}
	var publicIPs []string
	if cfg.PublicIP != "" {
		publicIPs = []string{cfg.PublicIP}
	}

	media, err := sfu.New(sfu.Config{
		UDPAddr: fmt.Sprintf(":%d", cfg.UDPPort), PublicIPs: publicIPs, ICEServers: iceServers,
		IncludeLoopback: true, Logger: logger,
	})
	if err != nil {
		return err
	}
	gin.SetMode(gin.ReleaseMode)
	sig, err := signaling.New(signaling.Config{SFU: media, AdminKey: cfg.AdminKey, Logger: logger})
	if err != nil {
		_ = media.Close()
		return err
	}
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		_ = media.Close()
		return fmt.Errorf("http: %w", err)
	}
	hs := &http.Server{Handler: sig.Handler(), ReadHeaderTimeout: 10 * time.Second, MaxHeaderBytes: 64 << 10}

	fmt.Fprintf(stdout, "Vigil is running. Open %s in a browser.\n", browseURL(ln.Addr()))
	if generated {
		fmt.Fprintf(stdout, "Admin key (generated; set VIGIL_ADMIN_KEY to keep one): %s\n", cfg.AdminKey)
	}
	logger.Info("listening", "http", ln.Addr().String(), "media_udp", media.LocalAddr().String())

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.Serve(ln) }()
	select {
	case err := <-serveErr:
		sig.Close(5 * time.Second)
		return fmt.Errorf("http: %w", err)
	case <-ctx.Done():
	}
	logger.Info("shutting down")
	// Sessions first, so every client is told why, then the listener.
	sig.Close(5 * time.Second)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := hs.Shutdown(shutdownCtx); err != nil {
		logger.Warn("http shutdown", "err", err)
	}
	logger.Info("stopped")
	return nil
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
