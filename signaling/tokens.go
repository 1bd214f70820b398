package signaling

import (
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Claims are what a join token carries.
type Claims struct {
	Room string `json:"room"`
	Role string `json:"role"`
	jwt.RegisteredClaims
}

// Tokens mints and verifies join tokens: HS256 JWTs whose key is derived
// from the admin key, so that anyone holding the admin key can mint
// offline and a changed admin key invalidates every token.
type Tokens struct {
	key []byte
	now func() time.Time
}

const tokenIssuer = "vigil"

// NewTokens derives the signing key from the admin key. now may be nil.
func NewTokens(adminKey string, now func() time.Time) *Tokens {
	if now == nil {
		now = time.Now
	}
	m := hmac.New(sha256.New, []byte(adminKey))
	m.Write([]byte("vigil join token v1"))
	return &Tokens{key: m.Sum(nil), now: now}
}

// Mint signs a token for identity as role in room, valid for ttl.
func (t *Tokens) Mint(room, identity, role string, ttl time.Duration) (string, time.Time, error) {
	now := t.now()
	exp := now.Add(ttl)
	claims := Claims{Room: room, Role: role, RegisteredClaims: jwt.RegisteredClaims{
		Issuer: tokenIssuer, Subject: identity,
		IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now.Add(-5 * time.Second)),
		ExpiresAt: jwt.NewNumericDate(exp),
	}}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(t.key)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("sign token: %w", err)
	}
	return s, exp, nil
}

// Verify checks a token's algorithm (HS256 only), signature, issuer,
// expiry and not-before. It returns ErrTokenExpired or ErrInvalidToken.
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
	}
	return claims, nil
}
