package transports

import (
	"bytes"
	"testing"
	"time"

	"github.com/vigil-media/vigil/tools/vigil-load/internal/report"
)

func TestScanEvents(t *testing.T) {
	type ev struct {
		seq       uint64
		typ, text string
	}
	scan := func(b string) []ev {
		var out []ev
		scanEvents([]byte(b), func(seq uint64, typ, text []byte) {
			out = append(out, ev{seq, string(typ), string(text)})
		})
		return out
	}
	ws := `{"seq":7,"type":"chat","data":{"from":"driver","text":"1700000000123456789","time":"2026-01-01T00:00:00Z"}}`
	if got := scan(ws); len(got) != 1 || got[0] != (ev{7, "chat", "1700000000123456789"}) {
		t.Fatalf("ws frame: %+v", got)
	}
	poll := `{"events":[{"seq":3,"type":"participant_joined","data":{"participant":{"identity":"c0002","role":"participant","tracks":[]}}},` +
		`{"seq":4,"type":"chat","data":{"from":"driver","text":"42","time":"x"}}],"cursor":4,"closed":false}`
	got := scan(poll)
	want := []ev{{3, "participant_joined", ""}, {4, "chat", "42"}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("poll reply: %+v, want %+v", got, want)
	}
	if cur, closed, ok := pollCursor([]byte(poll)); !ok || cur != 4 || closed {
		t.Fatalf("pollCursor = %d %v %v", cur, closed, ok)
	}
	if _, closed, _ := pollCursor([]byte(`{"events":[],"cursor":9,"closed":true}`)); !closed {
		t.Fatal("closed not seen")
	}
	if got := scan(`{"events":[],"cursor":4,"closed":false}`); len(got) != 0 {
		t.Fatalf("empty poll: %+v", got)
	}
}

func TestHeldAndBetter(t *testing.T) {
	steps := []stepResult{{N: 50, OK: true}, {N: 100, OK: true}, {N: 200, Why: "p99"}, {N: 400, OK: true}}
	best, failed := held(steps)
	if best == nil || best.N != 100 || failed == nil || failed.N != 200 {
		t.Fatalf("held = %v, %v", best, failed)
	}
	if best, failed := held(steps[:2]); best.N != 100 || failed != nil {
		t.Fatalf("all passed: %v, %v", best, failed)
	}
	if best, _ := held(steps[2:3]); best != nil {
		t.Fatalf("first failed: %v", best)
	}
	a := stepResult{Delivered: 10, Lat: report.Latencies{P99: 5}}
	b := stepResult{Delivered: 10, Lat: report.Latencies{P99: 9}}
	if !better(a, b) || better(b, a) {
		t.Fatal("lower p99 should win")
	}
	if !better(stepResult{OK: true, Lat: report.Latencies{P99: 50}}, a) {
		t.Fatal("a pass should beat a failure")
	}
}

func TestParseFlags(t *testing.T) {
	var errs bytes.Buffer
	c, err := parseTransportsFlags([]string{"-spawn"}, &errs)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Transports) != 5 || len(c.Clients) != 6 || c.PollInterval != 100*time.Millisecond || c.MaxP99 != 100*time.Millisecond {
		t.Fatalf("defaults: %+v", c)
	}
	if c.limitFor(trPoll) != 200*time.Millisecond || c.limitFor(trWS) != 100*time.Millisecond {
		t.Fatal("limitFor")
	}
	if got := c.joinEvents(4); got != 4+6 {
		t.Fatalf("conference join events for 4 = %d, want 10", got)
	}
	for _, bad := range [][]string{
		{},
		{"-spawn", "-url", "http://127.0.0.1:1"},
		{"-url", "http://10.0.0.1:8080", "-admin-key", "k"},
		{"-url", "http://127.0.0.1:8080"},
		{"-spawn", "-transports", "ws,smoke"},
		{"-spawn", "-clients", "10,x"},
	} {
		if _, err := parseTransportsFlags(bad, &errs); err == nil {
			t.Errorf("%v: want an error", bad)
		}
	}
}
