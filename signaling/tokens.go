package signaling

import (
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/vigil-media/vigil/sfu"
)

// MaxTokenTTL is the longest life of a join token. Verify refuses a token
// that claims a longer one, so that a revocation never has to be kept
// longer than this.
const MaxTokenTTL = 24 * time.Hour

// Claims are what a join token carries.
type Claims struct {
	Room string `json:"room"`
	Role string `json:"role"`
	// Instance is the room instance the token is for (sfu.Room.Instance):
	// set by the admin API, refused (ErrTokenRoomInstance) by any other
	// instance of the room's name. Empty in a token minted offline
	// without one: it joins whichever instance is live, and reads no
	// evidence.
	Instance string `json:"rin,omitempty"`
	jwt.RegisteredClaims
}

// Tokens mints, verifies and revokes join tokens: HS256 JWTs whose key is
// derived from the admin key, so that anyone holding the admin key can
// mint offline and a changed admin key invalidates every token.
type Tokens struct {
	key []byte
	now func() time.Time

	mu      sync.Mutex // guards revoked; nothing is locked while holding it
	revoked map[revocationKey]revocation
}

// revocationKey names every token of one identity in one room.
type revocationKey struct{ room, identity string }

// revocation is what is kept of a Revoke. Times are Unix seconds, the
// resolution of a token's iat: a token is revoked when its iat is at or
// before revokedUpTo. A token minted in that same second, after the
// revocation, is issued with iat revokedUpTo+1 (up to a second ahead of
// the clock); issued is the latest such iat, which the next revocation
// must cover.
type revocation struct {
	revokedUpTo int64
	issued      int64
}

const tokenIssuer = "vigil"

// NewTokens derives the signing key from the admin key. now may be nil.
func NewTokens(adminKey string, now func() time.Time) *Tokens {
	if now == nil {
		now = time.Now
	}
	m := hmac.New(sha256.New, []byte(adminKey))
	m.Write([]byte("vigil join token v1"))
	return &Tokens{key: m.Sum(nil), now: now, revoked: map[revocationKey]revocation{}}
}

// Mint signs a token for identity as role in room, valid for ttl (at most
// MaxTokenTTL), bound to no room instance (MintFor binds one).
func (t *Tokens) Mint(room, identity, role string, ttl time.Duration) (string, time.Time, error) {
	return t.MintFor(room, "", identity, role, ttl)
}

// MintFor is Mint for one instance of room (sfu.Room.Instance; "" for
// none).
func (t *Tokens) MintFor(room, instance, identity, role string, ttl time.Duration) (string, time.Time, error) {
	if ttl <= 0 || ttl > MaxTokenTTL {
		return "", time.Time{}, fmt.Errorf("%w: a token lives 1s to %v", ErrInvalidRequest, MaxTokenTTL)
	}
	now := t.now()
	iat := now.Unix()
	t.mu.Lock()
	if rv, ok := t.revoked[revocationKey{room, identity}]; ok && iat <= rv.revokedUpTo {
		// Minted after a revocation in the same second: the token must
		// not look revoked.
		iat = rv.revokedUpTo + 1
		rv.issued = max(rv.issued, iat)
		t.revoked[revocationKey{room, identity}] = rv
	}
	t.mu.Unlock()
	exp := now.Add(ttl)
	claims := Claims{Room: room, Role: role, Instance: instance, RegisteredClaims: jwt.RegisteredClaims{
		Issuer: tokenIssuer, Subject: identity,
		IssuedAt: jwt.NewNumericDate(time.Unix(iat, 0)), NotBefore: jwt.NewNumericDate(now.Add(-5 * time.Second)),
		ExpiresAt: jwt.NewNumericDate(exp),
	}}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(t.key)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("sign token: %w", err)
	}
	return s, exp, nil
}

// Verify checks a token's algorithm (HS256 only), signature, issuer,
// expiry, not-before, lifetime (at most MaxTokenTTL from iat) and
// revocation. It returns ErrTokenExpired, ErrTokenRevoked or
// ErrInvalidToken.
func (t *Tokens) Verify(token string) (*Claims, error) {
	claims := &Claims{}
	_, err := jwt.ParseWithClaims(token, claims, func(*jwt.Token) (any, error) { return t.key, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithIssuer(tokenIssuer), jwt.WithExpirationRequired(), jwt.WithTimeFunc(t.now))
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return nil, ErrTokenExpired
	case err != nil:
		return nil, fmt.Errorf("%w: %v", ErrInvalidToken, err)
	case claims.Subject == "" || claims.Room == "" || claims.Role == "":
		return nil, fmt.Errorf("%w: missing room, subject or role", ErrInvalidToken)
	case claims.Instance != "" && !sfu.ValidInstance(claims.Instance):
		return nil, fmt.Errorf("%w: malformed room instance", ErrInvalidToken)
	case claims.IssuedAt == nil:
		return nil, fmt.Errorf("%w: missing iat", ErrInvalidToken)
	case claims.ExpiresAt.Sub(claims.IssuedAt.Time) > MaxTokenTTL:
		return nil, fmt.Errorf("%w: lives longer than %v", ErrInvalidToken, MaxTokenTTL)
	}
	if t.Revoked(claims) {
		return nil, ErrTokenRevoked
	}
	return claims, nil
}

// Revoked reports whether the claims' token has been revoked.
func (t *Tokens) Revoked(c *Claims) bool {
	if c.IssuedAt == nil {
		return true
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	rv, ok := t.revoked[revocationKey{c.Room, c.Subject}]
	return ok && c.IssuedAt.Unix() <= rv.revokedUpTo
}

// Revoke makes every token of identity in room minted up to now stop
// verifying (ErrTokenRevoked); tokens minted after it work. It returns
// the time of the revocation. A revocation is forgotten once every token
// it covers has expired, so the list stays bounded by what was revoked
// in the last MaxTokenTTL.
func (t *Tokens) Revoke(room, identity string) time.Time {
	now := t.now()
	key := revocationKey{room, identity}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.pruneLocked(now)
	rv := t.revoked[key]
	rv.revokedUpTo = max(rv.revokedUpTo, rv.issued, now.Unix())
	rv.issued = rv.revokedUpTo
	t.revoked[key] = rv
	return now
}

// RevokeAt records a revocation made at `at` on another node of the
// cluster: the tokens of identity in room issued up to that second stop
// verifying. One older than every token it could cover is ignored.
func (t *Tokens) RevokeAt(room, identity string, at time.Time) {
	now := t.now()
	if at.Unix() < now.Add(-MaxTokenTTL-time.Second).Unix() {
		return
	}
	key := revocationKey{room, identity}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.pruneLocked(now)
	rv := t.revoked[key]
	rv.revokedUpTo = max(rv.revokedUpTo, at.Unix())
	rv.issued = max(rv.issued, rv.revokedUpTo)
	t.revoked[key] = rv
}

// pruneLocked forgets revocations whose tokens have all expired: each
// covers tokens with iat at or before revokedUpTo, which expire at most
// MaxTokenTTL later.
func (t *Tokens) pruneLocked(now time.Time) {
	limit := now.Add(-MaxTokenTTL - time.Second).Unix()
	for k, rv := range t.revoked {
		if rv.revokedUpTo < limit {
			delete(t.revoked, k)
		}
	}
}

// revocations is the number of revocations kept (for tests).
func (t *Tokens) revocations() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.revoked)
}
