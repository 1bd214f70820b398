package signaling

import (
	"container/list"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/netip"
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
// memory. An IPv6 client is counted by its /64 (one subscriber's
// prefix: a host picks any address in it), an IPv4 client by its
// address (addrKey). At most maxTrackedAddrs buckets are kept; a new
// address beyond that evicts the least recently used bucket, so every
// address has a bucket of its own and a flood from many addresses
// cannot make anyone share one.
type addrLimiter struct {
	rate, burst float64
	// mu guards buckets and lru; nothing is locked while holding it.
	mu      sync.Mutex
	buckets map[string]*list.Element // of lru, by addrKey
	lru     *list.List               // of *addrBucket, most recently used first
}

// addrBucket is the bucket of one address key.
type addrBucket struct {
	key string
	b   bucket
}

func newAddrLimiter(rate float64) *addrLimiter {
	if rate <= 0 {
		return nil
	}
	return &addrLimiter{rate: rate, burst: math.Max(1, 2*rate), buckets: map[string]*list.Element{}, lru: list.New()}
}

// addrKey is the key an address is limited by: an IPv6 address's /64
// prefix, an IPv4 address (IPv4-mapped ones too) itself, and anything
// that does not parse as it is.
func addrKey(addr string) string {
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		return addr
	}
	ip = ip.Unmap()
	if ip.Is4() {
		return ip.String()
	}
	p, err := ip.WithZone("").Prefix(64)
	if err != nil {
		return addr
	}
	return p.String()
}

func (l *addrLimiter) allow(addr string, now time.Time) (bool, time.Duration) {
	if l == nil {
		return true, 0
	}
	key := addrKey(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.buckets[key]
	if e == nil {
		l.evictLocked(now)
		e = l.lru.PushFront(&addrBucket{key: key})
		l.buckets[key] = e
	} else {
		l.lru.MoveToFront(e)
	}
	return e.Value.(*addrBucket).b.take(now, l.rate, l.burst)
}

// evictLocked makes room for one more bucket: it forgets the least
// recently used buckets that are full again (an address that comes back
// gets the same full bucket), and the least recently used one if
// maxTrackedAddrs are kept still.
func (l *addrLimiter) evictLocked(now time.Time) {
	full := time.Duration(l.burst / l.rate * float64(time.Second))
	for range 2 { // a couple at a time: O(1) per request
		back := l.lru.Back()
		if back == nil || now.Sub(back.Value.(*addrBucket).b.last) < full {
			break
		}
		l.removeLocked(back)
	}
	for l.lru.Len() >= maxTrackedAddrs {
		l.removeLocked(l.lru.Back())
	}
}

func (l *addrLimiter) removeLocked(e *list.Element) {
	delete(l.buckets, e.Value.(*addrBucket).key)
	l.lru.Remove(e)
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
