package web_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vigil-media/vigil/signaling/vigiltest"
)

// noCSPViolations fails the test if the page reported a violation of
// its Content-Security-Policy (instrument records them).
func noCSPViolations(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	var v []string
	if err := eval(ctx, `window.__cspViolations || []`, &v); err != nil {
		t.Fatalf("%s: CSP violations: %v", name, err)
	}
	if len(v) > 0 {
		t.Errorf("%s: the page broke its Content-Security-Policy: %v", name, v)
	}
}

// TestPagesUnderCSP: every HTML page is served with a
// Content-Security-Policy whose frame-ancestors is 'none' (and
// X-Frame-Options DENY), so no other site can frame the dashboard or a
// proctor's room; and the pages still work under it: the index mints a
// link, a room page joins and publishes, the dashboard lists the room,
// none with a violation.
func TestPagesUnderCSP(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "csp", "conference")
	for _, path := range []string{"/", "/room/csp", "/dashboard"} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		csp := resp.Header.Get("Content-Security-Policy")
		if resp.StatusCode != http.StatusOK || !strings.Contains(csp, "frame-ancestors 'none'") ||
			!strings.Contains(csp, "script-src 'self'") || resp.Header.Get("X-Frame-Options") != "DENY" {
			t.Errorf("%s: %d, CSP %q, X-Frame-Options %q", path, resp.StatusCode, csp, resp.Header.Get("X-Frame-Options"))
		}
	}

	b := startBrowser(t)
	alice := b.open(t, "alice", srv.JoinURL(t, "csp", "alice", "participant"))
	waitState(t, alice, "alice", "joined")
	dash := openDashboard(t, b, srv)
	waitElement(t, dash, "dashboard", `[data-room="csp"] li[data-identity="alice"]`)
	waitFor(t, 30*time.Second, "alice's camera on the dashboard", func() (bool, string) {
		ok, err := exists(dash, `[data-room="csp"] li[data-identity="alice"] [data-source="camera"]`)
		if err != nil {
			return false, err.Error()
		}
		return ok, "no camera listed"
	})
	index := b.open(t, "index", srv.URL+"/")
	waitElement(t, index, "index", "body")
	noCSPViolations(t, alice, "room page")
	noCSPViolations(t, dash, "dashboard")
	noCSPViolations(t, index, "index")
}
