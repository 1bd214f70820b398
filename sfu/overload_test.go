package sfu

import (
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
	"go.uber.org/goleak"
)

// lagClock feeds a lagMeter frames of a 30 frames/s stream read at given
// times.
type lagClock struct {
	m     lagMeter
	t0    time.Time
	frame int
}

func newLagClock() *lagClock {
	t0 := time.Unix(1000, 0)
	return &lagClock{m: newLagMeter(90000, t0), t0: t0}
}

// read feeds the next frame's first packet, read behind late behind its
// capture time, after a Read that waited (idle) or not.
func (c *lagClock) read(behind time.Duration, idle, key bool) (time.Duration, bool) {
	c.frame++
	now := c.t0.Add(time.Duration(c.frame)*time.Second/30 + behind)
	start := now
	if idle {
		start = now.Add(-5 * time.Millisecond)
	}
	l, shed := c.m.late(uint32(c.frame*3000), key, start, now, false)
	// A later packet of the same frame is not measured.
	if l2, shed2 := c.m.late(uint32(c.frame*3000), false, now.Add(20*time.Millisecond), now.Add(20*time.Millisecond), false); l2 != 0 || shed2 {
		panic("a frame's second packet measured")
	}
	return l, shed
}

func TestLagMeter(t *testing.T) {
	near := func(got, want time.Duration) bool { return got > want-time.Millisecond && got < want+time.Millisecond }

	// A reader that waits for every frame is never late, whatever the
	// network delay or the clocks' offset does.
	c := newLagClock()
	for i := range 100 {
		if l, shed := c.read(time.Duration(i%7)*40*time.Millisecond, true, false); l != 0 || shed {
			t.Fatalf("frame %d: caught-up reader late %v, shed %v", i, l, shed)
		}
	}

	// A reader falling behind by 10 ms a frame: late from its last wait,
	// shed from the second frame at 100 ms, then every 50 ms more.
	c = newLagClock()
	c.read(0, true, false)
	var sheds []time.Duration
	for i := 1; i <= 30; i++ {
		l, shed := c.read(time.Duration(i)*10*time.Millisecond, false, i == 16)
		if !near(l, time.Duration(i)*10*time.Millisecond) {
			t.Fatalf("frame %d: late %v, want %v", i, l, time.Duration(i)*10*time.Millisecond)
		}
		if shed {
			sheds = append(sheds, l)
		}
	}
	// At 110 ms (100 is the first late frame), at 160 (a keyframe: not
	// shed) 170, then at the first frame 50 ms later than the last shed
	// (220 or 230: the clock's rounding decides), and so on.
	ok := len(sheds) == 4 && near(sheds[0], 110*time.Millisecond) && near(sheds[1], 170*time.Millisecond)
	for i := 2; ok && i < len(sheds); i++ {
		step := sheds[i] - sheds[i-1]
		ok = step > 49*time.Millisecond && step < 61*time.Millisecond
	}
	if !ok {
		t.Fatalf("shed at %v", sheds)
	}
	// A wait: caught up, nothing is late any more.
	if l, shed := c.read(400*time.Millisecond, true, false); l != 0 || shed {
		t.Fatalf("after a wait: late %v, shed %v", l, shed)
	}
	if l, shed := c.read(450*time.Millisecond, false, false); !near(l, 50*time.Millisecond) || shed {
		t.Fatalf("50 ms behind the wait: late %v, shed %v", l, shed)
	}

	// A moment off the CPU, caught up by itself: not shed. Twice the
	// delay at once: shed.
	c = newLagClock()
	c.read(0, true, false)
	for i, tc := range []struct {
		behind time.Duration
		shed   bool
	}{{150, false}, {120, false}, {90, false}, {0, false}, {250, true}} {
		if _, shed := c.read(tc.behind*time.Millisecond, false, false); shed != tc.shed {
			t.Fatalf("step %d (%v ms behind): shed %v", i, tc.behind, shed)
		}
	}
}

