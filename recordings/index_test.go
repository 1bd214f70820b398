package recordings_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigil-media/vigil/recordings"
	"github.com/vigil-media/vigil/sfu"
)

// writeRecording makes a finished recording on disk by hand, as the
// manager would have left it: a manifest and its files.
func writeRecording(t *testing.T, dir, id string, status string, ended time.Time, files map[string]string, sealed bool) recordings.Manifest {
	t.Helper()
	rd := filepath.Join(dir, id)
	if err := os.MkdirAll(rd, 0o700); err != nil {
		t.Fatal(err)
	}
	man := recordings.Manifest{Version: 1, ID: id, Room: "r1", RoomKind: "proctoring", Identity: "c1", Role: "candidate",
		Group: "av", Status: status, StartedAt: ended.Add(-time.Minute), Segments: []recordings.Segment{}}
	if status != recordings.StatusRecording {
		man.EndedAt = &ended
	}
	i := 0
	for name, content := range files {
		i++
		if err := os.WriteFile(filepath.Join(rd, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		seg := recordings.Segment{Index: i, File: name, Container: "webm", Status: status, StartedAt: man.StartedAt}
		if sealed {
			sum, n := sha(content)
			seg.SHA256, seg.Bytes, seg.EndedAt = sum, n, &ended
		}
		man.Segments = append(man.Segments, seg)
	}
	b, _ := json.Marshal(man)
	if err := os.WriteFile(filepath.Join(rd, recordings.ManifestName), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return man
}

func sha(s string) (string, int64) {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:]), int64(len(s))
}

func TestIndexRebuiltFromManifests(t *testing.T) {
	dir := t.TempDir()
	now := time.Now().UTC().Truncate(time.Second)
	done := writeRecording(t, dir, "rec_000000000000000000000001", recordings.StatusComplete, now, map[string]string{"av-001.webm": "one"}, true)
	crashed := writeRecording(t, dir, "rec_000000000000000000000002", recordings.StatusRecording, now, map[string]string{"av-001.webm": "partial"}, false)
	// Junk the index must skip, not choke on.
	_ = os.MkdirAll(filepath.Join(dir, "rec_000000000000000000000003"), 0o700)
	_ = os.WriteFile(filepath.Join(dir, "rec_000000000000000000000003", recordings.ManifestName), []byte("{not json"), 0o600)
	_ = os.MkdirAll(filepath.Join(dir, "not-a-recording"), 0o700)
	other := writeRecording(t, dir, "rec_000000000000000000000004", recordings.StatusComplete, now, map[string]string{"av-001.webm": "x"}, true)
	_ = os.Rename(filepath.Join(dir, other.ID), filepath.Join(dir, "rec_000000000000000000000005")) // id mismatch

	m := newManager(t, recordings.Config{Dir: dir})
	list := m.List(recordings.Filter{})
	if len(list) != 2 {
		t.Fatalf("index: %d recordings, want 2: %+v", len(list), list)
	}
	got, err := m.Get(done.ID)
	if err != nil || got.Status != recordings.StatusComplete {
		t.Fatalf("complete recording: %+v %v", got, err)
	}
	// The one cut short by a crash is marked, its open file unverified
	// (sized, not hashed), on disk too.
	got, err = m.Get(crashed.ID)
	if err != nil || got.Status != recordings.StatusInterrupted || got.Segments[0].SHA256 != "" || !got.Segments[0].Unverified ||
		got.Segments[0].Bytes != 7 || got.EndedAt == nil {
		t.Fatalf("interrupted recording: %+v %v", got, err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, crashed.ID, recordings.ManifestName))
	if !strings.Contains(string(b), `"status": "interrupted"`) {
		t.Fatalf("manifest on disk not updated: %s", b)
	}
	if l := m.List(recordings.Filter{Room: "r1", Identity: "c1"}); len(l) != 2 {
		t.Fatalf("filter: %d", len(l))
	}
	if l := m.List(recordings.Filter{Identity: "nobody"}); len(l) != 0 {
		t.Fatalf("filter: %d", len(l))
	}
	if _, err := m.Get("rec_ffffffffffffffffffffffff"); !errors.Is(err, recordings.ErrNotFound) {
		t.Fatalf("unknown id: %v", err)
	}
}

func TestVerifyDetectsTampering(t *testing.T) {
	dir := t.TempDir()
	now := time.Now().UTC()
	man := writeRecording(t, dir, "rec_0000000000000000000000aa", recordings.StatusComplete, now,
		map[string]string{"av-001.webm": "first", "av-002.webm": "second", "av-003.webm": "third"}, true)
	m := newManager(t, recordings.Config{Dir: dir})
	check := func() map[string]string {
		t.Helper()
		checks, err := m.Verify(man.ID)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, c := range checks {
			out[c.File] = c.Result
		}
		return out
	}
	if got := check(); got["av-001.webm"] != "ok" || got["av-002.webm"] != "ok" || got["av-003.webm"] != "ok" {
		t.Fatalf("untouched: %v", got)
	}
	// One byte changed, same size, and the modification time put back:
	// the hash cache must not hide it.
	p := filepath.Join(dir, man.ID, "av-002.webm")
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	if err := os.WriteFile(p, []byte("secXnd"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, man.ID, "av-003.webm")); err != nil {
		t.Fatal(err)
	}
	if got := check(); got["av-001.webm"] != "ok" || got["av-002.webm"] != "mismatch" || got["av-003.webm"] != "missing" {
		t.Fatalf("tampered: %v", got)
	}
	ins, err := m.Inspect(man.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range ins.Segments {
		if s.Verified == nil || *s.Verified != (s.File == "av-001.webm") {
			t.Fatalf("inspect: %s verified %v (%s)", s.File, s.Verified, s.Check)
		}
	}
	// The offline check (vigil verify) agrees.
	checks, err := recordings.VerifyDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	failed := 0
	for _, c := range checks {
		if c.Failed() {
			failed++
		}
	}
	if len(checks) != 3 || failed != 2 {
		t.Fatalf("VerifyDir: %+v", checks)
	}
}

func TestOpenConfinedToListedFiles(t *testing.T) {
	dir := t.TempDir()
	man := writeRecording(t, dir, "rec_0000000000000000000000bb", recordings.StatusComplete, time.Now(),
		map[string]string{"av-001.webm": "media"}, true)
	_ = os.WriteFile(filepath.Join(dir, "secret"), []byte("secret"), 0o600)
	_ = os.WriteFile(filepath.Join(dir, man.ID, "av-002.webm"), []byte("not listed"), 0o600)
	m := newManager(t, recordings.Config{Dir: dir})
	f, fi, err := m.Open(man.ID, "av-001.webm")
	if err != nil || fi.Size() != 5 {
		t.Fatalf("open listed file: %v", err)
	}
	f.Close()
	for _, name := range []string{"../secret", "..", "av-002.webm", "manifest.json", "/etc/passwd", "av-001.webm/../../secret", ""} {
		if _, _, err := m.Open(man.ID, name); !errors.Is(err, recordings.ErrFileNotFound) {
			t.Errorf("Open(%q): %v, want ErrFileNotFound", name, err)
		}
	}
	for _, id := range []string{"../" + man.ID, "rec_x", ""} {
		if _, _, err := m.Open(id, "av-001.webm"); !errors.Is(err, recordings.ErrNotFound) {
			t.Errorf("Open(id %q): %v, want ErrNotFound", id, err)
		}
	}
	// A listed file replaced by a symlink out of the directory is refused.
	p := filepath.Join(dir, man.ID, "av-001.webm")
	_ = os.Remove(p)
	if err := os.Symlink(filepath.Join(dir, "secret"), p); err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.Open(man.ID, "av-001.webm"); !errors.Is(err, recordings.ErrFileNotFound) {
		t.Errorf("symlink out of the recording: %v", err)
	}
}

func TestRetentionDeletesOldRecordings(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2030, 1, 10, 12, 0, 0, 0, time.UTC)
	old := writeRecording(t, dir, "rec_0000000000000000000000c1", recordings.StatusComplete, now.Add(-31*24*time.Hour), map[string]string{"av-001.webm": "a"}, true)
	recent := writeRecording(t, dir, "rec_0000000000000000000000c2", recordings.StatusComplete, now.Add(-29*24*time.Hour), map[string]string{"av-001.webm": "b"}, true)
	var mu sync.Mutex
	clock := now
	m := newManager(t, recordings.Config{Dir: dir, Retention: 720 * time.Hour, RetentionInterval: time.Hour,
		Now: func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }})
	// The first sweep runs at start.
	waitFor(t, 5*time.Second, "the first sweep", func() bool { _, err := m.Get(old.ID); return err != nil })
	if _, err := os.Stat(filepath.Join(dir, old.ID)); !os.IsNotExist(err) {
		t.Fatalf("old recording still on disk: %v", err)
	}
	if _, err := m.Get(recent.ID); err != nil {
		t.Fatal("a recent recording was deleted")
	}
	mu.Lock()
	clock = clock.Add(2 * 24 * time.Hour)
	mu.Unlock()
	if got := m.Sweep(); len(got) != 1 || got[0] != recent.ID {
		t.Fatalf("sweep two days later: %v", got)
	}
	if len(m.List(recordings.Filter{})) != 0 {
		t.Fatal("index not emptied")
	}
}

