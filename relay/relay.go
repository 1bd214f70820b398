// Package relay is Vigil's embedded TURN server (pion/turn), for clients
// whose networks allow no direct path to the media ports: it listens on
// one port number over UDP and TCP, and accepts short-lived credentials
// in the TURN REST scheme, minted per participant from a shared secret:
// username "<expiry unix time>:<identity>", password
// base64(HMAC-SHA1(secret, username)).
//
// Its only intended peer is the SFU on the same host: relayed addresses
// are allocated on this host, and permissions are granted only to this
// host's own addresses (loopback, its interfaces, Config.PublicIP), so
// that the relay cannot be used to reach other machines.
package relay

import (
	"crypto/hmac"
	"crypto/sha1" //nolint:gosec // the TURN REST credentials scheme is HMAC-SHA1
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/pion/logging"
	"github.com/pion/stun/v4"
	"github.com/pion/turn/v5"
	"github.com/pion/webrtc/v4"
)

// Realm is the TURN realm.
const Realm = "vigil"

// DefaultTTL is how long minted credentials last when Config.TTL is 0.
const DefaultTTL = time.Hour

// Config configures the TURN server.
type Config struct {
	// Addr is the address listened on, over UDP and TCP with the same port
	// number, e.g. ":3478" or "127.0.0.1:0" (the TCP listener then takes
	// the UDP port's number).
	Addr string
	// Host is the host name or address clients are told to reach the
	// server at, in turn: URLs.
	Host string
	// RelayIP is the address of the relayed candidates handed out. The
	// relayed sockets listen on every interface and their one peer is
	// the SFU on this host, so 127.0.0.1 (the default) always reaches
	// them without hairpin NAT.
	RelayIP net.IP
	// PublicIP, if set, is this host's public address: permissions to it
	// are granted beside those to the host's own addresses.
	PublicIP net.IP
	// Secret signs the credentials; required.
	Secret string
	// TTL is how long minted credentials last; 0 means DefaultTTL.
	TTL time.Duration
	// Now is the clock of minted credentials; nil means time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// Server is a running TURN server.
type Server struct {
	cfg  Config
	srv  *turn.Server
	udp  net.PacketConn
	tcp  net.Listener
	port int
}

// New starts a TURN server on cfg.Addr over UDP and TCP.
func New(cfg Config) (*Server, error) {
	if cfg.Secret == "" {
		return nil, errors.New("relay: no secret")
	}
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.RelayIP == nil {
		cfg.RelayIP = net.IPv4(127, 0, 0, 1)
	}
	udp, err := net.ListenPacket("udp4", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("relay: UDP: %w", err)
	}
	port := udp.LocalAddr().(*net.UDPAddr).Port
	host, _, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		_ = udp.Close()
		return nil, fmt.Errorf("relay: address %q: %w", cfg.Addr, err)
	}
	tcp, err := net.Listen("tcp4", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		_ = udp.Close()
		return nil, fmt.Errorf("relay: TCP: %w", err)
	}
	if cfg.Host == "" {
		cfg.Host = host
		if ip := net.ParseIP(host); host == "" || ip == nil || ip.IsUnspecified() {
			cfg.Host = "127.0.0.1"
		}
	}
	s := &Server{cfg: cfg, udp: udp, tcp: tcp, port: port}
	gen := func() turn.RelayAddressGenerator {
		return &turn.RelayAddressGeneratorStatic{RelayAddress: cfg.RelayIP, Address: "0.0.0.0"}
	}
	logs := pionLogs{log: cfg.Logger}
	s.srv, err = turn.NewServer(turn.ServerConfig{
		Realm:         Realm,
		AuthHandler:   s.authenticate,
		LoggerFactory: logs,
		PacketConnConfigs: []turn.PacketConnConfig{{
			PacketConn: udp, RelayAddressGenerator: gen(), PermissionHandler: s.permit,
		}},
		ListenerConfigs: []turn.ListenerConfig{{
			Listener: tcp, RelayAddressGenerator: gen(), PermissionHandler: s.permit,
		}},
	})
	if err != nil {
		_ = udp.Close()
		_ = tcp.Close()
		return nil, fmt.Errorf("relay: %w", err)
	}
	return s, nil
}