// TestLagMeterAudioLate: while the publisher's audio is late, video
// sheds a quarter more every 50 ms (never on a keyframe) and counts as
// behind, even if its own reader keeps up.
func TestLagMeterAudioLate(t *testing.T) {
	t0 := time.Unix(1000, 0)
	m := newLagMeter(90000, t0)
	var sheds []int
	for f := 1; f <= 12; f++ {
		now := t0.Add(time.Duration(f) * time.Second / 30)
		if _, shed := m.late(uint32(f*3000), f == 4, now.Add(-5*time.Millisecond), now, true); shed {
			sheds = append(sheds, f)
		}
		if !m.behind {
			t.Fatalf("frame %d: not behind while the audio is late", f)
		}
	}
	// Frames 33 ms apart: 1, 3 (50 ms on; 4 is a keyframe), 5, ...
	if want := []int{1, 3, 5, 7, 9, 11}; !slices.Equal(sheds, want) {
		t.Fatalf("shed at frames %v, want %v", sheds, want)
	}
	now := t0.Add(13 * time.Second / 30)
	if _, shed := m.late(13*3000, false, now.Add(-5*time.Millisecond), now, false); shed || m.behind {
		t.Fatalf("audio on time again: shed %v, behind %v", shed, m.behind)
	}
}

func TestShedRangeRotates(t *testing.T) {
	var m lagMeter
	for i, want := range [][2]int{{6, 2}, {4, 2}, {2, 2}, {0, 2}, {6, 2}} {
		if s, n := m.shedRange(8); s != want[0] || n != want[1] {
			t.Fatalf("step %d: %d+%d, want %v", i, s, n, want)
		}
	}
	m = lagMeter{}
	if s, n := m.shedRange(1); s != 0 || n != 1 {
		t.Fatalf("one down-track: %d+%d", s, n)
	}
	if s, n := m.shedRange(0); n != 0 {
		t.Fatalf("none: %d+%d", s, n)
	}
}

// stallSink holds up its track's reader once each time it is told to.
type stallSink struct{ stall chan time.Duration }

func (s stallSink) WritePacket(*rtp.Packet, bool) {
	select {
	case d := <-s.stall:
		time.Sleep(d)
	default:
	}
}

func (s stallSink) Close() {}

// shedPacket is a video packet as the subscriber got it.
type shedPacket struct {
	seq    uint16 // the subscriber's sequence number
	pubSeq uint16 // the publisher's, carried in the payload
	key    bool   // starts a keyframe
	marker bool   // ends a frame
}

