package signaling

import (
	"fmt"
	"testing"
	"time"
)

// TestAddrLimiterBoundedMemory: a flood from more addresses than it
// tracks keeps the limiter's map bounded; the addresses beyond share one
// bucket, and idle buckets are forgotten.
func TestAddrLimiterBoundedMemory(t *testing.T) {
	l := newAddrLimiter(1) // bursts of 2
	now := time.Unix(1000, 0)
	refused := 0
	for i := range 3 * maxTrackedAddrs {
		if ok, _ := l.allow(fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), now); !ok {
			refused++
		}
	}
	if n := l.size(); n > maxTrackedAddrs {
		t.Fatalf("%d buckets, more than %d", n, maxTrackedAddrs)
	}
	if want := 2*maxTrackedAddrs - 2; refused != want {
		t.Fatalf("%d refused, want %d (the overflow bucket's burst is 2)", refused, want)
	}
	// Two seconds later every bucket is full again: a new address gets
	// its own.
	if ok, _ := l.allow("192.0.2.1", now.Add(2*time.Second)); !ok || l.size() != 1 {
		t.Fatalf("after idling: ok=%v, %d buckets", ok, l.size())
	}
	ok, wait := l.allow("192.0.2.1", now.Add(2*time.Second))
	if ok2, wait2 := l.allow("192.0.2.1", now.Add(2*time.Second)); !ok || ok2 || wait2 <= 0 || wait2 > time.Second {
		t.Fatalf("burst of 2 then refused with a wait: %v %v %v %v", ok, wait, ok2, wait2)
	}
}
