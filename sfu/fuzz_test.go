package sfu

import (
	"errors"
	"testing"

	"github.com/pion/sdp/v3"
)

// fuzzOffer is a publisher's offer as pion writes it: a camera with
// simulcast and a microphone.
const fuzzOffer = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n" +
	"m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdefghijkl\r\n" +
	"a=fingerprint:sha-256 00:11\r\na=setup:actpass\r\na=rtpmap:96 VP8/90000\r\na=rid:q send\r\na=rid:h send\r\na=simulcast:send q;h\r\n" +
	"m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=sendrecv\r\na=rtpmap:111 opus/48000/2\r\n"

// FuzzOfferChecks: whatever SDP a client offers, the checks made before
// any of it is applied (publish policy, track limit, simulcast layers,
// codecs) refuse it with a typed error or accept it, and never panic;
// what an accepted one keeps is bounded by the tracks it may send.
func FuzzOfferChecks(f *testing.F) {
	f.Add(fuzzOffer)
	f.Add("v=0\r\n")
	f.Add("m=video 0 RTP/AVP 96\r\na=mid:\r\n")
	f.Fuzz(func(t *testing.T, offer string) {
		d := &sdp.SessionDescription{}
		if err := d.UnmarshalString(offer); err != nil {
			return // HandleOffer's invalid_sdp
		}
		p := &Participant{
			room: &Room{kind: KindProctoring, sfu: &SFU{cfg: Config{MaxTracks: 2}}},
			role: RoleCandidate,
		}
		p.pubs = newPublications(p)
		p.pubs.sources["1"] = SourceMicrophone
		declared, simulcast, err := p.pubs.checkOffer(d, map[string]Source{"0": SourceCamera, "2": SourceScreen})
		if err != nil && !errors.Is(err, ErrForbidden) && !errors.Is(err, ErrTooManyTracks) && !errors.Is(err, ErrInvalidSDP) {
			t.Fatalf("untyped refusal: %v", err)
		}
		if err == nil && (len(declared) > 2 || len(simulcast) > len(declared)) {
			t.Fatalf("accepted offer keeps %d sources, %d simulcast mids: more than it may send on", len(declared), len(simulcast))
		}
		for mid, rids := range parseSimulcast(d) {
			if len(rids) == 0 {
				t.Fatalf("mid %q: simulcast without layers", mid)
			}
		}
		SDPCodecs(d, func(string) bool { return true })
	})
}
