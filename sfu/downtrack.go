package sfu

import (
	"strings"
	"sync"
	"sync/atomic"

	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
)

// DownTrack forwards one up-track to one subscriber. It is the TrackLocal
// pion binds to the subscriber's sender: SSRC and payload type come from
// that binding, and sequence numbers are rewritten so that packets it
// drops (waiting for a keyframe) leave no gap.
type DownTrack struct {
	up     *UpTrack
	sub    *Participant
	sender *webrtc.RTPSender

	binding atomic.Pointer[binding]
	resync  atomic.Bool // set when bound: wait for a keyframe

	// Owned by the up-track's reader goroutine.
	waitKey   bool
	started   bool
	seqOffset uint16
}

type binding struct {
	ssrc webrtc.SSRC
	pt   webrtc.PayloadType
	w    webrtc.TrackLocalWriter
}

func newDownTrack(up *UpTrack, sub *Participant) *DownTrack {
	return &DownTrack{up: up, sub: sub}
}

// ID implements webrtc.TrackLocal: the up-track's id.
func (d *DownTrack) ID() string { return d.up.info.ID }

// RID implements webrtc.TrackLocal.
func (d *DownTrack) RID() string { return "" }

// StreamID implements webrtc.TrackLocal: camera and microphone of one
// publisher share a stream, so the browser keeps them in sync.
func (d *DownTrack) StreamID() string { return d.up.streamID }

// Kind implements webrtc.TrackLocal.
func (d *DownTrack) Kind() webrtc.RTPCodecType { return d.up.track.Kind() }

// Bind implements webrtc.TrackLocal: it picks the subscriber's payload
// type for the up-track's codec.
func (d *DownTrack) Bind(ctx webrtc.TrackLocalContext) (webrtc.RTPCodecParameters, error) {
	for _, c := range ctx.CodecParameters() {
		if codecMatch(d.up.codec, c.RTPCodecCapability) {
			d.binding.Store(&binding{ssrc: ctx.SSRC(), pt: c.PayloadType, w: ctx.WriteStream()})
			if d.Kind() == webrtc.RTPCodecTypeVideo {
				d.resync.Store(true)
				d.up.requestKeyframe()
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

// writeRTP forwards one packet. Called only by the up-track's reader.
func (d *DownTrack) writeRTP(pkt *rtp.Packet, keyframe bool) {
	b := d.binding.Load()
	if b == nil {
		return
	}
	if d.resync.CompareAndSwap(true, false) {
		d.waitKey = true
	}
	if d.waitKey {
		if !keyframe {
			if d.started {
				d.seqOffset++ // hide the dropped packet from the receiver
			}
			return
		}
		d.waitKey = false
	}
	d.started = true
	hdr := pkt.Header
	// The publisher's header extension ids mean nothing to the
	// subscriber's session.
	hdr.Extension, hdr.Extensions, hdr.ExtensionProfile = false, nil, 0
	hdr.SSRC = uint32(b.ssrc)
	hdr.PayloadType = uint8(b.pt)
	hdr.SequenceNumber = pkt.SequenceNumber - d.seqOffset
	if _, err := b.w.WriteRTP(&hdr, pkt.Payload); err != nil && d.Kind() == webrtc.RTPCodecTypeVideo {
		// A failed write loses part of a frame: resume on a keyframe.
		d.waitKey = true
		d.up.requestKeyframe()
	}
}

// skip accounts for a packet not forwarded (the track is muted): the
// receiver sees no gap in sequence numbers, and video resumes on a
// keyframe. Called only by the up-track's reader.
func (d *DownTrack) skip() {
	if d.started {
		d.seqOffset++
	}
	if d.Kind() == webrtc.RTPCodecTypeVideo {
		d.waitKey = true
	}
}

// readRTCP reads the subscriber's RTCP for this track until the sender
// stops; PLI and FIR become keyframe requests to the publisher. NACKs are
// answered by the NACK responder interceptor, which needs this read too.
func (d *DownTrack) readRTCP(wg *sync.WaitGroup) {
	defer wg.Done()
	for {
		pkts, _, err := d.sender.ReadRTCP()
		if err != nil {
			return
		}
		for _, p := range pkts {
			switch p.(type) {
			case *rtcp.PictureLossIndication, *rtcp.FullIntraRequest:
				d.up.requestKeyframe()
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
