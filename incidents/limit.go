package incidents

import (
	"sync"
	"time"
)

// limiter bounds the reports of each reporter: at most one per type per
// PerType, and at most PerMinute in any minute (a sliding window).
type limiter struct {
	perType   time.Duration
	perMinute int

	mu   sync.Mutex
	byID map[string]*rate
}

type rate struct {
	lastOf map[Type]time.Time
	recent []time.Time // accepted in the last minute, oldest first
}

func newLimiter(perType time.Duration, perMinute int) *limiter {
	return &limiter{perType: perType, perMinute: perMinute, byID: map[string]*rate{}}
}

// allow takes one report of typ by who at now, or refuses it.
func (l *limiter) allow(who string, typ Type, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.byID[who]
	if r == nil {
		r = &rate{lastOf: map[Type]time.Time{}}
		l.byID[who] = r
	}
	r.prune(now)
	if last, ok := r.lastOf[typ]; ok && l.perType > 0 && now.Sub(last) < l.perType {
		return false
	}
	if l.perMinute > 0 && len(r.recent) >= l.perMinute {
		return false
	}
	r.lastOf[typ] = now
	r.recent = append(r.recent, now)
	return true
}

func (r *rate) prune(now time.Time) {
	i := 0
	for i < len(r.recent) && now.Sub(r.recent[i]) >= time.Minute {
		i++
	}
	r.recent = append(r.recent[:0], r.recent[i:]...)
}

// sweep forgets reporters idle for a minute, so the map stays bounded by
// those who reported recently.
func (l *limiter) sweep(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for who, r := range l.byID {
		r.prune(now)
		if len(r.recent) == 0 {
			delete(l.byID, who)
		}
	}
}
