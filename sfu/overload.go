package sfu

import (
	"time"

	"github.com/pion/webrtc/v4"
)

// Overload. One goroutine reads an up-track and writes every packet to
// every down-track. When that costs more than the core has (fan-out to
// hundreds of subscribers), the reader falls behind and packets wait in
// pion's receive buffer (the SRTP read stream's, about 1 MB) rather than
// being dropped: video arrives seconds late, and then broken. So the
// reader measures how late it is, and when it is too late it sheds video:
// a part of the video down-tracks drops to the next keyframe (asked for,
// through the throttled request), with no gap in the receivers' sequence
// numbers. Audio is never shed.
//
// How late: pion's Read gives no arrival time, but two things are known.
// A Read that waited (idleRead or more) found the buffer empty: the
// packet it returned had not queued. And a frame's RTP timestamp is its
// capture time on the publisher's clock. So, at the first packet of each
// frame, d = (time read) - (media time) is the frame's delay plus a
// constant (the clocks' offset); its minimum since the reader last waited
// is the delay of a frame that did not queue, and d minus that minimum is
// how long this frame has been queued behind the reader. The minimum is
// taken afresh after every wait, so clock drift, timestamp jumps and
// network delay never accumulate: only time the reader spent without
// catching up counts. A frame's later packets are not measured (the
// publisher's pacer spreads a keyframe over tens of milliseconds, which
// would read as queueing). Cost per packet: one clock read; per frame, a
// little arithmetic.
//
// A keyframe read while the reader is overloadDelay late starts no
// down-track: it is as late as the rest, and resuming on it would put
// the full load back while the backlog is still there (keyframes come
// every few hundred milliseconds while subscribers ask for them). The
// reader asks for another one once it has caught up.
//
// Audio readers measure their lateness the same way (every packet
// starts a frame). Audio is never shed; when a publisher's audio is
// overloadDelay late, its video readers shed as if they were, so that
// the audio gets the core back.
//
// Shedding: when two frames in a row are overloadDelay late and the
// second no less than the first (the reader is not catching up), or one
// is twice that late, a quarter of the down-tracks (at least one) drop to the
// next keyframe; every further overloadDelay/2 of lateness in the same
// busy stretch sheds one more quarter, so that a reader far behind sheds
// everything within overloadDelay*5/2. The quarters rotate, starting
// from the end of the list (the latest subscribers, last in the serial
// loop): every subscriber takes its turn, and most see no freeze at a
// small overload.

// overloadDelay is how long a frame may have queued behind the reader
// before video is shed.
const overloadDelay = 100 * time.Millisecond

// idleRead is how long a Read must have waited to show that the reader
// had caught up (its buffer was empty).
const idleRead = time.Millisecond

// lagMeter measures how far an up-track's reader is behind. Owned by the
// reader goroutine.
type lagMeter struct {
	rate   float64 // the codec's clock rate, Hz
	epoch  time.Time
	have   bool          // base is set
	idle   bool          // a Read waited since the last frame start
	lastTS uint32        // the RTP timestamp of the last frame start
	ext    int64         // lastTS, unwrapped
	base   time.Duration // least d since the reader last waited
	prev   time.Duration // the lateness of the last frame start
	shedAt time.Duration // the lateness at the last shed since then; 0: none
	sheds  int           // shed steps, for the rotation
	// behind is set while the last frame start was overloadDelay late:
	// a keyframe then starts no down-track (see UpTrack.read).
	behind bool
	// pressAt is when the last shed for a late audio track was.
	pressAt time.Time
}

func newLagMeter(clockRate uint32, now time.Time) lagMeter {
	return lagMeter{rate: float64(clockRate), epoch: now}
}

// late takes a video packet's RTP timestamp, whether it starts a
// keyframe, when its Read began and when it returned, and whether an
// audio track of the same publisher is late (audioLate). It returns how
// late the packet's frame is (0 when the reader had caught up, or on a
// packet that does not start a frame), and whether the reader should
// shed one more quarter of its down-tracks now.
func (m *lagMeter) late(ts uint32, key bool, readStart, now time.Time, audioLate bool) (time.Duration, bool) {
	if m.rate <= 0 {
		return 0, false
	}
	if now.Sub(readStart) >= idleRead {
		m.idle = true
	}
	if m.have {
		step := int32(ts - m.lastTS)
		if step <= 0 {
			return 0, false // the same frame, or an older packet
		}
		m.ext += int64(step)
	}
	m.lastTS = ts
	d := now.Sub(m.epoch) - time.Duration(float64(m.ext)/m.rate*float64(time.Second))
	var late, prev time.Duration
	if !m.have || m.idle {
		m.have, m.idle = true, false
		m.base, m.prev, m.shedAt = d, 0, 0
	} else {
		m.base = min(m.base, d)
		late, prev = d-m.base, m.prev
		m.prev = late
	}
	m.behind = late >= overloadDelay
	if audioLate {
		// Audio is never shed, so video gives way to it: one more
		// quarter every overloadDelay/2 while the audio is late.
		m.behind = true
		if key || now.Sub(m.pressAt) < overloadDelay/2 {
			return late, false
		}
		m.pressAt = now
		return late, true
	}
	switch {
	case late < overloadDelay:
		return late, false
	case late < 2*overloadDelay && (prev < overloadDelay || late < prev):
		// Not shown to last: a moment off the CPU, caught up by itself.
		return late, false
	case m.shedAt != 0 && late < m.shedAt+overloadDelay/2:
		return late, false // the last shed is taking effect
	case key:
		return late, false // a keyframe is what shed down-tracks wait for
	}
	m.shedAt = late
	return late, true
}

// shedRange is the part of n down-tracks the next shed step drops: a
// quarter (at least one), rotating backwards from the end.
func (m *lagMeter) shedRange(n int) (start, count int) {
	if n == 0 {
		return 0, 0
	}
	count = max(1, n/4)
	start = ((n-count*(m.sheds+1))%n + n) % n
	m.sheds++
	return start, count
}

// shed makes down-tracks of u drop video to the next keyframe, for one
// shed step of its reader, and asks the publisher for a keyframe.
func (u *UpTrack) shed(m *lagMeter, downs []*DownTrack) {
	start, count := m.shedRange(len(downs))
	shed := false
	for i := range count {
		if downs[(start+i)%len(downs)].shed(u) {
			shed = true
		}
	}
	if shed {
		u.overloadSheds.Add(1)
		u.requestKeyframe()
	}
}

// shed makes the down-track drop from's video until its next keyframe,
// from this packet on, because from's reader is behind; false if it was
// not forwarding from, or was already waiting for a keyframe. The
// packets dropped are counted. Called only by from's reader goroutine.
func (d *DownTrack) shed(from *UpTrack) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.up != from || d.waitKey {
		return false
	}
	// The keyframe is asked for once for all, by the reader.
	d.waitKey, d.askedAt, d.shedding = true, time.Now(), true
	return true
}

// publisherAudio appends the audio tracks of u's publisher to out.
func (u *UpTrack) publisherAudio(out []*UpTrack) []*UpTrack {
	for _, a := range u.publisher.Tracks() {
		if a.track.Kind() == webrtc.RTPCodecTypeAudio {
			out = append(out, a)
		}
	}
	return out
}
