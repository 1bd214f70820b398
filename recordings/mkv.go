package recordings

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"time"

	"github.com/at-wat/ebml-go"
	"github.com/at-wat/ebml-go/webm"
)

// The muxer writes a WebM or Matroska file incrementally: a header whose
// Segment has an unknown size, then one Cluster at a time, each written
// whole with a single write once it closes (every second or so, or at a
// video keyframe). A process killed at any moment leaves a file that
// plays up to its last complete cluster. finalize appends the Cues and
// rewrites in place the reserved SeekHead, the Duration and the Segment
// size, so a cleanly stopped file is seekable and shows its duration.
//
// Elements are encoded with github.com/at-wat/ebml-go; the cluster
// layout is ours so that no goroutine, panic or unbounded buffer of that
// library's BlockWriter sits on the write path.

// fileWriter is what the muxer writes to: an *os.File in practice.
type fileWriter interface {
	io.Writer
	io.WriterAt
	Sync() error
	Close() error
}

// muxTrack describes one track of a file.
type muxTrack struct {
	Number   uint64
	Kind     string // "audio" or "video"
	Codec    string // codecVP8, ...
	Width    int
	Height   int
	Channels int
	Private  []byte
}

type muxBlock struct {
	track uint64
	ts    int64 // ms since the start of the file
	key   bool
	data  []byte
}

const (
	seekHeadReserve = 96 // bytes reserved for the SeekHead at finalize
	durationVoid    = 11 // Void in Info that becomes the Duration element
	maxClusterSpan  = 1000 * time.Millisecond
	maxBlockOffset  = 30000 // ms; a SimpleBlock's timecode is an int16
	maxClusterBytes = 8 << 20
)

var (
	idSegment = []byte{0x18, 0x53, 0x80, 0x67}
	idInfo    = []byte{0x15, 0x49, 0xa9, 0x66}
	idTracks  = []byte{0x16, 0x54, 0xae, 0x6b}
	idCues    = []byte{0x1c, 0x53, 0xbb, 0x6b}
)

type cuePoint struct {
	ts    int64
	track uint64
	pos   int64 // relative to the segment's data
}

type muxer struct {
	w       fileWriter
	tracks  []muxTrack
	video   uint64 // number of the video track, 0 if none
	off     int64  // bytes written so far (the end of the file)
	segData int64  // offset of the Segment's data
	seekPos int64  // offset of the reserved SeekHead space
	infoPos int64
	trkPos  int64
	durPos  int64 // offset of the Void that becomes Duration; 0 if none

	cluster     []muxBlock
	clusterSize int
	clMin       int64
	clMax       int64
	cues        []cuePoint
	end         int64 // ms: the end of the last block, for Duration
	lastTs      map[uint64]int64
	lastDelta   map[uint64]int64 // the last frame length seen, per track
	finalized   bool
}

