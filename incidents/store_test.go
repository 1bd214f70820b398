package incidents

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestStoreRoundTripAndReopen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	base := time.Date(2026, 11, 26, 22, 0, 0, 0, time.UTC)
	rec, file, off := "rec_000000000000000000000001", "av-001.webm", int64(61874)
	snapAt := base.Add(-time.Second)
	incs := []Incident{
		{ID: newID(), Room: "exam", Identity: "a", Type: TabHidden, Source: SourceClient, Reporter: "a", Time: base.Add(2 * time.Second)},
		{ID: newID(), Room: "exam", Identity: "b", Type: VideoFrozen, Source: SourceServer, Track: "camera", Time: base,
			RecordingID: &rec, RecordingFile: &file, OffsetMs: &off, SnapshotTime: &snapAt},
		{ID: newID(), Room: "exam", Identity: "a", Type: Manual, Source: SourceProctor, Reporter: "p", Note: "ünïcode note", Time: base.Add(time.Second)},
		{ID: newID(), Room: "other", Identity: "a", Type: Manual, Source: SourceProctor, Time: base},
	}
	jpegBytes := []byte("\xff\xd8 not really a jpeg \xff\xd9")
	for i, inc := range incs {
		var snap []byte
		if i == 1 {
			snap = jpegBytes
			incs[i].HasSnapshot = true
		}
		if err := s.Add(ctx, inc, snap); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Add(ctx, incs[0], nil); err == nil {
		t.Fatal("a duplicate id was stored")
	}
	if err := s.Add(ctx, Incident{ID: newID(), Room: "exam"}, make([]byte, MaxSnapshotBytes+1)); err == nil {
		t.Fatal("an oversized snapshot was stored")
	}
	check := func(s *Store) {
		t.Helper()
		all, err := s.List(ctx, Filter{Room: "exam"})
		if err != nil {
			t.Fatal(err)
		}
		want := []string{incs[1].ID, incs[2].ID, incs[0].ID} // oldest first
		if len(all) != len(want) {
			t.Fatalf("%d incidents, want %d", len(all), len(want))
		}
		for i := range want {
			if all[i].ID != want[i] {
				t.Fatalf("order: %v", all)
			}
		}
		got := all[0]
		if got.Track != "camera" || *got.RecordingID != rec || *got.RecordingFile != file || *got.OffsetMs != off ||
			!got.HasSnapshot || !got.SnapshotTime.Equal(snapAt) || !got.Time.Equal(base) {
			t.Fatalf("round trip: %+v", got)
		}
		if all[1].Note != "ünïcode note" || all[1].RecordingID != nil || all[1].HasSnapshot || all[1].SnapshotTime != nil {
			t.Fatalf("round trip: %+v", all[1])
		}
		if l, _ := s.List(ctx, Filter{Room: "exam", Identity: "a"}); len(l) != 2 {
			t.Fatalf("identity filter: %d", len(l))
		}
		if l, _ := s.List(ctx, Filter{Room: "exam", Identity: "a", Type: Manual}); len(l) != 1 || l[0].ID != incs[2].ID {
			t.Fatalf("both filters: %v", l)
		}
		if l, _ := s.List(ctx, Filter{Room: "exam", Limit: 1}); len(l) != 1 || l[0].ID != incs[0].ID {
			t.Fatalf("limit keeps the newest: %v", l)
		}
		if l, _ := s.List(ctx, Filter{Room: "nothing"}); l == nil || len(l) != 0 {
			t.Fatalf("empty room: %#v", l)
		}
		b, err := s.Snapshot(ctx, "exam", incs[1].ID)
		if err != nil || string(b) != string(jpegBytes) {
			t.Fatalf("snapshot: %q %v", b, err)
		}
		if _, err := s.Snapshot(ctx, "exam", incs[0].ID); !errors.Is(err, ErrSnapshotNotFound) {
			t.Fatalf("no snapshot: %v", err)
		}
		for _, id := range []string{"inc_000000000000000000000000", "x", "'; DROP TABLE incidents; --"} {
			if _, err := s.Get(ctx, "exam", id); !errors.Is(err, ErrNotFound) {
				t.Fatalf("get %q: %v", id, err)
			}
		}
		if _, err := s.Get(ctx, "exam", incs[3].ID); !errors.Is(err, ErrNotFound) {
			t.Fatalf("another room's incident: %v", err)
		}
	}
	check(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// A restart: the same directory, the schema already there.
	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	check(s)

	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("data dir mode %v %v", fi.Mode(), err)
	}
	for _, name := range []string{DBName, DBName + "-wal"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s mode %v %v", name, fi.Mode(), err)
		}
	}
	var mode string
	if err := s.db.QueryRow("PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("journal mode %q %v", mode, err)
	}
}

