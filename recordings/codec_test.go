package recordings

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"testing"
	"time"
)

func TestSPSSize(t *testing.T) {
	tests := []struct {
		name, sps string
		w, h      int
		fails     bool
	}{
		// Made by x264 (ffmpeg -profile:v ...).
		{"baseline 320x240", "6742c00dd90141fb0110000003001000000303c0f142a480", 320, 240, false},
		{"high 1920x1080 cropped", "67640028acd940780227e5c044000003000400000300f03c60c658", 1920, 1080, false},
		{"main 640x360 cropped", "674d401eeca05017fcb80880000003008000001e078b16cb", 640, 360, false},
		{"truncated", "6742c00dd901", 0, 0, true},
		{"not an SPS", "68ce3c80", 0, 0, true},
		{"empty", "", 0, 0, true},
		{"all ones: every field zero, smallest picture", "67ffffffffffffffffffffff", 16, 16, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, _ := hex.DecodeString(tt.sps)
			w, h, err := spsSize(b)
			if (err != nil) != tt.fails {
				t.Fatalf("err %v, want failure %v", err, tt.fails)
			}
			if w != tt.w || h != tt.h {
				t.Fatalf("%dx%d, want %dx%d", w, h, tt.w, tt.h)
			}
		})
	}
}

// FuzzFrameParsers checks that no input makes the parsers of untrusted
// media panic.
func FuzzFrameParsers(f *testing.F) {
	for _, s := range []string{"6742c00dd90141fb0110000003001000000303c0f142a480", "67640028acd940780227e5c044000003000400000300f03c60c658",
		"0000000167", "9d012a", "82498342", ""} {
		b, _ := hex.DecodeString(s)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _, _ = spsSize(b)
		_, _, _ = vp8Frame(b)
		_, _, _ = vp9Frame(b)
		_, _, _ = h264Frame(b)
		_ = splitAVCC(b)
		_, _, _ = readVint(b)
		a := newAssembler(codecH264, true, 90000)
		now := time.Now()
		for i := 0; i+1 < len(b); i += 2 {
			a.push(&packet{seq: uint16(b[i]), ts: uint32(b[i+1]) * 3000, marker: b[i]&1 == 1, payload: b[i:], at: now}, now)
		}
		a.flush()
	})
}

func TestAVCDecoderConfig(t *testing.T) {
	sps, _ := hex.DecodeString("6742c00dd90141fb0110000003001000000303c0f142a480")
	pps := []byte{0x68, 0xce, 0x3c, 0x80}
	c := avcDecoderConfig(sps, pps)
	want := append([]byte{1, 0x42, 0xc0, 0x0d, 0xff, 0xe1, 0, byte(len(sps))}, sps...)
	want = append(want, 1, 0, 4)
	want = append(want, pps...)
	if !bytes.Equal(c, want) {
		t.Fatalf("avcC %x\nwant %x", c, want)
	}
	if avcDecoderConfig(sps[:2], pps) != nil || avcDecoderConfig(sps, nil) != nil {
		t.Fatal("accepted a short SPS or no PPS")
	}
}

func TestFileNames(t *testing.T) {
	for name, ok := range map[string]bool{
		"av-001.webm": true, "screen-012.mkv": true, "av-123456.webm": true,
		"../av-001.webm": false, "av-001.webm/..": false, "/etc/passwd": false, "..": false,
		"manifest.json": false, "av-001.webm.tmp": false, "AV-001.webm": false, "av-1.webm": false,
		"av-001.exe": false, "": false, "av-001.webm\x00": false, `av-001\x2ewebm`: false,
	} {
		if validFileName(name) != ok {
			t.Errorf("validFileName(%q) = %v", name, !ok)
		}
	}
	id := newID()
	if !ValidID(id) || ValidID("../"+id) || ValidID(id+"/x") || ValidID("rec_") {
		t.Fatalf("ids: %q", id)
	}
}

