package media

import (
	"encoding/binary"
	"time"
)

// The synthetic media. Payloads are not codec bitstreams, but a VP8
// payload starts with a valid payload descriptor (RFC 7741: one byte, S
// set on the first packet of a frame, partition 0) followed by one byte
// whose low bit is the VP8 frame header's P bit (0 on a keyframe), which
// is all an SFU reads of it (sfu/keyframe.go). Then, in every packet,
// video or audio, the probe: the send time and a per-stream counter, by
// which subscribers measure latency and loss.
const (
	vp8ProbeOffset  = 2  // descriptor, then the frame-header byte
	opusProbeOffset = 1  // a TOC-like byte
	probeLen        = 20 // send ns (8), counter (8), stream id (4)
	maxPayload      = 1200
	opusPayload     = 100 // about 32 kbit/s at 50 packets/s
)

// probe is what a packet carries for the measurement.
type probe struct {
	SentNS  int64  // monotonic ns since the generator's epoch
	Counter uint64 // per stream, from 0
	Stream  uint32 // the stream's index in the generator
}

func putProbe(b []byte, p probe) {
	binary.BigEndian.PutUint64(b[0:], uint64(p.SentNS))
	binary.BigEndian.PutUint64(b[8:], p.Counter)
	binary.BigEndian.PutUint32(b[16:], p.Stream)
}

func getProbe(b []byte) (probe, bool) {
	if len(b) < probeLen {
		return probe{}, false
	}
	return probe{
		SentNS:  int64(binary.BigEndian.Uint64(b[0:])),
		Counter: binary.BigEndian.Uint64(b[8:]),
		Stream:  binary.BigEndian.Uint32(b[16:]),
	}, true
}

// fillVP8 writes one packet of a frame into b (len(b) is the payload
// size, at least vp8ProbeOffset+probeLen) and returns it.
func fillVP8(b []byte, first, key bool, p probe) []byte {
	b[0] = 0x00
	b[1] = 0x01 // P bit set: an interframe
	if first {
		b[0] = 0x10 // S: start of partition 0
		if key {
			b[1] = 0x00
		}
	}
	putProbe(b[vp8ProbeOffset:], p)
	return b
}

// vp8Key reports whether a VP8 payload written by fillVP8 (no extension
// byte) starts a keyframe.
func vp8Key(b []byte) bool {
	return len(b) >= 2 && b[0]&0x10 != 0 && b[0]&0x07 == 0 && b[0]&0x80 == 0 && b[1]&0x01 == 0
}

// videoPlan sizes the frames of a synthetic video stream: a keyframe
// is keyFactor times an interframe, and a group of pictures (one
// keyframe, then interframes up to the next) averages the bitrate.
type videoPlan struct {
	FPS         int
	GOP         int // frames from one keyframe to the next
	DeltaBytes  int
	KeyBytes    int
	FrameEvery  time.Duration
	PacketBytes int // the largest payload
}

const keyFactor = 5

func planVideo(bitrate int64, fps int, keyEvery time.Duration) videoPlan {
	if fps < 1 {
		fps = 30
	}
	gop := max(1, int(keyEvery.Seconds()*float64(fps)+0.5))
	gopBytes := float64(bitrate) / 8 * float64(gop) / float64(fps)
	delta := int(gopBytes / float64(gop-1+keyFactor))
	delta = max(delta, vp8ProbeOffset+probeLen)
	return videoPlan{
		FPS: fps, GOP: gop, DeltaBytes: delta, KeyBytes: keyFactor * delta,
		FrameEvery: time.Second / time.Duration(fps), PacketBytes: maxPayload,
	}
}

// packetSizes splits a frame of n bytes into payloads of at most mtu
// bytes, as even as possible, each large enough for the probe.
func packetSizes(n, mtu int, out []int) []int {
	out = out[:0]
	minSize := vp8ProbeOffset + probeLen
	n = max(n, minSize)
	k := (n + mtu - 1) / mtu
	for i := range k {
		s := n / k
		if i < n%k {
			s++
		}
		out = append(out, max(s, minSize))
	}
	return out
}

// packetsPerSecond is the average video packet rate of a plan.
func (v videoPlan) packetsPerSecond() float64 {
	key := len(packetSizes(v.KeyBytes, v.PacketBytes, nil))
	delta := len(packetSizes(v.DeltaBytes, v.PacketBytes, nil))
	perGOP := float64(key + (v.GOP-1)*delta)
	return perGOP * float64(v.FPS) / float64(v.GOP)
}
