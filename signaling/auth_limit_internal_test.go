package signaling

import (
	"fmt"
	"testing"
	"time"
)

// TestAuthThrottleBounded: failed admin-key attempts from more addresses
// than maxTrackedAddrs keep at most that many windows; addresses beyond
// share one, which throttles them together; windows that are over are
// forgotten, making room again.
func TestAuthThrottleBounded(t *testing.T) {
	a := newAuthThrottle(2, time.Minute)
	now := time.Unix(1_700_000_000, 0)
	for i := range maxTrackedAddrs + 100 {
		a.fail(fmt.Sprintf("10.%d.%d.%d", i>>16, (i>>8)&255, i&255), now)
	}
	if n := a.size(); n != maxTrackedAddrs {
		t.Fatalf("%d windows kept, want %d", n, maxTrackedAddrs)
	}
	if blocked, _ := a.blocked("192.0.2.1", now); !blocked {
		t.Fatal("an address beyond the bound shares the overflow window, which 100 failures filled")
	}
	if blocked, _ := a.blocked("10.0.0.1", now); blocked {
		t.Fatal("an address with one failure is blocked")
	}
	later := now.Add(time.Minute)
	a.fail("192.0.2.2", later)
	if n := a.size(); n != 1 {
		t.Fatalf("after the window, %d windows kept, want 1 (the others swept)", n)
	}
	if blocked, _ := a.blocked("192.0.2.1", later); blocked {
		t.Fatal("still blocked after the window")
	}
}
