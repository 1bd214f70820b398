package incidents

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vigil-media/vigil/sfu"
	"go.uber.org/goleak"
)

// dbBytes is the size of the database files on disk (with the WAL).
func dbBytes(t *testing.T, s *Store) int64 {
	t.Helper()
	var n int64
	for _, suffix := range []string{"", "-wal"} {
		if fi, err := os.Stat(s.Path() + suffix); err == nil {
			n += fi.Size()
		}
	}
	return n
}

// hostileSetup is a Monitor on a real SQLite store, a real sfu, and a
// proctoring room with a proctor.
func hostileSetup(t *testing.T, cfg Config) (*Store, *Monitor, *sfu.SFU, *sfu.Room, *sfu.Participant, *collector) {
	t.Helper()
	store, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	cfg.Store, cfg.Logger = store, testLogger()
	mon, err := NewMonitor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(mon.Close)
	media, err := sfu.New(sfu.Config{UDPAddr: "127.0.0.1:0", IncludeLoopback: true, Logger: testLogger(), Observer: sfu.Observers{mon}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = media.Close() })
	room, err := media.CreateRoom("exam", sfu.KindProctoring, sfu.RoomOptions{})
	if err != nil {
		t.Fatal(err)
	}
	proctors := &collector{}
	proc, err := room.Join(sfu.JoinConfig{Identity: "proc", Role: sfu.RoleProctor, Sink: proctors})
	if err != nil {
		t.Fatal(err)
	}
	return store, mon, media, room, proc, proctors
}

