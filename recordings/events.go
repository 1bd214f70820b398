package recordings

import "sync/atomic"

// Types of recording Event.
const (
	EventStarted   = "recording.started"   // the first file of a recording was opened
	EventCompleted = "recording.completed" // stopped cleanly, every file finalized
	EventFailed    = "recording.failed"    // stopped by an error (Manifest.Error)
)

// Event tells what happened to a recording, with its manifest as it was
// then. Handlers are called from the recording's writer goroutine: they
// must not block (enqueue and return).
type Event struct {
	Type      string
	Recording Manifest
}

// OnEvent makes f receive every recording Event from now on, after the
// handlers already registered (webhooks, the admin room feeds); nil
// removes every handler.
func (m *Manager) OnEvent(f func(Event)) {
	m.onEventMu.Lock()
	defer m.onEventMu.Unlock()
	if f == nil {
		m.onEvent.Store(nil)
		return
	}
	var fs []func(Event)
	if cur := m.onEvent.Load(); cur != nil {
		fs = append(fs, *cur...)
	}
	fs = append(fs, f)
	m.onEvent.Store(&fs)
}

func (m *Manager) emit(typ string, man *Manifest) {
	if fs := m.onEvent.Load(); fs != nil {
		for _, f := range *fs {
			f(Event{Type: typ, Recording: *man.clone()})
		}
	}
}

// Stats are the recordings' counters, for monitoring.
type Stats struct {
	Active         int            // recordings in progress
	ByStatus       map[string]int // recordings in the index, by status
	BytesWritten   uint64         // bytes written to recording files since start
	Errors         uint64         // recordings failed since start
	DroppedPackets uint64         // packets dropped by full queues, over the index
}

// Stats returns a snapshot of the recordings' counters.
func (m *Manager) Stats() Stats {
	out := Stats{ByStatus: map[string]int{}, BytesWritten: m.written.Load(), Errors: m.failures.Load()}
	m.mu.Lock()
	defer m.mu.Unlock()
	out.Active = len(m.active)
	for _, e := range m.index {
		out.ByStatus[e.man.Status]++
		out.DroppedPackets += e.man.DroppedPackets
	}
	return out
}

// countingFile counts the bytes appended to a recording file.
type countingFile struct {
	fileWriter
	n   *atomic.Uint64 // the Manager's, over every recording
	rec *atomic.Int64  // the recording's
}

func (f countingFile) Write(b []byte) (int, error) {
	n, err := f.fileWriter.Write(b)
	f.n.Add(uint64(n))
	f.rec.Add(int64(n))
	return n, err
}
