// Package relay is Vigil's embedded TURN server (pion/turn), for clients
// whose networks allow no direct path to the media ports: it listens on
// one port number over UDP and TCP, and accepts short-lived credentials
// in the TURN REST scheme, minted per participant from a shared secret
// (credentials.go): username "<expiry unix time>:<room>:<identity>",
// password base64(HMAC-SHA1(secret, username)).
//
// Its only peer is Vigil's own media on this host (sockets.go):
//   - permissions (CreatePermission, ChannelBind, Connect) are granted
//     only to this host's own addresses (loopback, its interfaces,
//     Config.PublicIP);
//   - a relayed socket sends only to, and hands on only what comes from,
//     the media UDP port (SetMediaPorts): never another port of those
//     addresses, so not a database or any other service on loopback;
//   - TCP allocations (RFC 6062) are refused unless Config.TCPRelay, and
//     then connect only to the ICE over TCP port;
//   - each credential holds at most Config.MaxAllocations allocations;
//   - Revoke makes the credentials of an identity in a room stop working
//     and closes their allocations (a kicked or revoked participant).
package relay

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/logging"
	"github.com/pion/turn/v5"
)

// Realm is the TURN realm.
const Realm = "vigil"

// DefaultTTL is how long minted credentials last when Config.TTL is 0.
const DefaultTTL = time.Hour

// DefaultMaxAllocations is Config.MaxAllocations's default: a browser
// allocates once per TURN URL (two: UDP and TCP) and local network
// interface, and an ICE restart allocates again before the old ones are
// released.
const DefaultMaxAllocations = 8

// Errors of the relay.
var (
	// ErrPeerRefused: a relayed socket was asked to reach, or was reached
	// from, an address that is not Vigil's media.
	ErrPeerRefused = errors.New("relay: peer is not this host's media port")
	// ErrTCPRelayOff: a TCP allocation (RFC 6062) while Config.TCPRelay
	// is off.
	ErrTCPRelayOff = errors.New("relay: TCP allocations are off")
	// ErrQuota: a credential asked for more than Config.MaxAllocations.
	ErrQuota = errors.New("relay: allocation quota of the credentials reached")
	// ErrRevoked: the credentials were revoked.
	ErrRevoked = errors.New("relay: credentials revoked")
)

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
	// TCPRelay allows TCP allocations (RFC 6062), whose Connect then
	// reaches only the ICE over TCP port; off, they are refused.
	TCPRelay bool
	// MaxAllocations is the most allocations one credential holds at
	// once; 0 means DefaultMaxAllocations, negative no limit.
	MaxAllocations int
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

	// mediaUDP and mediaTCP are the ports of Vigil's media on this host
	// (SetMediaPorts); 0 until set, and then nothing is relayed.
	mediaUDP, mediaTCP atomic.Int32

	// mu guards revoked and live; nothing is locked while holding it
	// (sockets are closed after it is released).
	mu      sync.Mutex
	revoked map[revocationKey]revocation
	live    map[string]map[*relayed]struct{} // by username: its relayed sockets
}

// New starts a TURN server on cfg.Addr over UDP and TCP. It relays
// nothing until SetMediaPorts names the media ports.
func New(cfg Config) (*Server, error) {
	if cfg.Secret == "" {
		return nil, errors.New("relay: no secret")
	}
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.MaxAllocations == 0 {
		cfg.MaxAllocations = DefaultMaxAllocations
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
	s := &Server{cfg: cfg, udp: udp, tcp: tcp, port: port,
		revoked: map[revocationKey]revocation{}, live: map[string]map[*relayed]struct{}{}}
	logs := pionLogs{log: cfg.Logger}
	s.srv, err = turn.NewServer(turn.ServerConfig{
		Realm:         Realm,
		AuthHandler:   s.authenticate,
		QuotaHandler:  s.underQuota,
		LoggerFactory: logs,
		PacketConnConfigs: []turn.PacketConnConfig{{
			PacketConn: udp, RelayAddressGenerator: s.generator(), PermissionHandler: s.permit,
		}},
		ListenerConfigs: []turn.ListenerConfig{{
			Listener: tcp, RelayAddressGenerator: s.generator(), PermissionHandler: s.permit,
		}},
	})
	if err != nil {
		_ = udp.Close()
		_ = tcp.Close()
		return nil, fmt.Errorf("relay: %w", err)
	}
	return s, nil
}

// SetMediaPorts names the ports of Vigil's media on this host: udp, the
// ICE UDP mux; tcp, ICE over TCP (0: off). Relayed sockets reach these
// ports of this host's addresses and nothing else.
func (s *Server) SetMediaPorts(udp, tcp int) {
	s.mediaUDP.Store(int32(udp))
	s.mediaTCP.Store(int32(tcp))
}

// Port is the port number of both listeners.
func (s *Server) Port() int { return s.port }

// Close stops the server and releases every allocation.
func (s *Server) Close() error { return s.srv.Close() }

// Allocations is the number of allocations open.
func (s *Server) Allocations() int { return s.srv.AllocationCount() }

// permit grants permissions to this host's own addresses only. The
// relayed sockets narrow that to the media ports.
func (s *Server) permit(_ net.Addr, peer net.IP) bool {
	if s.hostIP(peer) {
		return true
	}
	s.cfg.Logger.Debug("turn: permission refused", "peer", peer.String())
	return false
}

// hostIP reports whether ip is one of this host's addresses.
func (s *Server) hostIP(ip net.IP) bool {
	if ip.IsLoopback() || ip.Equal(s.cfg.RelayIP) || (s.cfg.PublicIP != nil && ip.Equal(s.cfg.PublicIP)) {
		return true
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
			return true
		}
	}
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
