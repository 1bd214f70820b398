package recordings

import (
	"os"
	"time"
)

// Test hooks: the muxer on its own, and fault injection in file creation.

type MuxTrack = muxTrack

type Muxer struct{ m *muxer }

func NewMuxer(f *os.File, docType string, tracks []MuxTrack, date time.Time) (*Muxer, error) {
	m, err := newMuxer(f, docType, tracks, date)
	return &Muxer{m}, err
}

func (m *Muxer) WriteBlock(track uint64, ts int64, key bool, data []byte) error {
	return m.m.writeBlock(track, ts, key, data)
}

func (m *Muxer) Flush() error    { return m.m.flush() }
func (m *Muxer) Finalize() error { return m.m.finalize() }

func OpusHead(channels int) []byte { return opusHead(channels) }

// SetOpenFile makes the Manager create segment files with open.
func SetOpenFile(cfg *Config, open func(path string) (*os.File, error)) {
	cfg.openFile = func(path string) (fileWriter, error) { return open(path) }
}

// SetBitrateWindow shortens what MaxBitrate averages over; call it before
// any recording starts.
func SetBitrateWindow(m *Manager, d time.Duration) { m.bitrateWindow = d }
