package web_test

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/vigil-media/vigil/signaling/vigiltest"
)

// TestDashboardShowsLiveRoom opens the admin dashboard while a page
// publishes its fake camera, and finds the room, the participant, its
// tracks and a bitrate chart with points above zero; the incidents list
// is an empty placeholder.
func TestDashboardShowsLiveRoom(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "dash", "conference")
	b := startBrowser(t)
	alice := b.open(t, "alice", srv.JoinURL(t, "dash", "alice", "participant"))
	waitState(t, alice, "alice", "joined")

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
	var placeholder string
	if err := eval(dash, `document.getElementById('incidents').textContent`, &placeholder); err != nil || placeholder == "" {
		t.Errorf("no incidents placeholder (err %v)", err)
	}
	var ready string
	if err := eval(dash, `document.getElementById('ready').textContent`, &ready); err != nil || ready != "server: ready" {
		t.Errorf("readiness shown as %q (err %v)", ready, err)
	}
}