// newMuxer writes the file header. docType is "webm" or "matroska".
func newMuxer(w fileWriter, docType string, tracks []muxTrack, date time.Time) (*muxer, error) {
	m := &muxer{w: w, tracks: tracks, lastTs: map[uint64]int64{}, lastDelta: map[uint64]int64{}}
	var buf bytes.Buffer
	hdr := struct {
		Header webm.EBMLHeader `ebml:"EBML"`
	}{webm.EBMLHeader{
		EBMLVersion: 1, EBMLReadVersion: 1, EBMLMaxIDLength: 4, EBMLMaxSizeLength: 8,
		DocType: docType, DocTypeVersion: 4, DocTypeReadVersion: 2,
	}}
	if err := ebml.Marshal(&hdr, &buf); err != nil {
		return nil, fmt.Errorf("ebml header: %w", err)
	}
	buf.Write(idSegment)
	buf.Write([]byte{0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}) // unknown size
	m.segData = int64(buf.Len())
	m.seekPos = int64(buf.Len())
	buf.Write(voidElement(seekHeadReserve))

	info := struct {
		Info struct {
			TimecodeScale uint64    `ebml:"TimecodeScale"`
			MuxingApp     string    `ebml:"MuxingApp"`
			WritingApp    string    `ebml:"WritingApp"`
			DateUTC       time.Time `ebml:"DateUTC"`
		} `ebml:"Info"`
	}{}
	info.Info.TimecodeScale = 1000000 // 1 ms
	info.Info.MuxingApp = "vigil"
	info.Info.WritingApp = "vigil"
	info.Info.DateUTC = date.UTC()
	var ib bytes.Buffer
	if err := ebml.Marshal(&info, &ib); err != nil {
		return nil, fmt.Errorf("ebml info: %w", err)
	}
	// Append a Void to Info, to be replaced by Duration at finalize: the
	// Info element is re-sized here by hand (ID, 8-byte size, children).
	children, err := elementBody(ib.Bytes(), idInfo)
	if err != nil {
		return nil, err
	}
	m.infoPos = int64(buf.Len())
	buf.Write(idInfo)
	buf.Write(vint8(uint64(len(children) + durationVoid)))
	buf.Write(children)
	m.durPos = int64(buf.Len())
	buf.Write(voidElement(durationVoid))

	var entries []webm.TrackEntry
	for _, t := range tracks {
		uid := make([]byte, 8)
		_, _ = rand.Read(uid)
		e := webm.TrackEntry{
			TrackNumber: t.Number, TrackUID: binary.BigEndian.Uint64(uid)>>1 | 1,
			CodecID: matroskaCodecID(t.Codec), CodecPrivate: t.Private,
		}
		switch t.Kind {
		case "audio":
			e.TrackType = 2
			e.Audio = &webm.Audio{SamplingFrequency: 48000, Channels: uint64(t.Channels)}
			if t.Codec == codecOpus {
				e.SeekPreRoll = 80000000
			}
		case "video":
			e.TrackType = 1
			e.Video = &webm.Video{PixelWidth: uint64(t.Width), PixelHeight: uint64(t.Height)}
			m.video = t.Number
		default:
			return nil, fmt.Errorf("track kind %q", t.Kind)
		}
		entries = append(entries, e)
	}
	trk := struct {
		Tracks webm.Tracks `ebml:"Tracks"`
	}{webm.Tracks{TrackEntry: entries}}
	m.trkPos = int64(buf.Len())
	if err := ebml.Marshal(&trk, &buf); err != nil {
		return nil, fmt.Errorf("ebml tracks: %w", err)
	}
	if err := m.write(buf.Bytes()); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *muxer) write(b []byte) error {
	n, err := m.w.Write(b)
	m.off += int64(n)
	if err != nil {
		return fmt.Errorf("write: %w", err)
	}
	return nil
}

// elementBody returns the children of the one element with id that b holds.
func elementBody(b, id []byte) ([]byte, error) {
	if !bytes.HasPrefix(b, id) {
		return nil, errors.New("ebml: unexpected element")
	}
	b = b[len(id):]
	size, n, err := readVint(b)
	if err != nil || uint64(len(b)-n) != size {
		return nil, errors.New("ebml: bad element size")
	}
	return b[n:], nil
}

// readVint decodes an EBML variable-size integer.
func readVint(b []byte) (v uint64, n int, err error) {
	if len(b) == 0 || b[0] == 0 {
		return 0, 0, errors.New("ebml: bad vint")
	}
	n = 1
	for mask := byte(0x80); b[0]&mask == 0; mask >>= 1 {
		n++
	}
	if len(b) < n {
		return 0, 0, errors.New("ebml: short vint")
	}
	v = uint64(b[0] & (0xff >> uint(n)))
	for i := 1; i < n; i++ {
		v = v<<8 | uint64(b[i])
	}
	return v, n, nil
}

// vint8 encodes v as an 8-byte EBML size.
func vint8(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	b[0] = 0x01
	return b
}

// voidElement is an EBML Void of exactly total bytes (total >= 2).
func voidElement(total int) []byte {
	b := make([]byte, total)
	b[0] = 0xec
	if total-2 <= 126 {
		b[1] = 0x80 | byte(total-2)
		return b
	}
	copy(b[1:], vint8(uint64(total-9)))
	return b
}

// writeBlock adds a frame. ts is in ms from the start of the file and must
// not decrease within a track; the muxer nudges equal ones forward.
func (m *muxer) writeBlock(track uint64, ts int64, key bool, data []byte) error {
	if m.finalized {
		return errors.New("write after finalize")
	}
	if last, ok := m.lastTs[track]; ok {
		if ts <= last {
			ts = last + 1
		}
		if d := ts - last; d <= 200 { // a frame's length, not a gap
			m.lastDelta[track] = d
		}
	}
	m.lastTs[track] = ts
	if len(m.cluster) > 0 {
		cut := ts > m.clMin+maxBlockOffset || ts < m.clMax-maxBlockOffset ||
			ts-m.clMin >= maxClusterSpan.Milliseconds() ||
			m.clusterSize+len(data) > maxClusterBytes ||
			(key && track == m.video)
		if cut {
			if err := m.flush(); err != nil {
				return err
			}
		}
	}
	if len(m.cluster) == 0 || ts < m.clMin {
		m.clMin = ts
	}
	if len(m.cluster) == 0 || ts > m.clMax {
		m.clMax = ts
	}
	m.cluster = append(m.cluster, muxBlock{track: track, ts: ts, key: key, data: data})
	m.clusterSize += len(data)
	end := ts + 20
	if d := m.lastDelta[track]; d > 0 {
		end = ts + d
	}
	if end > m.end {
		m.end = end
	}
	return nil
}

