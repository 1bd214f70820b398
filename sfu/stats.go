package sfu

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/rtcp"
)

// Stats is a snapshot of the media core's counters, for monitoring. The
// cumulative counters include tracks that have ended, so they only grow.
// Every counter is updated by the media path with plain atomics; a snapshot
// is taken only when someone asks (e.g. a metrics scrape).
type Stats struct {
	Rooms        int
	Participants map[Role]int   // by role
	UpTracks     map[string]int // published tracks now (each simulcast layer counts), by kind ("audio", "video")
	DownTracks   int            // forwarded copies now, one per subscriber and track

	// From publishers.
	PacketsReceived uint64
	BytesReceived   uint64
	// PacketsLost is what publishers sent but never arrived: expected
	// (from RTP sequence numbers) minus received.
	PacketsLost uint64

	// To subscribers.
	PacketsForwarded uint64
	BytesForwarded   uint64
	// PacketsLostDownstream is the cumulative loss subscribers report in
	// their RTCP receiver reports.
	PacketsLostDownstream uint64
	// RTCP feedback from subscribers.
	NACKs, PLIs, FIRs uint64

	// Overload (overload.go): OverloadSheds counts the times an
	// up-track's reader was behind and made part of its subscribers drop
	// video to the next keyframe; PacketsShed, the video packets not
	// forwarded to a subscriber because of it.
	OverloadSheds, PacketsShed uint64

	// RTT and Jitter come from subscribers' receiver reports, in seconds.
	RTT, Jitter Summary
}

// Summary describes a measure: Count and Sum over every sample since the
// start, and Current, the latest sample of each live down-track (sorted),
// from which quantiles are read.
type Summary struct {
	Count   uint64
	Sum     float64
	Current []float64
}

// Quantile returns the q-quantile (0..1) of Current, nearest rank; 0 when
// there is no sample.
func (s Summary) Quantile(q float64) float64 {
	if len(s.Current) == 0 {
		return 0
	}
	i := int(q*float64(len(s.Current))+0.5) - 1
	i = min(max(i, 0), len(s.Current)-1)
	return s.Current[i]
}

// downStats are a down-track's counters, written by the media path.
type downStats struct {
	packets, bytes    atomic.Uint64
	nacks, plis, firs atomic.Uint64
	lost              atomic.Uint64 // latest cumulative loss reported
	rttNs, jitterNs   atomic.Int64  // latest sample, valid once rttN/jitterN > 0
	rttN, jitterN     atomic.Uint64
	rttSum, jitterSum atomic.Uint64 // nanoseconds
}

func (s *downStats) sent(n int) {
	s.packets.Add(1)
	s.bytes.Add(uint64(n))
}

// seqStats counts what a publisher sent from RTP sequence numbers
// (RFC 3550 A.3). Only the track's reader goroutine calls observe.
type seqStats struct {
	started  bool
	base     uint64
	cycles   uint64
	maxSeq   uint16
	expected atomic.Uint64
}

func (s *seqStats) observe(seq uint16) {
	if !s.started {
		s.started, s.base, s.maxSeq = true, uint64(seq), seq
		s.expected.Store(1)
		return
	}
	if d := seq - s.maxSeq; d != 0 && d < 0x8000 {
		if seq < s.maxSeq {
			s.cycles += 1 << 16
		}
		s.maxSeq = seq
		s.expected.Store(s.cycles + uint64(seq) - s.base + 1)
	}
}

// lost is what the publisher sent that has not arrived.
func (u *UpTrack) lost() uint64 {
	exp, got := u.seq.expected.Load(), u.packets.Load()
	if exp <= got {
		return 0
	}
	return exp - got
}

// countRTCP accounts for one RTCP packet a subscriber sent about d.
func (d *DownTrack) countRTCP(p rtcp.Packet, now time.Time) {
	switch p := p.(type) {
	case *rtcp.TransportLayerNack:
		d.st.nacks.Add(1)
	case *rtcp.PictureLossIndication:
		d.st.plis.Add(1)
	case *rtcp.FullIntraRequest:
		d.st.firs.Add(1)
	case *rtcp.ReceiverReport:
		d.countReports(p.Reports, now)
	case *rtcp.SenderReport:
		d.countReports(p.Reports, now)
	}
}

func (d *DownTrack) countReports(reports []rtcp.ReceptionReport, now time.Time) {
	b := d.binding.Load()
	if b == nil {
		return
	}
	for _, r := range reports {
		if r.SSRC != uint32(b.ssrc) {
			continue
		}
		d.st.lost.Store(uint64(r.TotalLost))
		if rate := d.codec.ClockRate; rate > 0 {
			j := time.Duration(float64(r.Jitter) / float64(rate) * float64(time.Second))
			d.st.jitterNs.Store(int64(j))
			d.st.jitterN.Add(1)
			d.st.jitterSum.Add(uint64(j))
		}
		if r.LastSenderReport != 0 {
			// RTT = now - LSR - DLSR, in 1/65536 s (RFC 3550 6.4.1).
			v := ntpCompact(now) - r.LastSenderReport - r.Delay
			if v < 1<<31 {
				rtt := time.Duration(float64(v) / 65536 * float64(time.Second))
				d.st.rttNs.Store(int64(rtt))
				d.st.rttN.Add(1)
				d.st.rttSum.Add(uint64(rtt))
			}
		}
	}
}

