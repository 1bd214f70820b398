package sfu

import (
	"errors"
	"testing"
)

// TestRoomInstance: every room created gets an instance of its own, a
// room created again under the same name another one; an instance given
// (a room re-homed in a cluster) is kept, a malformed one refused.
func TestRoomInstance(t *testing.T) {
	s := newTestSFU(t)
	t.Cleanup(func() { _ = s.Close() })
	first, err := s.CreateRoom("exam", KindProctoring, RoomOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !ValidInstance(first.Instance()) || first.Options().Instance != first.Instance() {
		t.Fatalf("instance %q", first.Instance())
	}
	first.Close(ReasonRoomClosed)
	again, err := s.CreateRoom("exam", KindProctoring, RoomOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if again.Instance() == first.Instance() || !ValidInstance(again.Instance()) {
		t.Fatalf("the room created again has instance %q, the first had %q", again.Instance(), first.Instance())
	}
	kept, err := s.CreateRoom("moved", KindConference, RoomOptions{Instance: "0123456789abcdef"})
	if err != nil || kept.Instance() != "0123456789abcdef" {
		t.Fatalf("given instance: %v %v", kept, err)
	}
	for _, bad := range []string{"0123456789ABCDEF", "123", "0123456789abcdef0", "../../etc/passwd"} {
		if _, err := s.CreateRoom("bad", KindConference, RoomOptions{Instance: bad}); !errors.Is(err, ErrInvalidName) {
			t.Errorf("instance %q: %v", bad, err)
		}
	}
}