// TestWriteErrorStopsOnlyThatRecording makes one candidate's file creation
// land on /dev/full (every write fails with ENOSPC) while another
// candidate records normally: the first recording fails with the error in
// its manifest, and the media path and the other recording go on.
func TestWriteErrorStopsOnlyThatRecording(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full on this system")
	}
	dir := t.TempDir()
	cfg := recordings.Config{Dir: dir, ReconnectGrace: 200 * time.Millisecond}
	var opened sync.Map
	recordings.SetOpenFile(&cfg, func(path string) (*os.File, error) {
		man, _ := os.ReadFile(filepath.Join(filepath.Dir(path), recordings.ManifestName))
		if strings.Contains(string(man), `"identity": "full"`) {
			opened.Store("full", true)
			return os.OpenFile("/dev/full", os.O_WRONLY, 0)
		}
		return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	})
	m := newManager(t, cfg)
	s := newSFU(t, m)
	room, err := s.CreateRoom("exam3", sfu.KindProctoring, sfu.RoomOptions{})
	if err != nil {
		t.Fatal(err)
	}
	av := map[sfu.Source]string{sfu.SourceCamera: "vp8", sfu.SourceMicrophone: "opus"}
	full := join(t, room, "full", sfu.RoleCandidate, av)
	fine := join(t, room, "fine", sfu.RoleCandidate, av)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); full.play(3 * time.Second) }()
	fine.play(3 * time.Second)
	wg.Wait()

	if _, ok := opened.Load("full"); !ok {
		t.Fatal("the fault was never injected")
	}
	failed := onlyRecording(t, m, recordings.Filter{Identity: "full"})
	failed = waitStatus(t, m, failed.ID, recordings.StatusFailed)
	if !strings.Contains(failed.Error, "no space left on device") || failed.Reason != recordings.ReasonDiskFull {
		t.Errorf("error %q, reason %q (want disk_full)", failed.Error, failed.Reason)
	}
	b, _ := os.ReadFile(filepath.Join(dir, failed.ID, recordings.ManifestName))
	if !strings.Contains(string(b), `"status": "failed"`) || !strings.Contains(string(b), "no space left") {
		t.Errorf("manifest on disk: %s", b)
	}
	// The media path is untouched: the participant is still connected and
	// its tracks still flow.
	p := room.Participant("full")
	if p == nil || len(p.Tracks()) != 2 {
		t.Fatal("the failing recording took the participant down")
	}
	// Summed over the tracks: Tracks() has no fixed order.
	packets := func() (n uint64) {
		for _, tr := range p.Tracks() {
			n += tr.Stats().Packets
		}
		return n
	}
	before := packets()
	full.play(time.Second)
	if after := packets(); after <= before {
		t.Fatalf("packets stopped flowing: %d then %d", before, after)
	}
	full.leave()
	fine.leave()
	ok := onlyRecording(t, m, recordings.Filter{Identity: "fine"})
	ok = waitStatus(t, m, ok.ID, recordings.StatusComplete)
	if len(ok.Segments) != 1 || ok.Segments[0].DurationMs < 2500 {
		t.Fatalf("the other recording: %+v", ok)
	}
	decodes(t, filepath.Join(dir, ok.ID, ok.Segments[0].File))
}
