package sfu

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
)

// PacketSink receives every packet of an up-track, muted or not: a
// recorder is one. WritePacket is called from the track's reader goroutine;
// it must not block and must not keep pkt or its payload after returning.
// Close is called once when the track ends.
type PacketSink interface {
	WritePacket(pkt *rtp.Packet, keyframe bool)
	Close()
}

// TrackObserver is told of every track published and unpublished in any
// room, outside the room's lock.
type TrackObserver interface {
	TrackPublished(r *Room, t *UpTrack)
	TrackUnpublished(r *Room, t *UpTrack)
}

// UpTrack is a track a participant publishes. One goroutine reads it and
// writes each packet to every down-track and sink; those lists are
// copy-on-write snapshots, so the packet path takes no lock.
type UpTrack struct {
	publisher *Participant
	track     *webrtc.TrackRemote
	source    Source
	streamID  string
	codec     webrtc.RTPCodecCapability
	info      TrackInfo
	done      chan struct{}
	rid       string      // simulcast layer id, "" without simulcast
	group     *layerGroup // the simulcast layers of the source, or nil
	mid       string      // the publisher's m-line it arrives on
	// silenced is set when the track was unpublished for its silence
	// while the connection was lost (reconnect.go): its next packet
	// publishes it again.
	silenced atomic.Bool

	// cache keeps a video track's recent packets for NACKs from its
	// subscribers (packetcache.go); nil for audio and once ended.
	cache atomic.Pointer[packetCache]

	downs cowList[*DownTrack]
	sinks cowList[PacketSink]
	muted atomic.Bool

	packets, bytes atomic.Uint64
	overloadSheds  atomic.Uint64 // shed steps of the reader (overload.go)
	lateAt         atomic.Int64  // audio: unix ns when the reader was last overloadDelay late
	seq            seqStats      // expected packets, for loss; reader-owned
	bitrate        atomic.Uint64 // bits/s over the last second or so
	lastPacket     atomic.Int64  // unix nanoseconds of the last packet read

	mu       sync.Mutex // guards stopped and the keyframe state
	stopped  bool
	lastKF   time.Time
	kfTimer  *time.Timer
	kfQueued bool // a PLI is due at kfDue
	kfDue    time.Time
	kfGen    uint64 // which timer is kfTimer
}

// Info describes the track.
func (u *UpTrack) Info() TrackInfo {
	info := u.info
	info.Muted = u.muted.Load()
	if u.group != nil {
		info.Layers = u.group.rids()
	}
	return info
}

// LastPacket is when the track's last packet arrived (zero before the
// first): a camera whose last packet is seconds old is frozen.
func (u *UpTrack) LastPacket() time.Time {
	if n := u.lastPacket.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// Codec is the track's codec.
func (u *UpTrack) Codec() webrtc.RTPCodecCapability { return u.codec }

// Publisher is the participant who publishes the track.
func (u *UpTrack) Publisher() *Participant { return u.publisher }

// Source is what the track carries.
func (u *UpTrack) Source() Source { return u.source }

// Done is closed when the track has ended.
func (u *UpTrack) Done() <-chan struct{} { return u.done }

// TrackStats are an up-track's counters.
type TrackStats struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
	Bitrate uint64 `json:"bitrate"` // bits per second, recent
	// Lost counts packets the publisher sent that never arrived.
	Lost uint64 `json:"lost"`
}

// Stats returns the track's counters.
func (u *UpTrack) Stats() TrackStats {
	return TrackStats{Packets: u.packets.Load(), Bytes: u.bytes.Load(), Bitrate: u.bitrate.Load(), Lost: u.lost()}
}

// AddSink makes s receive every packet of the track from now on, and
// asks the publisher for a keyframe so that video starts cleanly. It
// returns false if the track has already ended (s is not closed then).
func (u *UpTrack) AddSink(s PacketSink) bool {
	u = u.recordedLayer()
	u.mu.Lock()
	if u.stopped {
		u.mu.Unlock()
		return false
	}
	u.sinks.add(s)
	u.mu.Unlock()
	u.requestKeyframe()
	return true
}

// RemoveSink stops feeding s and closes it, if it was fed.
func (u *UpTrack) RemoveSink(s PacketSink) {
	for _, l := range u.layers() {
		if l.sinks.remove(s) {
			s.Close()
			return
		}
	}
}

// RequestKeyframe asks the publisher for a keyframe (throttled).
func (u *UpTrack) RequestKeyframe() { u.requestKeyframe() }

