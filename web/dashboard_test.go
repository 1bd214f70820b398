package web_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/vigil-media/vigil/signaling/vigiltest"
)

// openDashboard opens the admin dashboard and gives it the admin key.
func openDashboard(t *testing.T, b *browser, srv *vigiltest.Server) context.Context {
	t.Helper()
	dash := b.open(t, "dashboard", srv.URL+"/dashboard")
	waitElement(t, dash, "dashboard", "#key-section:not([hidden])")
	var ok bool
	fill := fmt.Sprintf(`(() => {
		document.getElementById('admin-key').value = %q;
		document.querySelector('#key-form button[type=submit]').click();
		return true;
	})()`, srv.AdminKey)
	if err := eval(dash, fill, &ok); err != nil {
		t.Fatal(err)
	}
	return dash
}

// TestDashboardShowsLiveRoom opens the admin dashboard while a page
// publishes its fake camera, and finds the room, the participant, its
// tracks and a bitrate chart with points above zero; the incidents list
// says there are none.
func TestDashboardShowsLiveRoom(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "dash", "conference")
	b := startBrowser(t)
	alice := b.open(t, "alice", srv.JoinURL(t, "dash", "alice", "participant"))
	waitState(t, alice, "alice", "joined")

	dash := openDashboard(t, b, srv)
	waitElement(t, dash, "dashboard", `[data-room="dash"] li[data-identity="alice"]`)
	waitFor(t, 30*time.Second, "alice's camera and a non-empty bitrate chart", func() (bool, string) {
		var v struct {
			Points string `json:"points"`
			Max    string `json:"max"`
			Camera bool   `json:"camera"`
			Text   string `json:"text"`
		}
		err := eval(dash, `(() => {
			const li = document.querySelector('[data-room="dash"] li[data-identity="alice"]');
			const svg = li && li.querySelector('svg[data-chart="bitrate"]');
			return {
				points: svg ? svg.dataset.points : '', max: svg ? svg.dataset.max : '',
				camera: !!(li && li.querySelector('[data-source="camera"]')),
				text: li ? li.textContent : '',
			};
		})()`, &v)
		if err != nil {
			return false, err.Error()
		}
		points, _ := strconv.Atoi(v.Points)
		peak, _ := strconv.ParseFloat(v.Max, 64)
		return points >= 2 && peak > 0 && v.Camera, fmt.Sprintf("points %q max %q camera %v: %s", v.Points, v.Max, v.Camera, v.Text)
	})
	var none struct {
		Shown bool `json:"shown"`
		Rows  int  `json:"rows"`
	}
	if err := eval(dash, `({shown: !document.getElementById('no-incidents').hidden, rows: document.querySelectorAll('#incidents tr[data-incident]').length})`, &none); err != nil || !none.Shown || none.Rows != 0 {
		t.Errorf("incidents of a conference room: %+v (err %v)", none, err)
	}
	var ready string
	if err := eval(dash, `document.getElementById('ready').textContent`, &ready); err != nil || ready != "server: ready" {
		t.Errorf("readiness shown as %q (err %v)", ready, err)
	}
	noCSPViolations(t, dash, "dashboard")
	noCSPViolations(t, alice, "alice")
}

// postSessionMessage sends one client message on a session by POST (the
// poll transport's way) and fails the test if it is refused.
func postSessionMessage(t *testing.T, srv *vigiltest.Server, session, typ string, data any) {
	t.Helper()
	status, body := srv.Do(t, http.MethodPost, "/v1/sessions/"+session+"/messages", "", map[string]any{"type": typ, "data": data})
	if status != http.StatusOK {
		t.Fatalf("%s: %d %s", typ, status, body)
	}
}

// dashIncident is an incident row of the dashboard.
type dashIncident struct {
	ID, Identity, Type, Time, Note string
	Thumb                          string // the <img> src, "" without one
	ThumbWidth                     int    // its decoded width, 0 until it loaded
}

func dashIncidents(ctx context.Context, room string) ([]dashIncident, error) {
	var out []dashIncident
	err := eval(ctx, fmt.Sprintf(`[...document.querySelectorAll('#incidents [data-room=%q] tr[data-incident]')].map((tr) => {
		const img = tr.querySelector('img.incident-thumb');
		return {
			ID: tr.dataset.incident, Identity: tr.querySelector('.candidate').textContent,
			Type: tr.querySelector('.type').textContent, Time: tr.querySelector('.time').textContent,
			Note: tr.querySelector('.note').textContent,
			Thumb: img ? img.src : '', ThumbWidth: img && img.complete ? img.naturalWidth : 0,
		};
	})`, room), &out)
	return out, err
}

