package relay_test

import (
	"bytes"
	"log/slog"
	"net"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/turn/v5"
	"github.com/vigil-media/vigil/relay"
	"go.uber.org/goleak"
)

// media stands for Vigil's media on this host: a UDP socket (the ICE
// UDP mux) that echoes what it receives, prefixed with "echo:".
func media(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			_, _ = c.WriteToUDP(append([]byte("echo:"), buf[:n]...), from)
		}
	}()
	return c
}

// victim is a loopback UDP service that is not Vigil's media: it counts
// the bytes it receives.
type victim struct {
	conn  *net.UDPConn
	bytes atomic.Int64
}

func newVictim(t *testing.T) *victim {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	v := &victim{conn: c}
	t.Cleanup(func() { _ = c.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, _, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			v.bytes.Add(int64(n))
		}
	}()
	return v
}

// startWith starts a TURN server on loopback relaying to the media
// ports given.
func startWith(t *testing.T, cfg relay.Config, udpPort, tcpPort int) *relay.Server {
	t.Helper()
	cfg.Addr, cfg.Secret, cfg.TTL, cfg.Logger = "127.0.0.1:0", "s3cret", time.Minute, slog.New(slog.DiscardHandler)
	s, err := relay.New(cfg)
	for try := 0; err != nil && try < 5; try++ {
		// The TCP listener takes the UDP port's number, which another
		// process may hold.
		s, err = relay.New(cfg)
	}
	if err != nil {
		t.Fatal(err)
	}
	s.SetMediaPorts(udpPort, tcpPort)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// client is a TURN client (pion/turn's) of s over network ("udp" or
// "tcp") with the credentials given, listening; closed at the test's end.
func client(t *testing.T, s *relay.Server, network, user, pass string) *turn.Client {
	t.Helper()
	addr := "127.0.0.1:" + strconv.Itoa(s.Port())
	var conn net.PacketConn
	if network == "udp" {
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		conn = c
	} else {
		c, err := net.Dial("tcp4", addr)
		if err != nil {
			t.Fatal(err)
		}
		conn = turn.NewSTUNConn(c)
	}
	c, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: addr, TURNServerAddr: addr, Conn: conn,
		Username: user, Password: pass, Realm: relay.Realm, RTO: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Listen(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); _ = conn.Close() })
	return c
}

// allocRelayed asks c for a relayed UDP address; a relayed conn is closed
// at the test's end.
func allocRelayed(t *testing.T, c *turn.Client) (net.PacketConn, error) {
	t.Helper()
	relayed, err := c.Allocate()
	if err == nil {
		t.Cleanup(func() { _ = relayed.Close() })
	}
	return relayed, err
}

// echoed sends msg through relayed to the media and reports whether its
// echo came back within a few seconds (retrying: UDP).
func echoed(t *testing.T, relayed net.PacketConn, to net.Addr, msg string) bool {
	t.Helper()
	buf := make([]byte, 1500)
	for range 20 {
		if _, err := relayed.WriteTo([]byte(msg), to); err != nil {
			t.Logf("write to %v: %v", to, err)
		}
		_ = relayed.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
		n, _, err := relayed.ReadFrom(buf)
		if err == nil && bytes.Equal(buf[:n], []byte("echo:"+msg)) {
			return true
		}
	}
	return false
}

// TestRelayReachesOnlyMedia: the attack of a viewer with its TURN
// credentials: relaying to a loopback UDP service other than the media
// port delivers nothing either way, and permissions to other hosts are
// refused; relaying to the media port works.
func TestRelayReachesOnlyMedia(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	m := media(t)
	v := newVictim(t)
	s := startWith(t, relay.Config{}, m.LocalAddr().(*net.UDPAddr).Port, 0)
	for _, network := range []string{"udp", "tcp"} {
		user, pass := s.Credentials("exam", "viewer-"+network)
		c := client(t, s, network, user, pass)
		relayed, err := allocRelayed(t, c)
		if err != nil {
			t.Fatalf("%s: allocate: %v", network, err)
		}
		if !echoed(t, relayed, m.LocalAddr(), "hello") {
			t.Fatalf("%s: no echo from the media port through the relay", network)
		}
		// The attack: the same allocation, to a loopback port that is not
		// the media's.
		for range 50 {
			_, _ = relayed.WriteTo([]byte("PING\r\n"), v.conn.LocalAddr())
		}
		// And the other way: the victim's port writes to the relayed
		// address; the client must not get it.
		for range 20 {
			_, _ = v.conn.WriteTo([]byte("from elsewhere"), relayed.LocalAddr())
		}
		buf := make([]byte, 1500)
		_ = relayed.SetReadDeadline(time.Now().Add(time.Second))
		if n, from, err := relayed.ReadFrom(buf); err == nil {
			t.Errorf("%s: the client got %q from %v", network, buf[:n], from)
		}
		// The media still echoes (the relay is alive: what the victim
		// did not get was refused, not lost).
		if !echoed(t, relayed, m.LocalAddr(), "again") {
			t.Fatalf("%s: no echo after the attack", network)
		}
		if got := v.bytes.Load(); got != 0 {
			t.Fatalf("%s: the loopback victim received %d bytes through the relay", network, got)
		}
		t.Logf("%s: the loopback victim received %d bytes from 50 relayed datagrams", network, v.bytes.Load())
		// Another host: the permission itself is refused.
		if err := c.CreatePermission(&net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 6379}); err == nil {
			t.Errorf("%s: permission to 192.0.2.1 granted", network)
		}
		_ = relayed.Close()
	}
}

// fakeRedis is a loopback TCP service that counts connections.
func fakeRedis(t *testing.T) (net.Listener, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			_ = c.Close()
		}
	}()
	return ln, &n
}