// TestHostileCandidatesSpamIncidents: real candidates (pion peers
// publishing a camera) report incidents as fast as they can. One still
// waiting for admission is refused (ErrNotAdmitted) and stores nothing;
// the admitted ones fill the room's cap, then one incidents_capped is
// stored and pushed, and everything after it is refused (ErrCapped): the
// rows and bytes on disk stay bounded.
func TestHostileCandidatesSpamIncidents(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	const limit = 40
	store, mon, media, room, proc, proctors := hostileSetup(t, Config{
		MaxPerRoom: limit, ReportsPerType: time.Nanosecond, ReportsPerMinute: 1 << 30, Interval: time.Hour})
	waiting, _ := candidateThrough(t, room, newProxy(t, media.LocalAddr()), "waiting")
	for i := 0; i < 50; i++ {
		if _, err := mon.Report(waiting, TabHidden, "not admitted"); !errors.Is(err, ErrNotAdmitted) {
			t.Fatalf("report before admission: %v, want ErrNotAdmitted", err)
		}
	}
	if u, _ := store.Usage(t.Context()); u.Incidents != 0 {
		t.Fatalf("%d incidents stored from a candidate not admitted", u.Incidents)
	}
	before := dbBytes(t, store)

	var cands []*sfu.Participant
	for _, id := range []string{"c1", "c2", "c3"} {
		p, _ := candidateThrough(t, room, newProxy(t, media.LocalAddr()), id)
		if err := room.Admit(proc, id); err != nil {
			t.Fatal(err)
		}
		cands = append(cands, p)
	}
	accepted, capped := 0, 0
	for i := 0; i < 3000; i++ {
		_, err := mon.Report(cands[i%len(cands)], Types()[i%6], "spam")
		switch {
		case err == nil:
			accepted++
		case errors.Is(err, ErrCapped):
			capped++
		default:
			t.Fatalf("report %d: %v", i, err)
		}
	}
	u, err := store.Usage(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	after := dbBytes(t, store)
	t.Logf("3000 reports by 3 admitted candidates: %d accepted, %d refused as capped; %d rows, %d snapshots (%d bytes); database %d -> %d bytes on disk",
		accepted, capped, u.Incidents, u.Snapshots, u.SnapshotBytes, before, after)
	if accepted != limit || u.Incidents != limit+1 {
		t.Fatalf("%d accepted, %d rows; want %d and %d (the cap and one incidents_capped)", accepted, u.Incidents, limit, limit+1)
	}
	if after-before > 4<<20 {
		t.Errorf("the database grew by %d bytes", after-before)
	}
	list, err := store.List(t.Context(), Filter{Room: "exam", Type: IncidentsCapped})
	if err != nil || len(list) != 1 || list[0].Source != SourceServer {
		t.Fatalf("incidents_capped stored: %+v %v", list, err)
	}
	waitFor(t, 5*time.Second, "incidents_capped pushed", func() bool { return len(proctors.of(IncidentsCapped)) == 1 })

	// A proctor's flag is refused too, and the room made again under the
	// same name counts afresh.
	if _, err := mon.Flag(proc, "c1", "by hand"); !errors.Is(err, ErrCapped) {
		t.Errorf("flag past the cap: %v", err)
	}
	room.Close("deleted")
	again, err := media.CreateRoom("exam", sfu.KindProctoring, sfu.RoomOptions{})
	if err != nil {
		t.Fatal(err)
	}
	proc2, err := again.Join(sfu.JoinConfig{Identity: "proc", Role: sfu.RoleProctor, Sink: &collector{}})
	if err != nil {
		t.Fatal(err)
	}
	c, _ := candidateThrough(t, again, newProxy(t, media.LocalAddr()), "c1")
	if err := again.Admit(proc2, "c1"); err != nil {
		t.Fatal(err)
	}
	if _, err := mon.Report(c, TabHidden, "new cohort"); err != nil {
		t.Fatalf("report in the room made again: %v", err)
	}
}

// TestIncidentsShareKeyframeSnapshot: a burst of incidents on one
// keyframe stores one snapshot, which each of them serves.
func TestIncidentsShareKeyframeSnapshot(t *testing.T) {
	frames := vp8Frames(t)
	store, mon, _, room, _, _ := hostileSetup(t, Config{Interval: time.Hour})
	kf := &keyframe{data: frames[0], at: time.Now()}
	const n = 200
	var ids []string
	for i := 0; i < n; i++ {
		inc, err := mon.record(room, Incident{Identity: "c1", Type: TabHidden, Source: SourceClient, Time: time.Now()}, kf)
		if err != nil || !inc.HasSnapshot {
			t.Fatalf("record %d: %+v %v", i, inc, err)
		}
		ids = append(ids, inc.ID)
	}
	// A later keyframe is a second snapshot.
	if _, err := mon.record(room, Incident{Identity: "c1", Type: WindowBlur, Source: SourceClient, Time: time.Now()},
		&keyframe{data: frames[15], at: time.Now()}); err != nil {
		t.Fatal(err)
	}
	u, err := store.Usage(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d incidents on one keyframe and 1 on another: %d rows, %d snapshots stored, %d bytes of JPEG; database %d bytes",
		n, u.Incidents, u.Snapshots, u.SnapshotBytes, dbBytes(t, store))
	if u.Incidents != n+1 || u.Snapshots != 2 {
		t.Fatalf("%d incidents, %d snapshots; want %d and 2", u.Incidents, u.Snapshots, n+1)
	}
	first, err := store.Snapshot(t.Context(), "exam", ids[0])
	if err != nil {
		t.Fatal(err)
	}
	last, err := store.Snapshot(t.Context(), "exam", ids[n-1])
	if err != nil || string(last) != string(first) || int64(len(first))*2 < u.SnapshotBytes/2 {
		t.Fatalf("snapshots differ or are missing: %d / %d bytes, %v", len(first), len(last), err)
	}
}

// TestIncidentRetention: incidents older than Retention are deleted,
// and the snapshots only they referenced with them; a snapshot a newer
// incident shares stays. The database is reopened from its file.
func TestIncidentRetention(t *testing.T) {
	frames := vp8Frames(t)
	dir := t.TempDir()
	store, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	clock := func() time.Time { return now }
	mon, err := NewMonitor(Config{Store: store, Logger: testLogger(), Interval: time.Hour, Retention: 24 * time.Hour, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	defer mon.Close()
	media, err := sfu.New(sfu.Config{UDPAddr: "127.0.0.1:0", IncludeLoopback: true, Logger: testLogger(), Observer: sfu.Observers{mon}})
	if err != nil {
		t.Fatal(err)
	}
	defer media.Close()
	room, err := media.CreateRoom("exam", sfu.KindProctoring, sfu.RoomOptions{})
	if err != nil {
		t.Fatal(err)
	}
	oldKf, sharedKf := &keyframe{data: frames[0], at: now}, &keyframe{data: frames[15], at: now}
	add := func(age time.Duration, kf *keyframe) string {
		inc, err := mon.record(room, Incident{Identity: "c1", Type: TabHidden, Source: SourceClient, Time: now.Add(-age)}, kf)
		if err != nil {
			t.Fatal(err)
		}
		return inc.ID
	}
	for i := 0; i < 10; i++ {
		add(48*time.Hour, oldKf)
	}
	add(48*time.Hour, sharedKf)
	keep := add(time.Hour, sharedKf)
	add(30*time.Hour, nil)
	if u, _ := store.Usage(t.Context()); u.Incidents != 13 || u.Snapshots != 2 {
		t.Fatalf("before: %+v", u)
	}
	n, k := mon.Sweep()
	if n != 12 || k != 1 {
		t.Fatalf("retention deleted %d incidents and %d snapshots, want 12 and 1", n, k)
	}
	_ = store.Close()
	store, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	u, err := store.Usage(t.Context())
	if err != nil || u.Incidents != 1 || u.Snapshots != 1 {
		t.Fatalf("after: %+v %v", u, err)
	}
	if _, err := store.Snapshot(t.Context(), "exam", keep); err != nil {
		t.Fatalf("the kept incident's snapshot: %v", err)
	}
	t.Logf("retention 24h: deleted %d incidents and %d snapshots; %+v left in %s", n, k, u, filepath.Base(store.Path()))
}
