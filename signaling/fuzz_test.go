package signaling

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/vigil-media/vigil/sfu"
)

// The fuzz tests' seed corpora (testdata/fuzz and the f.Add calls) run
// with every plain `go test`; `go test -fuzz=FuzzX` explores further.

// FuzzDecodeMessage: any frame decodes to a message or to a typed error
// (never a panic, never the internal code), and what is accepted keeps
// the documented limits.
func FuzzDecodeMessage(f *testing.F) {
	for _, s := range []string{
		`{"type":"offer","id":"o1","data":{"sdp":"v=0\r\n","sources":{"0":"camera"}}}`,
		`{"type":"answer","data":{"sdp":"v=0"}}`,
		`{"type":"candidate","data":{"candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host","sdpMid":"0","sdpMLineIndex":0}}`,
		`{"type":"chat","data":{"text":"hi","to":"*"}}`,
		`{"type":"leave"}`,
		`{"type":"set_layer","data":{"track_id":"TR1","layer":"high"}}`,
		`{"type":"report_incident","data":{"type":"tab_hidden","note":"x"}}`,
		`{"type":"mute","data":{"source":"screen","muted":true}}`,
		`{"type":"talk","data":{"to":"*","on":true}}`,
		`{"type":"x"}`, `{"type":"offer","data":null}`, `{}`, `[]`, `null`, `{"type":"chat","data":{"text":"a"}}{}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMessage(b)
		if len(m.id) > maxIDBytes {
			t.Fatalf("id of %d bytes kept", len(m.id))
		}
		if err != nil {
			if _, code := codeFor(err); code != "invalid_message" && code != "unknown_type" {
				t.Fatalf("error %v has code %s", err, code)
			}
			return
		}
		switch msg := m.msg.(type) {
		case nil:
			t.Fatal("accepted without a message")
		case *OfferMessage:
			if msg.SDP == "" || len(msg.SDP) > maxSDPBytes {
				t.Fatalf("offer of %d bytes accepted", len(msg.SDP))
			}
			for _, src := range msg.Sources {
				if !src.Valid() {
					t.Fatalf("source %q accepted", src)
				}
			}
		case *AnswerMessage:
			if msg.SDP == "" || len(msg.SDP) > maxSDPBytes {
				t.Fatalf("answer of %d bytes accepted", len(msg.SDP))
			}
		}
	})
}

// FuzzParseSDPFrag: a WHIP/WHEP PATCH body parses or is refused as
// invalid_sdp; every candidate it yields names its m-line.
func FuzzParseSDPFrag(f *testing.F) {
	for _, s := range []string{
		"a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdefghijkl\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\na=end-of-candidates\r\n",
		"a=candidate:1 1 udp 1 10.0.0.1 1 typ host\n",
		"x=1\r\n", "", "a=mid:\r\na=candidate:\r\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		frag, err := parseSDPFrag(body)
		if err != nil {
			if !errors.Is(err, sfu.ErrInvalidSDP) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		for _, c := range frag.candidates {
			if c.SDPMid == nil || !strings.HasPrefix(c.Candidate, "candidate:") {
				t.Fatalf("candidate %+v", c)
			}
		}
	})
}

// FuzzTokenVerify: whatever the string, Verify refuses it with one of
// the token codes, or accepts only an HS256 token signed with the key,
// with a room, a subject, a role and a life of at most MaxTokenTTL.
func FuzzTokenVerify(f *testing.F) {
	now := time.Unix(1_800_000_000, 0)
	tk := NewTokens("fuzz-admin-key", func() time.Time { return now })
	good, _, err := tk.Mint("room", "alice", "participant", time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	parts := strings.Split(good, ".")
	none := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + parts[1] + "."
	f.Add(none)
	hs512, _ := jwt.NewWithClaims(jwt.SigningMethodHS512, jwt.MapClaims{"room": "room", "sub": "alice", "role": "participant", "iss": "vigil",
		"iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}).SignedString(tk.key)
	f.Add(hs512)
	f.Add(parts[0] + "." + parts[1] + ".AAAA")
	f.Add("")
	f.Add("a.b.c")
	for _, bad := range []string{none, hs512} {
		if _, err := tk.Verify(bad); err == nil {
			f.Fatalf("accepted %q", bad)
		}
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := tk.Verify(s)
		if err != nil {
			switch _, code := codeFor(err); code {
			case "invalid_token", "token_expired", "token_revoked":
			default:
				t.Fatalf("error %v has code %s", err, code)
			}
			return
		}
		head, _, _ := strings.Cut(s, ".")
		h, _ := base64.RawURLEncoding.DecodeString(head)
		var hdr struct {
			Alg string `json:"alg"`
		}
		if json.Unmarshal(h, &hdr) != nil || hdr.Alg != "HS256" {
			t.Fatalf("accepted a token with header %s", h)
		}
		if c.Room == "" || c.Subject == "" || c.Role == "" || c.ExpiresAt.Sub(c.IssuedAt.Time) > MaxTokenTTL {
			t.Fatalf("accepted claims %+v", c)
		}
	})
}
