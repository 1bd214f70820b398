package main

import (
	"encoding/json"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pion/turn/v5"
	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/relay"
)

func freePort(t *testing.T) int {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if u, err := net.ListenPacket("udp4", "127.0.0.1:"+strconv.Itoa(port)); err == nil {
			_ = u.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// TestHostileNetworkSettings: -tcp-port and -turn-port open the ICE TCP
// port and the embedded TURN server; a participant's joined event
// carries the TURN URLs (UDP and TCP) with credentials minted for it,
// which allocate a relayed address from the running binary over both;
// a TCP allocation is refused, and once the participant is revoked its
// credentials allocate nothing.
func TestHostileNetworkSettings(t *testing.T) {
	tcpPort, turnPort := freePort(t), freePort(t)
	p := startVigil(t, "-tcp-port", strconv.Itoa(tcpPort), "-turn-port", strconv.Itoa(turnPort), "-public-ip", "127.0.0.1")
	if c, err := net.Dial("tcp4", "127.0.0.1:"+strconv.Itoa(tcpPort)); err != nil {
		t.Fatalf("ICE TCP port: %v", err)
	} else {
		_ = c.Close()
	}
	if code, body := p.do(t, "POST", "/v1/rooms", testAdminKey, `{"name":"r","kind":"conference"}`); code != 201 {
		t.Fatalf("create room: %d %s", code, body)
	}
	_, tok := p.do(t, "POST", "/v1/rooms/r/tokens", testAdminKey, `{"identity":"alice","role":"participant"}`)
	var minted struct{ Token string }
	_ = json.Unmarshal([]byte(tok), &minted)
	code, sess := p.do(t, "POST", "/v1/rooms/r/sessions", minted.Token, "")
	if code != 201 {
		t.Fatalf("open session: %d %s", code, sess)
	}
	var opened struct {
		SessionID string `json:"session_id"`
	}
	_ = json.Unmarshal([]byte(sess), &opened)
	_, polled := p.do(t, "GET", "/v1/sessions/"+opened.SessionID+"/poll?cursor=0", "", "")
	var reply struct {
		Events []struct {
			Type string `json:"type"`
			Data struct {
				ICEServers []webrtc.ICEServer `json:"ice_servers"`
			} `json:"data"`
		} `json:"events"`
	}
	if err := json.Unmarshal([]byte(polled), &reply); err != nil || len(reply.Events) == 0 {
		t.Fatalf("poll: %s", polled)
	}
	servers := reply.Events[0].Data.ICEServers
	hp := "127.0.0.1:" + strconv.Itoa(turnPort)
	if len(servers) != 1 || strings.Join(servers[0].URLs, " ") != "turn:"+hp+"?transport=udp turn:"+hp+"?transport=tcp" ||
		!strings.HasSuffix(servers[0].Username, ":alice") {
		t.Fatalf("joined ice_servers: %+v", servers)
	}
	user, pass := servers[0].Username, servers[0].Credential.(string)
	for _, network := range []string{"udp", "tcp"} {
		var conn net.PacketConn
		if network == "udp" {
			c, err := net.ListenPacket("udp4", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			conn = c
		} else {
			c, err := net.Dial("tcp4", hp)
			if err != nil {
				t.Fatal(err)
			}
			conn = turn.NewSTUNConn(c)
		}
		client, err := turn.NewClient(&turn.ClientConfig{STUNServerAddr: hp, TURNServerAddr: hp, Conn: conn,
			Username: user, Password: pass, Realm: relay.Realm, RTO: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if err := client.Listen(); err != nil {
			t.Fatal(err)
		}
		relayed, err := client.Allocate()
		if err != nil {
			t.Fatalf("%s: allocate with the joined credentials: %v", network, err)
		}
		_ = relayed.Close()
		if network == "tcp" {
			// An RFC 6062 TCP allocation, to reach a loopback TCP service:
			// refused by default.
			redis, err := net.Listen("tcp4", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			if alloc, err := client.AllocateTCP(); err == nil {
				_, cerr := alloc.Connect(redis.Addr())
				_ = alloc.Close()
				t.Errorf("TCP allocation granted by default (connect to a loopback service: %v)", cerr)
			}
			_ = redis.Close()
		}
		client.Close()
		_ = conn.Close()
	}
	// Revoked: the credentials allocate nothing more.
	if code, body := p.do(t, "POST", "/v1/rooms/r/tokens/revoke", testAdminKey, `{"identity":"alice"}`); code != 200 {
		t.Fatalf("revoke: %d %s", code, body)
	}
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client, err := turn.NewClient(&turn.ClientConfig{STUNServerAddr: hp, TURNServerAddr: hp, Conn: conn,
		Username: user, Password: pass, Realm: relay.Realm, RTO: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if err := client.Listen(); err != nil {
		t.Fatal(err)
	}
	if relayed, err := client.Allocate(); err == nil {
		_ = relayed.Close()
		t.Fatal("allocated with the credentials of a revoked participant")
	}
}

// TestHostileNetworkConfig: the ports are 0 (off) by default and must be
// valid and distinct; the TURN credential lifetime is a minute or more.
func TestHostileNetworkConfig(t *testing.T) {
	env := func(kv map[string]string) func(string) (string, bool) {
		return func(k string) (string, bool) { v, ok := kv[k]; return v, ok }
	}
	parse := func(kv map[string]string) (config, error) {
		l, err := resolve("vigil serve", nil, nil, nil, env(kv), nil, nil, helpFor("", ""))
		if err != nil {
			t.Fatal(err)
		}
		return configFrom(l)
	}
	c, err := parse(nil)
	if err != nil || c.TCPPort != 0 || c.TURNPort != 0 || c.TURNTTL != time.Hour || c.TURNSecret != "" || c.TURNMaxAllocs != 8 || c.TURNTCPRelay {
		t.Fatalf("defaults: %v %+v", err, c)
	}
	c, err = parse(map[string]string{"VIGIL_TURN_MAX_ALLOCATIONS": "0", "VIGIL_TURN_TCP_RELAY": "true"})
	if err != nil || c.TURNMaxAllocs != 0 || !c.TURNTCPRelay {
		t.Fatalf("TURN quota and TCP relay: %v %+v", err, c)
	}
	c, err = parse(map[string]string{"VIGIL_TCP_PORT": "7881", "VIGIL_TURN_PORT": "3478", "VIGIL_TURN_SECRET": "s", "VIGIL_TURN_TTL": "10m"})
	if err != nil || c.TCPPort != 7881 || c.TURNPort != 3478 || c.TURNSecret != "s" || c.TURNTTL != 10*time.Minute {
		t.Fatalf("set: %v %+v", err, c)
	}
	for _, bad := range []map[string]string{
		{"VIGIL_TCP_PORT": "70000"}, {"VIGIL_TURN_PORT": "-1"}, {"VIGIL_TCP_PORT": "3478", "VIGIL_TURN_PORT": "3478"},
		{"VIGIL_TURN_TTL": "10s"}, {"VIGIL_TURN_TTL": "soon"},
		{"VIGIL_TURN_MAX_ALLOCATIONS": "-1"}, {"VIGIL_TURN_MAX_ALLOCATIONS": "many"}, {"VIGIL_TURN_TCP_RELAY": "maybe"},
	} {
		if _, err := parse(bad); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}
