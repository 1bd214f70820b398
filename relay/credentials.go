package relay

import (
	"crypto/hmac"
	"crypto/sha1" //nolint:gosec // the TURN REST credentials scheme is HMAC-SHA1
	"encoding/base64"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/pion/stun/v4"
	"github.com/pion/turn/v5"
	"github.com/pion/webrtc/v4"
)

// revocationKey names every credential of one identity in one room.
type revocationKey struct{ room, identity string }

// revocation is what is kept of a Revoke, in Unix seconds, the
// resolution of a username's expiry: credentials issued (expiry - TTL)
// at or before revokedUpTo are refused. Credentials minted in that same
// second, after the revocation, are issued at revokedUpTo+1 (expiring up
// to a second late); issued is the latest such issue time, which the
// next revocation must cover.
type revocation struct {
	revokedUpTo int64
	issued      int64
}

// credential is a parsed username.
type credential struct {
	expiry         int64
	room, identity string
}

// parseUsername parses "<expiry>:<room>:<identity>". Room names and
// identities hold no ':'.
func parseUsername(u string) (credential, bool) {
	parts := strings.Split(u, ":")
	if len(parts) != 3 || parts[1] == "" || parts[2] == "" {
		return credential{}, false
	}
	exp, err := strconv.ParseInt(parts[0], 10, 64)
	if err != nil {
		return credential{}, false
	}
	return credential{expiry: exp, room: parts[1], identity: parts[2]}, true
}

// Credentials mints a username and password for identity in room, valid
// for the configured TTL, until Revoke(room, identity).
func (s *Server) Credentials(room, identity string) (username, password string) {
	issued := s.cfg.Now().Unix()
	key := revocationKey{room, identity}
	s.mu.Lock()
	if rv, ok := s.revoked[key]; ok && issued <= rv.revokedUpTo {
		// Minted after a revocation in the same second: the credentials
		// must not look revoked.
		issued = rv.revokedUpTo + 1
		rv.issued = max(rv.issued, issued)
		s.revoked[key] = rv
	}
	s.mu.Unlock()
	username = strconv.FormatInt(issued+int64(s.cfg.TTL/time.Second), 10) + ":" + room + ":" + identity
	return username, Password(s.cfg.Secret, username)
}

// Password is base64(HMAC-SHA1(secret, username)), the TURN REST password.
func Password(secret, username string) string {
	m := hmac.New(sha1.New, []byte(secret))
	m.Write([]byte(username))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// ICEServers are the TURN URLs (UDP and TCP) with credentials minted for
// identity in room, as clients are handed them.
func (s *Server) ICEServers(room, identity string) []webrtc.ICEServer {
	user, pass := s.Credentials(room, identity)
	hp := net.JoinHostPort(s.cfg.Host, strconv.Itoa(s.port))
	return []webrtc.ICEServer{{
		URLs:       []string{"turn:" + hp + "?transport=udp", "turn:" + hp + "?transport=tcp"},
		Username:   user,
		Credential: pass,
	}}
}

// Revoke makes the credentials of identity in room minted so far stop
// working: every request with them is refused, and their allocations
// are closed. Credentials minted after it work. A revocation is
// forgotten once every credential it covers has expired.
func (s *Server) Revoke(room, identity string) {
	now := s.cfg.Now().Unix()
	key := revocationKey{room, identity}
	var closing []*relayed
	s.mu.Lock()
	s.pruneLocked(now)
	rv := s.revoked[key]
	rv.revokedUpTo = max(rv.revokedUpTo, rv.issued, now)
	rv.issued = rv.revokedUpTo
	s.revoked[key] = rv
	for user, socks := range s.live {
		if s.revokedLocked(user) {
			for r := range socks {
				closing = append(closing, r)
			}
		}
	}
	s.mu.Unlock()
	for _, r := range closing {
		_ = r.Close()
	}
	if len(closing) > 0 {
		s.cfg.Logger.Info("turn: credentials revoked, allocations closed", "room", room, "participant", identity, "allocations", len(closing))
	}
}

// revokedLocked reports whether username was revoked.
func (s *Server) revokedLocked(username string) bool {
	c, ok := parseUsername(username)
	if !ok {
		return true
	}
	rv, ok := s.revoked[revocationKey{c.room, c.identity}]
	return ok && c.expiry-int64(s.cfg.TTL/time.Second) <= rv.revokedUpTo
}

// pruneLocked forgets revocations whose credentials have all expired.
func (s *Server) pruneLocked(now int64) {
	limit := now - int64(s.cfg.TTL/time.Second) - 1
	for k, rv := range s.revoked {
		if rv.revokedUpTo < limit {
			delete(s.revoked, k)
		}
	}
}

// authenticate checks a REST username, "<expiry>:<room>:<identity>":
// well formed, not revoked, and not expired for a new allocation; it
// returns the username as the allocation's user and the key of the
// password its HMAC gives (pion/turn then checks the request's
// integrity with it). The requests that keep an existing allocation
// alive (Refresh, CreatePermission, ChannelBind, and TCP Connect and
// ConnectionBind) are let through after the expiry, so that a call
// relayed for longer than the TTL goes on: they only act on the
// allocation of their own 5-tuple, made while the credentials were
// valid. A revocation refuses them all.
func (s *Server) authenticate(ra *turn.RequestAttributes) (string, []byte, bool) {
	c, ok := parseUsername(ra.Username)
	if !ok || (ra.Method == stun.MethodAllocate && time.Now().Unix() > c.expiry) {
		s.cfg.Logger.Debug("turn: expired or malformed username", "username", ra.Username, "src", ra.SrcAddr.String())
		return "", nil, false
	}
	s.mu.Lock()
	revoked := s.revokedLocked(ra.Username)
	s.mu.Unlock()
	if revoked {
		s.cfg.Logger.Debug("turn: revoked credentials", "room", c.room, "participant", c.identity, "src", ra.SrcAddr.String())
		return "", nil, false
	}
	return ra.Username, turn.GenerateAuthKey(ra.Username, ra.Realm, Password(s.cfg.Secret, ra.Username)), true
}
