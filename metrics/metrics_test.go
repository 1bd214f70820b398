package metrics_test

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vigil-media/vigil/metrics"
	"github.com/vigil-media/vigil/recordings"
	"github.com/vigil-media/vigil/sfu"
	"github.com/vigil-media/vigil/webhooks"
)

// full returns a Metrics with every source watched and one observation
// of each pushed metric, so that every family is exposed.
func full() *metrics.Metrics {
	m := metrics.New("test")
	m.WatchSFU(func() sfu.Stats {
		return sfu.Stats{Rooms: 2, Participants: map[sfu.Role]int{sfu.RoleCandidate: 3}, UpTracks: map[string]int{"video": 3},
			DownTracks: 4, PacketsForwarded: 10, RTT: sfu.Summary{Count: 2, Sum: 0.1, Current: []float64{0.04, 0.06}}}
	})
	m.WatchRecordings(func() recordings.Stats { return recordings.Stats{Active: 1, ByStatus: map[string]int{"complete": 2}} })
	m.WatchServer(func() metrics.ServerStats { return metrics.ServerStats{Sessions: map[string]int{"ws": 2, "custom": 1}} })
	m.WatchWebhooks(func() webhooks.Stats { return webhooks.Stats{Delivered: 5} })
	m.ObserveHTTP("/v1/rooms", "POST", 201, 3*time.Millisecond)
	m.Incident("phone_detected")
	return m
}

func families(t *testing.T, m *metrics.Metrics) map[string]bool {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, mf := range mfs {
		out[mf.GetName()] = true
	}
	return out
}

// TestEveryMetricDocumented: docs/operations.md lists every vigil_
// metric the registry exposes, and nothing it does not.
func TestEveryMetricDocumented(t *testing.T) {
	fams := families(t, full())
	md, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	for name := range fams {
		if strings.HasPrefix(name, "vigil_") && !strings.Contains(string(md), "| `"+name+"` |") {
			t.Errorf("docs/operations.md has no row for %s", name)
		}
	}
	for _, m := range regexp.MustCompile("(?m)^\\| `(vigil_[a-z_]+)` \\|").FindAllStringSubmatch(string(md), -1) {
		if !fams[m[1]] {
			t.Errorf("docs/operations.md documents %s, which is not exposed", m[1])
		}
	}
}

// TestGrafanaDashboardUsesRealMetrics: every vigil_ series a panel of
// docs/grafana-dashboard.json queries exists.
func TestGrafanaDashboardUsesRealMetrics(t *testing.T) {
	fams := families(t, full())
	b, err := os.ReadFile("../docs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatal(err)
	}
	if len(dash.Panels) < 10 {
		t.Fatalf("%d panels", len(dash.Panels))
	}
	used := map[string]bool{}
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			for _, name := range regexp.MustCompile(`vigil_[a-z_]+`).FindAllString(tg.Expr, -1) {
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_count"), "_sum"), "_created")
				if !fams[name] && !fams[base] {
					t.Errorf("panel %q queries %s, which is not exposed", p.Title, name)
				}
				used[base] = true
			}
		}
	}
	for name := range fams {
		if strings.HasPrefix(name, "vigil_") && !used[name] && name != "vigil_build_info" {
			t.Errorf("no panel shows %s", name)
		}
	}
}

func TestSummaryQuantilesAndUnknownTransport(t *testing.T) {
	mfs, err := full().Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		switch mf.GetName() {
		case "vigil_rtt_seconds":
			s := mf.GetMetric()[0].GetSummary()
			if s.GetSampleCount() != 2 || len(s.GetQuantile()) != 3 || s.GetQuantile()[0].GetValue() != 0.04 {
				t.Errorf("rtt summary %v", s)
			}
		case "vigil_signaling_sessions":
			n := 0
			for _, m := range mf.GetMetric() {
				n += int(m.GetGauge().GetValue())
			}
			if n != 3 {
				t.Errorf("sessions sum %d, want 3 (an unknown transport kept)", n)
			}
		}
	}
}