// vp8Packets packetizes a fake VP8 frame into n RTP payloads (descriptor
// with the S bit on the first; a keyframe has P=0 and a valid header).
func vp8Payloads(key bool, n int) [][]byte {
	frame := make([]byte, 30)
	if key {
		frame[0] = 0x10 // P=0
		copy(frame[3:], []byte{0x9d, 0x01, 0x2a})
		binary.LittleEndian.PutUint16(frame[6:], 320)
		binary.LittleEndian.PutUint16(frame[8:], 240)
	} else {
		frame[0] = 0x11 // P=1
	}
	var out [][]byte
	per := len(frame) / n
	for i := 0; i < n; i++ {
		desc := byte(0x00)
		if i == 0 {
			desc = 0x10
		}
		end := (i + 1) * per
		if i == n-1 {
			end = len(frame)
		}
		out = append(out, append([]byte{desc}, frame[i*per:end]...))
	}
	return out
}

// TestAssemblerLossAndReorder feeds video frames of 3 packets each and
// checks which frames come out: reordering within the window is repaired,
// a lost packet drops its frame and every frame up to the next keyframe
// (so the file never holds an undecodable picture), duplicates are ignored.
func TestAssemblerLossAndReorder(t *testing.T) {
	keyframes := map[int]bool{0: true, 5: true}
	tests := []struct {
		name  string
		order []pk // packets in arrival order
		want  []int
		lost  uint64
	}{
		{"in order", seqOf(0, 8, nil), []int{0, 1, 2, 3, 4, 5, 6, 7}, 0},
		{"reordered", swap(seqOf(0, 8, nil), 4, 6), []int{0, 1, 2, 3, 4, 5, 6, 7}, 0},
		{"duplicate", dup(seqOf(0, 8, nil), 7), []int{0, 1, 2, 3, 4, 5, 6, 7}, 0},
		{"middle of frame 2 lost", seqOf(0, 8, map[pk]bool{{2, 1}: true}), []int{0, 1, 5, 6, 7}, 1},
		{"first packet of frame 3 lost", seqOf(0, 8, map[pk]bool{{3, 0}: true}), []int{0, 1, 2, 5, 6, 7}, 1},
		{"last packet of frame 1 lost", seqOf(0, 8, map[pk]bool{{1, 2}: true}), []int{0, 5, 6, 7}, 1},
		{"whole frame 6 lost", seqOf(0, 8, map[pk]bool{{6, 0}: true, {6, 1}: true, {6, 2}: true}), []int{0, 1, 2, 3, 4, 5}, 3},
		{"starts mid-stream without a keyframe", seqOf(1, 8, nil), []int{5, 6, 7}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newAssembler(codecVP8, true, 90000)
			now := time.Unix(1000, 0)
			for _, p := range tt.order {
				payloads := vp8Payloads(keyframes[p.frame], 3)
				now = now.Add(time.Millisecond)
				a.push(&packet{seq: uint16(60000 + p.frame*3 + p.part), ts: uint32(p.frame * 3000), marker: p.part == 2,
					payload: payloads[p.part], at: now}, now)
			}
			a.drain(now.Add(time.Second), false) // gaps time out
			var got []int
			for _, f := range a.take() {
				n := int(f.ext/3000) + tt.order[0].frame // ext counts from the first frame seen
				got = append(got, n)
				if f.key != keyframes[n] || (f.key && (f.width != 320 || f.high != 240)) {
					t.Errorf("frame %d: key %v %dx%d", n, f.key, f.width, f.high)
				}
			}
			if !equalInts(got, tt.want) || a.lost != tt.lost {
				t.Fatalf("frames %v lost %d, want %v lost %d", got, a.lost, tt.want, tt.lost)
			}
		})
	}
}

type pk struct{ frame, part int }

func seqOf(from, to int, drop map[pk]bool) []pk {
	var out []pk
	for f := from; f < to; f++ {
		for p := 0; p < 3; p++ {
			if !drop[pk{f, p}] {
				out = append(out, pk{f, p})
			}
		}
	}
	return out
}

