package signaling

import (
	"net"
	"sync"
	"time"
)

// Throttling failed admin-key attempts. A client address that presents
// a wrong admin key Config.AdminAuthFailures times within a minute has
// every further admin-key attempt refused (429 rate_limited, Retry-After)
// until that minute is over, whether the key is right or not, so that
// the key cannot be guessed online faster than that. Join tokens are
// still verified for it: they are signed with a secret of their own.

// DefaultAdminAuthFailures is Config.AdminAuthFailures' default.
const DefaultAdminAuthFailures = 10

// authThrottle counts the failed admin-key attempts of each client
// address in fixed windows, in bounded memory: windows that are over are
// forgotten, and when maxTrackedAddrs addresses are counted at once, the
// oldest window makes room for a new address. No window is shared: an
// attacker with that many addresses can never get an admin's address
// refused (it is refused only for its own failures), and guesses no
// faster than one attempt a request.
type authThrottle struct {
	max    int
	window time.Duration
	// mu guards failures and swept; nothing is locked while holding it.
	mu       sync.Mutex
	failures map[string]*failureWindow
	swept    time.Time
}

// failureWindow is the failures of one address since start.
type failureWindow struct {
	start time.Time
	n     int
}

// newAuthThrottle allows max failures per window; nil (no limit) for
// max < 0.
func newAuthThrottle(max int, window time.Duration) *authThrottle {
	if max < 0 {
		return nil
	}
	return &authThrottle{max: max, window: window, failures: map[string]*failureWindow{}}
}

// throttleKey is the address an attempt counts against: an IPv6 client
// by its /64, which one host usually has whole.
func throttleKey(addr string) string {
	ip := net.ParseIP(addr)
	if ip == nil || ip.To4() != nil {
		return addr
	}
	return ip.Mask(net.CIDRMask(64, 128)).String() + "/64"
}

// blocked reports whether addr's admin-key attempts are refused at now,
// and for how long yet.
func (a *authThrottle) blocked(addr string, now time.Time) (bool, time.Duration) {
	if a == nil {
		return false, 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	w := a.windowLocked(throttleKey(addr), now, false)
	if w == nil || now.Sub(w.start) >= a.window || w.n < a.max {
		return false, 0
	}
	return true, w.start.Add(a.window).Sub(now)
}

// fail counts a failed attempt of addr at now.
func (a *authThrottle) fail(addr string, now time.Time) {
	if a == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	w := a.windowLocked(throttleKey(addr), now, true)
	if now.Sub(w.start) >= a.window {
		*w = failureWindow{start: now}
	}
	w.n++
}

// windowLocked is key's window, nil if it has none; with create, a new
// one, making room when too many addresses are counted: the windows that
// are over go (at most once a second), else the oldest one.
func (a *authThrottle) windowLocked(key string, now time.Time, create bool) *failureWindow {
	if w := a.failures[key]; w != nil || !create {
		return w
	}
	if len(a.failures) >= maxTrackedAddrs && now.Sub(a.swept) >= time.Second {
		for k, w := range a.failures {
			if now.Sub(w.start) >= a.window {
				delete(a.failures, k)
			}
		}
		a.swept = now
	}
	if len(a.failures) >= maxTrackedAddrs {
		oldest, at := "", now
		for k, w := range a.failures {
			if !w.start.After(at) {
				oldest, at = k, w.start
			}
		}
		delete(a.failures, oldest)
	}
	w := &failureWindow{start: now}
	a.failures[key] = w
	return w
}

// size is the number of addresses counted (for tests).
func (a *authThrottle) size() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.failures)
}
