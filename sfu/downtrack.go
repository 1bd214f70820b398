package sfu

import (
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
)

// DownTrack forwards one up-track to one subscriber. It is the TrackLocal
// pion binds to the subscriber's sender: SSRC and payload type come from
// that binding. Sequence numbers and timestamps are rewritten so that the
// receiver sees one continuous stream: packets dropped while waiting for a
// keyframe leave no gap, and a switch to another source (a republished
// track, another simulcast layer) continues where the last one stopped.
type DownTrack struct {
	id       string // the track id the receiver knows, fixed at creation
	streamID string
	kind     webrtc.RTPCodecType
	codec    webrtc.RTPCodecCapability
	sub      *Participant
	sender   *webrtc.RTPSender

	binding atomic.Pointer[binding]
	st      downStats   // counters, for SFU.Stats
	resync  atomic.Bool // set when bound: wait for a keyframe
	ready   atomic.Bool // the subscriber's DTLS is up: what is written reaches it
	gated   atomic.Bool // forward nothing for now (a proctor not talking)

	// mu guards the source and the rewriting state. It is taken for each
	// packet by the source's reader goroutine, so it is uncontended but
	// for the moment of a switch. While holding it one may take an
	// up-track's mu (to ask for a keyframe); it is never taken while
	// holding that.
	mu        sync.Mutex
	up        *UpTrack  // the current source; nil when idle
	pending   *UpTrack  // a simulcast layer to switch to at its next keyframe
	pendingAt time.Time // when pending's keyframe was last asked for
	maxLayer  int       // the highest simulcast layer asked for, or layerDefault
	info      TrackInfo
	waitKey   bool
	askedAt   time.Time // when the keyframe waited for was last asked for; zero: not yet
	shedding  bool      // waitKey was set because the reader is behind (overload.go)
	started   bool
	rebase    bool // the next forwarded packet is the first of a new source
	seqOffset uint16
	tsOffset  uint32
	lastSeq   uint16
	lastTS    uint32
	lastAt    time.Time
	hdr       rtp.Header // scratch for the header written, see writeRTP
	// sentLog maps the last packets sent (video) to the up-track
	// packets they were, for NACKs (packetcache.go); made when bound.
	sentLog []sentPacket

	nackBuf                 []byte // the RTCP reader's, for NACK answers
	retransmits, nackMisses atomic.Uint64
	// shedDrops counts packets not forwarded because the source's reader
	// was behind (overload.go).
	shedDrops atomic.Uint64
}

type binding struct {
	ssrc webrtc.SSRC
	pt   webrtc.PayloadType
	w    webrtc.TrackLocalWriter
}

func newDownTrack(up *UpTrack, sub *Participant) *DownTrack {
	return &DownTrack{
		id: up.info.ID, streamID: up.streamID, kind: up.track.Kind(), codec: up.codec,
		sub: sub, up: up, info: up.info, maxLayer: layerDefault,
	}
}

// ID implements webrtc.TrackLocal.
func (d *DownTrack) ID() string { return d.id }

// RID implements webrtc.TrackLocal.
func (d *DownTrack) RID() string { return "" }

// StreamID implements webrtc.TrackLocal: camera and microphone of one
// publisher share a stream, so the browser keeps them in sync.
func (d *DownTrack) StreamID() string { return d.streamID }

// Kind implements webrtc.TrackLocal.
func (d *DownTrack) Kind() webrtc.RTPCodecType { return d.kind }

// source is the up-track forwarded now, or nil.
func (d *DownTrack) source() *UpTrack {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.up
}

// trackInfo describes what the down-track carries now.
func (d *DownTrack) trackInfo() TrackInfo {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.info
}

// Bind implements webrtc.TrackLocal: it picks the subscriber's payload
// type for the down-track's codec.
func (d *DownTrack) Bind(ctx webrtc.TrackLocalContext) (webrtc.RTPCodecParameters, error) {
	for _, c := range ctx.CodecParameters() {
		if codecMatch(d.codec, c.RTPCodecCapability) {
			if d.kind == webrtc.RTPCodecTypeVideo {
				// Only video answers NACKs: Opus is negotiated
				// without them, its decoder conceals a loss.
				d.mu.Lock()
				if d.sentLog == nil {
					d.sentLog = make([]sentPacket, sentLogSize)
				}
				d.mu.Unlock()
			}
			d.binding.Store(&binding{ssrc: ctx.SSRC(), pt: c.PayloadType, w: ctx.WriteStream()})
			if d.kind == webrtc.RTPCodecTypeVideo {
				// writeRTP asks for the keyframe once the subscriber
				// can receive it: one asked for now would arrive before
				// DTLS is up and be lost.
				d.resync.Store(true)
			}
			return c, nil
		}
	}
	return webrtc.RTPCodecParameters{}, webrtc.ErrUnsupportedCodec
}