// run reads the track until it ends, forwarding every packet. A track
// unpublished for its silence is published again, as a new up-track read
// by the same goroutine, when its packets come back.
func (u *UpTrack) run(wg *sync.WaitGroup) {
	defer wg.Done()
	for u != nil {
		u = u.read()
	}
}

// read forwards the track's packets until it ends (nil) or until a packet
// comes after it was silenced: then it returns the track that replaces it.
func (u *UpTrack) read() *UpTrack {
	defer close(u.done)
	stats := &u.publisher.room.sfu.stats
	stats.addUp(u)
	defer stats.retireUp(u)
	defer func() {
		// The reader feeds the sinks, so it closes them.
		for _, s := range u.sinks.clear() {
			s.Close()
		}
	}()
	defer u.stop()
	video := u.track.Kind() == webrtc.RTPCodecTypeVideo
	var cache *packetCache
	if video {
		// Video is read into the cache's buffers and stays there for
		// NACKs: no copy.
		cache = newPacketCache()
		u.cache.Store(cache)
		defer u.cache.Store(nil)
	}
	buf := make([]byte, mtu)
	var pkt rtp.Packet
	windowStart, windowBytes := time.Now(), uint64(0)
	// How late the reader is (overload.go).
	lag := newLagMeter(u.codec.ClockRate, windowStart)
	lateKey := false // a keyframe was refused for being late
	// The publisher's audio tracks, looked up now and then: video gives
	// way to them when they are late.
	var audio []*UpTrack
	var audioAt time.Time
	for {
		if cache != nil {
			buf = cache.buffer()
		}
		readStart := time.Now()
		n, _, err := u.track.Read(buf)
		if err != nil {
			return nil
		}
		if u.silenced.Load() {
			// The first packet back is dropped: video restarts on
			// the keyframe the new subscribers ask for.
			return u.publisher.pubs.revive(u)
		}
		if err := pkt.Unmarshal(buf[:n]); err != nil {
			continue
		}
		if cache != nil {
			cache.put(pkt.SequenceNumber, n)
		}
		now := time.Now()
		u.lastPacket.Store(now.UnixNano())
		u.seq.observe(pkt.SequenceNumber)
		u.packets.Add(1)
		u.bytes.Add(uint64(n))
		if windowBytes += uint64(n); u.packets.Load()%64 == 0 {
			if d := time.Since(windowStart); d >= time.Second {
				u.bitrate.Store(uint64(float64(windowBytes*8) / d.Seconds()))
				windowStart, windowBytes = time.Now(), 0
			}
		}
		key := video && isKeyframe(u.codec.MimeType, pkt.Payload)
		shed := false
		if video {
			if now.Sub(audioAt) >= time.Second {
				audio, audioAt = u.publisherAudio(audio[:0]), now
			}
			audioLate := false
			for _, a := range audio {
				if now.UnixNano()-a.lateAt.Load() < int64(2*overloadDelay) {
					audioLate = true
				}
			}
			_, shed = lag.late(pkt.Timestamp, key, readStart, now, audioLate)
		} else if l, _ := lag.late(pkt.Timestamp, false, readStart, now, false); l >= overloadDelay {
			u.lateAt.Store(now.UnixNano())
		}
		for _, s := range u.sinks.load() {
			s.WritePacket(&pkt, key)
		}
		if key && lag.behind {
			// Too late to start anyone on (overload.go): asked
			// for again once the reader has caught up.
			key, lateKey = false, true
		} else if lateKey && !lag.behind {
			lateKey = false
			u.requestKeyframe()
		}
		if key {
			u.keyframeArrived()
		}
		downs := u.downs.load()
		if u.muted.Load() {
			for _, d := range downs {
				d.skip(u)
			}
			continue
		}
		if shed {
			// Behind: part of the subscribers drop to the next
			// keyframe, from this frame on (overload.go).
			u.shed(&lag, downs)
		}
		for _, d := range downs {
			d.writeRTP(u, &pkt, key, now)
		}
	}
}

// addDown adds a subscriber's down-track; false once the track is stopped.
func (u *UpTrack) addDown(d *DownTrack) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.stopped {
		return false
	}
	u.downs.add(d)
	return true
}

// removeDown drops a down-track from the fan-out.
func (u *UpTrack) removeDown(d *DownTrack) { u.downs.remove(d) }

