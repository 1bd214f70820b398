package signaling_test

import (
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pion/turn/v5"
	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/relay"
	"github.com/vigil-media/vigil/sfu"
	"github.com/vigil-media/vigil/signaling/vigiltest"
	"go.uber.org/goleak"
)

// turnAllocate allocates a relayed UDP address on the TURN server of
// servers (their UDP URL) with their credentials; the client and the
// relayed conn are closed at the test's end.
func turnAllocate(t *testing.T, servers []webrtc.ICEServer) (net.PacketConn, error) {
	t.Helper()
	if len(servers) != 1 || len(servers[0].URLs) == 0 {
		t.Fatalf("ice servers %+v", servers)
	}
	hp := strings.TrimSuffix(strings.TrimPrefix(servers[0].URLs[0], "turn:"), "?transport=udp")
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c, err := turn.NewClient(&turn.ClientConfig{STUNServerAddr: hp, TURNServerAddr: hp, Conn: conn,
		Username: servers[0].Username, Password: servers[0].Credential.(string), Realm: relay.Realm, RTO: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Listen(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); _ = conn.Close() })
	relayed, err := c.Allocate()
	if err == nil {
		t.Cleanup(func() { _ = relayed.Close() })
	}
	return relayed, err
}

// TestTURNCredentialsEndWithTheParticipant: against a real server with
// the embedded TURN server, the credentials handed at join to a
// participant then kicked, to one then revoked, and to one revoked after
// it left, allocate nothing more, and the first two's allocations are
// closed; those of a participant that stays keep working, and a viewer's
// credentials relay nothing to a loopback port other than the media's.
func TestTURNCredentialsEndWithTheParticipant(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	turnSrv := startTURN(t)
	srv := vigiltest.StartWith(t, vigiltest.Options{SFU: sfu.Config{ICEServersFor: turnSrv.ICEServers, RevokeICEServers: turnSrv.Revoke}})
	turnSrv.SetMediaPorts(srv.SFU.LocalAddr().(*net.UDPAddr).Port, 0)
	srv.CreateRoom(t, "exam", "conference")

	servers := map[string][]webrtc.ICEServer{}
	sessions := map[string]string{}
	for _, id := range []string{"kicked", "revoked", "left", "stays"} {
		sessions[id], servers[id] = joinedICEServers(t, srv, "exam", id)
		if !strings.HasSuffix(servers[id][0].Username, ":exam:"+id) {
			t.Fatalf("%s: username %q", id, servers[id][0].Username)
		}
	}
	relayed := map[string]net.PacketConn{}
	for _, id := range []string{"kicked", "revoked", "stays"} {
		r, err := turnAllocate(t, servers[id])
		if err != nil {
			t.Fatalf("%s: allocate before: %v", id, err)
		}
		relayed[id] = r
	}
	if n := turnSrv.Allocations(); n != 3 {
		t.Fatalf("%d allocations, want 3", n)
	}

	// A viewer's credentials, to a loopback UDP port that is not the
	// media's: nothing arrives.
	victim, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer victim.Close()
	for range 20 {
		_, _ = relayed["stays"].WriteTo([]byte("PING\r\n"), victim.LocalAddr())
	}
	_ = victim.SetReadDeadline(time.Now().Add(time.Second))
	if n, _, err := victim.ReadFrom(make([]byte, 1500)); err == nil {
		t.Fatalf("the loopback victim received %d bytes through TURN", n)
	}
	t.Logf("loopback victim: 0 bytes from 20 relayed datagrams")

	admin := func(path string, body any) {
		t.Helper()
		if status, reply := srv.Do(t, http.MethodPost, path, srv.AdminKey, body); status/100 != 2 {
			t.Fatalf("%s: %d %s", path, status, reply)
		}
	}
	admin("/v1/rooms/exam/participants/kicked/kick", map[string]any{})
	admin("/v1/rooms/exam/tokens/revoke", map[string]any{"identity": "revoked"})
	if status, body := srv.Do(t, http.MethodDelete, "/v1/sessions/"+sessions["left"], "", nil); status/100 != 2 {
		t.Fatalf("leave: %d %s", status, body)
	}
	admin("/v1/rooms/exam/tokens/revoke", map[string]any{"identity": "left"})

	deadline := time.Now().Add(10 * time.Second)
	for turnSrv.Allocations() != 1 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := turnSrv.Allocations(); n != 1 {
		t.Fatalf("%d allocations after the kick and the revocation, want 1 (the one that stays)", n)
	}
	for _, id := range []string{"kicked", "revoked", "left"} {
		if _, err := turnAllocate(t, servers[id]); err == nil {
			t.Errorf("%s: allocated with its credentials afterwards", id)
		}
	}
	if _, err := turnAllocate(t, servers["stays"]); err != nil {
		t.Fatalf("stays: a second allocation: %v", err)
	}
	// The kicked participant joins again (its token still works): its new
	// credentials do.
	_, again := joinedICEServers(t, srv, "exam", "kicked")
	if again[0].Username == servers["kicked"][0].Username {
		t.Fatalf("the same credentials minted again: %q", again[0].Username)
	}
	if _, err := turnAllocate(t, again); err != nil {
		t.Fatalf("kicked, joined again: %v", err)
	}
	t.Logf("TURN allocations open at the end: %d", turnSrv.Allocations())
}
