package recordings

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"time"
)

// ManifestName is the name of the manifest file in a recording's directory.
const ManifestName = "manifest.json"

// Recording statuses.
const (
	StatusRecording   = "recording"   // a segment is being written
	StatusPaused      = "paused"      // its tracks ended; waiting for the participant to come back
	StatusComplete    = "complete"    // stopped cleanly; every file finalized
	StatusFailed      = "failed"      // stopped by a write error or a limit (see Error and Reason)
	StatusInterrupted = "interrupted" // the server died while recording; files play up to the crash
)

// Manifest describes one recording: one participant's camera and
// microphone ("av") or screen, in one or more segment files. It is written
// beside the files, and the index of recordings is rebuilt from manifests.
type Manifest struct {
	Version int    `json:"version"`
	ID      string `json:"id"`
	Room    string `json:"room"`
	// Instance is the instance of the room recorded (sfu.Room.Instance):
	// a proctor's token reads only its own instance's recordings. Absent
	// from a manifest written before rooms had instances (admin only).
	Instance string   `json:"instance,omitempty"`
	RoomKind string   `json:"room_kind"`
	Identity string   `json:"identity"`
	Role     string   `json:"role"`
	Group    string   `json:"group"`
	Sources  []string `json:"sources"`
	Codecs   []string `json:"codecs"`
	Status   string   `json:"status"`
	Error    string   `json:"error,omitempty"`
	// Reason says why a failed recording stopped: disk_full, size_cap,
	// bitrate_cap or write_error.
	Reason         string     `json:"reason,omitempty"`
	StartedAt      time.Time  `json:"started_at"`
	EndedAt        *time.Time `json:"ended_at,omitempty"`
	DurationMs     int64      `json:"duration_ms"`
	Bytes          int64      `json:"bytes"`
	DroppedPackets uint64     `json:"dropped_packets"`
	Segments       []Segment  `json:"segments"`
}

// Segment is one file of a recording. A participant who reconnects gets
// a new segment; GapMs is the time since the previous segment ended
// (negative if this one begins before it ended: a track that came late
// starts a new segment at its first frame, which may predate the end of
// the previous file's other tracks).
type Segment struct {
	Index      int         `json:"index"`
	File       string      `json:"file"`
	Container  string      `json:"container"` // "webm" or "matroska"
	Tracks     []TrackMeta `json:"tracks"`
	Status     string      `json:"status"`    // recording, complete, failed, interrupted
	Finalized  bool        `json:"finalized"` // duration and cues written
	GapMs      int64       `json:"gap_ms"`
	StartedAt  time.Time   `json:"started_at"`
	EndedAt    *time.Time  `json:"ended_at,omitempty"`
	DurationMs int64       `json:"duration_ms"`
	Bytes      int64       `json:"bytes"`
	SHA256     string      `json:"sha256,omitempty"`
	// Unverified marks a file that was open when the server died: the
	// server never hashed it, and does not vouch for what is there now
	// (Bytes is its size when the server started again).
	Unverified bool `json:"unverified,omitempty"`

	// Verified and Check are computed on request (Manager.Inspect) and
	// never stored.
	Verified *bool  `json:"verified,omitempty"`
	Check    string `json:"check,omitempty"`
}

// TrackMeta describes one track of a segment file.
type TrackMeta struct {
	Source  string `json:"source"`
	Kind    string `json:"kind"`
	Codec   string `json:"codec"`
	Width   int    `json:"width,omitempty"`
	Height  int    `json:"height,omitempty"`
	TrackID string `json:"track_id,omitempty"`
}

func (m *Manifest) clone() *Manifest {
	c := *m
	c.Sources = slices.Clone(m.Sources)
	c.Codecs = slices.Clone(m.Codecs)
	c.Segments = make([]Segment, len(m.Segments))
	for i, s := range m.Segments {
		s.Tracks = slices.Clone(s.Tracks)
		c.Segments[i] = s
	}
	return &c
}

// totals recomputes the recording's sums and the lists of sources and codecs.
func (m *Manifest) totals() {
	m.DurationMs, m.Bytes = 0, 0
	m.Sources, m.Codecs = []string{}, []string{}
	for _, s := range m.Segments {
		m.DurationMs += s.DurationMs
		m.Bytes += s.Bytes
		for _, t := range s.Tracks {
			if !slices.Contains(m.Sources, t.Source) {
				m.Sources = append(m.Sources, t.Source)
			}
			if !slices.Contains(m.Codecs, t.Codec) {
				m.Codecs = append(m.Codecs, t.Codec)
			}
		}
	}
	slices.Sort(m.Sources)
	slices.Sort(m.Codecs)
}

