package report

import (
	"math/bits"
	"time"
)

// Hist is a latency histogram with about 1.5% resolution: values under
// 64 µs have their own bucket; above, each power of two is split in 64.
// It is not safe for concurrent use.
type Hist struct {
	counts [histSub * 40]uint64
	n      uint64
	max    time.Duration
}

const histSub = 64

func histIndex(us uint64) int {
	if us < histSub {
		return int(us)
	}
	e := bits.Len64(us) - 7 // us >> e is in [64, 128)
	return (e+1)*histSub + int(us>>uint(e)) - histSub
}

// histValue is the largest value of bucket i, in µs.
func histValue(i int) uint64 {
	if i < histSub {
		return uint64(i)
	}
	e := i/histSub - 1
	m := uint64(i%histSub + histSub)
	return (m+1)<<uint(e) - 1
}

func (h *Hist) Add(d time.Duration) {
	if d < 0 {
		d = 0
	}
	i := histIndex(uint64(d / time.Microsecond))
	if i >= len(h.counts) {
		i = len(h.counts) - 1
	}
	h.counts[i]++
	h.n++
	if d > h.max {
		h.max = d
	}
}

func (h *Hist) Merge(o *Hist) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// Quantile returns the nearest-rank p-th percentile (0 < p <= 100): the
// top of its bucket, but never above the largest value seen.
func (h *Hist) Quantile(p float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(p/100*float64(h.n) + 0.999999)
	rank = max(1, min(rank, h.n))
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return min(time.Duration(histValue(i))*time.Microsecond+time.Microsecond-1, h.max)
		}
	}
	return h.max
}
