package vigiltest

import (
	"testing"

	"github.com/pion/ice/v4"
	"github.com/pion/webrtc/v4"
)

// PionAPI is a pion API for a test's WebRTC clients of a server on this
// machine: ICE over IPv4 UDP on the loopback interface only, loopback
// candidates included, no mDNS, and pion's default codecs.
func PionAPI(t testing.TB) *webrtc.API {
	t.Helper()
	se := webrtc.SettingEngine{}
	se.SetIncludeLoopbackCandidate(true)
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	se.SetInterfaceFilter(func(name string) bool { return name == "lo" })
	me := &webrtc.MediaEngine{}
	if err := me.RegisterDefaultCodecs(); err != nil {
		t.Fatal(err)
	}
	return webrtc.NewAPI(webrtc.WithSettingEngine(se), webrtc.WithMediaEngine(me))
}
