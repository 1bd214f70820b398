package media

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestProbeRoundTrip(t *testing.T) {
	b := make([]byte, 64)
	want := probe{SentNS: 123456789012, Counter: 1<<40 + 7, Stream: 9}
	for _, key := range []bool{false, true} {
		for _, first := range []bool{false, true} {
			p := fillVP8(b[:40], first, key, want)
			got, ok := getProbe(p[vp8ProbeOffset:])
			if !ok || got != want {
				t.Fatalf("probe = %+v, %v; want %+v", got, ok, want)
			}
			// The SFU's view (sfu/keyframe.go): S bit, partition 0, then
			// the P bit of the VP8 header clear on a keyframe.
			if k := vp8Key(p); k != (first && key) {
				t.Errorf("first=%v key=%v: vp8Key = %v", first, key, k)
			}
			if s := p[0]&0x10 != 0; s != first {
				t.Errorf("first=%v: S bit %v", first, s)
			}
		}
	}
	if _, ok := getProbe(b[:probeLen-1]); ok {
		t.Error("short probe accepted")
	}
}

func TestPacketSizes(t *testing.T) {
	for _, tc := range []struct {
		n, mtu int
		want   []int
	}{
		{100, 1200, []int{100}},
		{1200, 1200, []int{1200}},
		{1201, 1200, []int{601, 600}},
		{3000, 1200, []int{1000, 1000, 1000}},
		{5, 1200, []int{vp8ProbeOffset + probeLen}},
	} {
		got := packetSizes(tc.n, tc.mtu, nil)
		if len(got) != len(tc.want) {
			t.Fatalf("packetSizes(%d, %d) = %v, want %v", tc.n, tc.mtu, got, tc.want)
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Fatalf("packetSizes(%d, %d) = %v, want %v", tc.n, tc.mtu, got, tc.want)
			}
		}
	}
}

func TestPlanVideoAveragesTheBitrate(t *testing.T) {
	for _, br := range []int64{500_000, 1_000_000, 9_000_000} {
		p := planVideo(br, 30, 2*time.Second)
		if p.GOP != 60 || p.KeyBytes != keyFactor*p.DeltaBytes {
			t.Fatalf("plan %+v", p)
		}
		bits := float64(p.KeyBytes+(p.GOP-1)*p.DeltaBytes) * 8 / 2 // per second
		if math.Abs(bits-float64(br))/float64(br) > 0.01 {
			t.Errorf("bitrate %d: plan gives %.0f bit/s", br, bits)
		}
		if pps := p.packetsPerSecond(); pps < float64(br)/8/maxPayload {
			t.Errorf("bitrate %d: %.0f packets/s is too few", br, pps)
		}
	}
}

func TestParseAnswer(t *testing.T) {
	sdp := strings.Join([]string{
		"v=0", "o=- 1 2 IN IP4 0.0.0.0", "s=-", "t=0 0",
		"m=video 9 UDP/TLS/RTP/SAVPF 96",
		"a=ice-ufrag:abc", "a=ice-pwd:secret", "a=setup:active",
		"a=candidate:1 1 udp 2130706431 192.0.2.2 7882 typ host",
		"a=candidate:2 1 udp 2130706431 127.0.0.1 7882 typ host",
		"a=candidate:3 1 tcp 2130706431 127.0.0.1 9 typ host tcptype active",
		"a=ice-ufrag:other",
	}, "\r\n")
	a, err := parseAnswer(sdp)
	if err != nil {
		t.Fatal(err)
	}
	if a.ufrag != "abc" || a.pwd != "secret" || a.setup != "active" || a.cand.String() != "127.0.0.1:7882" {
		t.Fatalf("answer = %+v", a)
	}
	// Only loopback is targeted, even when the server offers no loopback
	// candidate: its port, at 127.0.0.1.
	a, err = parseAnswer("a=ice-ufrag:u\na=ice-pwd:p\na=candidate:1 1 udp 1 192.0.2.2 5000 typ host\n")
	if err != nil || a.cand.String() != "127.0.0.1:5000" {
		t.Fatalf("answer = %+v, %v", a, err)
	}
	if _, err := parseAnswer("a=ice-ufrag:u\n"); err == nil {
		t.Fatal("no candidate: want an error")
	}
}

func TestParseBitrate(t *testing.T) {
	for in, want := range map[string]int64{"1M": 1_000_000, "500k": 500_000, "2.5M": 2_500_000, "64000": 64000, "0": 0} {
		if got, err := parseBitrate(in); err != nil || got != want {
			t.Errorf("parseBitrate(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "x", "-1M", "5G"} {
		if _, err := parseBitrate(bad); err == nil {
			t.Errorf("parseBitrate(%q): want an error", bad)
		}
	}
}

func TestHeldN(t *testing.T) {
	rs := []Result{{N: 100, OK: true}, {N: 200, OK: true}, {N: 400}}
	if n, lower, ok := heldN(rs); n != 200 || lower || !ok {
		t.Fatalf("heldN = %d %v %v", n, lower, ok)
	}
	if n, lower, ok := heldN(rs[:2]); n != 200 || !lower || !ok {
		t.Fatalf("heldN (every step held) = %d %v %v", n, lower, ok)
	}
	if _, _, ok := heldN(rs[2:]); ok {
		t.Fatal("nothing held: want !ok")
	}
}

func TestMediaFlags(t *testing.T) {
	var sb strings.Builder
	c, err := ParseFlags([]string{"-spawn", "-scenario", "meeting"}, &sb)
	if err != nil {
		t.Fatal(err)
	}
	if c.Bitrate != 500_000 || len(c.Targets) != 2 || c.Sizes[0] != 4 {
		t.Fatalf("meeting defaults: %+v", c)
	}
	for _, bad := range [][]string{
		{"-scenario", "fanout"},                       // neither -spawn nor -url
		{"-spawn", "-scenario", "nope"},               // unknown scenario
		{"-url", "http://10.0.0.1:8080", "-baseline"}, // not loopback
		{"-url", "http://127.0.0.1:8080"},             // two targets on one URL
		{"-spawn", "-scenario", "meeting", "-subscribers", "1"},
	} {
		if _, err := ParseFlags(bad, &sb); err == nil {
			t.Errorf("%v: want an error", bad)
		}
	}
}
