package recordings_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigil-media/vigil/recordings"
	"github.com/vigil-media/vigil/sfu"
)

// checkFile asserts what ffprobe and ffmpeg say of a finalized segment:
// its streams and codecs, a duration within 5% of the wall-clock time it
// covers (both the publisher's and the manifest's), audio and video ending
// together, and a decode with no error.
//
// A file with video only starts at the first keyframe the recorder gets.
// The recorder asks for one (PLI), which a browser answers at once, but
// these publishers replay encoded files and cannot: that keyframe may come
// one GOP (1s) late, so against the publisher's clock such a file may be
// up to 1s short.
func checkFile(t *testing.T, dir string, seg recordings.Segment, wantFormat string, wantCodecs []string, wall time.Duration) {
	t.Helper()
	path := filepath.Join(dir, seg.File)
	p := ffprobe(t, path)
	if !strings.Contains(p.Format.FormatName, wantFormat) {
		t.Errorf("%s: format %q, want %q", seg.File, p.Format.FormatName, wantFormat)
	}
	got := p.codecs()
	slices.Sort(got)
	if !slices.Equal(got, wantCodecs) {
		t.Errorf("%s: streams %v, want %v", seg.File, got, wantCodecs)
	}
	d, ok := p.duration()
	if !ok {
		t.Fatalf("%s: a finalized file must show a duration, ffprobe says %q", seg.File, p.Format.Duration)
	}
	if seg.EndedAt == nil {
		t.Fatalf("%s: no ended_at", seg.File)
	}
	manifestWall := seg.EndedAt.Sub(seg.StartedAt)
	t.Logf("%s: ffprobe duration %v, publisher wall clock %v, manifest wall clock %v, %d bytes",
		seg.File, d, wall, manifestWall, seg.Bytes)
	slack := time.Duration(0)
	if !slices.Contains(wantCodecs, "audio:opus") {
		slack = time.Second
	}
	if d > wall+wall/20 || d < (wall-slack)-(wall-slack)/20 {
		t.Errorf("%s: duration %v not within 5%% of the %v published (less %v)", seg.File, d, wall, slack)
	}
	if !within(d, manifestWall, 0.05) {
		t.Errorf("%s: duration %v not within 5%% of the manifest's %v", seg.File, d, manifestWall)
	}
	for _, s := range p.Streams {
		if s.CodecType == "video" && (s.Width != 320 || s.Height != 240) {
			t.Errorf("%s: video %dx%d, want 320x240", seg.File, s.Width, s.Height)
		}
	}
	decodes(t, path)
	ends, counts := streamEnds(t, path)
	t.Logf("%s: decoded frames %v, stream ends %v", seg.File, counts, ends)
	if a, v := ends["audio"], ends["video"]; a > 0 && v > 0 {
		if diff := a - v; diff > 200*time.Millisecond || diff < -200*time.Millisecond {
			t.Errorf("%s: audio ends at %v, video at %v: out of sync", seg.File, a, v)
		}
	}
	if counts["video"] > 0 && float64(counts["video"]) < 0.8*30*(wall.Seconds()-1) {
		t.Errorf("%s: only %d video frames decoded for %v", seg.File, counts["video"], wall)
	}
}

func onlyRecording(t *testing.T, m *recordings.Manager, f recordings.Filter) recordings.Manifest {
	t.Helper()
	list := m.List(f)
	if len(list) != 1 {
		t.Fatalf("recordings for %+v: %d, want 1: %+v", f, len(list), list)
	}
	return list[0]
}

// waitStatus waits until the recording's manifest has status.
func waitStatus(t *testing.T, m *recordings.Manager, id, status string) recordings.Manifest {
	t.Helper()
	var man recordings.Manifest
	waitFor(t, 15*time.Second, "recording "+status, func() bool {
		var err error
		man, err = m.Get(id)
		return err == nil && man.Status == status
	})
	return man
}