// pending reports whether a cluster is open.
func (m *muxer) pending() bool { return len(m.cluster) > 0 }

// flush writes the open cluster, if any.
func (m *muxer) flush() error {
	if len(m.cluster) == 0 {
		return nil
	}
	blocks := m.cluster
	m.cluster, m.clusterSize = nil, 0
	sort.SliceStable(blocks, func(i, j int) bool { return blocks[i].ts < blocks[j].ts })
	base := blocks[0].ts
	cl := struct {
		Cluster webm.Cluster `ebml:"Cluster"`
	}{}
	cl.Cluster.Timecode = uint64(base)
	var cue *cuePoint
	pos := m.off - m.segData
	for _, b := range blocks {
		cl.Cluster.SimpleBlock = append(cl.Cluster.SimpleBlock, ebml.Block{
			TrackNumber: b.track, Timecode: int16(b.ts - base), Keyframe: b.key, Data: [][]byte{b.data},
		})
		if cue == nil && ((m.video != 0 && b.track == m.video && b.key) || (m.video == 0)) {
			cue = &cuePoint{ts: b.ts, track: b.track, pos: pos}
		}
	}
	var buf bytes.Buffer
	if err := ebml.Marshal(&cl, &buf); err != nil {
		return fmt.Errorf("ebml cluster: %w", err)
	}
	if err := m.write(buf.Bytes()); err != nil {
		return err
	}
	if cue != nil {
		m.cues = append(m.cues, *cue)
	}
	return nil
}

// duration is the media time covered so far.
func (m *muxer) duration() time.Duration { return time.Duration(m.end) * time.Millisecond }

// finalize writes the last cluster and the Cues, then fills in the
// SeekHead, Duration and Segment size, syncs and closes the file.
func (m *muxer) finalize() error {
	if m.finalized {
		return nil
	}
	m.finalized = true
	err := m.finish()
	if cerr := m.w.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close: %w", cerr)
	}
	return err
}

func (m *muxer) finish() error {
	if err := m.flush(); err != nil {
		return err
	}
	cuesPos := int64(-1)
	if len(m.cues) > 0 {
		cues := struct {
			Cues webm.Cues `ebml:"Cues"`
		}{}
		for _, c := range m.cues {
			cues.Cues.CuePoint = append(cues.Cues.CuePoint, webm.CuePoint{
				CueTime:           uint64(c.ts),
				CueTrackPositions: []webm.CueTrackPosition{{CueTrack: c.track, CueClusterPosition: uint64(c.pos)}},
			})
		}
		var buf bytes.Buffer
		if err := ebml.Marshal(&cues, &buf); err != nil {
			return fmt.Errorf("ebml cues: %w", err)
		}
		cuesPos = m.off - m.segData
		if err := m.write(buf.Bytes()); err != nil {
			return err
		}
	}
	seeks := []webm.Seek{
		{SeekID: idInfo, SeekPosition: uint64(m.infoPos - m.segData)},
		{SeekID: idTracks, SeekPosition: uint64(m.trkPos - m.segData)},
	}
	if cuesPos >= 0 {
		seeks = append(seeks, webm.Seek{SeekID: idCues, SeekPosition: uint64(cuesPos)})
	}
	sh := struct {
		SeekHead webm.SeekHead `ebml:"SeekHead"`
	}{webm.SeekHead{Seek: seeks}}
	var buf bytes.Buffer
	if err := ebml.Marshal(&sh, &buf); err != nil {
		return fmt.Errorf("ebml seekhead: %w", err)
	}
	if rest := seekHeadReserve - buf.Len(); rest >= 2 {
		buf.Write(voidElement(rest))
		if _, err := m.w.WriteAt(buf.Bytes(), m.seekPos); err != nil {
			return fmt.Errorf("write seekhead: %w", err)
		}
	}
	dur := make([]byte, 0, durationVoid)
	dur = append(dur, 0x44, 0x89, 0x88)
	dur = binary.BigEndian.AppendUint64(dur, math.Float64bits(float64(m.end)))
	if _, err := m.w.WriteAt(dur, m.durPos); err != nil {
		return fmt.Errorf("write duration: %w", err)
	}
	if _, err := m.w.WriteAt(vint8(uint64(m.off-m.segData)), m.segData-8); err != nil {
		return fmt.Errorf("write segment size: %w", err)
	}
	if err := m.w.Sync(); err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	return nil
}
