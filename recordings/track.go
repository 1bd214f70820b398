package recordings

import (
	"time"

	"github.com/pion/rtp"
	"github.com/pion/rtp/codecs"
)

// packet is a copy of the parts of an RTP packet the recorder needs.
type packet struct {
	seq     uint16
	ts      uint32
	marker  bool
	payload []byte
	at      time.Time // arrival
}

// frame is one depacketized media frame (a video picture or an audio
// packet). Its capture time on the server's clock is ep.off + rtp: the
// offset of its epoch is refined while the frame waits to be written.
type frame struct {
	data    []byte
	key     bool
	ep      *epoch
	rtp     time.Duration // RTP time since the epoch began
	first   time.Time     // arrival of its first packet
	arrival time.Time     // arrival of its last packet
	ext     int64         // unwrapped RTP timestamp
	width   int
	high    int
	sps     []byte
	pps     []byte
}

// epoch maps a track's RTP time to the wall clock: capture time = off +
// RTP time since the epoch began. off is the least (arrival - RTP time)
// seen, i.e. the packet that travelled fastest: packets held up on the
// way (pion buffers the first ones until the track is announced, networks
// jitter) do not skew it. A jump of RTP time against arrival time starts a
// new epoch.
type epoch struct {
	ext int64
	off time.Time
}

func (f *frame) wall() time.Time { return f.ep.off.Add(f.rtp) }

const (
	reorderSlots = 512                    // packets held while waiting for a missing one
	reorderWait  = 250 * time.Millisecond // how long a gap may stay open
	// reanchorAfter is how far RTP time may drift from arrival time before
	// the track is re-anchored to arrival time: a sender whose clock jumped
	// or stood still (a pause) keeps the file's timeline true to the wall.
	reanchorAfter = 2 * time.Second
	// holdBack is how long a frame waits before it is written, so that the
	// clock mapping of its epoch can settle.
	holdBack = 300 * time.Millisecond
	// resyncAfter is how many packets in a row may be refused as too old
	// before the sender is taken to have restarted its sequence numbers.
	resyncAfter = 64
)

// assembler turns a track's RTP packets into frames: it reorders within a
// window, drops incomplete frames, holds video back to the next keyframe
// after any loss, and maps RTP time to the wall clock.
type assembler struct {
	codec     string
	video     bool
	clockRate int64

	// reorder window, indexed by extended sequence number
	slots   [reorderSlots]*packet
	started bool
	next    uint64 // extended sequence number expected next
	highest uint64
	held    int
	lateRun int // packets in a row refused as too old

	// frame in progress
	cur       []*packet
	curBroken bool
	needKey   bool // video: drop frames until a keyframe
	lost      uint64

	// timestamp unwrapping and wall-clock mapping
	tsStarted bool
	lastTs    uint32
	ext       int64
	ep        *epoch

	out []frame
}

func newAssembler(codec string, video bool, clockRate uint32) *assembler {
	if clockRate == 0 {
		clockRate = 90000
	}
	return &assembler{codec: codec, video: video, clockRate: int64(clockRate), needKey: video}
}

// push adds a packet; complete frames are appended to a.out.
func (a *assembler) push(p *packet, now time.Time) {
	if !a.started {
		a.started = true
		a.next, a.highest = uint64(p.seq)+1<<16, uint64(p.seq)+1<<16
	}
	ext := a.unwrapSeq(p.seq)
	if ext < a.next {
		// Late, or a duplicate. A long run of them is a sender that
		// restarted its sequence numbers: follow it.
		if a.lateRun++; a.lateRun < resyncAfter {
			return
		}
		a.flush()
		a.started, a.lateRun = false, 0
		a.needKey = a.needKey || a.video // a new stream: from its next keyframe
		a.push(p, now)
		return
	}
	a.lateRun = 0
	if ext >= a.next+reorderSlots {
		// Far ahead: emit what is held, count the rest lost, jump.
		for a.held > 0 {
			a.skip()
		}
		if ext >= a.next+reorderSlots {
			a.lost += ext - a.next
			a.next = ext
			a.curBroken = true
			a.needKey = a.needKey || a.video
		}
	}
	i := ext % reorderSlots
	if a.slots[i] != nil {
		return // duplicate
	}
	a.slots[i] = p
	a.held++
	if ext > a.highest {
		a.highest = ext
	}
	a.drain(now, false)
}

func (a *assembler) unwrapSeq(seq uint16) uint64 {
	d := int16(seq - uint16(a.highest))
	e := int64(a.highest) + int64(d)
	if e < 0 {
		return 0
	}
	return uint64(e)
}