func TestRecordVP8OpusProctoringCandidate(t *testing.T) {
	dir := t.TempDir()
	m := newManager(t, recordings.Config{Dir: dir, ReconnectGrace: 500 * time.Millisecond})
	s := newSFU(t, m)
	room, err := s.CreateRoom("exam", sfu.KindProctoring, sfu.RoomOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// A proctor publishing a microphone is not recorded; the candidate is.
	proctor := join(t, room, "proctor-1", sfu.RoleProctor, map[sfu.Source]string{sfu.SourceMicrophone: "opus"})
	pub := join(t, room, "cand-1", sfu.RoleCandidate, map[sfu.Source]string{sfu.SourceCamera: "vp8", sfu.SourceMicrophone: "opus", sfu.SourceScreen: "vp8"})
	done := make(chan struct{})
	go func() { defer close(done); proctor.play(6 * time.Second) }()
	first, last := pub.play(6 * time.Second)
	<-done
	time.Sleep(300 * time.Millisecond) // let the last packets land
	pub.leave()
	proctor.leave()

	list := m.List(recordings.Filter{Room: "exam"})
	if len(list) != 2 {
		t.Fatalf("%d recordings, want the candidate's av and screen: %+v", len(list), list)
	}
	var man, screen recordings.Manifest
	for _, r := range list {
		r = waitStatus(t, m, r.ID, recordings.StatusComplete)
		if r.Group == "screen" {
			screen = r
		} else {
			man = r
		}
	}
	if screen.Identity != "cand-1" || len(screen.Segments) != 1 || screen.Segments[0].File != "screen-001.webm" ||
		!slices.Equal(screen.Sources, []string{"screen"}) {
		t.Fatalf("screen recording: %+v", screen)
	}
	checkFile(t, filepath.Join(dir, screen.ID), screen.Segments[0], "webm", []string{"video:vp8"}, last.Sub(first))
	if man.Identity != "cand-1" || man.Role != "candidate" || man.Group != "av" || man.RoomKind != "proctoring" {
		t.Errorf("manifest header: %+v", man)
	}
	if !slices.Equal(man.Sources, []string{"camera", "microphone"}) || !slices.Equal(man.Codecs, []string{"opus", "vp8"}) {
		t.Errorf("sources %v codecs %v", man.Sources, man.Codecs)
	}
	if len(man.Segments) != 1 {
		t.Fatalf("segments: %+v", man.Segments)
	}
	seg := man.Segments[0]
	if seg.File != "av-001.webm" || seg.Status != recordings.StatusComplete || !seg.Finalized || seg.SHA256 == "" || seg.Bytes == 0 {
		t.Errorf("segment: %+v", seg)
	}
	if man.Bytes != seg.Bytes || man.DurationMs != seg.DurationMs || man.EndedAt == nil {
		t.Errorf("totals: bytes %d/%d duration %d/%d ended %v", man.Bytes, seg.Bytes, man.DurationMs, seg.DurationMs, man.EndedAt)
	}
	checkFile(t, filepath.Join(dir, man.ID), seg, "webm", []string{"audio:opus", "video:vp8"}, last.Sub(first))

	// Permissions: directories 0700, files 0600.
	for _, p := range []string{filepath.Join(dir, man.ID), filepath.Join(dir, man.ID, seg.File), filepath.Join(dir, man.ID, recordings.ManifestName)} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		want := os.FileMode(0o600)
		if fi.IsDir() {
			want = 0o700
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode().Perm(), want)
		}
	}
	checks, err := m.Verify(man.ID)
	if err != nil || len(checks) != 1 || checks[0].Result != recordings.CheckOK {
		t.Fatalf("verify: %+v %v", checks, err)
	}
}

func TestRecordH264OpusAutoRecordRoom(t *testing.T) {
	dir := t.TempDir()
	m := newManager(t, recordings.Config{Dir: dir})
	s := newSFU(t, m)
	room, err := s.CreateRoom("meet", sfu.KindConference, sfu.RoomOptions{AutoRecord: true})
	if err != nil {
		t.Fatal(err)
	}
	pub := join(t, room, "alice", sfu.RoleParticipant, map[sfu.Source]string{sfu.SourceCamera: "h264", sfu.SourceMicrophone: "opus"})
	first, last := pub.play(6 * time.Second)
	time.Sleep(300 * time.Millisecond)
	// A clean stop through the API, while the participant is still there.
	stopped, err := m.Stop(room, "alice")
	if err != nil || len(stopped) != 1 {
		t.Fatalf("stop: %+v %v", stopped, err)
	}
	man := stopped[0]
	if man.Status != recordings.StatusComplete || len(man.Segments) != 1 {
		t.Fatalf("after stop: %+v", man)
	}
	seg := man.Segments[0]
	if seg.File != "av-001.mkv" || seg.Container != "matroska" {
		t.Errorf("segment: %+v", seg)
	}
	checkFile(t, filepath.Join(dir, man.ID), seg, "matroska", []string{"audio:opus", "video:h264"}, last.Sub(first))
	// Stopped means stopped: tracks published again are not recorded
	// until Start.
	pub.leave()
	if n := len(m.List(recordings.Filter{Identity: "alice"})); n != 1 {
		t.Fatalf("recordings after stop: %d", n)
	}
}