// TestTCPAllocations: a TCP allocation (RFC 6062) is refused by default,
// and a fake Redis on loopback gets no connection; with TCPRelay on, it
// connects to the ICE over TCP port only, never to the Redis.
func TestTCPAllocations(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	redis, redisConns := fakeRedis(t)
	iceTCP, iceConns := fakeRedis(t)
	m := media(t)
	udpPort, tcpPort := m.LocalAddr().(*net.UDPAddr).Port, iceTCP.Addr().(*net.TCPAddr).Port

	off := startWith(t, relay.Config{}, udpPort, tcpPort)
	user, pass := off.Credentials("exam", "viewer")
	if alloc, err := client(t, off, "tcp", user, pass).AllocateTCP(); err == nil {
		_, cerr := alloc.Connect(redis.Addr())
		_ = alloc.Close()
		t.Fatalf("TCP allocation granted by default (connect to the redis: %v)", cerr)
	}
	if off.Allocations() != 0 {
		t.Fatalf("%d allocations after a refused TCP allocation", off.Allocations())
	}

	on := startWith(t, relay.Config{TCPRelay: true}, udpPort, tcpPort)
	user, pass = on.Credentials("exam", "viewer")
	alloc, err := client(t, on, "tcp", user, pass).AllocateTCP()
	if err != nil {
		t.Fatalf("TCP allocation with TCPRelay: %v", err)
	}
	defer alloc.Close()
	if _, err := alloc.Connect(redis.Addr()); err == nil {
		t.Fatal("connect to the loopback redis granted")
	}
	if _, err := alloc.Connect(iceTCP.Addr()); err != nil {
		t.Fatalf("connect to the ICE over TCP port: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for iceConns.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if iceConns.Load() != 1 {
		t.Fatalf("the ICE over TCP port got %d connections, want 1", iceConns.Load())
	}
	if n := redisConns.Load(); n != 0 {
		t.Fatalf("the loopback redis got %d connections", n)
	}
	t.Logf("loopback redis: %d connections; ICE over TCP port: %d", redisConns.Load(), iceConns.Load())
}

// TestAllocationQuota: one credential holds at most MaxAllocations
// allocations; the next is refused (486), another participant's are
// not, and a released one frees its place.
func TestAllocationQuota(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	m := media(t)
	const max = 3
	s := startWith(t, relay.Config{MaxAllocations: max}, m.LocalAddr().(*net.UDPAddr).Port, 0)
	user, pass := s.Credentials("exam", "viewer")
	var held []net.PacketConn
	for i := range max {
		relayed, err := allocRelayed(t, client(t, s, "udp", user, pass))
		if err != nil {
			t.Fatalf("allocation %d of %d: %v", i+1, max, err)
		}
		held = append(held, relayed)
	}
	for _, network := range []string{"udp", "tcp"} {
		if _, err := allocRelayed(t, client(t, s, network, user, pass)); err == nil {
			t.Fatalf("%s: allocation %d granted", network, max+1)
		}
	}
	t.Logf("allocations open: %d (quota %d per credential)", s.Allocations(), max)
	other, otherPass := s.Credentials("exam", "other")
	if _, err := allocRelayed(t, client(t, s, "udp", other, otherPass)); err != nil {
		t.Fatalf("another participant's allocation: %v", err)
	}
	_ = held[0].Close() // a Refresh of lifetime 0: the server releases it
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := allocRelayed(t, client(t, s, "udp", user, pass))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no allocation after one was released: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRevokedCredentials: after Revoke (a kicked or revoked
// participant), its credentials allocate nothing, its allocation is
// closed and relays nothing more; the credentials of others, of the same
// identity in another room, and those minted for it afterwards work.
func TestRevokedCredentials(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	m := media(t)
	s := startWith(t, relay.Config{}, m.LocalAddr().(*net.UDPAddr).Port, 0)
	user, pass := s.Credentials("exam", "mallory")
	c := client(t, s, "udp", user, pass)
	relayed, err := allocRelayed(t, c)
	if err != nil {
		t.Fatal(err)
	}
	if !echoed(t, relayed, m.LocalAddr(), "before") {
		t.Fatal("no echo before the revocation")
	}
	otherRoom, otherRoomPass := s.Credentials("lab", "mallory")
	s.Revoke("exam", "mallory")
	deadline := time.Now().Add(10 * time.Second)
	for s.Allocations() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := s.Allocations(); n != 0 {
		t.Fatalf("%d allocations left after the revocation", n)
	}
	if echoed(t, relayed, m.LocalAddr(), "after") {
		t.Fatal("the revoked allocation still relays")
	}
	if err := c.CreatePermission(m.LocalAddr()); err == nil {
		t.Error("a permission on the revoked credentials")
	}
	for _, network := range []string{"udp", "tcp"} {
		if _, err := allocRelayed(t, client(t, s, network, user, pass)); err == nil {
			t.Errorf("%s: allocation with revoked credentials", network)
		}
	}
	for what, cred := range map[string][2]string{
		"another room": {otherRoom, otherRoomPass},
		"another participant": func() [2]string {
			u, p := s.Credentials("exam", "alice")
			return [2]string{u, p}
		}(),
		"minted after": func() [2]string {
			u, p := s.Credentials("exam", "mallory")
			return [2]string{u, p}
		}(),
	} {
		r, err := allocRelayed(t, client(t, s, "udp", cred[0], cred[1]))
		if err != nil {
			t.Errorf("%s: %v", what, err)
			continue
		}
		if !echoed(t, r, m.LocalAddr(), what) {
			t.Errorf("%s: no echo", what)
		}
		_ = r.Close()
	}
}
