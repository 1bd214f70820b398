package web_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/vigil-media/vigil/signaling"
	"github.com/vigil-media/vigil/signaling/vigiltest"
)

// TestRoomMovedStartsOver: a page whose participant leaves with reason
// room_moved (its room moved to another node of a cluster) opens a new
// session with its token, as after a lost session, instead of showing
// that it left; media flows both ways again.
func TestRoomMovedStartsOver(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "moving", "conference")
	b := startBrowser(t)
	alice := b.open(t, "alice", srv.JoinURL(t, "moving", "alice", "participant"))
	bob := b.open(t, "bob", srv.JoinURL(t, "moving", "bob", "participant"))
	waitDecoding(t, alice, "alice", "bob")

	room, err := srv.SFU.Room("moving")
	if err != nil {
		t.Fatal(err)
	}
	room.Participant("alice").Leave(signaling.ReasonRoomMoved)
	waitFor(t, 15*time.Second, "alice joined again", func() (bool, string) {
		var events []string
		if err := eval(alice, `window.vigil.events`, &events); err != nil {
			return false, err.Error()
		}
		var state string
		if err := eval(alice, `window.vigil.state`, &state); err != nil {
			return false, err.Error()
		}
		return countOf(events, "joined") == 2 && state == "joined", fmt.Sprintf("state %s, events %v", state, events)
	})
	waitDecoding(t, alice, "alice", "bob")
	waitDecoding(t, bob, "bob", "alice")
}