// TestOverloadShedsVideoToKeyframe: a reader held up until it is
// hundreds of milliseconds behind drops video to the next keyframe for
// its subscriber and asks for one, with no gap in the subscriber's
// sequence numbers and audio untouched, and forwarding goes on from the
// keyframe.
func TestOverloadShedsVideoToKeyframe(t *testing.T) {
	defer goleak.VerifyNone(t)
	s := newTestSFU(t)
	defer s.Close()
	room, err := s.CreateRoom("overload", KindBroadcast, RoomOptions{})
	if err != nil {
		t.Fatal(err)
	}
	video, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000}, "video", "pub")
	if err != nil {
		t.Fatal(err)
	}
	audio, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}, "audio", "pub")
	if err != nil {
		t.Fatal(err)
	}
	pub := joinPeer(t, room, "pub", RoleHost)
	if err := pub.publish(map[Source]webrtc.TrackLocal{SourceCamera: video, SourceMicrophone: audio}); err != nil {
		t.Fatal(err)
	}
	// 50 frames/s with timestamps on a 90 kHz clock that follows the
	// wall clock (what the reader's lateness is measured against), three
	// packets a frame carrying the publisher's sequence number, a
	// keyframe every 25 frames; Opus every frame.
	stop, sent := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sent)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		start := time.Now()
		var vseq, aseq uint16 = 100, 200
		for frame := 0; ; frame++ {
			select {
			case <-stop:
				return
			case now := <-tick.C:
				ts := uint32(now.Sub(start) * 90 / time.Millisecond / 1000)
				for i := range 3 {
					payload := make([]byte, 300)
					if i == 0 {
						payload[0] = 0x10 // S, partition 0
					}
					if frame%25 != 0 {
						payload[1] = 0x01 // an interframe
					}
					binary.BigEndian.PutUint16(payload[2:], vseq)
					pkt := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 96, SequenceNumber: vseq, Timestamp: ts, Marker: i == 2}, Payload: payload}
					vseq++
					if err := video.WriteRTP(pkt); err != nil && !errors.Is(err, io.ErrClosedPipe) {
						return
					}
				}
				pkt := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SequenceNumber: aseq, Timestamp: uint32(frame * 960)}, Payload: make([]byte, 80)}
				aseq++
				if err := audio.WriteRTP(pkt); err != nil && !errors.Is(err, io.ErrClosedPipe) {
					return
				}
			}
		}
	}()
	stopMedia := sync.OnceFunc(func() { close(stop); <-sent })
	defer stopMedia()

	var mu sync.Mutex
	var got []shedPacket
	var nAudio atomic.Int64
	sub := joinPeerWith(t, room, "viewer", RoleViewer, func(c *peer) {
		c.pc.OnTrack(func(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
			c.read(tr, func(kind string, pkt *rtp.Packet) {
				if kind == "audio" {
					nAudio.Add(1)
					return
				}
				if len(pkt.Payload) < 4 {
					return
				}
				mu.Lock()
				got = append(got, shedPacket{seq: pkt.SequenceNumber, pubSeq: binary.BigEndian.Uint16(pkt.Payload[2:]),
					key: vp8Keyframe(pkt.Payload), marker: pkt.Marker})
				mu.Unlock()
			})
		})
	})
	defer sub.close()
	defer pub.close()
	nVideo := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(got)
	}
	waitFor(t, 15*time.Second, "video and audio at the viewer", func() bool { return nVideo() >= 30 && nAudio.Load() >= 10 })

	var up *UpTrack
	for _, u := range pub.p.Tracks() {
		if u.track.Kind() == webrtc.RTPCodecTypeVideo {
			up = u
		}
	}
	if up == nil {
		t.Fatal("no video up-track")
	}
	sink := stallSink{stall: make(chan time.Duration, 1)}
	if !up.AddSink(sink) {
		t.Fatal("AddSink: track ended")
	}
	defer up.RemoveSink(sink)

	// Hold the reader up for half a second, until it sheds: a hold-up
	// of 500 ms is five times the delay that sheds, but a reader taken
	// off the CPU by a busy machine right after it may look caught up.
	asked := time.Now()
	for attempt := 0; up.overloadSheds.Load() == 0; attempt++ {
		if attempt == 10 {
			t.Fatal("the reader never shed after 10 hold-ups")
		}
		sink.stall <- 500 * time.Millisecond
		waitFor(t, 10*time.Second, "the hold-up", func() bool { return len(sink.stall) == 0 })
		deadline := time.Now().Add(2 * time.Second)
		for up.overloadSheds.Load() == 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitFor(t, 5*time.Second, "a keyframe request after the shed", func() bool {
		up.mu.Lock()
		defer up.mu.Unlock()
		return up.lastKF.After(asked) || up.kfQueued
	})
	// Forwarding goes on: at least 2 more keyframes' worth of frames.
	after := nVideo()
	waitFor(t, 15*time.Second, "video after the shed", func() bool { return nVideo() >= after+150 })
	audioBefore := nAudio.Load()
	waitFor(t, 5*time.Second, "audio after the shed", func() bool { return nAudio.Load() >= audioBefore+10 })
	stopMedia()
	time.Sleep(100 * time.Millisecond)

	if st := s.Stats(); st.OverloadSheds == 0 || st.PacketsShed == 0 {
		t.Errorf("stats: %d sheds, %d packets shed", st.OverloadSheds, st.PacketsShed)
	}
	mu.Lock()
	pkts := append([]shedPacket(nil), got...)
	mu.Unlock()
	gaps := 0
	for i := 1; i < len(pkts); i++ {
		p, q := pkts[i-1], pkts[i]
		if q.seq != p.seq+1 {
			t.Fatalf("video sequence numbers jump %d -> %d at %d", p.seq, q.seq, i)
		}
		if q.pubSeq == p.pubSeq+1 {
			continue
		}
		// Dropped: from a frame boundary to a keyframe.
		gaps++
		if !p.marker || !q.key {
			t.Errorf("dropped %d..%d: the last before ends a frame %v, the first after starts a keyframe %v",
				p.pubSeq+1, q.pubSeq-1, p.marker, q.key)
		}
	}
	if gaps == 0 {
		t.Error("no video was dropped")
	}
	for _, kind := range []string{"audio", "video"} {
		if seqs := sub.seqs(kind); !continuous(seqs) {
			t.Errorf("%s sequence numbers not continuous", kind)
		}
	}
	if n := len(sub.seqs("audio")); n < 30 {
		t.Errorf("%d audio packets", n)
	}
}
