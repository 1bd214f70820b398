package signaling

import (
	"fmt"
	"testing"
	"time"
)

// TestAuthThrottleBounded: failed admin-key attempts from more addresses
// than maxTrackedAddrs keep at most that many windows, the oldest making
// room; no window is shared, so an address that never failed is never
// refused however many addresses an attacker fails from (a shared
// overflow window would lock every new admin address out); windows that
// are over are forgotten, making room again.
func TestAuthThrottleBounded(t *testing.T) {
	a := newAuthThrottle(2, time.Minute)
	now := time.Unix(1_700_000_000, 0)
	addr := func(i int) string { return fmt.Sprintf("10.%d.%d.%d", i>>16, (i>>8)&255, i&255) }
	for i := range maxTrackedAddrs + 100 {
		at := now.Add(time.Duration(i) * time.Microsecond)
		for range 3 {
			a.fail(addr(i), at)
		}
	}
	if n := a.size(); n != maxTrackedAddrs {
		t.Fatalf("%d windows kept, want %d", n, maxTrackedAddrs)
	}
	at := now.Add(time.Second)
	if blocked, _ := a.blocked("192.0.2.1", at); blocked {
		t.Fatal("an address that never failed is refused: the attackers' failures reached it")
	}
	if blocked, _ := a.blocked(addr(maxTrackedAddrs+99), at); !blocked {
		t.Fatal("the newest attacker, three failures over a limit of two, is not refused")
	}
	if blocked, _ := a.blocked(addr(0), at); blocked {
		t.Fatal("the oldest window was not the one to make room")
	}
	later := now.Add(2 * time.Minute)
	a.fail("192.0.2.2", later)
	if n := a.size(); n != 1 {
		t.Fatalf("after the window, %d windows kept, want 1 (the others swept)", n)
	}
	if blocked, _ := a.blocked(addr(maxTrackedAddrs+99), later); blocked {
		t.Fatal("still blocked after the window")
	}
}