// Unbind implements webrtc.TrackLocal.
func (d *DownTrack) Unbind(webrtc.TrackLocalContext) error {
	d.binding.Store(nil)
	return nil
}

// keyframeRetry is how long a down-track waits for a keyframe it asked
// for before asking again. A request can go unanswered: a PLI is one UDP
// packet, and a libwebrtc encoder ignores a request that reaches it less
// than 300 ms after the last one it served, a window measured at its
// end, so a request sent firstKeyframeGap after the last one can still
// fall inside it. Nobody else asks in our place: a subscriber that has
// received nothing has nothing to report lost.
const keyframeRetry = time.Second

// writeRTP forwards one packet of from, read at now. Called only by
// from's reader goroutine.
func (d *DownTrack) writeRTP(from *UpTrack, pkt *rtp.Packet, keyframe bool, now time.Time) {
	b := d.binding.Load()
	if b == nil {
		return
	}
	if d.gated.Load() {
		d.skip(from)
		return
	}
	d.mu.Lock()
	var left *UpTrack // a layer switched away from, to drop after unlocking
	if d.up != from {
		if from != d.pending || !keyframe {
			// The layer to switch to sends, but not yet the keyframe
			// asked for: ask again once keyframeRetry has passed.
			again := from == d.pending && now.Sub(d.pendingAt) >= keyframeRetry
			if again {
				d.pendingAt = now
			}
			d.mu.Unlock()
			if again {
				from.requestKeyframe()
			}
			return // not (or not yet) this down-track's source
		}
		// The layer asked for has a keyframe: switch here, with no gap.
		left, d.up, d.pending = d.up, from, nil
		if d.started {
			d.rebase = true
		}
		d.waitKey, d.shedding = false, false
	}
	defer func() {
		d.mu.Unlock()
		if left != nil {
			left.removeDown(d)
		}
	}()
	if d.resync.CompareAndSwap(true, false) {
		d.waitKey, d.askedAt, d.shedding = true, time.Time{}, false
	}
	if d.waitKey {
		ready := d.canReceive()
		if !keyframe || !ready {
			if d.started && !d.rebase {
				d.seqOffset++ // hide the dropped packet from the receiver
			}
			if d.shedding {
				d.shedDrops.Add(1)
			}
			switch {
			case !ready:
			case d.askedAt.IsZero():
				// Asked here, not when the wait began: before the
				// subscriber's DTLS is up, the keyframe would be lost.
				d.askedAt = now
				from.requestFirstKeyframe()
			case now.Sub(d.askedAt) >= keyframeRetry:
				// The keyframe asked for has not come: ask again.
				d.askedAt = now
				from.requestKeyframe()
			}
			return
		}
		d.waitKey, d.shedding = false, false
	}
	if d.rebase {
		// Continue the receiver's sequence and clock from the last packet
		// of the previous source, with the time that passed since.
		ticks := uint32(now.Sub(d.lastAt).Seconds() * float64(d.codec.ClockRate))
		if ticks == 0 {
			ticks = 1
		}
		d.seqOffset = pkt.SequenceNumber - (d.lastSeq + 1)
		d.tsOffset = pkt.Timestamp - (d.lastTS + ticks)
		d.rebase = false
	}
	// The header is built in the down-track's own scratch space (guarded
	// by mu): a local would escape through the writer and cost an
	// allocation per packet.
	hdr := &d.hdr
	*hdr = pkt.Header
	// The publisher's header extension ids mean nothing to the
	// subscriber's session.
	hdr.Extension, hdr.Extensions, hdr.ExtensionProfile = false, nil, 0
	hdr.SSRC = uint32(b.ssrc)
	hdr.PayloadType = uint8(b.pt)
	hdr.SequenceNumber = pkt.SequenceNumber - d.seqOffset
	hdr.Timestamp = pkt.Timestamp - d.tsOffset
	n, err := b.w.WriteRTP(hdr, pkt.Payload)
	switch {
	case err != nil && d.kind == webrtc.RTPCodecTypeVideo:
		// A failed write loses part of a frame: resume on a keyframe.
		d.waitKey, d.askedAt, d.shedding = true, now, false
		from.requestKeyframe()
	case n == 0 && err == nil && !d.started:
		// pion drops what is written before SRTP is up (DTLS connected
		// comes a moment before): wait for the next keyframe.
		d.ready.Store(false)
		d.waitKey, d.askedAt, d.shedding = d.kind == webrtc.RTPCodecTypeVideo, time.Time{}, false
		return
	case err == nil:
		d.logSent(from, pkt.SequenceNumber, hdr.SequenceNumber, hdr.Timestamp)
	}
	d.st.sent(hdr.MarshalSize() + len(pkt.Payload))
	d.started = true
	d.lastSeq, d.lastTS, d.lastAt = hdr.SequenceNumber, hdr.Timestamp, now
}

