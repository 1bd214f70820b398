package signaling_test

import (
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/relay"
	"github.com/vigil-media/vigil/sfu"
	"github.com/vigil-media/vigil/signaling/vigiltest"
	"go.uber.org/goleak"
)

// restrictedAPI is a pion client that may only use networks.
func restrictedAPI(t *testing.T, networks ...webrtc.NetworkType) *webrtc.API {
	t.Helper()
	se := webrtc.SettingEngine{}
	se.SetIncludeLoopbackCandidate(true)
	se.SetNetworkTypes(networks)
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	se.SetInterfaceFilter(func(name string) bool { return name == "lo" })
	me := &webrtc.MediaEngine{}
	if err := me.RegisterDefaultCodecs(); err != nil {
		t.Fatal(err)
	}
	return webrtc.NewAPI(webrtc.WithSettingEngine(se), webrtc.WithMediaEngine(me))
}

// joinedICEServers opens a session and returns it with the ICE servers of
// its joined event, read over one poll.
func joinedICEServers(t *testing.T, srv *vigiltest.Server, room, identity string) (string, []webrtc.ICEServer) {
	t.Helper()
	sid, err := srv.OpenSession(t, room, srv.Token(t, room, identity, "participant"))
	if err != nil {
		t.Fatal(err)
	}
	status, body := srv.Do(t, http.MethodGet, "/v1/sessions/"+sid+"/poll?cursor=0", "", nil)
	if status != http.StatusOK {
		t.Fatalf("poll: %d %s", status, body)
	}
	var reply struct {
		Events []vigiltest.Event `json:"events"`
	}
	if err := json.Unmarshal(body, &reply); err != nil || len(reply.Events) == 0 || reply.Events[0].Type != "joined" {
		t.Fatalf("first events: %s", body)
	}
	var joined struct {
		ICEServers []webrtc.ICEServer `json:"ice_servers"`
	}
	if err := json.Unmarshal(reply.Events[0].Data, &joined); err != nil {
		t.Fatal(err)
	}
	return sid, joined.ICEServers
}

// attach makes a vigiltest.Client of an open session with a pion connection of
// api and cfg, and drains its events over a WebSocket.
func attach(t *testing.T, srv *vigiltest.Server, sid string, api *webrtc.API, cfg webrtc.Configuration) *vigiltest.Client {
	t.Helper()
	return vigiltest.Attach(t, srv, sid, api, cfg, "ws")
}

// selectedPair is the candidate pair the client's media goes over.
func selectedPair(t *testing.T, c *vigiltest.Client) *webrtc.ICECandidatePair {
	t.Helper()
	for _, tx := range c.PC.GetTransceivers() {
		var dts []*webrtc.DTLSTransport
		if tx.Sender() != nil {
			dts = append(dts, tx.Sender().Transport())
		}
		if tx.Receiver() != nil {
			dts = append(dts, tx.Receiver().Transport())
		}
		for _, dt := range dts {
			if dt == nil {
				continue
			}
			if p, err := dt.ICETransport().GetSelectedCandidatePair(); err == nil && p != nil {
				return p
			}
		}
	}
	t.Fatal("no selected candidate pair")
	return nil
}

// TestICEOverTCP: clients that may only use TCP publish and receive
// through the server's one ICE TCP port.
func TestICEOverTCP(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	srv := vigiltest.StartWith(t, vigiltest.Options{SFU: sfu.Config{TCPAddr: "127.0.0.1:0"}})
	if srv.SFU.TCPAddr() == nil {
		t.Fatal("no ICE TCP port")
	}
	srv.CreateRoom(t, "tcp", "conference")
	api := restrictedAPI(t, webrtc.NetworkTypeTCP4)
	pubID, _ := joinedICEServers(t, srv, "tcp", "pub")
	subID, _ := joinedICEServers(t, srv, "tcp", "sub")
	sub := attach(t, srv, subID, api, webrtc.Configuration{})
	pub := attach(t, srv, pubID, api, webrtc.Configuration{})
	media := newSynthetic(t, "pub")
	pub.Publish(map[string]webrtc.TrackLocal{"camera": media.video, "microphone": media.audio})
	vigiltest.WaitFor(t, 15*time.Second, "media over TCP at the subscriber", func() bool {
		return sub.Packets("pub/camera") > 50 && sub.Packets("pub/microphone") > 50
	})
	for name, c := range map[string]*vigiltest.Client{"pub": pub, "sub": sub} {
		p := selectedPair(t, c)
		if p.Local.Protocol != webrtc.ICEProtocolTCP || p.Remote.Protocol != webrtc.ICEProtocolTCP ||
			int(p.Remote.Port) != srv.SFU.TCPAddr().(*net.TCPAddr).Port {
			t.Fatalf("%s: selected pair %s", name, p)
		}
	}
}

