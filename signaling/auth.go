package signaling

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/gin-gonic/gin"
)

// Authentication: the admin key (requireAdmin) and, for the readers of
// evidence, the admin key or a join token (adminOrToken). Join tokens
// themselves are tokens.go.

// requireAdmin checks the bearer admin key in constant time.
func (s *Server) requireAdmin(c *gin.Context) {
	key, ok := bearer(c.Request)
	sum := sha256.Sum256([]byte(key))
	if !ok || subtle.ConstantTimeCompare(sum[:], s.admin[:]) != 1 {
		writeError(c, ErrUnauthorized)
		return
	}
	c.Next()
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
// token's claims otherwise; ok false once the error is written.
func (s *Server) adminOrToken(c *gin.Context) (claims *Claims, ok bool) {
	key, ok := bearer(c.Request)
	if !ok {
		writeError(c, ErrUnauthorized)
		return nil, false
	}
	sum := sha256.Sum256([]byte(key))
	if subtle.ConstantTimeCompare(sum[:], s.admin[:]) == 1 {
		return nil, true
	}
	claims, err := s.tokens.Verify(key)
	switch {
	case errors.Is(err, ErrTokenExpired), errors.Is(err, ErrTokenRevoked):
		writeError(c, err)
		return nil, false
	case err != nil:
		writeError(c, fmt.Errorf("%w: neither the admin key nor a valid join token", ErrUnauthorized))
		return nil, false
	}
	return claims, true
}
