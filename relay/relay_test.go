package relay_test

import (
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pion/turn/v5"
	"github.com/vigil-media/vigil/relay"
	"go.uber.org/goleak"
)

func start(t *testing.T) *relay.Server {
	t.Helper()
	s, err := relay.New(relay.Config{Addr: "127.0.0.1:0", Secret: "s3cret", TTL: time.Minute, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// allocate asks the server for a relayed address over network ("udp" or
// "tcp") with the credentials given, and returns it or the error.
func allocate(t *testing.T, s *relay.Server, network, user, pass string) (net.Addr, error) {
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
	defer conn.Close()
	c, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: addr, TURNServerAddr: addr, Conn: conn,
		Username: user, Password: pass, Realm: relay.Realm, RTO: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Listen(); err != nil {
		t.Fatal(err)
	}
	relayed, err := c.Allocate()
	if err != nil {
		return nil, err
	}
	defer relayed.Close()
	return relayed.LocalAddr(), nil
}

// TestCredentials: minted credentials allocate a relayed address on
// 127.0.0.1 over UDP and TCP; a wrong password, a forged identity, an
// expired username and a username without expiry are refused.
func TestCredentials(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	s := start(t)
	user, pass := s.Credentials("exam", "alice")
	exp, id, _ := strings.Cut(user, ":")
	if id != "exam:alice" {
		t.Fatalf("username %q", user)
	}
	if e, _ := strconv.ParseInt(exp, 10, 64); time.Until(time.Unix(e, 0)) < 50*time.Second || time.Until(time.Unix(e, 0)) > time.Minute {
		t.Fatalf("username %q does not expire in the TTL", user)
	}
	if pass != relay.Password("s3cret", user) {
		t.Fatal("password is not the HMAC of the username")
	}
	for _, network := range []string{"udp", "tcp"} {
		a, err := allocate(t, s, network, user, pass)
		if err != nil {
			t.Fatalf("%s: allocate with minted credentials: %v", network, err)
		}
		if ua, ok := a.(*net.UDPAddr); !ok || !ua.IP.Equal(net.IPv4(127, 0, 0, 1)) {
			t.Fatalf("%s: relayed address %v, want 127.0.0.1", network, a)
		}
		past := strconv.FormatInt(time.Now().Add(-time.Second).Unix(), 10) + ":exam:alice"
		refused := map[string][2]string{
			"wrong password": {user, relay.Password("other", user)},
			"forged name":    {exp + ":exam:mallory", pass},
			"forged room":    {exp + ":other:alice", pass},
			"expired":        {past, relay.Password("s3cret", past)},
			"no expiry":      {"exam:alice", relay.Password("s3cret", "exam:alice")},
			"no room":        {exp + ":alice", relay.Password("s3cret", exp+":alice")},
		}
		for what, cred := range refused {
			if _, err := allocate(t, s, network, cred[0], cred[1]); err == nil {
				t.Errorf("%s: %s: allocated", network, what)
			}
		}
	}
	ice := s.ICEServers("exam", "bob")
	if len(ice) != 1 || len(ice[0].URLs) != 2 || ice[0].URLs[0] != "turn:127.0.0.1:"+strconv.Itoa(s.Port())+"?transport=udp" ||
		ice[0].URLs[1] != "turn:127.0.0.1:"+strconv.Itoa(s.Port())+"?transport=tcp" || !strings.HasSuffix(ice[0].Username, ":exam:bob") {
		t.Fatalf("ice servers %+v", ice)
	}
}

// TestExpiryDuringAllocation: credentials that expire while their
// allocation is in use keep it alive (a permission is still granted on
// it), but make no new allocation.
func TestExpiryDuringAllocation(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	s := start(t)
	user := strconv.FormatInt(time.Now().Add(1500*time.Millisecond).Unix(), 10) + ":exam:alice"
	pass := relay.Password("s3cret", user)
	addr := "127.0.0.1:" + strconv.Itoa(s.Port())
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c, err := turn.NewClient(&turn.ClientConfig{STUNServerAddr: addr, TURNServerAddr: addr, Conn: conn,
		Username: user, Password: pass, Realm: relay.Realm, RTO: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Listen(); err != nil {
		t.Fatal(err)
	}
	relayed, err := c.Allocate()
	if err != nil {
		t.Fatalf("allocate before the expiry: %v", err)
	}
	defer relayed.Close()
	time.Sleep(time.Until(time.Unix(mustInt(t, user), 0)) + 1100*time.Millisecond)
	if err := c.CreatePermission(&net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}); err != nil {
		t.Fatalf("permission on the allocation after the expiry: %v", err)
	}
	if _, err := allocate(t, s, "udp", user, pass); err == nil {
		t.Fatal("a new allocation with expired credentials")
	}
}

func mustInt(t *testing.T, user string) int64 {
	t.Helper()
	exp, _, _ := strings.Cut(user, ":")
	n, err := strconv.ParseInt(exp, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
