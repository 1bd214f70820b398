package signaling

import (
	"errors"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// fixedClock is a clock that moves only when told.
type fixedClock struct{ t time.Time }

func (c *fixedClock) now() time.Time { return c.t }

// TestRevocationWithinOneSecond walks the one-second resolution of iat:
// a revocation covers every token minted before it, even in the same
// second, and none minted after it, even in the same second.
func TestRevocationWithinOneSecond(t *testing.T) {
	clk := &fixedClock{t: time.Unix(1_700_000_000, 300_000_000)}
	tk := NewTokens("key", clk.now)
	mint := func() string {
		t.Helper()
		s, _, err := tk.Mint("r", "alice", "participant", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	verify := func(tok string) error {
		_, err := tk.Verify(tok)
		return err
	}
	before := mint()
	bob, _, _ := tk.Mint("r", "bob", "participant", time.Hour)
	other, _, _ := tk.Mint("r2", "alice", "participant", time.Hour)
	clk.t = clk.t.Add(400 * time.Millisecond) // same second
	tk.Revoke("r", "alice")
	if err := verify(before); !errors.Is(err, ErrTokenRevoked) {
		t.Fatalf("token minted before the revocation in the same second: %v, want revoked", err)
	}
	if err := verify(bob); err != nil {
		t.Fatalf("another identity's token: %v", err)
	}
	if err := verify(other); err != nil {
		t.Fatalf("the identity's token for another room: %v", err)
	}

	clk.t = clk.t.Add(100 * time.Millisecond) // still the same second
	after := mint()
	if err := verify(after); err != nil {
		t.Fatalf("token minted after the revocation in the same second: %v", err)
	}
	// Revoking again, still in that second, covers the token just minted.
	clk.t = clk.t.Add(100 * time.Millisecond)
	tk.Revoke("r", "alice")
	if err := verify(after); !errors.Is(err, ErrTokenRevoked) {
		t.Fatalf("token minted between two revocations: %v, want revoked", err)
	}
	again := mint()
	if err := verify(again); err != nil {
		t.Fatalf("token minted after the second revocation: %v", err)
	}
	// Seconds later, tokens minted work and revoked ones stay revoked.
	clk.t = clk.t.Add(3 * time.Second)
	if err := verify(mint()); err != nil {
		t.Fatalf("token minted later: %v", err)
	}
	if err := verify(before); !errors.Is(err, ErrTokenRevoked) {
		t.Fatalf("revoked token later: %v", err)
	}
	if err := verify(again); err != nil {
		t.Fatalf("token minted after the revocations, later: %v", err)
	}
}

// TestRevocationsAreForgotten checks the bound: a revocation is dropped
// once every token it covers has expired, and tokens cannot claim a life
// longer than that.
func TestRevocationsAreForgotten(t *testing.T) {
	clk := &fixedClock{t: time.Unix(1_700_000_000, 0)}
	tk := NewTokens("key", clk.now)
	old, _, err := tk.Mint("r", "a", "participant", MaxTokenTTL)
	if err != nil {
		t.Fatal(err)
	}
	tk.Revoke("r", "a")
	tk.Revoke("r", "b")
	if n := tk.revocations(); n != 2 {
		t.Fatalf("%d revocations, want 2", n)
	}
	clk.t = clk.t.Add(MaxTokenTTL - time.Second)
	tk.Revoke("r", "c")
	if n := tk.revocations(); n != 3 {
		t.Fatalf("%d revocations before expiry, want 3", n)
	}
	if _, err := tk.Verify(old); !errors.Is(err, ErrTokenRevoked) {
		t.Fatalf("revoked token just before it expires: %v", err)
	}
	clk.t = clk.t.Add(3 * time.Second)
	tk.Revoke("r", "d")
	if n := tk.revocations(); n != 2 {
		t.Fatalf("%d revocations after the first ones' tokens expired, want 2 (c, d)", n)
	}
	if _, err := tk.Verify(old); !errors.Is(err, ErrTokenExpired) {
		t.Fatalf("the token of a forgotten revocation: %v, want expired", err)
	}

	// A token signed with the right key but claiming a longer life, or no
	// iat, is refused.
	for name, claims := range map[string]Claims{
		"too long": {Room: "r", Role: "participant", RegisteredClaims: jwt.RegisteredClaims{Issuer: tokenIssuer, Subject: "x",
			IssuedAt: jwt.NewNumericDate(clk.t), ExpiresAt: jwt.NewNumericDate(clk.t.Add(MaxTokenTTL + time.Minute))}},
		"no iat": {Room: "r", Role: "participant", RegisteredClaims: jwt.RegisteredClaims{Issuer: tokenIssuer, Subject: "x",
			ExpiresAt: jwt.NewNumericDate(clk.t.Add(time.Minute))}},
	} {
		s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(tk.key)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tk.Verify(s); !errors.Is(err, ErrInvalidToken) {
			t.Errorf("%s: %v, want ErrInvalidToken", name, err)
		}
	}
	if _, _, err := tk.Mint("r", "x", "participant", MaxTokenTTL+time.Second); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("minting beyond MaxTokenTTL: %v", err)
	}
}

// TestFutureIssuedAt: Verify refuses a token whose iat is more than
// MaxIssuedAtSkew ahead of its clock, and accepts one within it.
func TestFutureIssuedAt(t *testing.T) {
	clk := &fixedClock{t: time.Unix(1_700_000_000, 0)}
	tk := NewTokens("key", clk.now)
	sign := func(iat time.Time) string {
		s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, Claims{Room: "r", Role: "participant", RegisteredClaims: jwt.RegisteredClaims{
			Issuer: tokenIssuer, Subject: "a", IssuedAt: jwt.NewNumericDate(iat),
			NotBefore: jwt.NewNumericDate(clk.t.Add(-time.Second)), ExpiresAt: jwt.NewNumericDate(iat.Add(time.Hour)),
		}}).SignedString(tk.key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	if _, err := tk.Verify(sign(clk.t.Add(MaxIssuedAtSkew + time.Second))); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("iat beyond the skew: %v, want invalid", err)
	}
	if _, err := tk.Verify(sign(clk.t.Add(MaxIssuedAtSkew))); err != nil {
		t.Fatalf("iat at the skew: %v", err)
	}
}
