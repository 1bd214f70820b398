package signaling

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/vigil-media/vigil/sfu"
)

// RecordingURLTTL is how long a signed recording file URL works. A
// <video> element cannot send an Authorization header, so GET
// /v1/recordings/{id} gives each file a URL that carries its own
// short-lived signature instead.
const RecordingURLTTL = 10 * time.Minute

// recordingReaderRoutes registers what a proctor of the recording's room
// may read as well as the admin: a recording's manifest and its files.
// The other recording routes are admin routes (recordingRoutes).
func (a *evidenceAPI) recordingReaderRoutes(g *gin.RouterGroup) {
	r := g.Group("/recordings/:id", a.requireRecordingReader)
	r.GET("", a.getRecording)
	r.GET("/files/:name", a.downloadRecording)
}

// requireRecordingReader lets through, for the recording named in the
// path: the admin key; the join token of a proctor of the recording's
// room instance (not of another room of that name); or, for a file, a signed URL (exp and sig in the query) that has
// not expired.
func (a *evidenceAPI) requireRecordingReader(c *gin.Context) {
	q := c.Request.URL.Query()
	if q.Has("sig") || q.Has("exp") {
		if c.Param("name") == "" {
			writeError(c, fmt.Errorf("%w: a signed URL names one file", ErrForbidden))
			return
		}
		if err := a.verifyFileURL(c.Param("id"), c.Param("name"), q.Get("exp"), q.Get("sig")); err != nil {
			writeError(c, err)
			return
		}
		c.Next()
		return
	}
	claims, ok := a.srv.adminOrToken(c)
	switch {
	case !ok:
		return
	case claims == nil: // the admin key
		c.Next()
		return
	case claims.Role != string(sfu.RoleProctor):
		writeError(c, fmt.Errorf("%w: only proctors read recordings", ErrForbidden))
		return
	case claims.Instance == "":
		writeError(c, errNoTokenInstance)
		return
	}
	m := a.recordingsManager(c)
	if m == nil {
		return
	}
	man, err := m.Get(c.Param("id"))
	if err != nil {
		writeError(c, err)
		return
	}
	if man.Room != claims.Room {
		writeError(c, fmt.Errorf("%w: the recording is of another room", ErrForbidden))
		return
	}
	if man.Instance != claims.Instance {
		writeError(c, fmt.Errorf("%w: the recording is of another instance of the room", ErrTokenRoomInstance))
		return
	}
	c.Next()
}

// fileURLKey derives the key of signed file URLs from the token secret,
// as the join tokens' key is (never from the admin key: a signed URL
// handed to a proctor must not let anyone guess the admin key offline);
// a changed token secret invalidates them all.
func fileURLKey(tokenSecret string) []byte {
	m := hmac.New(sha256.New, []byte(tokenSecret))
	m.Write([]byte("vigil recording file url v1"))
	return m.Sum(nil)
}

// fileURLSig is hex(HMAC-SHA256(key, id "|" name "|" exp)).
func (a *evidenceAPI) fileURLSig(id, name string, exp int64) string {
	m := hmac.New(sha256.New, a.urlKey)
	m.Write([]byte(id + "|" + name + "|" + strconv.FormatInt(exp, 10)))
	return hex.EncodeToString(m.Sum(nil))
}

// signedFileURL is the URL of one file of a recording, valid until the
// time returned (RecordingURLTTL from now, to the second).
func (a *evidenceAPI) signedFileURL(id, name string) (string, time.Time) {
	exp := a.srv.tokens.now().Add(RecordingURLTTL).Unix()
	u := "/v1/recordings/" + url.PathEscape(id) + "/files/" + url.PathEscape(name) +
		"?exp=" + strconv.FormatInt(exp, 10) + "&sig=" + a.fileURLSig(id, name, exp)
	return u, time.Unix(exp, 0).UTC()
}

// verifyFileURL checks the exp and sig of a signed file URL: the
// signature (compared in constant time), then the expiry, and that it
// does not claim a longer life than the server gives (with a minute for
// clock skew between instances sharing the admin key).
func (a *evidenceAPI) verifyFileURL(id, name, expStr, sig string) error {
	exp, err := strconv.ParseInt(expStr, 10, 64)
	want := a.fileURLSig(id, name, exp)
	if err != nil || !hmac.Equal([]byte(sig), []byte(want)) {
		return fmt.Errorf("%w: the signed URL does not verify", ErrForbidden)
	}
	now := a.srv.tokens.now()
	if now.Unix() > exp {
		return fmt.Errorf("%w: the signed URL expired", ErrForbidden)
	}
	if time.Unix(exp, 0).After(now.Add(RecordingURLTTL + time.Minute)) {
		return fmt.Errorf("%w: the signed URL claims a life over %v", ErrForbidden, RecordingURLTTL)
	}
	return nil
}
