package signaling

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"

	"github.com/gin-gonic/gin"
	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/sfu"
)

// WHIP (RFC 9725) and WHEP: one offer in, one answer out, a resource URL
// to PATCH (trickle ICE, ICE restart) and DELETE. The participant behind a
// resource is an ordinary participant of the room: in its roster, under
// its policy, recorded, and kickable.

const (
	mimeSDP     = "application/sdp"
	mimeSDPFrag = "application/trickle-ice-sdpfrag"
)

// Errors of WHIP and WHEP.
var (
	ErrUnsupportedMediaType = errors.New("unsupported media type")
	ErrResourceNotFound     = errors.New("resource not found")
	ErrPrecondition         = errors.New("the resource has changed (If-Match)")
)

// whipHandler serves WHIP: a client publishes with one POST of its offer.
type whipHandler struct{ res *resourceTable }

// whepHandler serves WHEP: a client plays the room (or, with ?identity=,
// one participant) with one POST of its offer.
type whepHandler struct{ res *resourceTable }

// routes registers WHIP at /whip.
func (h whipHandler) routes(e *gin.Engine) { h.res.routes(e, "whip", h.post) }

// routes registers WHEP at /whep.
func (h whepHandler) routes(e *gin.Engine) { h.res.routes(e, "whep", h.post) }

func (h whipHandler) post(c *gin.Context) {
	s := h.res.srv
	if err := requireType(c, mimeSDP); err != nil {
		writeError(c, err)
		return
	}
	claims, room, err := s.authorizeJoin(c.Request, c.Param("room"))
	if err != nil {
		writeError(c, err)
		return
	}
	role := sfu.Role(claims.Role)
	if len(sfu.Publishable(room.Kind(), role)) == 0 {
		writeError(c, fmt.Errorf("%w: a %s may not publish", ErrForbidden, role))
		return
	}
	offer, parsed, err := readOffer(c)
	if err != nil {
		writeError(c, err)
		return
	}
	sending := sfu.SDPCodecs(parsed, func(dir string) bool { return dir == "sendonly" || dir == "sendrecv" })
	if !forwardedCodec(sending[webrtc.RTPCodecTypeAudio]) && !forwardedCodec(sending[webrtc.RTPCodecTypeVideo]) {
		writeError(c, fmt.Errorf("%w: the offer sends none of Opus, VP8, VP9, H.264", sfu.ErrNoCodec))
		return
	}
	sources, err := whipSources(parsed)
	if err != nil {
		writeError(c, err)
		return
	}
	h.res.join(c, joinRequest{kind: "whip", mode: sfu.ModeWHIP, claims: claims, room: room,
		start: func(p *sfu.Participant) error { return p.HandleOffer(offer, sources) }})
}

func (h whepHandler) post(c *gin.Context) {
	s := h.res.srv
	if err := requireType(c, mimeSDP); err != nil {
		writeError(c, err)
		return
	}
	claims, room, done, ok := s.admitJoin(c)
	defer done()
	if !ok {
		return
	}
	role := sfu.Role(claims.Role)
	if !sfu.Receives(room.Kind(), role) {
		writeError(c, fmt.Errorf("%w: a %s receives nothing", ErrForbidden, role))
		return
	}
	offer, _, err := readOffer(c)
	if err != nil {
		writeError(c, err)
		return
	}
	identity := c.Query("identity")
	h.res.join(c, joinRequest{kind: "whep", mode: sfu.ModeWHEP, claims: claims, room: room,
		start: func(p *sfu.Participant) error { return p.Play(offer, identity) }})
}

// readOffer reads and parses the SDP offer of a POST; an empty body is
// invalid_sdp (pion parses it as an SDP without media).
func readOffer(c *gin.Context) (string, *sdp.SessionDescription, error) {
	offer, err := readBody(c, maxSDPBytes)
	if err != nil {
		return "", nil, err
	}
	if strings.TrimSpace(offer) == "" {
		return "", nil, fmt.Errorf("%w: the body is empty: an SDP offer is required", sfu.ErrInvalidSDP)
	}
	parsed := &sdp.SessionDescription{}
	if err := parsed.UnmarshalString(offer); err != nil {
		return "", nil, fmt.Errorf("%w: %v", sfu.ErrInvalidSDP, err)
	}
	return offer, parsed, nil
}

