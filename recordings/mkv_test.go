package recordings_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/at-wat/ebml-go"
	"github.com/at-wat/ebml-go/webm"
	"github.com/vigil-media/vigil/recordings"
)

// muxFile writes video and audio frames into a new file: the video at
// 30 fps and the audio at 50 packets a second, interleaved by time, with a
// pause of gap after the first half. It finalizes the file unless kill is
// set, in which case it only closes it, as a killed process would leave it.
func muxFile(t *testing.T, path, docType, vcodec string, video, audio []sample, gap time.Duration, kill bool) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	m, err := recordings.NewMuxer(f, docType, []recordings.MuxTrack{
		{Number: 1, Kind: "audio", Codec: "opus", Channels: 2, Private: recordings.OpusHead(2)},
		{Number: 2, Kind: "video", Codec: vcodec, Width: 320, Height: 240},
	}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	vi, ai := 0, 0
	shift := func(i, n int, ts int64) int64 {
		if i >= n/2 {
			return ts + gap.Milliseconds()
		}
		return ts
	}
	for vi < len(video) || ai < len(audio) {
		vts, ats := int64(vi)*1000/30, int64(ai)*20
		if vi < len(video) && (ai >= len(audio) || vts <= ats) {
			data := video[vi].data
			key := data[0]&0x01 == 0 // VP8 and VP9 (profile 0) keyframe bit
			if vcodec == "vp9" {
				key = data[0]&0x04 == 0
			}
			if err := m.WriteBlock(2, shift(vi, len(video), vts), key, data); err != nil {
				t.Fatal(err)
			}
			vi++
			continue
		}
		if err := m.WriteBlock(1, shift(ai, len(audio), ats), true, audio[ai].data); err != nil {
			t.Fatal(err)
		}
		ai++
	}
	if kill {
		if err := m.Flush(); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err := m.Finalize(); err != nil {
		t.Fatal(err)
	}
}

func TestMuxerFinalizedAndKilled(t *testing.T) {
	t.Parallel()
	vp8 := readSamples(t, "vp8", encoded(t, "vp8", 4))
	vp9 := readSamples(t, "vp9", encoded(t, "vp9", 4))
	opus := readSamples(t, "opus", encoded(t, "opus", 4))
	dir := t.TempDir()

	t.Run("finalized with a gap", func(t *testing.T) {
		path := filepath.Join(dir, "a.webm")
		muxFile(t, path, "webm", "vp8", vp8, opus, 3*time.Second, false)
		p := ffprobe(t, path)
		d, ok := p.duration()
		if !ok || !within(d, 7*time.Second, 0.02) {
			t.Fatalf("duration %q: want 4s of media and a 3s gap kept", p.Format.Duration)
		}
		decodes(t, path)
		// The structure: SeekHead to Info, Tracks and Cues; Duration; one
		// cue per keyframe cluster.
		var doc struct {
			Header  webm.EBMLHeader `ebml:"EBML"`
			Segment webm.Segment    `ebml:"Segment"`
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := ebml.Unmarshal(f, &doc); err != nil {
			t.Fatalf("ebml: %v", err)
		}
		if doc.Header.DocType != "webm" || doc.Segment.Info.Duration != float64(d.Milliseconds()) {
			t.Errorf("doctype %q duration %v", doc.Header.DocType, doc.Segment.Info.Duration)
		}
		if doc.Segment.SeekHead == nil || len(doc.Segment.SeekHead.Seek) != 3 {
			t.Errorf("seekhead: %+v", doc.Segment.SeekHead)
		}
		if doc.Segment.Cues == nil || len(doc.Segment.Cues.CuePoint) != 4 {
			t.Errorf("cues: %+v (want one per keyframe)", doc.Segment.Cues)
		}
		if len(doc.Segment.Cluster) < 4 {
			t.Errorf("%d clusters: want about one a second", len(doc.Segment.Cluster))
		}
		// Seeking past the gap lands on the right time.
		ends, _ := streamEnds(t, path)
		if !within(ends["video"], 7*time.Second, 0.02) {
			t.Errorf("video ends at %v", ends["video"])
		}
	})

	t.Run("killed before finalize", func(t *testing.T) {
		path := filepath.Join(dir, "b.webm")
		muxFile(t, path, "webm", "vp8", vp8, opus, 0, true)
		p := ffprobe(t, path)
		if d, ok := p.duration(); ok {
			t.Logf("duration without finalize: %v (estimated by ffprobe)", d)
		}
		decodes(t, path)
		ends, counts := streamEnds(t, path)
		if ends["video"] < 3900*time.Millisecond || counts["video"] != len(vp8) {
			t.Fatalf("killed file plays to %v with %d frames, want all %d", ends["video"], counts["video"], len(vp8))
		}
	})

	t.Run("vp9", func(t *testing.T) {
		path := filepath.Join(dir, "c.webm")
		muxFile(t, path, "webm", "vp9", vp9, opus, 0, false)
		p := ffprobe(t, path)
		if got := p.codecs(); len(got) != 2 || got[1] != "video:vp9" {
			t.Fatalf("streams %v", got)
		}
		decodes(t, path)
	})
}
