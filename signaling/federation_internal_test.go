package signaling

import (
	"net/http"
	"strings"
	"testing"

	"github.com/vigil-media/vigil/sfu"
)

// TestRelayMarks: the routes marked relayed where they are registered
// are exactly those a cluster serves on one node: every route under
// /v1/rooms/{room} and /whip|/whep/{room} by the room's node, under
// /v1/sessions/{session} by the session's, WHIP/WHEP resources by
// theirs; OPTIONS and everything else on whichever node takes it.
func TestRelayMarks(t *testing.T) {
	media, err := sfu.New(sfu.Config{UDPAddr: "127.0.0.1:0", IncludeLoopback: true})
	if err != nil {
		t.Fatal(err)
	}
	defer media.Close()
	s, err := New(Config{SFU: media, AdminKey: "k"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(0)
	want := func(method, path string) Relay {
		switch {
		case method == http.MethodOptions:
			return RelayNone
		case path == "/whip/:room" || path == "/whep/:room":
			return RelayRoom
		case path == "/whip/:room/:resource" || path == "/whep/:room/:resource":
			return RelayResource
		case strings.HasPrefix(path, "/v1/rooms/:room"):
			return RelayRoom
		case strings.HasPrefix(path, "/v1/sessions/:session"):
			return RelaySession
		}
		return RelayNone
	}
	marked := 0
	for _, r := range s.engine.Routes() {
		got := s.relays[r.Method+" "+r.Path]
		if got != RelayNone {
			marked++
		}
		if w := want(r.Method, r.Path); got != w {
			t.Errorf("%s %s: marked %d, want %d", r.Method, r.Path, got, w)
		}
	}
	if marked != len(s.relays) || marked < 20 {
		t.Errorf("%d routes marked, %d marks: a mark names no route", marked, len(s.relays))
	}
}
