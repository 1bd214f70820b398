package web_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/vigil-media/vigil/relay"
	"github.com/vigil-media/vigil/sfu"
	"github.com/vigil-media/vigil/signaling/vigiltest"
)

// forceRelay wraps window.RTCPeerConnection so that every connection the
// page makes may only use relayed candidates (iceTransportPolicy
// "relay"), keeping only the TURN URLs whose transport is transport, and
// remembers the connections in window.__pcs.
func forceRelay(transport string) string {
	return fmt.Sprintf(`(() => {
  const Native = window.RTCPeerConnection;
  window.__pcs = [];
  class RelayOnly extends Native {
    constructor(cfg, ...rest) {
      const c = Object.assign({}, cfg || {}, { iceTransportPolicy: 'relay' });
      c.iceServers = (c.iceServers || []).map((s) => Object.assign({}, s, {
        urls: [].concat(s.urls).filter((u) => u.endsWith('?transport=%s')),
      })).filter((s) => s.urls.length > 0);
      super(c, ...rest);
      window.__pcs.push(this);
    }
  }
  window.RTCPeerConnection = RelayOnly;
})();`, transport)
}

// selectedLocal describes the local candidate of the page's selected
// candidate pair: its type and, for a relayed one, the protocol to the
// TURN server.
const selectedLocal = `(async () => {
  const pc = (window.__pcs || []).at(-1);
  if (!pc) return 'no connection';
  const stats = await pc.getStats();
  let pairId = '';
  stats.forEach((s) => { if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId; });
  const pair = stats.get(pairId);
  if (!pair) return 'no selected pair';
  const local = stats.get(pair.localCandidateId);
  return local ? local.candidateType + '/' + (local.relayProtocol || '') : 'no local candidate';
})()`

// TestRelayOnlyPagesDecode: two pages of a conference whose connections
// may only use relayed candidates (one reaching the embedded TURN server
// over UDP, the other over TCP, with the credentials of their joined
// events) decode each other's video, over selected pairs whose local
// candidates are relayed.
func TestRelayOnlyPagesDecode(t *testing.T) {
	start := time.Now()
	turnSrv, err := relay.New(relay.Config{Addr: "127.0.0.1:0", Secret: "browser-secret", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = turnSrv.Close() })
	srv := vigiltest.StartWith(t, vigiltest.Options{SFU: sfu.Config{ICEServersFor: turnSrv.ICEServers, RevokeICEServers: turnSrv.Revoke}})
	turnSrv.SetMediaPorts(srv.SFU.LocalAddr().(*net.UDPAddr).Port, 0)
	srv.CreateRoom(t, "relayed", "conference")
	b := startBrowser(t)

	transports := map[string]string{"alice": "udp", "bob": "tcp"}
	pages := map[string]context.Context{}
	for _, name := range []string{"alice", "bob"} {
		pages[name] = b.openWith(t, name, srv.JoinURL(t, "relayed", name, "participant"), forceRelay(transports[name]))
	}
	for name, other := range map[string]string{"alice": "bob", "bob": "alice"} {
		ctx := pages[name]
		waitState(t, ctx, name, "joined")
		waitDecoding(t, ctx, name, other)
		want := "relay/" + transports[name]
		waitFor(t, 5*time.Second, name+"'s selected pair relayed over "+transports[name], func() (bool, string) {
			var got string
			if err := eval(ctx, selectedLocal, &got); err != nil {
				return false, err.Error()
			}
			return got == want, "local candidate " + got
		})
	}
	t.Logf("relayed conference done in %v", time.Since(start).Round(time.Millisecond))
}