// drain emits in-order packets; a gap is skipped once it has been open for
// reorderWait (measured from the arrival of the packet behind it) or when
// flush is set.
func (a *assembler) drain(now time.Time, flush bool) {
	for a.held > 0 {
		i := a.next % reorderSlots
		if p := a.slots[i]; p != nil {
			a.slots[i] = nil
			a.held--
			a.next++
			a.onPacket(p)
			continue
		}
		if !flush {
			// The oldest packet waiting behind the gap decides.
			var oldest *packet
			for e := a.next + 1; e <= a.highest && e < a.next+reorderSlots; e++ {
				if q := a.slots[e%reorderSlots]; q != nil {
					oldest = q
					break
				}
			}
			if oldest == nil || now.Sub(oldest.at) < reorderWait {
				return
			}
		}
		a.skip()
	}
}

// skip gives up on the next sequence number.
func (a *assembler) skip() {
	i := a.next % reorderSlots
	if p := a.slots[i]; p != nil {
		a.slots[i] = nil
		a.held--
		a.next++
		a.onPacket(p)
		return
	}
	a.next++
	a.lost++
	a.curBroken = true // the lost packet may belong to the frame in progress
	if a.video {
		a.needKey = true
	}
}

// flush emits everything held, declaring gaps lost, and ends the frame in
// progress (which is complete only if its last packet had the marker).
func (a *assembler) flush() {
	a.drain(time.Time{}, true)
	a.cur, a.curBroken = nil, false
}

func (a *assembler) onPacket(p *packet) {
	if !a.video {
		a.emit([]*packet{p}, false)
		return
	}
	if len(a.cur) > 0 && a.cur[0].ts != p.ts {
		// A new picture began before the last one's marker: it is incomplete.
		a.cur, a.curBroken = nil, false
		a.needKey = true
	}
	a.cur = append(a.cur, p)
	if p.marker {
		pkts, broken := a.cur, a.curBroken
		a.cur, a.curBroken = nil, false
		a.emit(pkts, broken)
	}
}

// emit depacketizes a complete frame and maps its time.
func (a *assembler) emit(pkts []*packet, broken bool) {
	ts := pkts[0].ts
	if !a.tsStarted {
		a.tsStarted, a.lastTs, a.ext = true, ts, 0
	} else {
		a.ext += int64(int32(ts - a.lastTs))
		a.lastTs = ts
	}
	if broken {
		if a.video {
			a.needKey = true
		}
		return
	}
	data, ok := a.depacketize(pkts)
	if !ok || len(data) == 0 {
		if a.video {
			a.needKey = true
		}
		return
	}
	f := frame{data: data, ext: a.ext}
	switch a.codec {
	case codecVP8:
		f.key, f.width, f.high = vp8Frame(data)
	case codecVP9:
		f.key, f.width, f.high = vp9Frame(data)
	case codecH264:
		f.key, f.sps, f.pps = h264Frame(data)
		if f.key && f.sps != nil {
			if w, h, err := spsSize(f.sps); err == nil {
				f.width, f.high = w, h
			}
		}
	case codecOpus:
		f.key = true
	}
	if a.video {
		if a.needKey && !f.key {
			return
		}
		a.needKey = false
	}
	// Map to the wall clock (see epoch).
	first := pkts[0].at
	f.first, f.arrival = first, pkts[len(pkts)-1].at
	if a.ep == nil {
		a.ep = &epoch{ext: f.ext, off: first}
	}
	f.rtp = time.Duration((f.ext - a.ep.ext) * int64(time.Second) / a.clockRate)
	off := first.Add(-f.rtp)
	switch {
	case off.Before(a.ep.off.Add(-reanchorAfter)) || off.After(a.ep.off.Add(reanchorAfter)):
		a.ep = &epoch{ext: f.ext, off: first}
		f.rtp = 0
	case off.Before(a.ep.off):
		a.ep.off = off
	}
	f.ep = a.ep
	a.out = append(a.out, f)
}

// depacketize joins the payloads of one frame.
func (a *assembler) depacketize(pkts []*packet) ([]byte, bool) {
	var d rtp.Depacketizer
	switch a.codec {
	case codecVP8:
		d = &codecs.VP8Packet{}
	case codecVP9:
		d = &codecs.VP9Packet{}
	case codecH264:
		d = &codecs.H264Packet{IsAVC: true}
	case codecOpus:
		d = &codecs.OpusPacket{}
	default:
		return nil, false
	}
	if a.video && !d.IsPartitionHead(pkts[0].payload) {
		return nil, false
	}
	var out []byte
	for _, p := range pkts {
		b, err := d.Unmarshal(p.payload)
		if err != nil {
			return nil, false
		}
		out = append(out, b...)
	}
	if a.codec == codecH264 && splitAVCC(out) == nil {
		return nil, false
	}
	return out, true
}

// take returns the frames assembled so far.
func (a *assembler) take() []frame {
	out := a.out
	a.out = nil
	return out
}
