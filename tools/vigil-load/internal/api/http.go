package api

import (
	"context"
	"net"
	"net/http"
	"sync/atomic"
	"time"
)

// Meter counts what the clients under test cost on the wire: bytes read
// and written on their TCP connections (HTTP headers, bodies, WebSocket
// frames, TLS-free since loopback) and HTTP requests sent.
type Meter struct {
	Bytes    atomic.Int64
	Requests atomic.Int64
}

// countingConn counts every byte read from and written to a connection.
type countingConn struct {
	net.Conn
	m *Meter
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.m.Bytes.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.m.Bytes.Add(int64(n))
	return n, err
}

// Dialer returns a DialContext that counts into m (nil: no counting).
func Dialer(m *Meter) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: -1}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil || m == nil {
			return c, err
		}
		return &countingConn{Conn: c, m: m}, nil
	}
}

// NewHTTPClient is one shared client whose pool keeps a connection per
// long-poll, SSE or short-poll client open between requests.
func NewHTTPClient(m *Meter, conns int) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext:         Dialer(m),
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		MaxConnsPerHost:     0,
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   false,
	}}
}
