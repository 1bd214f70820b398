package recordings

import (
	"strings"
	"sync"
	"sync/atomic"

	"github.com/pion/rtp"
	"github.com/vigil-media/vigil/sfu"
)

// Groups: what goes into one file.
const (
	GroupAV     = "av"     // camera and microphone, A/V-synchronized
	GroupScreen = "screen" // screen share
)

func groupOf(src sfu.Source) string {
	if src == sfu.SourceScreen {
		return GroupScreen
	}
	return GroupAV
}

// sink is attached to one up-track. WritePacket runs on the track's reader
// goroutine: it copies the packet into the recorder's bounded queue, or
// drops it and counts, and never blocks.
type sink struct {
	r        *recorder
	up       *sfu.UpTrack
	source   sfu.Source
	kind     string // "audio" or "video"
	codec    string
	clock    uint32
	channels int
	trackID  string
	closed   atomic.Bool
	once     sync.Once

	gone bool // writer-owned: the track has ended and was drained
}

type item struct {
	s *sink
	p packet
}

func newSink(r *recorder, up *sfu.UpTrack) *sink {
	c := up.Codec()
	info := up.Info()
	s := &sink{r: r, up: up, source: up.Source(), clock: c.ClockRate, channels: int(c.Channels), trackID: info.ID}
	s.codec = strings.ToLower(c.MimeType[strings.IndexByte(c.MimeType, '/')+1:])
	s.kind = "video"
	if s.source.Audio() {
		s.kind = "audio"
	}
	if s.channels == 0 {
		s.channels = 2
	}
	return s
}

// WritePacket implements sfu.PacketSink.
func (s *sink) WritePacket(pkt *rtp.Packet, _ bool) {
	if s.closed.Load() || len(pkt.Payload) == 0 {
		return
	}
	q := s.r.data
	if len(q) == cap(q) { // full: drop before copying anything
		s.r.dropped.Add(1)
		return
	}
	it := item{s: s, p: packet{
		seq: pkt.SequenceNumber, ts: pkt.Timestamp, marker: pkt.Marker,
		payload: append([]byte(nil), pkt.Payload...), at: s.r.m.now(),
	}}
	select {
	case q <- it:
	default:
		s.r.dropped.Add(1)
	}
}

// Close implements sfu.PacketSink: the track ended or the sink was removed.
func (s *sink) Close() {
	s.once.Do(func() {
		s.closed.Store(true)
		s.r.post(ctlMsg{kind: ctlEnded, s: s})
	})
}
