package main

import (
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"
)

// connLimitListener caps the connections open at once from one client
// address (max_conns_per_addr): a connection over the cap is closed as
// soon as it is accepted, before a byte is read, so that one client
// cannot hold every file descriptor and goroutine of the server with
// idle or trickling connections. An IPv6 client is counted by its /64,
// which one host usually has whole. Loopback is counted like any other
// address: a local process is a client too. Addresses of trusted
// proxies (trusted_proxies) are not capped: every client of a proxy
// comes from its address.
type connLimitListener struct {
	net.Listener
	max    int
	exempt []netip.Prefix
	log    *slog.Logger

	mu   sync.Mutex // guards open and refused; nothing is locked while holding it
	open map[netip.Prefix]int
	// refused counts connections closed over the cap since the last
	// log line, which is written at most once a minute.
	refused    int
	lastLogged time.Time
}

// limitConns wraps ln with a per-address cap of max connections; ln
// itself for max 0 (no limit). exempt are the trusted proxies: IPs or
// CIDRs (already checked by the signaling server).
func limitConns(ln net.Listener, max int, exempt []string, log *slog.Logger) net.Listener {
	if max <= 0 {
		return ln
	}
	l := &connLimitListener{Listener: ln, max: max, log: log, open: map[netip.Prefix]int{}}
	for _, e := range exempt {
		if p, err := netip.ParsePrefix(e); err == nil {
			l.exempt = append(l.exempt, p.Masked())
		} else if a, err := netip.ParseAddr(e); err == nil {
			l.exempt = append(l.exempt, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
		}
	}
	return l
}

// clientKey is the address a connection counts against, and whether it
// counts at all.
func (l *connLimitListener) clientKey(addr net.Addr) (netip.Prefix, bool) {
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return netip.Prefix{}, false
	}
	a := ap.Addr().Unmap()
	for _, p := range l.exempt {
		if p.Contains(a) {
			return netip.Prefix{}, false
		}
	}
	bits := 32
	if a.Is6() {
		bits = 64
	}
	p, _ := a.Prefix(bits)
	return p, true
}

// Accept returns the next connection within its address's cap; those
// over it are closed here.
func (l *connLimitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		key, counted := l.clientKey(c.RemoteAddr())
		if !counted {
			return c, nil
		}
		l.mu.Lock()
		if l.open[key] >= l.max {
			l.refused++
			var report int
			if now := time.Now(); now.Sub(l.lastLogged) >= time.Minute {
				report, l.refused, l.lastLogged = l.refused, 0, now
			}
			l.mu.Unlock()
			_ = c.Close()
			if report > 0 {
				l.log.Warn("http: connections refused over max_conns_per_addr", "addr", key.String(), "max", l.max, "refused", report)
			}
			continue
		}
		l.open[key]++
		l.mu.Unlock()
		return &limitedConn{Conn: c, release: func() { l.release(key) }}, nil
	}
}

func (l *connLimitListener) release(key netip.Prefix) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[key]--; l.open[key] <= 0 {
		delete(l.open, key)
	}
}

// limitedConn gives its place back once, when closed.
type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

// ReadFrom keeps the connection's own (sendfile for a TCP connection),
// which net/http uses to send files.
func (c *limitedConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
