package recordings

import (
	"testing"
	"time"

	"github.com/pion/rtp"
)

// BenchmarkWritePacket measures what a recorder costs the media path per
// packet: a copy into the bounded queue (a writer drains it), and the
// drop when the queue is full.
func BenchmarkWritePacket(b *testing.B) {
	pkt := &rtp.Packet{Header: rtp.Header{Version: 2, SequenceNumber: 1, Timestamp: 3000, Marker: true}, Payload: make([]byte, 1200)}
	m := &Manager{cfg: Config{Now: time.Now}}
	b.Run("queued", func(b *testing.B) {
		r := &recorder{m: m, data: make(chan item, 1024)}
		s := &sink{r: r}
		b.ReportAllocs()
		n := 0
		for b.Loop() {
			s.WritePacket(pkt, false)
			if n++; n == cap(r.data) {
				b.StopTimer()
				for range n {
					<-r.data
				}
				n = 0
				b.StartTimer()
			}
		}
		if r.dropped.Load() != 0 {
			b.Fatal("dropped")
		}
	})
	b.Run("full", func(b *testing.B) {
		r := &recorder{m: m, data: make(chan item, 1)}
		s := &sink{r: r}
		s.WritePacket(pkt, false)
		b.ReportAllocs()
		for b.Loop() {
			s.WritePacket(pkt, false)
		}
		if r.dropped.Load() == 0 {
			b.Fatal("nothing dropped")
		}
	})
}
