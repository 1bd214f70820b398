package recordings_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vigil-media/vigil/recordings"
)

// layRecording lays out a recording directory as a server would have
// left it: a manifest and the files it lists, with the given contents.
func layRecording(t *testing.T, dir string, man recordings.Manifest, files map[string][]byte) {
	t.Helper()
	rd := filepath.Join(dir, man.ID)
	if err := os.MkdirAll(rd, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(rd, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	b, err := json.Marshal(man)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rd, recordings.ManifestName), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// TestSealMarksOpenFilesUnverified: a recording the server was writing
// when it died is sealed at start without hashing what is on disk now (it
// may have been changed while the server was down): the open file is
// unverified, the finished one keeps its hash, and a listed file that was
// never created is dropped.
func TestSealMarksOpenFilesUnverified(t *testing.T) {
	dir := t.TempDir()
	start := time.Now().Add(-time.Minute).UTC()
	done, open := []byte("finished segment"), []byte("written by someone while the server was down")
	id := "rec_0123456789abcdef01234567"
	layRecording(t, dir, recordings.Manifest{
		Version: 1, ID: id, Room: "exam", Identity: "ann", Group: recordings.GroupAV,
		Status: recordings.StatusRecording, StartedAt: start,
		Segments: []recordings.Segment{
			{Index: 1, File: "av-001.webm", Container: "webm", Status: recordings.StatusComplete, Finalized: true,
				StartedAt: start, EndedAt: &start, Bytes: int64(len(done)), SHA256: sum(done)},
			{Index: 2, File: "av-002.webm", Container: "webm", Status: recordings.StatusRecording, StartedAt: start},
			{Index: 3, File: "av-003.webm", Container: "webm", Status: recordings.StatusRecording, StartedAt: start},
		},
	}, map[string][]byte{"av-001.webm": done, "av-002.webm": open})

	m := newManager(t, recordings.Config{Dir: dir})
	got, err := m.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != recordings.StatusInterrupted || len(got.Segments) != 2 {
		t.Fatalf("after restart: %+v", got)
	}
	s1, s2 := got.Segments[0], got.Segments[1]
	if s1.SHA256 != sum(done) || s1.Unverified {
		t.Errorf("finished segment: %+v", s1)
	}
	if s2.SHA256 != "" || !s2.Unverified || s2.Status != recordings.StatusInterrupted || s2.Bytes != int64(len(open)) {
		t.Errorf("open segment: %+v, want unverified, no hash, %d bytes", s2, len(open))
	}
	// The manifest on disk says the same.
	onDisk, err := recordings.VerifyDir(dir, id)
	if err != nil || len(onDisk) != 2 || onDisk[0].Result != recordings.CheckOK || onDisk[1].Result != recordings.CheckUnverified {
		t.Fatalf("VerifyDir: %+v %v", onDisk, err)
	}
	checks, err := m.Verify(id)
	if err != nil || len(checks) != 2 || checks[1].Result != recordings.CheckUnverified || checks[1].Failed() {
		t.Fatalf("Verify: %+v %v", checks, err)
	}
	t.Logf("after restart: %s %s, %s %s", checks[0].File, checks[0].Result, checks[1].File, checks[1].Result)
}

// TestVerifySeesTampering: a hashed file changed on disk is a mismatch,
// a deleted one is missing.
func TestVerifySeesTampering(t *testing.T) {
	dir := t.TempDir()
	start := time.Now().Add(-time.Minute).UTC()
	a, b := []byte("first file"), []byte("second file")
	id := "rec_abcdefabcdefabcdefabcdef"
	layRecording(t, dir, recordings.Manifest{
		Version: 1, ID: id, Status: recordings.StatusComplete, StartedAt: start,
		Segments: []recordings.Segment{
			{Index: 1, File: "av-001.webm", Status: recordings.StatusComplete, StartedAt: start, SHA256: sum(a)},
			{Index: 2, File: "av-002.webm", Status: recordings.StatusComplete, StartedAt: start, SHA256: sum(b)},
		},
	}, map[string][]byte{"av-001.webm": a, "av-002.webm": b})
	checks, err := recordings.VerifyDir(dir)
	if err != nil || len(checks) != 2 || checks[0].Result != recordings.CheckOK || checks[1].Result != recordings.CheckOK {
		t.Fatalf("before: %+v %v", checks, err)
	}
	if err := os.WriteFile(filepath.Join(dir, id, "av-001.webm"), []byte("first filE"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, id, "av-002.webm")); err != nil {
		t.Fatal(err)
	}
	checks, err = recordings.VerifyDir(dir)
	if err != nil || len(checks) != 2 || checks[0].Result != recordings.CheckMismatch || checks[1].Result != recordings.CheckMissing ||
		!checks[0].Failed() || !checks[1].Failed() {
		t.Fatalf("after tampering: %+v %v", checks, err)
	}
}