// ntpCompact is the middle 32 bits of t's NTP timestamp.
func ntpCompact(t time.Time) uint32 {
	secs := uint64(t.Unix()) + 2208988800
	frac := (uint64(t.Nanosecond()) << 32) / 1e9
	return uint32(secs<<16) | uint32(frac>>16)
}

// statsRegistry keeps the live tracks and the totals of ended ones, so
// that cumulative counters never go down. The media path never takes its
// lock: tracks register when their goroutine starts and retire when it
// ends.
type statsRegistry struct {
	mu      sync.Mutex
	ups     map[*UpTrack]struct{}
	downs   map[*DownTrack]struct{}
	retired Stats // counters of ended tracks; RTT/Jitter Count and Sum only
}

func (r *statsRegistry) addUp(u *UpTrack) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ups == nil {
		r.ups = map[*UpTrack]struct{}{}
	}
	r.ups[u] = struct{}{}
}

func (r *statsRegistry) retireUp(u *UpTrack) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.ups[u]; !ok {
		return
	}
	delete(r.ups, u)
	addUp(&r.retired, u)
}

func (r *statsRegistry) addDown(d *DownTrack) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.downs == nil {
		r.downs = map[*DownTrack]struct{}{}
	}
	r.downs[d] = struct{}{}
}

func (r *statsRegistry) retireDown(d *DownTrack) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.downs[d]; !ok {
		return
	}
	delete(r.downs, d)
	addDown(&r.retired, d)
}

func addUp(s *Stats, u *UpTrack) {
	s.PacketsReceived += u.packets.Load()
	s.BytesReceived += u.bytes.Load()
	s.PacketsLost += u.lost()
	s.OverloadSheds += u.overloadSheds.Load()
}

func addDown(s *Stats, d *DownTrack) {
	st := &d.st
	s.PacketsForwarded += st.packets.Load()
	s.BytesForwarded += st.bytes.Load()
	s.PacketsLostDownstream += st.lost.Load()
	s.NACKs += st.nacks.Load()
	s.PLIs += st.plis.Load()
	s.FIRs += st.firs.Load()
	s.PacketsShed += d.shedDrops.Load()
	s.RTT.Count += st.rttN.Load()
	s.RTT.Sum += time.Duration(st.rttSum.Load()).Seconds()
	s.Jitter.Count += st.jitterN.Load()
	s.Jitter.Sum += time.Duration(st.jitterSum.Load()).Seconds()
}

// Stats returns a snapshot of the media core's counters.
func (s *SFU) Stats() Stats {
	out := Stats{Participants: map[Role]int{}, UpTracks: map[string]int{}}
	for _, r := range s.Rooms() {
		out.Rooms++
		for _, p := range r.List() {
			out.Participants[p.Role()]++
		}
	}
	reg := &s.stats
	reg.mu.Lock()
	defer reg.mu.Unlock()
	t := reg.retired
	out.PacketsReceived, out.BytesReceived, out.PacketsLost = t.PacketsReceived, t.BytesReceived, t.PacketsLost
	out.PacketsForwarded, out.BytesForwarded, out.PacketsLostDownstream = t.PacketsForwarded, t.BytesForwarded, t.PacketsLostDownstream
	out.NACKs, out.PLIs, out.FIRs = t.NACKs, t.PLIs, t.FIRs
	out.OverloadSheds, out.PacketsShed = t.OverloadSheds, t.PacketsShed
	out.RTT.Count, out.RTT.Sum = t.RTT.Count, t.RTT.Sum
	out.Jitter.Count, out.Jitter.Sum = t.Jitter.Count, t.Jitter.Sum
	for u := range reg.ups {
		out.UpTracks[u.track.Kind().String()]++
		addUp(&out, u)
	}
	for d := range reg.downs {
		out.DownTracks++
		addDown(&out, d)
		if d.st.rttN.Load() > 0 {
			out.RTT.Current = append(out.RTT.Current, time.Duration(d.st.rttNs.Load()).Seconds())
		}
		if d.st.jitterN.Load() > 0 {
			out.Jitter.Current = append(out.Jitter.Current, time.Duration(d.st.jitterNs.Load()).Seconds())
		}
	}
	sort.Float64s(out.RTT.Current)
	sort.Float64s(out.Jitter.Current)
	return out
}