func TestReconnectAppendsSegment(t *testing.T) {
	dir := t.TempDir()
	m := newManager(t, recordings.Config{Dir: dir, ReconnectGrace: 20 * time.Second})
	s := newSFU(t, m)
	room, err := s.CreateRoom("exam2", sfu.KindProctoring, sfu.RoomOptions{})
	if err != nil {
		t.Fatal(err)
	}
	av := map[sfu.Source]string{sfu.SourceCamera: "vp8", sfu.SourceMicrophone: "opus"}
	pub := join(t, room, "cand-7", sfu.RoleCandidate, av)
	first1, last1 := pub.play(3 * time.Second)
	time.Sleep(200 * time.Millisecond)
	pub.leave() // the connection drops

	man := onlyRecording(t, m, recordings.Filter{Identity: "cand-7"})
	man = waitStatus(t, m, man.ID, recordings.StatusPaused)
	if len(man.Segments) != 1 || !man.Segments[0].Finalized {
		t.Fatalf("after the drop: %+v", man.Segments)
	}
	seg1 := man.Segments[0]
	time.Sleep(1500 * time.Millisecond)

	pub = join(t, room, "cand-7", sfu.RoleCandidate, av) // and comes back
	first2, last2 := pub.play(3 * time.Second)
	time.Sleep(200 * time.Millisecond)
	pub.leave()
	if err := m.Close(); err != nil { // SIGTERM: finalize everything
		t.Fatal(err)
	}

	man, err = m.Get(man.ID)
	if err != nil {
		t.Fatal(err)
	}
	if man.Status != recordings.StatusComplete || len(man.Segments) != 2 {
		t.Fatalf("after the reconnect: status %s, %d segments", man.Status, len(man.Segments))
	}
	if len(m.List(recordings.Filter{Identity: "cand-7"})) != 1 {
		t.Fatal("the reconnect started a second recording")
	}
	s1, s2 := man.Segments[0], man.Segments[1]
	if s1.Index != 1 || s2.Index != 2 || s1.File != "av-001.webm" || s2.File != "av-002.webm" {
		t.Fatalf("segments out of order: %+v", man.Segments)
	}
	if s1.SHA256 != seg1.SHA256 {
		t.Error("the first segment changed after the reconnect")
	}
	if !s2.StartedAt.After(*s1.EndedAt) {
		t.Errorf("segment 2 starts %v, before segment 1 ends %v", s2.StartedAt, s1.EndedAt)
	}
	gap := s2.StartedAt.Sub(*s1.EndedAt)
	t.Logf("gap_ms %d (from times: %v)", s2.GapMs, gap)
	if s1.GapMs != 0 || s2.GapMs < 1500 || s2.GapMs > 10000 || (time.Duration(s2.GapMs)*time.Millisecond-gap).Abs() > 2*time.Millisecond {
		t.Errorf("gap_ms %d and %d; want 0 and the %v between the segments", s1.GapMs, s2.GapMs, gap)
	}
	if man.DurationMs != s1.DurationMs+s2.DurationMs {
		t.Errorf("duration %d, want %d+%d", man.DurationMs, s1.DurationMs, s2.DurationMs)
	}
	rd := filepath.Join(dir, man.ID)
	checkFile(t, rd, s1, "webm", []string{"audio:opus", "video:vp8"}, last1.Sub(first1))
	checkFile(t, rd, s2, "webm", []string{"audio:opus", "video:vp8"}, last2.Sub(first2))
}

// TestLateCameraStartsNewSegment: a candidate publishes a microphone, and
// a camera only later. The audio is not held hostage: after the settle
// time it is recorded alone; when the camera comes, the file it cannot
// hold ends and a new segment with both begins, its video at a keyframe,
// with no gap between the two.
func TestLateCameraStartsNewSegment(t *testing.T) {
	dir := t.TempDir()
	m := newManager(t, recordings.Config{Dir: dir, SettleTimeout: time.Second})
	s := newSFU(t, m)
	room, err := s.CreateRoom("exam4", sfu.KindProctoring, sfu.RoomOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pub := join(t, room, "cand-4", sfu.RoleCandidate, map[sfu.Source]string{sfu.SourceMicrophone: "opus"})
	first1, last1 := pub.play(3 * time.Second)
	pub.add(sfu.SourceCamera, "vp8")
	first2, last2 := pub.play(3 * time.Second)
	time.Sleep(300 * time.Millisecond)
	pub.leave()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	man := onlyRecording(t, m, recordings.Filter{Identity: "cand-4"})
	if man.Status != recordings.StatusComplete || len(man.Segments) != 2 {
		t.Fatalf("recording: %s, %+v", man.Status, man.Segments)
	}
	s1, s2 := man.Segments[0], man.Segments[1]
	t.Logf("segment 1 %dms, segment 2 %dms, gap %dms; published %v then %v", s1.DurationMs, s2.DurationMs, s2.GapMs, last1.Sub(first1), last2.Sub(first2))
	if s2.GapMs > 250 || s2.GapMs < -1500 {
		t.Errorf("gap %dms between the segments", s2.GapMs)
	}
	rd := filepath.Join(dir, man.ID)
	for _, tt := range []struct {
		seg    recordings.Segment
		codecs []string
	}{{s1, []string{"audio:opus"}}, {s2, []string{"audio:opus", "video:vp8"}}} {
		p := ffprobe(t, filepath.Join(rd, tt.seg.File))
		got := p.codecs()
		slices.Sort(got)
		if !slices.Equal(got, tt.codecs) {
			t.Errorf("%s: streams %v, want %v", tt.seg.File, got, tt.codecs)
		}
		decodes(t, filepath.Join(rd, tt.seg.File))
	}
	total := time.Duration(s1.DurationMs+s2.GapMs+s2.DurationMs) * time.Millisecond
	wall := last2.Sub(first1)
	if !within(total, wall, 0.05) {
		t.Errorf("the segments and the gap between them span %v, the publisher sent over %v", total, wall)
	}
}