func swap[T any](s []T, i, j int) []T { s[i], s[j] = s[j], s[i]; return s }

func dup[T any](s []T, i int) []T {
	out := append([]T{}, s[:i+1]...)
	out = append(out, s[i])
	return append(out, s[i+1:]...)
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestAssemblerSequenceJumps: a sender whose sequence numbers leap far
// ahead, or restart far behind, is followed (from its next keyframe), and
// neither costs more than the window to handle.
func TestAssemblerSequenceJumps(t *testing.T) {
	a := newAssembler(codecVP8, true, 90000)
	now := time.Unix(1000, 0)
	frame := 0
	send := func(seq uint16, key bool) {
		payloads := vp8Payloads(key, 3)
		for i, pl := range payloads {
			now = now.Add(time.Millisecond)
			a.push(&packet{seq: seq + uint16(i), ts: uint32(frame * 3000), marker: i == 2, payload: pl, at: now}, now)
		}
		frame++
	}
	send(100, true)
	send(103, false)
	send(30000, false) // a leap: this delta frame is dropped
	send(30003, true)  // and the stream resumes at the keyframe
	send(30006, false)
	for i := 0; i < 30; i++ { // a restart far behind
		send(uint16(5000+i*3), i == 0)
	}
	a.drain(now.Add(time.Second), false)
	got := a.take()
	keys := 0
	for _, f := range got {
		if f.key {
			keys++
		}
	}
	// 2 before the leap, 2 after, and of the restarted stream those after
	// the resync (64 packets, 22 frames) from its next keyframe: none, as
	// only its first frame was a keyframe.
	if len(got) != 4 || keys != 2 {
		t.Fatalf("%d frames (%d keyframes) out", len(got), keys)
	}
	send(uint16(5000+30*3), true) // the restarted stream's next keyframe
	send(uint16(5000+31*3), false)
	a.drain(now.Add(time.Second), false)
	if got := a.take(); len(got) != 2 || !got[0].key {
		t.Fatalf("after the resync: %d frames", len(got))
	}
}

// TestAssemblerClock checks the mapping of RTP time to the wall clock:
// packets held up at the start (pion buffers them until the track is
// announced) do not shift the timeline; a publisher whose RTP clock stood
// still during a pause gets the pause kept as a gap.
func TestAssemblerClock(t *testing.T) {
	a := newAssembler(codecOpus, false, 48000)
	t0 := time.Unix(2000, 0)
	var seq uint16
	send := func(ts uint32, at time.Time) {
		a.push(&packet{seq: seq, ts: ts, marker: true, payload: []byte{0xfc, 1, 2}, at: at}, at)
		seq++
	}
	// The first 10 packets (200 ms of audio) arrive in one burst at 700ms.
	for i := 0; i < 10; i++ {
		send(uint32(i*960), t0.Add(700*time.Millisecond))
	}
	// Then on time: packet i at i*20ms (+1ms of network).
	for i := 10; i < 50; i++ {
		send(uint32(i*960), t0.Add(time.Duration(i)*20*time.Millisecond+time.Millisecond))
	}
	// A pause of 5 s in which the RTP clock did not advance.
	for i := 50; i < 60; i++ {
		send(uint32((i-10)*960), t0.Add(5*time.Second+time.Duration(i)*20*time.Millisecond+time.Millisecond))
	}
	fs := a.take()
	if len(fs) != 60 {
		t.Fatalf("%d frames", len(fs))
	}
	for i, f := range fs {
		want := t0.Add(time.Duration(i)*20*time.Millisecond + time.Millisecond)
		if i >= 50 {
			want = want.Add(5 * time.Second)
		}
		if d := f.wall().Sub(want); d < -time.Millisecond || d > time.Millisecond {
			t.Fatalf("frame %d at %v, want %v", i, f.wall().Sub(t0), want.Sub(t0))
		}
	}
}