func TestStoreRefusesNewerSchema(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.db.Exec("PRAGMA user_version = 99"); err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	if _, err := Open(dir); err == nil {
		t.Fatal("opened a database of a newer schema")
	}
}

func TestLimiter(t *testing.T) {
	l := newLimiter(time.Second, 60)
	now := time.Unix(1000, 0)
	if !l.allow("a", TabHidden, now) || l.allow("a", TabHidden, now.Add(999*time.Millisecond)) {
		t.Fatal("one of a type a second")
	}
	if !l.allow("a", WindowBlur, now) || !l.allow("b", TabHidden, now) {
		t.Fatal("other types and reporters are apart")
	}
	if !l.allow("a", TabHidden, now.Add(time.Second)) {
		t.Fatal("a second later")
	}
	// 60 a minute, whatever the types.
	l = newLimiter(time.Second, 60)
	n := 0
	for i := 0; i < 120; i++ {
		if l.allow("a", Types()[i%6], now.Add(time.Duration(i)*200*time.Millisecond)) {
			n++
		}
	}
	if n != 60 {
		t.Fatalf("%d allowed in 24 s, want 60", n)
	}
	if !l.allow("a", TabHidden, now.Add(61*time.Second)) {
		t.Fatal("the window slides")
	}
	l.sweep(now.Add(10 * time.Minute))
	if len(l.byID) != 0 {
		t.Fatal("idle reporters are kept")
	}
}

// TestStoreInstances: a database of schema 1 (before room instances),
// with an incident in it, is migrated on Open: the old incident stays
// readable, with no instance; new ones keep theirs, and a List of one
// instance shows that instance's only, of no instance every one.
func TestStoreInstances(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, DBName)
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	base := time.Date(2026, 11, 26, 22, 0, 0, 0, time.UTC)
	legacy := newID()
	if _, err := db.Exec(migrations[0] + "; PRAGMA user_version = 1"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO incidents (id, room, identity, type, source, time_ms) VALUES (?, 'exam', 'a', 'manual', 'proctor', ?)`,
		legacy, base.UnixMilli()); err != nil {
		t.Fatal(err)
	}
	_ = db.Close()

	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	old, cur := Incident{ID: newID(), Room: "exam", Instance: "00000000000000aa", Identity: "a", Type: Manual, Source: SourceProctor, Time: base.Add(time.Second)},
		Incident{ID: newID(), Room: "exam", Instance: "00000000000000bb", Identity: "b", Type: Manual, Source: SourceProctor, Time: base.Add(2 * time.Second)}
	for _, inc := range []Incident{old, cur} {
		if err := s.Add(ctx, inc, nil); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.Get(ctx, "exam", legacy)
	if err != nil || got.Instance != "" || got.Identity != "a" {
		t.Fatalf("legacy incident after the migration: %+v %v", got, err)
	}
	for _, tc := range []struct {
		instance string
		want     []string
	}{{"", []string{legacy, old.ID, cur.ID}}, {old.Instance, []string{old.ID}}, {cur.Instance, []string{cur.ID}}, {"00000000000000cc", nil}} {
		list, err := s.List(ctx, Filter{Room: "exam", Instance: tc.instance})
		if err != nil || len(list) != len(tc.want) {
			t.Fatalf("instance %q: %v %v", tc.instance, list, err)
		}
		for i, inc := range list {
			if inc.ID != tc.want[i] || (tc.instance != "" && inc.Instance != tc.instance) {
				t.Fatalf("instance %q: %+v", tc.instance, list)
			}
		}
	}
	var version int
	if err := s.db.QueryRow("PRAGMA user_version").Scan(&version); err != nil || version != len(migrations) {
		t.Fatalf("schema %d %v", version, err)
	}
}