func cors(c *gin.Context) {
	h := c.Writer.Header()
	h.Set("Access-Control-Allow-Origin", "*")
	h.Set("Access-Control-Allow-Methods", "OPTIONS, POST, PATCH, DELETE")
	h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, If-Match")
	h.Set("Access-Control-Expose-Headers", "Location, ETag, Link, Accept-Patch")
	c.Next()
}

func options(allow string) gin.HandlerFunc {
	return func(c *gin.Context) {
		c.Header("Allow", allow)
		if strings.Contains(allow, "PATCH") {
			c.Header("Accept-Patch", mimeSDPFrag)
		}
		c.Status(http.StatusNoContent)
	}
}

// requireType checks the request's media type.
func requireType(c *gin.Context, want string) error {
	mt, _, err := mime.ParseMediaType(c.GetHeader("Content-Type"))
	if err != nil || mt != want {
		return fmt.Errorf("%w: want Content-Type %s", ErrUnsupportedMediaType, want)
	}
	return nil
}

func readBody(c *gin.Context, limit int64) (string, error) {
	b, err := io.ReadAll(http.MaxBytesReader(c.Writer, c.Request.Body, limit))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return "", ErrBodyTooLarge
		}
		return "", errors.Join(ErrInvalidRequest, err)
	}
	return string(b), nil
}

// iceLinks are the Link headers that advertise the ICE servers.
func iceLinks(servers []webrtc.ICEServer) []string {
	var out []string
	for _, srv := range servers {
		for _, u := range srv.URLs {
			l := fmt.Sprintf(`<%s>; rel="ice-server"`, u)
			if srv.Username != "" {
				l += fmt.Sprintf(`; username="%s"; credential="%v"; credential-type="password"`, srv.Username, srv.Credential)
			}
			out = append(out, l)
		}
	}
	return out
}

// forwardedCodec reports whether a codec name is one Vigil forwards.
func forwardedCodec(names []string) bool {
	for _, n := range names {
		switch n {
		case "OPUS", "VP8", "VP9", "H264":
			return true
		}
	}
	return false
}

// whipSources declares what a WHIP offer's sending m-lines carry: the
// first audio is the microphone, the first video the camera, a second
// video the screen.
func whipSources(d *sdp.SessionDescription) (map[string]sfu.Source, error) {
	sources := map[string]sfu.Source{}
	videos := 0
	for _, m := range d.MediaDescriptions {
		dir := "sendrecv"
		for _, a := range m.Attributes {
			switch a.Key {
			case "sendrecv", "sendonly", "recvonly", "inactive":
				dir = a.Key
			}
		}
		if m.MediaName.Port.Value == 0 || (dir != "sendonly" && dir != "sendrecv") {
			continue
		}
		mid, _ := m.Attribute("mid")
		switch m.MediaName.Media {
		case "audio":
			if _, dup := sources[mid]; dup || hasSource(sources, sfu.SourceMicrophone) {
				return nil, fmt.Errorf("%w: more than one audio m-line", ErrInvalidRequest)
			}
			sources[mid] = sfu.SourceMicrophone
		case "video":
			videos++
			switch videos {
			case 1:
				sources[mid] = sfu.SourceCamera
			case 2:
				sources[mid] = sfu.SourceScreen
			default:
				return nil, fmt.Errorf("%w: more than two video m-lines", ErrInvalidRequest)
			}
		}
	}
	return sources, nil
}

func hasSource(m map[string]sfu.Source, s sfu.Source) bool {
	for _, v := range m {
		if v == s {
			return true
		}
	}
	return false
}
