package signaling

import (
	"fmt"
	"testing"
	"time"
)

// TestAddrLimiterBoundedMemory: a flood from more addresses than it
// tracks keeps the limiter's map bounded, with no shared bucket: every
// new address gets its own (the least recently used one is forgotten),
// an address in use keeps its bucket through the flood, and idle
// buckets are forgotten.
func TestAddrLimiterBoundedMemory(t *testing.T) {
	l := newAddrLimiter(1) // bursts of 2
	now := time.Unix(1000, 0)
	// A client spends its burst.
	l.allow("192.0.2.7", now)
	l.allow("192.0.2.7", now)
	refused := 0
	for i := range 3 * maxTrackedAddrs {
		if ok, _ := l.allow(fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), now); !ok {
			refused++
		}
		if i%1024 == 0 { // in use all along: never the least recently used
			if ok, _ := l.allow("192.0.2.7", now); ok {
				t.Fatalf("after %d other addresses, the spent client got a token", i)
			}
		}
	}
	t.Logf("%d addresses: %d buckets kept, %d refused", 3*maxTrackedAddrs, l.size(), refused)
	if n := l.size(); n > maxTrackedAddrs {
		t.Fatalf("%d buckets, more than %d", n, maxTrackedAddrs)
	}
	if refused != 0 {
		t.Fatalf("%d new addresses refused: they share a bucket", refused)
	}
	// Two seconds later every bucket is full again: they are forgotten
	// as new addresses come, and a new address gets its own.
	later := now.Add(2 * time.Second)
	for i := range 100 {
		if ok, _ := l.allow(fmt.Sprintf("192.0.2.%d", 100+i), later); !ok {
			t.Fatalf("new address %d refused after idling", i)
		}
	}
	if n := l.size(); n > maxTrackedAddrs-100 {
		t.Fatalf("%d buckets after idling: full ones are not forgotten", n)
	}
	ok, wait := l.allow("192.0.2.1", later)
	ok1, _ := l.allow("192.0.2.1", later)
	if ok2, wait2 := l.allow("192.0.2.1", later); !ok || !ok1 || ok2 || wait2 <= 0 || wait2 > time.Second {
		t.Fatalf("burst of 2 then refused with a wait: %v %v %v %v %v", ok, wait, ok1, ok2, wait2)
	}
}

// TestAddrLimiterIPv6Prefix: IPv6 clients are counted by their /64 (a
// host may use any address of it), IPv4 ones (mapped too) by address.
func TestAddrLimiterIPv6Prefix(t *testing.T) {
	for _, tt := range []struct{ a, b string }{
		{"2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff"},
		{"2001:db8:1:2::1%eth0", "2001:db8:1:2::99"},
		{"::ffff:192.0.2.1", "192.0.2.1"},
	} {
		if ka, kb := addrKey(tt.a), addrKey(tt.b); ka != kb {
			t.Errorf("%s -> %q, %s -> %q: want one key", tt.a, ka, tt.b, kb)
		}
	}
	for _, tt := range []struct{ a, b string }{
		{"2001:db8:1:2::1", "2001:db8:1:3::1"},
		{"192.0.2.1", "192.0.2.2"},
	} {
		if addrKey(tt.a) == addrKey(tt.b) {
			t.Errorf("%s and %s share a key %q", tt.a, tt.b, addrKey(tt.a))
		}
	}
	l := newAddrLimiter(1)
	now := time.Unix(1000, 0)
	for i := range 2 {
		if ok, _ := l.allow(fmt.Sprintf("2001:db8:1:2::%x", i+1), now); !ok {
			t.Fatalf("address %d of the /64 refused within the burst", i)
		}
	}
	for i := range 1000 {
		if ok, _ := l.allow(fmt.Sprintf("2001:db8:1:2:%x::1", i+1), now); ok {
			t.Fatalf("address %d of a spent /64 got a token", i)
		}
	}
	if ok, _ := l.allow("2001:db8:1:3::1", now); !ok {
		t.Fatal("another /64 refused")
	}
	if n := l.size(); n != 2 {
		t.Fatalf("%d buckets for two /64s", n)
	}
}
