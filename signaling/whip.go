package signaling

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"sync"

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

// resource is one WHIP or WHEP session.
type resource struct {
	id, kind, room string
	p              *sfu.Participant

	mu   sync.Mutex
	etag int
}

func (r *resource) eTag() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return fmt.Sprintf(`"%s.%d"`, r.id, r.etag)
}

func (r *resource) bump() string {
	r.mu.Lock()
	r.etag++
	r.mu.Unlock()
	return r.eTag()
}

// resourceSink keeps a resource's answers; the rest it has no one to
// tell. Its LeftEvent forgets the resource.
type resourceSink struct {
	srv    *Server
	id     string
	mu     sync.Mutex
	answer string
}

func (k *resourceSink) Deliver(ev sfu.Event) {
	switch ev := ev.(type) {
	case sfu.AnswerEvent:
		k.mu.Lock()
		k.answer = ev.SDP
		k.mu.Unlock()
	case sfu.LeftEvent:
		// Called under the room's lock: forget the resource elsewhere.
		go k.srv.dropResource(k.id)
	}
}

func (k *resourceSink) lastAnswer() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.answer
}

func (s *Server) dropResource(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.resources, id)
}

// whipRoutes registers WHIP at /whip and WHEP at /whep. They answer CORS
// preflights for any origin: they are authorized by bearer tokens, never
// by cookies.
func (s *Server) whipRoutes(e *gin.Engine) {
	for _, kind := range []string{"whip", "whep"} {
		g := e.Group("/"+kind, cors)
		g.OPTIONS("/:room", options("OPTIONS, POST"))
		s.relayed(g, RelayRoom).POST("/:room", s.limitAddr(s.joins, "joins"), s.whipPost(kind))
		g.OPTIONS("/:room/:resource", options("OPTIONS, PATCH, DELETE"))
		resource := s.relayed(g, RelayResource) // served by the node that issued it
		resource.PATCH("/:room/:resource", s.whipPatch(kind))
		resource.DELETE("/:room/:resource", s.whipDelete(kind))
	}
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

func (s *Server) whipPost(kind string) gin.HandlerFunc {
	return func(c *gin.Context) {
		if err := requireType(c, mimeSDP); err != nil {
			writeError(c, err)
			return
		}
		if kind == "whep" {
			edgeDone, err := s.fed.PrepareJoin(c)
			if edgeDone != nil {
				defer edgeDone()
			}
			if err != nil {
				writeError(c, err)
				return
			}
		}
		claims, room, err := s.authorizeJoin(c.Request, c.Param("room"))
		if err != nil {
			writeError(c, err)
			return
		}
		if kind == "whep" && s.fed.SpillJoin(c, claims, room) {
			return
		}
		role := sfu.Role(claims.Role)
		mode := sfu.ModeWHIP
		if kind == "whip" && len(sfu.Publishable(room.Kind(), role)) == 0 {
			writeError(c, fmt.Errorf("%w: a %s may not publish", ErrForbidden, role))
			return
		}
		if kind == "whep" {
			mode = sfu.ModeWHEP
			if !sfu.Receives(room.Kind(), role) {
				writeError(c, fmt.Errorf("%w: a %s receives nothing", ErrForbidden, role))
				return
			}
		}
		offer, err := readBody(c, maxSDPBytes)
		if err != nil {
			writeError(c, err)
			return
		}
		parsed := &sdp.SessionDescription{}
		if err := parsed.UnmarshalString(offer); err != nil {
			writeError(c, fmt.Errorf("%w: %v", sfu.ErrInvalidSDP, err))
			return
		}
		var sources map[string]sfu.Source
		if kind == "whip" {
			sending := sfu.SDPCodecs(parsed, func(dir string) bool { return dir == "sendonly" || dir == "sendrecv" })
			if !forwardedCodec(sending[webrtc.RTPCodecTypeAudio]) && !forwardedCodec(sending[webrtc.RTPCodecTypeVideo]) {
				writeError(c, fmt.Errorf("%w: the offer sends none of Opus, VP8, VP9, H.264", sfu.ErrNoCodec))
				return
			}
			if sources, err = whipSources(parsed); err != nil {
				writeError(c, err)
				return
			}
		}

		sink := &resourceSink{srv: s, id: s.newID()}
		res := &resource{id: sink.id, kind: kind, room: room.Name()}
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			writeError(c, ErrShuttingDown)
			return
		}
		s.resources[res.id] = res
		s.mu.Unlock()
		p, err := room.Join(sfu.JoinConfig{Identity: claims.Subject, Role: role, Sink: sink, Mode: mode})
		if err != nil {
			s.dropResource(res.id)
			writeError(c, err)
			return
		}
		res.p = p
		if kind == "whip" {
			err = p.HandleOffer(offer, sources)
		} else {
			err = p.Play(offer, c.Query("identity"))
		}
		if err != nil {
			p.Leave(sfu.ReasonFailed)
			writeError(c, err)
			return
		}
		h := c.Writer.Header()
		for _, l := range iceLinks(s.sfu.ICEServersFor(claims.Subject)) {
			h.Add("Link", l)
		}
		h.Set("Location", "/"+kind+"/"+room.Name()+"/"+res.id)
		h.Set("ETag", res.eTag())
		h.Set("Accept-Patch", mimeSDPFrag)
		c.Data(http.StatusCreated, mimeSDP, []byte(sink.lastAnswer()))
	}
}

