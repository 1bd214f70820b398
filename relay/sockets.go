package relay

import (
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/pion/turn/v5"
)

// generator makes the relayed sockets of allocations (pion/turn's
// RelayAddressGenerator): on every interface, handed out as RelayIP,
// counted against their credential's quota, closed by a revocation,
// and narrowed to Vigil's media ports.
type generator struct {
	s      *Server
	static *turn.RelayAddressGeneratorStatic
}

func (s *Server) generator() turn.RelayAddressGenerator {
	return &generator{s: s, static: &turn.RelayAddressGeneratorStatic{RelayAddress: s.cfg.RelayIP, Address: "0.0.0.0"}}
}

func (g *generator) Validate() error { return g.static.Validate() }

// AllocatePacketConn makes the relayed UDP socket of an allocation.
func (g *generator) AllocatePacketConn(conf turn.AllocateListenerConfig) (net.PacketConn, net.Addr, error) {
	r, err := g.s.reserve(conf.UserID)
	if err != nil {
		return nil, nil, err
	}
	conn, addr, err := g.static.AllocatePacketConn(conf)
	if err != nil {
		_ = r.Close()
		return nil, nil, err
	}
	if !r.attach(conn) {
		return nil, nil, ErrRevoked
	}
	return &mediaConn{PacketConn: conn, r: r}, addr, nil
}

// AllocateListener makes the relayed TCP listener of a TCP allocation
// (RFC 6062), if Config.TCPRelay allows them.
func (g *generator) AllocateListener(conf turn.AllocateListenerConfig) (net.Listener, net.Addr, error) {
	if !g.s.cfg.TCPRelay {
		g.s.cfg.Logger.Debug("turn: TCP allocation refused", "username", conf.UserID)
		return nil, nil, ErrTCPRelayOff
	}
	r, err := g.s.reserve(conf.UserID)
	if err != nil {
		return nil, nil, err
	}
	ln, addr, err := g.static.AllocateListener(conf)
	if err != nil {
		_ = r.Close()
		return nil, nil, err
	}
	if !r.attach(ln) {
		return nil, nil, ErrRevoked
	}
	return &mediaListener{Listener: ln, r: r}, addr, nil
}

// AllocateConn connects a TCP allocation to a peer (Connect): only to
// the ICE over TCP port of this host.
func (g *generator) AllocateConn(conf turn.AllocateConnConfig) (net.Conn, error) {
	if !g.s.cfg.TCPRelay {
		return nil, ErrTCPRelayOff
	}
	if !g.s.mediaPeer(conf.RemoteAddr, "tcp") {
		g.s.cfg.Logger.Debug("turn: connect refused", "peer", conf.RemoteAddr.String(), "username", conf.UserID)
		return nil, fmt.Errorf("%w: %v", ErrPeerRefused, conf.RemoteAddr)
	}
	return g.static.AllocateConn(conf)
}

// reserve counts a new relayed socket of username against its quota.
func (s *Server) reserve(username string) (*relayed, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.revokedLocked(username) {
		return nil, ErrRevoked
	}
	if s.cfg.MaxAllocations > 0 && len(s.live[username]) >= s.cfg.MaxAllocations {
		return nil, fmt.Errorf("%w (%d)", ErrQuota, s.cfg.MaxAllocations)
	}
	r := &relayed{s: s, user: username}
	if s.live[username] == nil {
		s.live[username] = map[*relayed]struct{}{}
	}
	s.live[username][r] = struct{}{}
	return r, nil
}

// underQuota is pion/turn's QuotaHandler: an Allocate of a credential at
// its quota gets 486 (Allocation Quota Reached). reserve enforces it
// again when the socket is made.
func (s *Server) underQuota(username, _ string, src net.Addr) bool {
	s.mu.Lock()
	n := len(s.live[username])
	s.mu.Unlock()
	if s.cfg.MaxAllocations > 0 && n >= s.cfg.MaxAllocations {
		s.cfg.Logger.Debug("turn: allocation quota reached", "username", username, "src", src.String())
		return false
	}
	return true
}

// mediaPeer reports whether addr is a port of Vigil's media over
// network ("udp": the ICE UDP mux, "tcp": ICE over TCP) on this host.
// For UDP, only the port is checked here, per packet: the address is
// this host's, or pion/turn would hold no permission for it (permit).
func (s *Server) mediaPeer(addr net.Addr, network string) bool {
	switch a := addr.(type) {
	case *net.UDPAddr:
		port := s.mediaUDP.Load()
		return network == "udp" && port != 0 && a.Port == int(port)
	case *net.TCPAddr:
		port := s.mediaTCP.Load()
		return network == "tcp" && port != 0 && a.Port == int(port) && s.hostIP(a.IP)
	}
	return false
}

// relayed is one relayed socket (or listener) of a credential, counted
// in Server.live until closed.
type relayed struct {
	s    *Server
	user string

	mu     sync.Mutex // guards sock and closed; nothing is locked while holding it
	sock   io.Closer
	closed bool
}

// attach gives r its socket; if r was closed meanwhile (revoked), the
// socket is closed and attach returns false.
func (r *relayed) attach(c io.Closer) bool {
	r.mu.Lock()
	closed := r.closed
	if !closed {
		r.sock = c
	}
	r.mu.Unlock()
	if closed {
		_ = c.Close()
	}
	return !closed
}

// Close closes the socket and uncounts it. Calling it again does
// nothing.
func (r *relayed) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	sock := r.sock
	r.sock = nil
	r.mu.Unlock()
	r.s.mu.Lock()
	delete(r.s.live[r.user], r)
	if len(r.s.live[r.user]) == 0 {
		delete(r.s.live, r.user)
	}
	r.s.mu.Unlock()
	if sock != nil {
		return sock.Close()
	}
	return nil
}

// mediaConn is a relayed UDP socket that sends only to, and hands on
// only what comes from, the media UDP port.
type mediaConn struct {
	net.PacketConn
	r *relayed
}

func (c *mediaConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	if !c.r.s.mediaPeer(addr, "udp") {
		return 0, fmt.Errorf("%w: %v", ErrPeerRefused, addr)
	}
	return c.PacketConn.WriteTo(p, addr)
}

func (c *mediaConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		n, addr, err := c.PacketConn.ReadFrom(p)
		if err != nil || c.r.s.mediaPeer(addr, "udp") {
			return n, addr, err
		}
		// From elsewhere: dropped.
	}
}

func (c *mediaConn) Close() error { return c.r.Close() }

// mediaListener is the listener of a TCP allocation. Vigil's ICE over
// TCP is passive, it never connects to a relayed address: every
// connection in is closed.
type mediaListener struct {
	net.Listener
	r *relayed
}

func (l *mediaListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		_ = c.Close()
	}
}

func (l *mediaListener) Close() error { return l.r.Close() }