// Port is the port number of both listeners.
func (s *Server) Port() int { return s.port }

// Close stops the server and releases every allocation.
func (s *Server) Close() error { return s.srv.Close() }

// Credentials mints a username and password for identity, valid for the
// configured TTL.
func (s *Server) Credentials(identity string) (username, password string) {
	username = strconv.FormatInt(s.cfg.Now().Add(s.cfg.TTL).Unix(), 10) + ":" + identity
	return username, Password(s.cfg.Secret, username)
}

// Password is base64(HMAC-SHA1(secret, username)), the TURN REST password.
func Password(secret, username string) string {
	m := hmac.New(sha1.New, []byte(secret))
	m.Write([]byte(username))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// ICEServers are the TURN URLs (UDP and TCP) with credentials minted for
// identity, as clients are handed them.
func (s *Server) ICEServers(identity string) []webrtc.ICEServer {
	user, pass := s.Credentials(identity)
	hp := net.JoinHostPort(s.cfg.Host, strconv.Itoa(s.port))
	return []webrtc.ICEServer{{
		URLs:       []string{"turn:" + hp + "?transport=udp", "turn:" + hp + "?transport=tcp"},
		Username:   user,
		Credential: pass,
	}}
}

// authenticate checks a REST username: "<expiry>:<identity>", not
// expired for a new allocation, and returns the key of the password its
// HMAC gives (pion/turn then checks the request's integrity with it).
// The requests that keep an existing allocation alive (Refresh,
// CreatePermission, ChannelBind, and TCP Connect and ConnectionBind) are
// let through after the expiry, so that a call relayed for longer than
// the TTL goes on: they only act on the allocation of their own 5-tuple,
// made while the credentials were valid.
func (s *Server) authenticate(ra *turn.RequestAttributes) (string, []byte, bool) {
	expiry, identity, ok := strings.Cut(ra.Username, ":")
	if !ok {
		s.cfg.Logger.Debug("turn: refused username", "username", ra.Username, "src", ra.SrcAddr.String())
		return "", nil, false
	}
	t, err := strconv.ParseInt(expiry, 10, 64)
	if err != nil || (ra.Method == stun.MethodAllocate && time.Now().Unix() > t) {
		s.cfg.Logger.Debug("turn: expired or malformed username", "username", ra.Username, "src", ra.SrcAddr.String())
		return "", nil, false
	}
	return identity, turn.GenerateAuthKey(ra.Username, ra.Realm, Password(s.cfg.Secret, ra.Username)), true
}

// permit grants permissions to this host's own addresses only.
func (s *Server) permit(_ net.Addr, peer net.IP) bool {
	if peer.IsLoopback() || peer.Equal(s.cfg.RelayIP) || (s.cfg.PublicIP != nil && peer.Equal(s.cfg.PublicIP)) {
		return true
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.Equal(peer) {
			return true
		}
	}
	s.cfg.Logger.Debug("turn: permission refused", "peer", peer.String())
	return false
}

// pionLogs routes pion/turn's logs to slog, warnings and errors only
// (its debug output is per packet).
type pionLogs struct{ log *slog.Logger }

func (l pionLogs) NewLogger(scope string) logging.LeveledLogger {
	return pionLogger{log: l.log.With("pion", scope)}
}

type pionLogger struct{ log *slog.Logger }

func (pionLogger) Trace(string)          {}
func (pionLogger) Tracef(string, ...any) {}
func (pionLogger) Debug(string)          {}
func (pionLogger) Debugf(string, ...any) {}
func (pionLogger) Info(string)           {}
func (pionLogger) Infof(string, ...any)  {}
func (p pionLogger) Warn(msg string)     { p.log.Warn(msg) }
func (p pionLogger) Warnf(f string, args ...any) {
	p.log.Warn(fmt.Sprintf(f, args...))
}
func (p pionLogger) Error(msg string) { p.log.Error(msg) }
func (p pionLogger) Errorf(f string, args ...any) {
	p.log.Error(fmt.Sprintf(f, args...))
}