// stop unpublishes the track: every subscriber drops its down-track.
func (u *UpTrack) stop() {
	u.mu.Lock()
	if u.stopped {
		u.mu.Unlock()
		return
	}
	u.stopped = true
	downs := u.downs.clear()
	if u.kfTimer != nil {
		u.kfTimer.Stop()
	}
	u.mu.Unlock()
	if g := u.group; g != nil {
		g.mu.Lock()
		if g.layers[u.rid] == u {
			delete(g.layers, u.rid)
		}
		primary := g.primary == u
		var siblings []*UpTrack
		if primary {
			for _, l := range g.layers {
				siblings = append(siblings, l)
			}
		}
		g.mu.Unlock()
		if !primary {
			// One layer ended: its subscribers move to another layer.
			for _, d := range downs {
				d.idleFrom(u)
				d.sub.alloc.run()
			}
			return
		}
		// The source ended: so do its other layers, and every
		// subscriber's down-track, whichever layer it was on.
		for _, l := range siblings {
			l.silenced.Store(u.silenced.Load())
			l.mu.Lock()
			l.stopped = true
			l.mu.Unlock()
			downs = append(downs, l.downs.clear()...)
		}
		seen := map[*DownTrack]bool{}
		downs = slices.DeleteFunc(downs, func(d *DownTrack) bool {
			dup := seen[d]
			seen[d] = true
			return dup
		})
	}
	// An ended track is no longer the publisher's: rosters and Tracks
	// stop listing it.
	pub := u.publisher
	pub.pubs.forget(u)
	for _, d := range downs {
		if d.sub.mode == ModeWHEP {
			// A player cannot renegotiate: its down-track idles and
			// follows the next source.
			d.idleFrom(u)
			d.sub.player.refollow(d)
			continue
		}
		d.sub.removeDownTrack(d)
	}
	u.publisher.room.unpublished(u)
	u.publisher.log.Info("track unpublished", "track", u.info.ID, "source", u.source)
}

func (u *UpTrack) isStopped() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.stopped
}

// firstKeyframeGap is the least time between two keyframe requests when
// the second is for a subscriber with no picture yet (it joined, or
// its source changed): libwebrtc encoders ignore a keyframe request
// less than 300 ms after the last keyframe they made, so asking sooner
// would be lost, and a join storm costs the publisher at most about
// three keyframes a second.
const firstKeyframeGap = 300 * time.Millisecond

// requestKeyframe asks the publisher for a keyframe (PLI), at most once
// per KeyframeInterval; a request inside the interval is sent when it ends.
func (u *UpTrack) requestKeyframe() {
	u.askKeyframe(u.publisher.room.sfu.cfg.KeyframeInterval)
}

// requestFirstKeyframe asks for a keyframe for a subscriber that has
// nothing to show yet: sent at once unless one was sent in the last
// firstKeyframeGap (or KeyframeInterval, if shorter), else when that
// gap ends. One keyframe serves every subscriber waiting for it.
func (u *UpTrack) requestFirstKeyframe() {
	u.askKeyframe(min(firstKeyframeGap, u.publisher.room.sfu.cfg.KeyframeInterval))
}

// askKeyframe sends a PLI if none was sent in the last gap, else makes
// sure one is sent when the gap ends (a request already queued for
// later is brought forward).
func (u *UpTrack) askKeyframe(gap time.Duration) {
	if u.track.Kind() != webrtc.RTPCodecTypeVideo {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.stopped {
		return
	}
	due := u.lastKF.Add(gap)
	if !time.Now().Before(due) {
		u.kfQueued = false // a queued request is served by this one
		if u.kfTimer != nil {
			u.kfTimer.Stop()
		}
		u.sendPLILocked()
		return
	}
	if u.kfQueued && !due.Before(u.kfDue) {
		return
	}
	if u.kfTimer != nil {
		u.kfTimer.Stop()
	}
	u.kfQueued, u.kfDue = true, due
	u.kfGen++
	gen := u.kfGen
	u.kfTimer = time.AfterFunc(time.Until(due), func() {
		u.mu.Lock()
		defer u.mu.Unlock()
		// A timer stopped too late finds its request served or replaced.
		if !u.kfQueued || u.kfGen != gen || u.stopped {
			return
		}
		u.kfQueued = false
		u.sendPLILocked()
	})
}

// keyframeArrived drops a queued keyframe request: the keyframe being
// read serves whoever asked (every waiting down-track starts on it).
func (u *UpTrack) keyframeArrived() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.kfQueued {
		u.kfQueued = false
		u.kfTimer.Stop()
	}
}

func (u *UpTrack) sendPLILocked() {
	u.lastKF = time.Now()
	pli := &rtcp.PictureLossIndication{MediaSSRC: uint32(u.track.SSRC())}
	// A UDP write through the publisher's SRTCP session: it does not
	// block, so it is done under the small keyframe lock.
	if err := u.publisher.pc.WriteRTCP([]rtcp.Packet{pli}); err != nil {
		u.publisher.log.Debug("send PLI", "err", err)
	}
}
