package signaling

import (
	"fmt"
	"net/http"
	"strings"
	"sync"

	"github.com/gin-gonic/gin"
	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/sfu"
)

// resourceTable owns the WHIP and WHEP resources (one table for both:
// their ids are unique, and a resource names its kind) and what the two
// protocols share: joining the room for a POST, PATCH and DELETE.
type resourceTable struct {
	// srv is the composition root: the media core, the logger and newID
	// (cluster.go); none of its locks is taken here.
	srv *Server

	// mu guards byID and closing. Nothing is locked while holding it.
	mu      sync.Mutex
	byID    map[string]*resource
	closing bool // refuse new resources
}

func newResourceTable(s *Server) *resourceTable {
	return &resourceTable{srv: s, byID: map[string]*resource{}}
}

// resource is one WHIP or WHEP session.
type resource struct {
	id, kind, room string
	p              *sfu.Participant

	mu   sync.Mutex // guards etag; nothing is locked while holding it
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
	table  *resourceTable
	id     string
	mu     sync.Mutex // guards answer; nothing is locked while holding it
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
		go k.table.drop(k.id)
	}
}

func (k *resourceSink) lastAnswer() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.answer
}

func (t *resourceTable) drop(id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.byID, id)
}

// refuse makes the table refuse new resources from now on.
func (t *resourceTable) refuse() {
	t.mu.Lock()
	t.closing = true
	t.mu.Unlock()
}

// count adds to counts the resources by kind, for the metrics.
func (t *resourceTable) count(counts map[string]int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, r := range t.byID {
		counts[r.kind]++
	}
}

// routes registers one protocol at /kind: post creates a resource (with
// join), PATCH and DELETE act on one. They answer CORS preflights for any
// origin: they are authorized by bearer tokens, never by cookies.
func (t *resourceTable) routes(e *gin.Engine, kind string, post gin.HandlerFunc) {
	g := e.Group("/"+kind, cors)
	g.OPTIONS("/:room", options("OPTIONS, POST"))
	t.srv.relayed(g, RelayRoom).POST("/:room", t.srv.limitAddr(t.srv.joins, "joins"), post)
	g.OPTIONS("/:room/:resource", options("OPTIONS, PATCH, DELETE"))
	resource := t.srv.relayed(g, RelayResource) // served by the node that issued it
	resource.PATCH("/:room/:resource", t.patch(kind))
	resource.DELETE("/:room/:resource", t.delete(kind))
}

// joinRequest is what a WHIP or WHEP POST joins with, once it has checked
// the token, the role and the offer.
type joinRequest struct {
	kind   string   // "whip" or "whep"
	mode   sfu.Mode // the participant's mode
	claims *Claims
	room   *sfu.Room
	// start hands the offer to the new participant: publish or play.
	start func(p *sfu.Participant) error
}

// join creates the resource of a POST: the participant joins the room,
// takes the offer, and the reply carries the answer, the resource's URL
// and ETag, and the ICE servers.
func (t *resourceTable) join(c *gin.Context, req joinRequest) {
	sink := &resourceSink{table: t, id: t.srv.newID()}
	res := &resource{id: sink.id, kind: req.kind, room: req.room.Name()}
	t.mu.Lock()
	if t.closing {
		t.mu.Unlock()
		writeError(c, ErrShuttingDown)
		return
	}
	t.byID[res.id] = res
	t.mu.Unlock()
	p, err := req.room.Join(sfu.JoinConfig{Identity: req.claims.Subject, Role: sfu.Role(req.claims.Role), Sink: sink, Mode: req.mode})
	if err != nil {
		t.drop(res.id)
		writeError(c, err)
		return
	}
	res.p = p
	if err := req.start(p); err != nil {
		p.Leave(sfu.ReasonFailed)
		writeError(c, err)
		return
	}
	h := c.Writer.Header()
	for _, l := range iceLinks(t.srv.sfu.ICEServersFor(req.room.Name(), req.claims.Subject)) {
		h.Add("Link", l)
	}
	h.Set("Location", "/"+req.kind+"/"+req.room.Name()+"/"+res.id)
	h.Set("ETag", res.eTag())
	h.Set("Accept-Patch", mimeSDPFrag)
	c.Data(http.StatusCreated, mimeSDP, []byte(sink.lastAnswer()))
}

// resourceFor finds the resource a request names.
func (t *resourceTable) resourceFor(c *gin.Context, kind string) (*resource, error) {
	t.mu.Lock()
	res, ok := t.byID[c.Param("resource")]
	t.mu.Unlock()
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

func (t *resourceTable) delete(kind string) gin.HandlerFunc {
	return func(c *gin.Context) {
		res, err := t.resourceFor(c, kind)
		if err != nil {
			writeError(c, err)
			return
		}
		res.p.Leave(sfu.ReasonLeft)
		t.drop(res.id)
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

func (t *resourceTable) patch(kind string) gin.HandlerFunc {
	return func(c *gin.Context) {
		res, err := t.resourceFor(c, kind)
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
