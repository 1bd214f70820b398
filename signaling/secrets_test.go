package signaling_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/vigil-media/vigil/signaling"
	"github.com/vigil-media/vigil/signaling/vigiltest"
)

// TestAdminKeyGuessesThrottled performs an online guessing attack on the
// admin key: after AdminAuthFailures wrong keys from one address in a
// minute, that address gets 429 with Retry-After for every admin-key
// attempt, even the right key (so guessing cannot go on), while another
// address is served, and join tokens from the throttled address still
// work. An IPv6 client is counted by its /64.
func TestAdminKeyGuessesThrottled(t *testing.T) {
	srv := vigiltest.StartWith(t, vigiltest.Options{Configure: func(c *signaling.Config) {
		c.AdminAuthFailures = 3
		c.TrustedProxies = []string{"127.0.0.1"} // X-Forwarded-For names the attacker
	}})
	srv.CreateRoom(t, "exam", "proctoring")
	proctor := srv.Token(t, "exam", "pat", "proctor")
	from := func(addr, bearer, path string) (*http.Response, []byte) {
		return request(t, srv, "GET", path, map[string]string{"Authorization": "Bearer " + bearer, "X-Forwarded-For": addr}, "")
	}
	const attacker = "203.0.113.7"
	guesses := 0
	for i := range 3 {
		guesses++
		resp, body := from(attacker, fmt.Sprintf("guess-%d", i), "/v1/rooms")
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("guess %d: %d %s, want 401", i, resp.StatusCode, body)
		}
	}
	// Guesses through the evidence readers (admin key or join token)
	// count too, and are refused the same way.
	for _, path := range []string{"/v1/rooms", "/v1/rooms/exam/incidents"} {
		guesses++
		resp, body := from(attacker, "another-guess", path)
		wantRateLimited(t, path+" after 3 failures", resp, body)
	}
	resp, body := from(attacker, srv.AdminKey, "/v1/rooms")
	wantRateLimited(t, "the right key from the throttled address", resp, body)
	if resp, body := from("203.0.113.8", srv.AdminKey, "/v1/rooms"); resp.StatusCode != 200 {
		t.Fatalf("the admin from another address: %d %s", resp.StatusCode, body)
	}
	if resp, body := from(attacker, proctor, "/v1/rooms/exam/incidents"); resp.StatusCode != 200 {
		t.Fatalf("a proctor's join token from the throttled address: %d %s", resp.StatusCode, body)
	}
	for i := range 3 {
		guesses++
		if resp, body := from(fmt.Sprintf("2001:db8:1:2::%x", i+1), "v6-guess", "/v1/rooms"); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("IPv6 guess %d: %d %s", i, resp.StatusCode, body)
		}
	}
	resp, body = from("2001:db8:1:2:ffff::1", srv.AdminKey, "/v1/rooms")
	wantRateLimited(t, "another address of the same IPv6 /64", resp, body)
	t.Logf("%d guesses made, 6 of them compared with the key; Retry-After %s s", guesses, resp.Header.Get("Retry-After"))
}

// tokenKey is how the server derives its join tokens' key from the token
// secret (tokens.go), so that this test can forge what a client could
// only forge holding the secret.
func tokenKey(secret string) []byte {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte("vigil join token v1"))
	return m.Sum(nil)
}

// TestFutureIssuedAtRefused: a token issued more than a minute ahead of
// the server's clock (a token that would outlive every revocation made
// before its iat) is refused with invalid_token; one within the skew is
// accepted.
func TestFutureIssuedAtRefused(t *testing.T) {
	srv := vigiltest.Start(t)
	srv.CreateRoom(t, "a", "conference")
	mint := func(identity string, ahead time.Duration) string {
		now := time.Now()
		tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, signaling.Claims{Room: "a", Role: "participant", RegisteredClaims: jwt.RegisteredClaims{
			Issuer: "vigil", Subject: identity, IssuedAt: jwt.NewNumericDate(now.Add(ahead)),
			NotBefore: jwt.NewNumericDate(now.Add(-5 * time.Second)), ExpiresAt: jwt.NewNumericDate(now.Add(ahead + time.Hour)),
		}}).SignedString(tokenKey(srv.TokenSecret))
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	status, body := srv.Do(t, "POST", "/v1/rooms/a/sessions", mint("later", 10*time.Minute), nil)
	if status != 401 || vigiltest.ErrorCode(t, body) != "invalid_token" {
		t.Fatalf("iat 10 minutes ahead: %d %s, want 401 invalid_token", status, body)
	}
	if status, body := srv.Do(t, "POST", "/v1/rooms/a/sessions", mint("skewed", 20*time.Second), nil); status != 201 {
		t.Fatalf("iat 20 s ahead (clock skew): %d %s, want 201", status, body)
	}
	// Revoked now, the far-future token would otherwise outlive the
	// revocation: it stays refused.
	srv.Do(t, "POST", "/v1/rooms/a/tokens/revoke", srv.AdminKey, map[string]string{"identity": "later"})
	if status, _ := srv.Do(t, "POST", "/v1/rooms/a/sessions", mint("later", 10*time.Minute), nil); status != 401 {
		t.Fatalf("after revocation: %d", status)
	}
}

// TestRevocationsSurviveRestart: a token revoked, then the server
// restarted on the same data directory (its SQLite database) and token
// secret, the token is still refused (token_revoked); a token minted
// after the revocation is accepted. The tokens are minted offline, bound
// to no room instance (as `vigil token` without -instance), so that they
// join the room made again after the restart: revocations are by room
// name and identity, whatever the instance.
func TestRevocationsSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	first := vigiltest.StartWith(t, vigiltest.Options{DataDir: dir})
	first.CreateRoom(t, "exam", "proctoring")
	offline := func(identity string) string {
		tok, _, err := signaling.NewTokens(first.TokenSecret, nil).Mint("exam", identity, "candidate", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	revoked, other := offline("mallory"), offline("alice")
	if status, body := first.Do(t, "POST", "/v1/rooms/exam/tokens/revoke", first.AdminKey, map[string]string{"identity": "mallory"}); status != 200 {
		t.Fatalf("revoke: %d %s", status, body)
	}
	// A revocation covers the tokens issued up to its second.
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second)))
	after := offline("mallory")
	first.Close()

	second := vigiltest.StartWith(t, vigiltest.Options{DataDir: dir})
	second.CreateRoom(t, "exam", "proctoring")
	status, body := second.Do(t, "POST", "/v1/rooms/exam/sessions", revoked, nil)
	if status != 401 || vigiltest.ErrorCode(t, body) != "token_revoked" {
		t.Fatalf("the revoked token after a restart: %d %s, want 401 token_revoked", status, body)
	}
	for name, tok := range map[string]string{"another identity's token": other, "a token minted after the revocation": after} {
		if status, body := second.Do(t, "POST", "/v1/rooms/exam/sessions", tok, nil); status != 201 {
			t.Fatalf("%s after a restart: %d %s, want 201", name, status, body)
		}
	}
}
