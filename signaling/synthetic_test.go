package signaling_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
)

// synthetic writes VP8 frames (keyframe every 30) and Opus until stopped;
// video pauses while pauseVideo is set (audio goes on), and lastVideo is
// when the last video packet was written.
type synthetic struct {
	video, audio *webrtc.TrackLocalStaticRTP
	pauseVideo   atomic.Bool
	lastVideo    atomic.Int64 // unix nanoseconds
	stop, done   chan struct{}
}

func newSynthetic(t *testing.T, stream string) *synthetic {
	t.Helper()
	v, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000}, "v", stream)
	if err != nil {
		t.Fatal(err)
	}
	a, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}, "a", stream)
	if err != nil {
		t.Fatal(err)
	}
	s := &synthetic{video: v, audio: a, stop: make(chan struct{}), done: make(chan struct{})}
	go s.run()
	t.Cleanup(s.close)
	return s
}

func (s *synthetic) run() {
	defer close(s.done)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var vseq, aseq uint16
	for frame := 0; ; frame++ {
		select {
		case <-s.stop:
			return
		case <-tick.C:
		}
		if !s.pauseVideo.Load() {
			hdr := byte(0x01)
			if frame%30 == 0 {
				hdr = 0x00
			}
			_ = s.video.WriteRTP(&rtp.Packet{Header: rtp.Header{Version: 2, SequenceNumber: vseq, Timestamp: uint32(frame * 4500), Marker: true},
				Payload: append([]byte{0x10, hdr}, make([]byte, 200)...)})
			s.lastVideo.Store(time.Now().UnixNano())
			vseq++
		}
		_ = s.audio.WriteRTP(&rtp.Packet{Header: rtp.Header{Version: 2, SequenceNumber: aseq, Timestamp: uint32(frame * 960)}, Payload: make([]byte, 60)})
		aseq++
	}
}

func (s *synthetic) close() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
}
