package signaling

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
)

// Limits. Each refusal is an error with its own code (codeFor); none
// costs another user anything: the buckets are per session or per
// client address.

// ErrRateLimited refuses a request or a client message over its rate;
// HTTP replies carry Retry-After.
var ErrRateLimited = errors.New("rate limited")

// Defaults of the limits in Config.
const (
	DefaultMessageRate = 50 // client messages a second per session, bursts of twice that
	DefaultJoinRate    = 10 // session opens (and WHIP/WHEP POSTs) a second per client address
	DefaultMintRate    = 50 // token mints a second per client address
	maxTrackedAddrs    = 16384
)

// bucket is a token bucket: rate tokens a second, at most burst.
type bucket struct {
	tokens float64
	last   time.Time
}

// take takes a token at now, or says how long until one is there.
func (b *bucket) take(now time.Time, rate, burst float64) (bool, time.Duration) {
	if b.last.IsZero() {
		b.tokens = burst
	} else {
		b.tokens = math.Min(burst, b.tokens+now.Sub(b.last).Seconds()*rate)
	}
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) / rate * float64(time.Second))
}

// rateLimiter is one token bucket; a nil one allows everything.
type rateLimiter struct {
	rate, burst float64
	mu          sync.Mutex // guards b; nothing is locked while holding it
	b           bucket
}

func newRateLimiter(rate float64) *rateLimiter {
	if rate <= 0 {
		return nil
	}
	return &rateLimiter{rate: rate, burst: math.Max(1, 2*rate)}
}

func (l *rateLimiter) allow() (bool, time.Duration) {
	if l == nil {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.take(time.Now(), l.rate, l.burst)
}

// addrLimiter keeps a token bucket per client address, in bounded
// memory: idle buckets (full again) are forgotten, and when
// maxTrackedAddrs addresses are busy at once, new ones share one bucket.
type addrLimiter struct {
	rate, burst float64
	// mu guards buckets, overflow and swept; nothing is locked while
	// holding it.
	mu       sync.Mutex
	buckets  map[string]*bucket
	overflow bucket
	swept    time.Time
}

func newAddrLimiter(rate float64) *addrLimiter {
	if rate <= 0 {
		return nil
	}
	return &addrLimiter{rate: rate, burst: math.Max(1, 2*rate), buckets: map[string]*bucket{}}
}

func (l *addrLimiter) allow(addr string, now time.Time) (bool, time.Duration) {
	if l == nil {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[addr]
	if b == nil {
		if len(l.buckets) >= maxTrackedAddrs && now.Sub(l.swept) >= time.Second {
			l.sweepLocked(now) // at most once a second: it is O(n)
			l.swept = now
		}
		if len(l.buckets) >= maxTrackedAddrs {
			return l.overflow.take(now, l.rate, l.burst)
		}
		b = &bucket{}
		l.buckets[addr] = b
	}
	return b.take(now, l.rate, l.burst)
}

// sweepLocked forgets the buckets that are full again.
func (l *addrLimiter) sweepLocked(now time.Time) {
	full := time.Duration(l.burst / l.rate * float64(time.Second))
	for k, b := range l.buckets {
		if now.Sub(b.last) >= full {
			delete(l.buckets, k)
		}
	}
}

func (l *addrLimiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}

// refuseRate writes 429 rate_limited with Retry-After (whole seconds, at
// least 1).
func refuseRate(c *gin.Context, wait time.Duration, what string) {
	c.Header("Retry-After", strconv.Itoa(max(1, int(math.Ceil(wait.Seconds())))))
	writeError(c, fmt.Errorf("%w: %s", ErrRateLimited, what))
}

// limitAddr refuses requests from a client address over l's rate. The
// address is the peer's, or the X-Forwarded-For one when the peer is a
// trusted proxy (Config.TrustedProxies), or the one a node of the
// cluster relays for (Federation.ClientAddr).
func (s *Server) limitAddr(l *addrLimiter, what string) gin.HandlerFunc {
	return func(c *gin.Context) {
		if ok, wait := l.allow(s.fed.ClientAddr(c), time.Now()); !ok {
			refuseRate(c, wait, "too many "+what+" from this address")
			return
		}
		c.Next()
	}
}

// CORS. The API and the signaling transports answer cross-origin
// requests only from Config.CORSOrigins ("*": any); by default none, so a
// page of another origin cannot use them. WHIP and WHEP allow any origin
// (whip.go): they are authorized by bearer tokens only.

var (
	corsMethods = "GET, POST, PATCH, PUT, DELETE, OPTIONS"
	corsHeaders = "Authorization, Content-Type, Idempotency-Key, If-None-Match, Last-Event-ID"
	corsExpose  = "ETag, Retry-After, Idempotent-Replayed, Location"
)

// originAllowed reports whether a request from origin may use the API:
// same-origin requests (and those without Origin) always may.
func (s *Server) originAllowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	if u, err := url.Parse(origin); err == nil && strings.EqualFold(u.Host, r.Host) {
		return true
	}
	return s.corsListed(origin)
}

func (s *Server) corsListed(origin string) bool {
	return slices.Contains(s.cfg.CORSOrigins, "*") || slices.ContainsFunc(s.cfg.CORSOrigins, func(o string) bool {
		return strings.EqualFold(strings.TrimRight(o, "/"), origin)
	})
}

// corsMiddleware adds the CORS headers for listed origins, and answers
// their preflights. WHIP and WHEP have their own.
func (s *Server) corsMiddleware(c *gin.Context) {
	p := c.Request.URL.Path
	if strings.HasPrefix(p, "/whip/") || strings.HasPrefix(p, "/whep/") {
		c.Next()
		return
	}
	origin := c.GetHeader("Origin")
	if origin == "" || !s.corsListed(origin) {
		c.Next()
		return
	}
	h := c.Writer.Header()
	h.Add("Vary", "Origin")
	h.Set("Access-Control-Allow-Origin", origin)
	h.Set("Access-Control-Expose-Headers", corsExpose)
	if c.Request.Method == http.MethodOptions && c.GetHeader("Access-Control-Request-Method") != "" {
		h.Set("Access-Control-Allow-Methods", corsMethods)
		h.Set("Access-Control-Allow-Headers", corsHeaders)
		h.Set("Access-Control-Max-Age", "600")
		c.AbortWithStatus(http.StatusNoContent)
		return
	}
	c.Next()
}
