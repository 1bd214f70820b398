package sfu

import (
	"sync"

	"github.com/pion/rtcp"
	"github.com/pion/rtp"
)

// NACKs. A subscriber that lost a packet on its leg asks for it again
// (RTCP generic NACK); the answer comes from the up-track's packet cache,
// where the reader keeps each of its last packetCacheSize packets once,
// for every down-track: the packet is read into a cache buffer, forwarded
// from it, and left there, so caching costs no copy (pion's NACK
// responder copied every packet once per down-track). Each video
// down-track remembers, for its last sentLogSize packets, which
// up-track packet it sent under which of its own sequence numbers and
// timestamps, so that a packet sent before a rewrite of the offsets (a
// keyframe wait, a simulcast layer or source switch) is still found and
// sent again exactly as it first went out.

// packetCacheSize is how many packets of a video up-track are kept: half
// a second at 9 Mbit/s, three seconds at 1.5 Mbit/s.
const packetCacheSize = 512

// sentLogSize is how many forwarded packets a video down-track remembers.
const sentLogSize = 512

// mtu is the size of a cache buffer: the largest datagram read.
const mtu = 1500

// cachedPacket is a packet as read, in a buffer the cache owns.
type cachedPacket struct {
	buf []byte // mtu bytes
	n   int    // the packet's length; 0: empty
	seq uint16
}

// packetCache holds a video up-track's recent packets, indexed by
// sequence number modulo its size. Its reader puts packets in; NACKs of
// down-tracks read them out (a copy, under the lock).
type packetCache struct {
	mu    sync.Mutex
	slots [packetCacheSize]cachedPacket
	spare []byte // the buffer the reader reads into next; reader-owned
}

func newPacketCache() *packetCache {
	return &packetCache{spare: make([]byte, mtu)}
}

// buffer is where the reader reads the next packet.
func (c *packetCache) buffer() []byte { return c.spare }

// put keeps the packet just read into buffer() (n bytes, sequence number
// seq): the buffer becomes the cache's, and the buffer of the packet it
// evicts becomes the next buffer(). Packets forwarded from the buffer
// stay valid until packetCacheSize sequence numbers later.
func (c *packetCache) put(seq uint16, n int) {
	c.mu.Lock()
	s := &c.slots[seq%packetCacheSize]
	old := s.buf
	s.buf, s.n, s.seq = c.spare, n, seq
	c.mu.Unlock()
	if old == nil {
		old = make([]byte, mtu) // the ring's first round
	}
	c.spare = old
}

// get copies the packet with sequence number seq into dst and returns
// it, or nil if it is no longer (or never was) in the cache.
func (c *packetCache) get(seq uint16, dst []byte) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := &c.slots[seq%packetCacheSize]
	if s.n == 0 || s.seq != seq {
		return nil
	}
	return append(dst[:0], s.buf[:s.n]...)
}

// sentPacket is what a down-track sent under one of its sequence numbers.
type sentPacket struct {
	from *UpTrack // nil: nothing sent under this number yet
	in   uint16   // the up-track's sequence number
	out  uint16   // the down-track's
	ts   uint32   // the down-track's timestamp
}

// logSent notes a forwarded packet for NACKs. Called by writeRTP, with
// mu held.
func (d *DownTrack) logSent(from *UpTrack, in, out uint16, ts uint32) {
	if d.sentLog == nil {
		return
	}
	d.sentLog[out%sentLogSize] = sentPacket{from: from, in: in, out: out, ts: ts}
}

// answerNACK sends again the packets a subscriber reports lost that are
// still cached, each with the sequence number and timestamp it first
// had. Called by the down-track's RTCP reader only.
func (d *DownTrack) answerNACK(n *rtcp.TransportLayerNack) {
	b := d.binding.Load()
	if b == nil || n.MediaSSRC != uint32(b.ssrc) {
		return
	}
	for _, pair := range n.Nacks {
		for _, out := range pair.PacketList() {
			d.mu.Lock()
			var sp sentPacket
			if d.sentLog != nil {
				sp = d.sentLog[out%sentLogSize]
			}
			d.mu.Unlock()
			if sp.from == nil || sp.out != out {
				continue // not sent by us lately
			}
			var raw []byte
			if c := sp.from.cache.Load(); c != nil {
				raw = c.get(sp.in, d.nackBuf)
			}
			if raw == nil {
				d.nackMisses.Add(1)
				continue // gone: the receiver will ask for a keyframe
			}
			d.nackBuf = raw[:0]
			var pkt rtp.Packet
			if err := pkt.Unmarshal(raw); err != nil {
				continue
			}
			hdr := pkt.Header
			hdr.Extension, hdr.Extensions, hdr.ExtensionProfile = false, nil, 0
			hdr.SSRC = uint32(b.ssrc)
			hdr.PayloadType = uint8(b.pt)
			hdr.SequenceNumber = out
			hdr.Timestamp = sp.ts
			if _, err := b.w.WriteRTP(&hdr, pkt.Payload); err != nil {
				return
			}
			d.retransmits.Add(1)
		}
	}
}
