package signaling

import (
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/vigil-media/vigil/incidents"
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
// derived from the token secret (Config.TokenSecret), which is independent
// of the admin key: a leaked join token gives nothing to brute-force the
// admin key with offline. Anyone holding the token secret can mint
// offline (`vigil token`); a changed secret invalidates every token.
type Tokens struct {
	key []byte
	now func() time.Time

	mu      sync.Mutex // guards revoked; nothing is locked while holding it
	revoked map[revocationKey]revocation

	// store, if set (Persist), keeps revocations across restarts; set
	// once before the server serves, read-only after.
	store RevocationStore
	log   *slog.Logger
}

// MaxIssuedAtSkew is how far in the future a token's iat may be (clocks
// of the nodes that mint differ a little); Verify refuses a token issued
// later than that.
const MaxIssuedAtSkew = 60 * time.Second

// RevocationStore keeps revocations across restarts (on a single node,
// the SQLite database of package incidents). Its methods are called
// without any lock of Tokens held.
type RevocationStore interface {
	// SaveRevocation records that the tokens of identity in room issued
	// up to the Unix second upTo are revoked.
	SaveRevocation(room, identity string, upTo int64) error
	// Revocations are the revocations recorded with upTo at or after
	// since (Unix seconds), after forgetting the older ones.
	Revocations(since int64) ([]incidents.Revocation, error)
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

// NewTokens derives the signing key from secret, the token secret (never
// the admin key). now may be nil.
func NewTokens(secret string, now func() time.Time) *Tokens {
	if now == nil {
		now = time.Now
	}
	m := hmac.New(sha256.New, []byte(secret))
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
// expiry, not-before, issue time (at most MaxIssuedAtSkew ahead of the
// clock), lifetime (at most MaxTokenTTL from iat) and revocation. It returns ErrTokenExpired, ErrTokenRevoked or
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
	case claims.IssuedAt.Sub(t.now()) > MaxIssuedAtSkew:
		return nil, fmt.Errorf("%w: issued in the future (iat more than %v ahead)", ErrInvalidToken, MaxIssuedAtSkew)
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
// in the last MaxTokenTTL. With a store (Persist) it is also saved
// there, so that a restart does not revive the tokens; it applies here
// whether or not saving succeeds (a failure is logged as an error).
func (t *Tokens) Revoke(room, identity string) time.Time {
	now := t.now()
	key := revocationKey{room, identity}
	t.mu.Lock()
	t.pruneLocked(now)
	rv := t.revoked[key]
	rv.revokedUpTo = max(rv.revokedUpTo, rv.issued, now.Unix())
	rv.issued = rv.revokedUpTo
	t.revoked[key] = rv
	t.mu.Unlock()
	if t.store != nil {
		if err := t.store.SaveRevocation(room, identity, rv.revokedUpTo); err != nil {
			t.log.Error("revocation not saved: a restart would let these tokens in again", "room", room, "participant", identity, "err", err)
		}
	}
	return now
}

// Persist loads the revocations st keeps that may still cover a live
// token, and saves every later Revoke there (failures logged to log).
// Call it once, before the tokens are used.
func (t *Tokens) Persist(st RevocationStore, log *slog.Logger) error {
	now := t.now()
	kept, err := st.Revocations(now.Add(-MaxTokenTTL - time.Second).Unix())
	if err != nil {
		return fmt.Errorf("load revocations: %w", err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, r := range kept {
		key := revocationKey{r.Room, r.Identity}
		rv := t.revoked[key]
		rv.revokedUpTo = max(rv.revokedUpTo, r.UpTo)
		rv.issued = max(rv.issued, rv.revokedUpTo)
		t.revoked[key] = rv
	}
	t.store, t.log = st, log
	return nil
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
