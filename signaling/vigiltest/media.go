package vigiltest

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"
	"github.com/pion/webrtc/v4/pkg/media"
	"github.com/pion/webrtc/v4/pkg/media/ivfreader"
	"go.uber.org/goleak"
)

// LeakCheck fails the test if it leaves goroutines behind once every
// cleanup (the server's included) has run. Call it before starting the
// server.
func LeakCheck(t *testing.T) {
	opts := []goleak.Option{goleak.IgnoreCurrent()}
	t.Cleanup(func() { goleak.VerifyNone(t, opts...) })
}

// VP8File makes 3 s of real VP8 with ffmpeg (a keyframe every second)
// and returns the IVF file's path; the test fails without ffmpeg.
func VP8File(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("ffmpeg"); err != nil {
		t.Fatalf("ffmpeg is required (apt-get install ffmpeg): %v", err)
	}
	out := filepath.Join(t.TempDir(), "out.ivf")
	cmd := exec.Command("ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=15", "-t", "3",
		"-c:v", "libvpx", "-g", "15", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ffmpeg: %v\n%s", err, b)
	}
	return out
}

// VP8Player sends the frames of an IVF file in a loop, at 15 fps, through
// pion's VP8 packetizer, with Opus beside it. Once WantKey is set (by a
// publisher that passes keyframe requests on), the next frame sent is a
// keyframe (the file's next one), as an encoder would do.
type VP8Player struct {
	Video, Audio *webrtc.TrackLocalStaticSample
	WantKey      atomic.Bool
	stop, done   chan struct{}
}

// PlayVP8 starts playing the IVF file at path on tracks of stream; it
// stops when the test ends.
func PlayVP8(t *testing.T, path, stream string) *VP8Player {
	t.Helper()
	fh, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	r, _, err := ivfreader.NewWith(fh)
	if err != nil {
		t.Fatal(err)
	}
	var frames [][]byte
	for {
		fr, _, err := r.ParseNextFrame()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		frames = append(frames, fr)
	}
	v, err := webrtc.NewTrackLocalStaticSample(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000}, "v", stream)
	if err != nil {
		t.Fatal(err)
	}
	a, err := webrtc.NewTrackLocalStaticSample(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}, "a", stream)
	if err != nil {
		t.Fatal(err)
	}
	p := &VP8Player{Video: v, Audio: a, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		vt := time.NewTicker(time.Second / 15)
		defer vt.Stop()
		at := time.NewTicker(20 * time.Millisecond)
		defer at.Stop()
		for i := 0; ; {
			select {
			case <-p.stop:
				return
			case <-vt.C:
				if p.WantKey.Swap(false) {
					for frames[i%len(frames)][0]&0x01 != 0 { // the P bit of the frame tag: 0 on a keyframe
						i++
					}
				}
				_ = v.WriteSample(media.Sample{Data: frames[i%len(frames)], Duration: time.Second / 15})
				i++
			case <-at.C:
				_ = a.WriteSample(media.Sample{Data: []byte{0xf8, 0xff, 0xfe}, Duration: 20 * time.Millisecond})
			}
		}
	}()
	t.Cleanup(func() {
		select {
		case <-p.stop:
		default:
			close(p.stop)
		}
		<-p.done
	})
	return p
}
