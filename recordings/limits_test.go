package recordings_test

import (
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigil-media/vigil/recordings"
	"github.com/vigil-media/vigil/sfu"
)

// events collects the Manager's events.
type eventLog struct {
	mu  sync.Mutex
	evs []recordings.Event
}

func (l *eventLog) add(ev recordings.Event) { l.mu.Lock(); l.evs = append(l.evs, ev); l.mu.Unlock() }

func (l *eventLog) of(typ string) []recordings.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []recordings.Event
	for _, ev := range l.evs {
		if ev.Type == typ {
			out = append(out, ev)
		}
	}
	return out
}

// candidateRoom is a proctoring room of a fresh SFU observed by m.
func candidateRoom(t *testing.T, m *recordings.Manager) *sfu.Room {
	t.Helper()
	room, err := newSFU(t, m).CreateRoom("exam", sfu.KindProctoring, sfu.RoomOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return room
}

// checkStopped asserts a recording stopped by a limit: failed with the
// reason, its one file finalized and hashed (it verifies), and ffprobe
// reads what was written, with a duration.
func checkStopped(t *testing.T, m *recordings.Manager, dir string, man recordings.Manifest, reason string) {
	t.Helper()
	if man.Status != recordings.StatusFailed || man.Reason != reason || man.Error == "" || len(man.Segments) != 1 {
		t.Fatalf("manifest: status %q reason %q error %q segments %+v; want failed, %s", man.Status, man.Reason, man.Error, man.Segments, reason)
	}
	seg := man.Segments[0]
	if !seg.Finalized || seg.SHA256 == "" || seg.Bytes == 0 {
		t.Fatalf("segment not finalized and hashed: %+v", seg)
	}
	checks, err := m.Verify(man.ID)
	if err != nil || len(checks) != 1 || checks[0].Result != recordings.CheckOK {
		t.Fatalf("verify: %+v %v", checks, err)
	}
	path := filepath.Join(dir, man.ID, seg.File)
	p := ffprobe(t, path)
	d, ok := p.duration()
	if !ok || d <= 0 || len(p.codecs()) != 2 {
		t.Fatalf("ffprobe %s: duration %q, streams %v", seg.File, p.Format.Duration, p.codecs())
	}
	decodes(t, path)
	t.Logf("stopped: reason %s, error %q; %s: %d bytes on disk, plays %v, streams %v", man.Reason, man.Error, seg.File, seg.Bytes, d, p.codecs())
}

// TestSizeCapStopsRecording: a candidate who publishes past MaxBytes
// gets a recording that stops as failed, reason size_cap, its file
// finalized (it plays, ffprobe reads it) and not much over the cap.
func TestSizeCapStopsRecording(t *testing.T) {
	needFFmpeg(t)
	dir := t.TempDir()
	const capBytes = 40_000
	var evs eventLog
	m := newManager(t, recordings.Config{Dir: dir, MaxBytes: capBytes})
	m.OnEvent(evs.add)
	pub := join(t, candidateRoom(t, m), "cand-1", sfu.RoleCandidate, map[sfu.Source]string{sfu.SourceCamera: "vp8", sfu.SourceMicrophone: "opus"})
	defer pub.leave()
	pub.play(5 * time.Second)
	man := waitStatus(t, m, onlyRecording(t, m, recordings.Filter{Room: "exam"}).ID, recordings.StatusFailed)
	checkStopped(t, m, dir, man, recordings.ReasonSizeCap)
	// Over by at most a cluster (a second of 320x240) and the cues.
	if man.Bytes < capBytes || man.Bytes > capBytes+100_000 {
		t.Errorf("%d bytes on disk for a cap of %d", man.Bytes, capBytes)
	}
	if len(evs.of(recordings.EventFailed)) != 1 {
		t.Errorf("events: %+v", evs.evs)
	}
}

// TestBitrateCapStopsRecording: a recording writing more than MaxBitrate
// over the window stops as failed, reason bitrate_cap.
func TestBitrateCapStopsRecording(t *testing.T) {
	needFFmpeg(t)
	dir := t.TempDir()
	m := newManager(t, recordings.Config{Dir: dir, MaxBitrate: 8_000})
	recordings.SetBitrateWindow(m, 2*time.Second)
	pub := join(t, candidateRoom(t, m), "cand-1", sfu.RoleCandidate, map[sfu.Source]string{sfu.SourceCamera: "vp8", sfu.SourceMicrophone: "opus"})
	defer pub.leave()
	pub.play(5 * time.Second)
	man := waitStatus(t, m, onlyRecording(t, m, recordings.Filter{Room: "exam"}).ID, recordings.StatusFailed)
	checkStopped(t, m, dir, man, recordings.ReasonBitrateCap)
}

// fakeDisk is a file system whose free space a test sets.
type fakeDisk struct{ free atomic.Uint64 }

func (d *fakeDisk) FreeSpace(string) (uint64, error) { return d.free.Load(), nil }

// TestMinFreeDiskRefusesAndStops: with the disk under MinFreeBytes a
// candidate's recording is refused (an event says so, Start says
// disk_full); once it has started, the disk going under it stops the
// recording cleanly as failed, reason disk_full, its file finalized.
func TestMinFreeDiskRefusesAndStops(t *testing.T) {
	needFFmpeg(t)
	dir := t.TempDir()
	disk := &fakeDisk{}
	disk.free.Store(1 << 30)
	var evs eventLog
	m := newManager(t, recordings.Config{Dir: dir, MinFreeBytes: 2 << 30, FreeSpace: disk.FreeSpace})
	m.OnEvent(evs.add)
	room := candidateRoom(t, m)

	// Under the guard: refused, with an event and no recording.
	pub := join(t, room, "cand-1", sfu.RoleCandidate, map[sfu.Source]string{sfu.SourceCamera: "vp8", sfu.SourceMicrophone: "opus"})
	played := make(chan struct{})
	go func() { defer close(played); pub.play(2 * time.Second) }()
	waitFor(t, 10*time.Second, "refusals", func() bool { return len(evs.of(recordings.EventRefused)) >= 1 })
	ref := evs.of(recordings.EventRefused)[0].Recording
	if ref.Reason != recordings.ReasonDiskFull || ref.Identity != "cand-1" || ref.ID != "" || ref.Error == "" {
		t.Errorf("refusal: %+v", ref)
	}
	t.Logf("refused: %s", ref.Error)
	if _, err := m.Start(room, "cand-1"); !errors.Is(err, recordings.ErrDiskFull) {
		t.Errorf("Start on a full disk: %v, want ErrDiskFull", err)
	}
	<-played
	if list := m.List(recordings.Filter{}); len(list) != 0 {
		t.Fatalf("recordings on a full disk: %+v", list)
	}
	pub.leave()

	// Enough space: a recording starts; then the disk fills.
	disk.free.Store(3 << 30)
	pub = join(t, room, "cand-2", sfu.RoleCandidate, map[sfu.Source]string{sfu.SourceCamera: "vp8", sfu.SourceMicrophone: "opus"})
	defer pub.leave()
	done := make(chan struct{})
	go func() { defer close(done); pub.play(6 * time.Second) }()
	waitFor(t, 15*time.Second, "a file being written", func() bool {
		list := m.List(recordings.Filter{Identity: "cand-2"})
		return len(list) == 1 && len(list[0].Segments) == 1 && m.Stats().BytesWritten > 20_000
	})
	disk.free.Store(1 << 30)
	man := waitStatus(t, m, onlyRecording(t, m, recordings.Filter{Identity: "cand-2"}).ID, recordings.StatusFailed)
	<-done
	checkStopped(t, m, dir, man, recordings.ReasonDiskFull)
}
