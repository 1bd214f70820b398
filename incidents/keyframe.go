package incidents

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/jpeg"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/rtp"
	"golang.org/x/image/vp8"
)

// maxKeyframeBytes bounds a kept keyframe (and the frame being put
// together): a larger one is dropped.
const maxKeyframeBytes = 2 << 20

// maxSnapshotPixels bounds what a keyframe may decode to (4K UHD).
const maxSnapshotPixels = 3840 * 2160

// keyframe is a complete VP8 keyframe (the frame, without RTP payload
// descriptors) and when its last packet arrived.
type keyframe struct {
	data []byte
	at   time.Time

	// The JPEG is made once per keyframe, on first use (never on the
	// media path): incidents between two keyframes share it.
	once sync.Once
	jpeg []byte
	err  error
}

// snapshot returns the keyframe as a JPEG.
func (k *keyframe) snapshot() ([]byte, error) {
	k.once.Do(func() { k.jpeg, k.err = snapshotJPEG(k.data) })
	return k.jpeg, k.err
}

// grabber is an sfu.PacketSink on a VP8 camera that keeps the latest
// complete keyframe. WritePacket runs on the track's reader goroutine:
// it parses the payload descriptor, copies the packets of a keyframe into
// a buffer it owns (bounded), and publishes a finished keyframe with one
// atomic store. It takes no lock, does no I/O and never blocks; delta
// frames cost the parse of a few bytes.
type grabber struct {
	latest atomic.Pointer[keyframe]
	closed atomic.Bool

	// Reader-owned: the keyframe being put together.
	buf        []byte
	assembling bool
	ts         uint32
	next       uint16 // the sequence number expected next
}

// WritePacket implements sfu.PacketSink.
func (g *grabber) WritePacket(pkt *rtp.Packet, _ bool) {
	start, key, payload, ok := vp8Payload(pkt.Payload)
	if !ok {
		g.assembling = false
		return
	}
	switch {
	case start:
		g.assembling = key
		if !key {
			return
		}
		g.buf = append(g.buf[:0], payload...)
		g.ts = pkt.Timestamp
	case !g.assembling:
		return
	case pkt.Timestamp != g.ts || pkt.SequenceNumber != g.next:
		// Lost or reordered: this keyframe cannot be put together; wait
		// for the next one.
		g.assembling = false
		return
	default:
		if len(g.buf)+len(payload) > maxKeyframeBytes {
			g.assembling = false
			return
		}
		g.buf = append(g.buf, payload...)
	}
	g.next = pkt.SequenceNumber + 1
	if pkt.Marker {
		g.assembling = false
		g.latest.Store(&keyframe{data: bytes.Clone(g.buf), at: time.Now()})
		if cap(g.buf) > 4*len(g.buf) && cap(g.buf) > 256<<10 {
			g.buf = nil // a rare huge keyframe does not pin its buffer
		}
	}
}

// Close implements sfu.PacketSink.
func (g *grabber) Close() { g.closed.Store(true) }

// keyframe returns the latest complete keyframe, or nil.
func (g *grabber) keyframe() *keyframe { return g.latest.Load() }

// vp8Payload parses an RTP payload of VP8 (RFC 7741): whether it starts
// a frame (S set, partition 0), whether that frame is a keyframe (P bit
// of the VP8 payload header clear), and the VP8 data after the payload
// descriptor.
func vp8Payload(p []byte) (start, key bool, data []byte, ok bool) {
	if len(p) < 1 {
		return false, false, nil, false
	}
	i := 1
	if p[0]&0x80 != 0 { // X: extension byte
		if len(p) <= i {
			return false, false, nil, false
		}
		x := p[i]
		i++
		if x&0x80 != 0 { // I: picture ID, 7 or 15 bits
			if len(p) <= i {
				return false, false, nil, false
			}
			if p[i]&0x80 != 0 {
				i++
			}
			i++
		}
		if x&0x40 != 0 { // L: TL0PICIDX
			i++
		}
		if x&0x30 != 0 { // T or K: TID/Y/KEYIDX
			i++
		}
	}
	if len(p) <= i {
		return false, false, nil, false
	}
	start = p[0]&0x10 != 0 && p[0]&0x07 == 0
	key = start && p[i]&0x01 == 0
	return start, key, p[i:], true
}

var errNotKeyframe = errors.New("not a VP8 keyframe")

// decodeVP8 decodes a VP8 keyframe into a picture.
func decodeVP8(frame []byte) (img image.Image, err error) {
	defer func() {
		if v := recover(); v != nil { // a decoder bug on hostile input must not kill the server
			img, err = nil, fmt.Errorf("vp8 decoder panic: %v", v)
		}
	}()
	d := vp8.NewDecoder()
	d.Init(bytes.NewReader(frame), len(frame))
	fh, err := d.DecodeFrameHeader()
	if err != nil {
		return nil, err
	}
	if !fh.KeyFrame {
		return nil, errNotKeyframe
	}
	if fh.Width <= 0 || fh.Height <= 0 || fh.Width*fh.Height > maxSnapshotPixels {
		return nil, fmt.Errorf("vp8 frame of %dx%d", fh.Width, fh.Height)
	}
	return d.DecodeFrame()
}

// snapshotJPEG decodes a VP8 keyframe and encodes it as a JPEG of at
// most MaxSnapshotBytes.
func snapshotJPEG(frame []byte) ([]byte, error) {
	img, err := decodeVP8(frame)
	if err != nil {
		return nil, err
	}
	for _, q := range []int{80, 50, 25} {
		var buf bytes.Buffer
		if err := jpeg.Encode(&buf, img, &jpeg.Options{Quality: q}); err != nil {
			return nil, err
		}
		if buf.Len() <= MaxSnapshotBytes {
			return buf.Bytes(), nil
		}
	}
	return nil, errors.New("snapshot too large even at low quality")
}
