package signaling

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
)

// Authentication: the admin key (requireAdmin) and, for the readers of
// evidence, the admin key or a join token (adminOrToken). Join tokens
// themselves are tokens.go.

// requireAdmin checks the bearer admin key in constant time. A client
// address with too many failed attempts is refused first
// (auth_limit.go).
func (s *Server) requireAdmin(c *gin.Context) {
	key, ok := bearer(c.Request)
	if !ok {
		writeError(c, ErrUnauthorized)
		return
	}
	addr, now := s.fed.ClientAddr(c), time.Now()
	if blocked, wait := s.authFailures.blocked(addr, now); blocked {
		refuseRate(c, wait, "too many failed admin-key attempts from this address")
		return
	}
	if !s.isAdminKey(key) {
		s.authFailures.fail(addr, now)
		writeError(c, ErrUnauthorized)
		return
	}
	c.Next()
}

// isAdminKey compares key with the admin key in constant time.
func (s *Server) isAdminKey(key string) bool {
	sum := sha256.Sum256([]byte(key))
	return subtle.ConstantTimeCompare(sum[:], s.admin[:]) == 1
}

func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return "", false
	}
	return strings.TrimSpace(tok), true
}

// adminOrToken authenticates a reader who may be an admin or hold a join
// token: claims nil for the admin key (compared in constant time), the
// token's claims otherwise; ok false once the error is written. A bearer
// that is neither counts as a failed admin-key attempt; once its address
// has too many, the admin key is no longer compared (429) but join
// tokens still are.
func (s *Server) adminOrToken(c *gin.Context) (claims *Claims, ok bool) {
	key, ok := bearer(c.Request)
	if !ok {
		writeError(c, ErrUnauthorized)
		return nil, false
	}
	addr, now := s.fed.ClientAddr(c), time.Now()
	blocked, wait := s.authFailures.blocked(addr, now)
	if !blocked && s.isAdminKey(key) {
		return nil, true
	}
	claims, err := s.tokens.Verify(key)
	switch {
	case errors.Is(err, ErrTokenExpired), errors.Is(err, ErrTokenRevoked):
		writeError(c, err)
		return nil, false
	case err != nil && blocked:
		refuseRate(c, wait, "too many failed admin-key attempts from this address")
		return nil, false
	case err != nil:
		s.authFailures.fail(addr, now)
		writeError(c, fmt.Errorf("%w: neither the admin key nor a valid join token", ErrUnauthorized))
		return nil, false
	}
	return claims, true
}