// resourceFor finds the resource a request names.
func (s *Server) resourceFor(c *gin.Context, kind string) (*resource, error) {
	s.mu.Lock()
	res, ok := s.resources[c.Param("resource")]
	s.mu.Unlock()
	if !ok || res.kind != kind || res.room != c.Param("room") || res.p == nil {
		return nil, ErrResourceNotFound
	}
	select {
	case <-res.p.Done():
		return nil, ErrResourceNotFound
	default:
	}
	return res, nil
}

func (s *Server) whipDelete(kind string) gin.HandlerFunc {
	return func(c *gin.Context) {
		res, err := s.resourceFor(c, kind)
		if err != nil {
			writeError(c, err)
			return
		}
		res.p.Leave(sfu.ReasonLeft)
		s.dropResource(res.id)
		c.Status(http.StatusOK)
	}
}

// sdpFrag is what a PATCH carries (RFC 8840): credentials, and candidates
// by mid.
type sdpFrag struct {
	ufrag, pwd string
	candidates []webrtc.ICECandidateInit
}

func parseSDPFrag(body string) (sdpFrag, error) {
	var f sdpFrag
	mid := ""
	for _, line := range strings.Split(body, "\n") {
		line = strings.TrimRight(line, "\r")
		k, v, _ := strings.Cut(line, ":")
		switch k {
		case "a=ice-ufrag":
			f.ufrag = v
		case "a=ice-pwd":
			f.pwd = v
		case "a=mid":
			mid = v
		case "a=candidate":
			m := mid
			f.candidates = append(f.candidates, webrtc.ICECandidateInit{Candidate: "candidate:" + v, SDPMid: &m})
		case "", "a=end-of-candidates", "a=group", "a=ice-options", "m", "c", "v", "o", "s", "t":
		default:
			if !strings.HasPrefix(line, "a=") {
				return f, fmt.Errorf("%w: unexpected line %q in an sdpfrag", sfu.ErrInvalidSDP, line)
			}
		}
	}
	return f, nil
}

func (s *Server) whipPatch(kind string) gin.HandlerFunc {
	return func(c *gin.Context) {
		res, err := s.resourceFor(c, kind)
		if err != nil {
			writeError(c, err)
			return
		}
		if err := requireType(c, mimeSDPFrag); err != nil {
			writeError(c, err)
			return
		}
		if m := c.GetHeader("If-Match"); m != "" && m != "*" && m != res.eTag() {
			writeError(c, ErrPrecondition)
			return
		}
		body, err := readBody(c, maxSDPBytes)
		if err != nil {
			writeError(c, err)
			return
		}
		frag, err := parseSDPFrag(body)
		if err != nil {
			writeError(c, err)
			return
		}
		if frag.ufrag != "" && frag.ufrag != res.p.RemoteICEUfrag() {
			answer, err := res.p.RestartICE(frag.ufrag, frag.pwd)
			if err != nil {
				writeError(c, err)
				return
			}
			for _, cand := range frag.candidates {
				_ = res.p.AddICECandidate(cand)
			}
			c.Header("ETag", res.bump())
			c.Data(http.StatusOK, mimeSDPFrag, []byte(answerFrag(answer)))
			return
		}
		for _, cand := range frag.candidates {
			if err := res.p.AddICECandidate(cand); err != nil {
				writeError(c, err)
				return
			}
		}
		c.Status(http.StatusNoContent)
	}
}

// answerFrag extracts from an answer what an ICE restart reply carries.
func answerFrag(answer string) string {
	var b strings.Builder
	seen := map[string]bool{}
	for _, line := range strings.Split(answer, "\n") {
		line = strings.TrimRight(line, "\r")
		switch {
		case strings.HasPrefix(line, "a=ice-ufrag:"), strings.HasPrefix(line, "a=ice-pwd:"), strings.HasPrefix(line, "a=ice-options:"):
			if seen[line] {
				continue
			}
			seen[line] = true
		case strings.HasPrefix(line, "m="), strings.HasPrefix(line, "a=mid:"), strings.HasPrefix(line, "a=candidate:"), line == "a=end-of-candidates":
		default:
			continue
		}
		b.WriteString(line)
		b.WriteString("\r\n")
	}
	return b.String()
}