// skip accounts for a packet of from not forwarded (the track is muted):
// the receiver sees no gap in sequence numbers, and video resumes on a
// keyframe. Called only by from's reader goroutine.
func (d *DownTrack) skip(from *UpTrack) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.up != from {
		return
	}
	if d.started && !d.rebase {
		d.seqOffset++
	}
	if d.kind == webrtc.RTPCodecTypeVideo {
		d.waitKey, d.askedAt, d.shedding = true, time.Time{}, false
	}
}

// canReceive reports whether the subscriber's DTLS is connected, so
// that a packet written now reaches it. Called with mu held, only while
// waiting for a keyframe.
func (d *DownTrack) canReceive() bool {
	if d.ready.Load() {
		return true
	}
	if d.sender == nil {
		return true // not ours to know (tests' bare down-tracks)
	}
	if d.sender.Transport().State() != webrtc.DTLSTransportStateConnected {
		return false
	}
	d.ready.Store(true)
	return true
}

// switchTo makes up the source (nil: idle). The receiver's stream goes
// on without a gap in sequence numbers, from a keyframe for video. It
// returns false if up has ended.
func (d *DownTrack) switchTo(up *UpTrack) bool {
	d.mu.Lock()
	old, pending := d.up, d.pending
	d.up, d.pending = up, nil
	if pending != nil && pending != up {
		defer pending.removeDown(d)
	}
	if up != nil {
		d.info = up.info
	}
	if d.started {
		d.rebase = true
	}
	// The keyframe is asked for by writeRTP on the new source's next
	// packet, once the subscriber can receive it.
	d.waitKey, d.askedAt, d.shedding = d.kind == webrtc.RTPCodecTypeVideo, time.Time{}, false
	d.mu.Unlock()
	if old != nil && old != up {
		old.removeDown(d)
	}
	if up == nil || old == up {
		return true
	}
	if !up.addDown(d) {
		d.mu.Lock()
		if d.up == up {
			d.up = nil
		}
		d.mu.Unlock()
		return false
	}
	return true
}

// detach stops forwarding from the current source.
func (d *DownTrack) detach() {
	d.mu.Lock()
	up, pending := d.up, d.pending
	d.pending = nil
	d.mu.Unlock()
	if up != nil {
		up.removeDown(d)
	}
	if pending != nil {
		pending.removeDown(d)
	}
}

// readRTCP reads the subscriber's RTCP for this track until the sender
// stops; PLI and FIR become keyframe requests to the publisher, NACKs
// are answered from the up-track's packet cache (packetcache.go).
func (d *DownTrack) readRTCP(wg *sync.WaitGroup) {
	defer wg.Done()
	stats := &d.sub.room.sfu.stats
	stats.addDown(d)
	defer stats.retireDown(d)
	for {
		pkts, _, err := d.sender.ReadRTCP()
		if err != nil {
			return
		}
		now := time.Now()
		for _, p := range pkts {
			d.countRTCP(p, now)
			switch p := p.(type) {
			case *rtcp.TransportLayerNack:
				d.answerNACK(p)
			case *rtcp.PictureLossIndication, *rtcp.FullIntraRequest:
				if up := d.source(); up != nil {
					up.requestKeyframe()
				}
			}
		}
	}
}

// codecMatch reports whether a subscriber's codec can carry the
// publisher's stream unchanged.
func codecMatch(pub, sub webrtc.RTPCodecCapability) bool {
	if !strings.EqualFold(pub.MimeType, sub.MimeType) {
		return false
	}
	switch strings.ToLower(pub.MimeType) {
	case "video/h264":
		a, b := fmtp(pub.SDPFmtpLine), fmtp(sub.SDPFmtpLine)
		pa, pb := a.get("profile-level-id", "42001f"), b.get("profile-level-id", "42001f")
		return a.get("packetization-mode", "0") == b.get("packetization-mode", "0") &&
			len(pa) >= 2 && len(pb) >= 2 && strings.EqualFold(pa[:2], pb[:2])
	case "video/vp9":
		return fmtp(pub.SDPFmtpLine).get("profile-id", "0") == fmtp(sub.SDPFmtpLine).get("profile-id", "0")
	}
	return true
}

type fmtpParams map[string]string

func (f fmtpParams) get(key, def string) string {
	if v, ok := f[key]; ok {
		return v
	}
	return def
}

func fmtp(line string) fmtpParams {
	m := fmtpParams{}
	for _, kv := range strings.Split(line, ";") {
		k, v, _ := strings.Cut(strings.TrimSpace(kv), "=")
		if k != "" {
			m[strings.ToLower(k)] = v
		}
	}
	return m
}