// startTURN runs an embedded TURN server on loopback for srv's clients.
func startTURN(t *testing.T) *relay.Server {
	t.Helper()
	r, err := relay.New(relay.Config{Addr: "127.0.0.1:0", Secret: "turn-secret", TTL: time.Hour, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// TestRelayOnlyClients: clients that may only use relayed candidates,
// with the TURN server and credentials of their joined events (minted
// for each, over UDP for one and TCP for the other), publish and
// receive media through the embedded TURN server; WHEP's Link headers
// carry credentials too.
func TestRelayOnlyClients(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	turnSrv := startTURN(t)
	srv := vigiltest.StartWith(t, vigiltest.Options{SFU: sfu.Config{ICEServersFor: turnSrv.ICEServers, RevokeICEServers: turnSrv.Revoke}})
	turnSrv.SetMediaPorts(srv.SFU.LocalAddr().(*net.UDPAddr).Port, 0)
	srv.CreateRoom(t, "relay", "conference")
	api := restrictedAPI(t, webrtc.NetworkTypeUDP4, webrtc.NetworkTypeTCP4)
	clients := map[string]*vigiltest.Client{}
	for _, c := range []struct{ identity, transport string }{{"sub", "udp"}, {"pub", "tcp"}} {
		sid, servers := joinedICEServers(t, srv, "relay", c.identity)
		if len(servers) != 1 || len(servers[0].URLs) != 2 || !strings.HasSuffix(servers[0].Username, ":"+c.identity) || servers[0].Credential == "" {
			t.Fatalf("%s: joined ice_servers %+v", c.identity, servers)
		}
		if servers[0].Credential != relay.Password("turn-secret", servers[0].Username) {
			t.Fatalf("%s: credential is not the HMAC of the username", c.identity)
		}
		var urls []string
		for _, u := range servers[0].URLs {
			if strings.HasSuffix(u, "?transport="+c.transport) {
				urls = append(urls, u)
			}
		}
		servers[0].URLs = urls
		clients[c.identity] = attach(t, srv, sid, api, webrtc.Configuration{ICEServers: servers, ICETransportPolicy: webrtc.ICETransportPolicyRelay})
	}
	media := newSynthetic(t, "pub")
	clients["pub"].Publish(map[string]webrtc.TrackLocal{"camera": media.video, "microphone": media.audio})
	vigiltest.WaitFor(t, 15*time.Second, "media through TURN at the subscriber", func() bool {
		return clients["sub"].Packets("pub/camera") > 50 && clients["sub"].Packets("pub/microphone") > 50
	})
	for name, c := range clients {
		p := selectedPair(t, c)
		t.Logf("%s: %s", name, p)
		if p.Local.Typ != webrtc.ICECandidateTypeRelay {
			t.Fatalf("%s: selected pair %s is not relayed", name, p)
		}
	}

	// WHEP: the Link headers carry the TURN URLs with credentials minted
	// for the viewer.
	srv.CreateRoom(t, "live", "broadcast")
	pc, err := vigiltest.PionAPI(t).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if _, err := pc.AddTransceiverFromKind(webrtc.RTPCodecTypeVideo, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
		t.Fatal(err)
	}
	offer, _ := pc.CreateOffer(nil)
	if err := pc.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	resp, body := vigiltest.WHIPRequest(t, http.MethodPost, srv.URL+"/whep/live", srv.Token(t, "live", "viewer", "viewer"), "application/sdp", offer.SDP, nil)
	links := strings.Join(resp.Header.Values("Link"), "\n")
	if resp.StatusCode != http.StatusCreated || !strings.Contains(links, "?transport=udp>") || !strings.Contains(links, "?transport=tcp>") ||
		!strings.Contains(links, `:viewer"; credential="`) {
		t.Fatalf("WHEP %d %s, Link headers:\n%s", resp.StatusCode, body, links)
	}
	vigiltest.WHIPRequest(t, http.MethodDelete, srv.URL+resp.Header.Get("Location"), srv.Token(t, "live", "viewer", "viewer"), "", "", nil)
}