var (
	idRE   = regexp.MustCompile(`^rec_[0-9a-f]{24}$`)
	fileRE = regexp.MustCompile(`^(av|screen)-[0-9]{3,6}\.(webm|mkv)$`)
)

func newID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return "rec_" + hex.EncodeToString(b)
}

// ValidID reports whether s has the shape of a recording id.
func ValidID(s string) bool { return idRE.MatchString(s) }

// validFileName reports whether name can be a segment file name: no path
// separators, no dots other than the extension's.
func validFileName(name string) bool { return fileRE.MatchString(name) }

// writeManifest writes m to dir atomically: a temporary file, synced,
// renamed over the manifest.
func writeManifest(dir string, m *Manifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".manifest-*.tmp")
	if err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	name := tmp.Name()
	_, err = tmp.Write(append(b, '\n'))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(name, 0o600)
	}
	if err == nil {
		err = os.Rename(name, filepath.Join(dir, ManifestName))
	}
	if err != nil {
		_ = os.Remove(name)
		return fmt.Errorf("manifest: %w", err)
	}
	// The rename is durable only once the directory is: a power loss
	// must not bring back the previous manifest.
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("manifest: sync %s: %w", dir, err)
	}
	return nil
}

// syncDir fsyncs a directory, so the entries renamed into it persist.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// readManifest reads and checks the manifest in dir.
func readManifest(dir string) (*Manifest, error) {
	f, err := os.Open(filepath.Join(dir, ManifestName))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var m Manifest
	if err := json.NewDecoder(io.LimitReader(f, 16<<20)).Decode(&m); err != nil {
		return nil, fmt.Errorf("manifest %s: %w", dir, err)
	}
	if m.ID != filepath.Base(dir) || !ValidID(m.ID) {
		return nil, fmt.Errorf("manifest %s: id %q does not match its directory", dir, m.ID)
	}
	for _, s := range m.Segments {
		if !validFileName(s.File) {
			return nil, fmt.Errorf("manifest %s: bad file name %q", dir, s.File)
		}
	}
	return &m, nil
}

// hashFile returns the SHA-256 and size of a file.
func hashFile(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// File check results.
const (
	CheckOK       = "ok"
	CheckMismatch = "mismatch" // the file's SHA-256 differs from the manifest's
	CheckMissing  = "missing"
	CheckOpen     = "open" // still being written, no hash yet
	// CheckUnverified is a file open when the server died: nothing to
	// check it against (Segment.Unverified).
	CheckUnverified = "unverified"
)

// FileCheck is the verification of one segment file.
type FileCheck struct {
	Recording string `json:"recording"`
	File      string `json:"file"`
	Result    string `json:"result"`
	Expected  string `json:"expected,omitempty"`
	Actual    string `json:"actual,omitempty"`
}

// Failed reports whether the check shows tampering or loss.
func (c FileCheck) Failed() bool { return c.Result == CheckMismatch || c.Result == CheckMissing }

// checkSegment hashes one file against its manifest entry.
func checkSegment(dir, id string, s Segment, hash func(string) (string, int64, error)) FileCheck {
	c := FileCheck{Recording: id, File: s.File, Expected: s.SHA256}
	if s.SHA256 == "" {
		c.Result = CheckOpen
		if s.Unverified {
			c.Result = CheckUnverified
		}
		return c
	}
	sum, _, err := hash(filepath.Join(dir, s.File))
	switch {
	case errors.Is(err, os.ErrNotExist):
		c.Result = CheckMissing
	case err != nil:
		c.Result, c.Actual = CheckMissing, "error: "+err.Error()
	case sum != s.SHA256:
		c.Result, c.Actual = CheckMismatch, sum
	default:
		c.Result, c.Actual = CheckOK, sum
	}
	return c
}

// VerifyDir checks, without changing anything, the files of the
// recordings in dir against their manifests: every recording, or those
// with the given ids. It is what `vigil verify` runs.
func VerifyDir(dir string, ids ...string) ([]FileCheck, error) {
	if len(ids) == 0 {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			if e.IsDir() && ValidID(e.Name()) {
				ids = append(ids, e.Name())
			}
		}
	}
	var out []FileCheck
	for _, id := range ids {
		if !ValidID(id) {
			return out, fmt.Errorf("%w: %q", ErrNotFound, id)
		}
		m, err := readManifest(filepath.Join(dir, id))
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return out, fmt.Errorf("%w: %s", ErrNotFound, id)
			}
			return out, err
		}
		for _, s := range m.Segments {
			out = append(out, checkSegment(filepath.Join(dir, id), id, s, hashFile))
		}
	}
	return out, nil
}