// TestDashboardListsIncidents: in a proctoring room, a candidate's page
// reports an incident (report_incident, by a Go client on the poll
// transport) and a proctor flags a candidate who publishes Chromium's
// fake camera over WHIP; the dashboard, open before, lists both within a
// few seconds, newest first, with time, candidate, type and note, and the
// flagged one with a thumbnail of its snapshot (fetched with the admin
// key, shown through a blob URL, decoded by the browser).
func TestDashboardListsIncidents(t *testing.T) {
	srv := vigiltest.Start(t)
	const room = "exam-dash"
	srv.CreateRoom(t, room, "proctoring")
	b := startBrowser(t)

	// cand-cam publishes its camera (VP8 by default) over WHIP.
	fixtures := httptest.NewServer(http.FileServer(http.Dir("testdata")))
	t.Cleanup(fixtures.Close)
	whip := b.open(t, "whip", fixtures.URL+"/whip.html#vigil="+url.QueryEscape(srv.URL)+"&room="+room+"&token="+srv.Token(t, room, "cand-cam", "candidate"))
	waitFor(t, 20*time.Second, "the WHIP candidate publishing", func() (bool, string) {
		var st struct{ State, Error string }
		if err := eval(whip, `({State: window.whip ? window.whip.state : '', Error: window.whip ? window.whip.error : ''})`, &st); err != nil {
			return false, err.Error()
		}
		if st.State == "error" {
			t.Fatalf("WHIP page: %s", st.Error)
		}
		return st.State == "published", st.State
	})

	dash := openDashboard(t, b, srv)
	waitElement(t, dash, "dashboard", `#rooms [data-room="`+room+`"]`)

	// A candidate's page reports that it hid its tab.
	cand, err := srv.OpenSession(t, room, srv.Token(t, room, "cand-tab", "candidate"))
	if err != nil {
		t.Fatal(err)
	}
	// Only an admitted candidate reports incidents.
	if status, body := srv.Do(t, "POST", "/v1/rooms/"+room+"/participants/cand-tab/admit", srv.AdminKey, nil); status != 200 {
		t.Fatalf("admit cand-tab: %d %s", status, body)
	}
	reported := time.Now()
	postSessionMessage(t, srv, cand, "report_incident", map[string]string{"type": "tab_hidden", "note": "switched to another tab"})
	waitFor(t, 6*time.Second, "the reported incident on the dashboard", func() (bool, string) {
		rows, err := dashIncidents(dash, room)
		if err != nil {
			return false, err.Error()
		}
		for _, r := range rows {
			if r.Identity == "cand-tab" && r.Type == "tab_hidden" && r.Note == "switched to another tab" && r.Time != "" {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%+v", rows)
	})
	t.Logf("tab_hidden listed %v after the report", time.Since(reported).Round(time.Millisecond))

	// A proctor flags cand-cam once its camera has been decoded on the
	// server (a snapshot needs a keyframe).
	waitFor(t, 20*time.Second, "cand-cam's tracks on the server", func() (bool, string) {
		p := serverParticipants(t, srv, room)["cand-cam"]
		return p.Tracks == 2, fmt.Sprintf("%+v", p)
	})
	proctor, err := srv.OpenSession(t, room, srv.Token(t, room, "proc", "proctor"))
	if err != nil {
		t.Fatal(err)
	}
	var flagged string
	waitFor(t, 15*time.Second, "a flag with a snapshot", func() (bool, string) {
		time.Sleep(1100 * time.Millisecond) // one flag of a candidate a second
		postSessionMessage(t, srv, proctor, "flag_incident", map[string]string{"identity": "cand-cam", "note": "looked away"})
		status, body := srv.Do(t, http.MethodGet, "/v1/rooms/"+room+"/incidents?type=manual", srv.AdminKey, nil)
		var r struct {
			Incidents []struct {
				ID          string `json:"id"`
				HasSnapshot bool   `json:"has_snapshot"`
			} `json:"incidents"`
		}
		if status != http.StatusOK || json.Unmarshal(body, &r) != nil || len(r.Incidents) == 0 {
			return false, fmt.Sprintf("%d %s", status, body)
		}
		last := r.Incidents[len(r.Incidents)-1]
		flagged = last.ID
		return last.HasSnapshot, string(body)
	})
	flaggedAt := time.Now()
	var rows []dashIncident
	waitFor(t, 6*time.Second, "the flagged incident with its thumbnail", func() (bool, string) {
		var err error
		if rows, err = dashIncidents(dash, room); err != nil {
			return false, err.Error()
		}
		for _, r := range rows {
			if r.ID == flagged {
				return r.Identity == "cand-cam" && r.Type == "manual" && r.Note == "looked away" &&
					len(r.Thumb) > 5 && r.Thumb[:5] == "blob:" && r.ThumbWidth > 0, fmt.Sprintf("%+v", r)
			}
		}
		return false, fmt.Sprintf("%+v", rows)
	})
	t.Logf("manual incident listed with a %d px wide thumbnail %v after it had a snapshot", rows[0].ThumbWidth, time.Since(flaggedAt).Round(time.Millisecond))
	if rows[0].ID != flagged {
		t.Errorf("newest first: first row %+v, want %s", rows[0], flagged)
	}
	if last := rows[len(rows)-1]; last.Type != "tab_hidden" {
		t.Errorf("oldest last: last row %+v", last)
	}
	noCSPViolations(t, dash, "dashboard")
}
