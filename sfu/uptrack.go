package sfu

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
)

// UpTrack is a track a participant publishes. One goroutine reads it and
// writes each packet to every down-track; the down-track list is an
// immutable snapshot swapped under mu, so the packet path takes no lock.
type UpTrack struct {
	publisher *Participant
	track     *webrtc.TrackRemote
	source    Source
	streamID  string
	codec     webrtc.RTPCodecCapability
	info      TrackInfo
	done      chan struct{}

	downs atomic.Pointer[[]*DownTrack]

	mu       sync.Mutex // guards stopped, the down-track list's writers and the keyframe state
	stopped  bool
	lastKF   time.Time
	kfTimer  *time.Timer
	kfQueued bool
}

// Info describes the track.
func (u *UpTrack) Info() TrackInfo { return u.info }

// run reads the track until it ends, forwarding every packet.
func (u *UpTrack) run(wg *sync.WaitGroup) {
	defer wg.Done()
	defer close(u.done)
	defer u.stop()
	video := u.track.Kind() == webrtc.RTPCodecTypeVideo
	buf := make([]byte, 1500)
	var pkt rtp.Packet
	for {
		n, _, err := u.track.Read(buf)
		if err != nil {
			return
		}
		if err := pkt.Unmarshal(buf[:n]); err != nil {
			continue
		}
		key := video && isKeyframe(u.codec.MimeType, pkt.Payload)
		for _, d := range *u.downs.Load() {
			d.writeRTP(&pkt, key)
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
	old := *u.downs.Load()
	next := make([]*DownTrack, len(old), len(old)+1)
	copy(next, old)
	next = append(next, d)
	u.downs.Store(&next)
	return true
}

// removeDown drops a down-track from the fan-out.
func (u *UpTrack) removeDown(d *DownTrack) {
	u.mu.Lock()
	defer u.mu.Unlock()
	old := *u.downs.Load()
	next := make([]*DownTrack, 0, len(old))
	for _, o := range old {
		if o != d {
			next = append(next, o)
		}
	}
	u.downs.Store(&next)
}

// stop unpublishes the track: every subscriber drops its down-track.
func (u *UpTrack) stop() {
	u.mu.Lock()
	if u.stopped {
		u.mu.Unlock()
		return
	}
	u.stopped = true
	downs := *u.downs.Swap(&[]*DownTrack{})
	if u.kfTimer != nil {
		u.kfTimer.Stop()
	}
	u.mu.Unlock()
	for _, d := range downs {
		d.sub.removeDownTrack(d)
	}
	u.publisher.room.unpublished(u)
	u.publisher.log.Info("track unpublished", "track", u.info.ID, "source", u.source)
}

// requestKeyframe asks the publisher for a keyframe (PLI), at most once
// per KeyframeInterval; a request inside the interval is sent when it ends.
func (u *UpTrack) requestKeyframe() {
	if u.track.Kind() != webrtc.RTPCodecTypeVideo {
		return
	}
	interval := u.publisher.room.sfu.cfg.KeyframeInterval
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.stopped || u.kfQueued {
		return
	}
	wait := interval - time.Since(u.lastKF)
	if wait <= 0 {
		u.sendPLILocked()
		return
	}
	u.kfQueued = true
	u.kfTimer = time.AfterFunc(wait, func() {
		u.mu.Lock()
		defer u.mu.Unlock()
		u.kfQueued = false
		if !u.stopped {
			u.sendPLILocked()
		}
	})
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
