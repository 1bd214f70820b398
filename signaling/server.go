// Package signaling is Vigil's HTTP face: the admin REST API, join tokens,
// sessions with their sequenced outbox, and one adapter per transport
// (WebSocket, SSE, long and short polling, posted messages) that drains
// that outbox. It also serves the web client.
//
// Server is the composition root: configuration, the router, the
// authentication middleware (auth.go) and Close. Each part owns its state
// and registers its own routes:
//
//   - sessionHub (hub.go): the sessions (session.go), the admin room
//     feeds (stream.go) and their transports (ws.go, sse.go, poll.go);
//     client messages are one registry of types (messages.go);
//   - resourceTable (whip_resources.go): the WHIP and WHEP resources,
//     served by whipHandler and whepHandler (whip.go);
//   - evidenceAPI (evidence.go): incidents, recordings, proctoring;
//   - participantsAPI (admin_participants.go): the participants' admin API.
//
// The rooms API (rooms.go) and operations (ops.go) are methods of Server.
// A cluster's routing and placement are package federation's, asked
// through one seam, Federation (federation.go); a route a cluster relays
// is marked where it is registered (Server.relayed).
package signaling

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/vigil-media/vigil/incidents"
	"github.com/vigil-media/vigil/metrics"
	"github.com/vigil-media/vigil/recordings"
	"github.com/vigil-media/vigil/sfu"
	"github.com/vigil-media/vigil/web"
	"github.com/vigil-media/vigil/webhooks"
)

// Config configures the signaling server.
type Config struct {
	SFU      *sfu.SFU
	AdminKey string
	// TokenSecret signs the join tokens (tokens.go); it must not be the
	// admin key, nor derived from it. Empty: a random one for this
	// process (tokens do not survive a restart). Every node of a cluster
	// needs the same one.
	TokenSecret string
	// Revocations, if set, keeps token revocations across restarts
	// (cmd/vigil: the SQLite database of package incidents).
	Revocations RevocationStore
	// AdminAuthFailures is how many failed admin-key attempts a client
	// address may make in a minute (auth_limit.go) before its attempts
	// are refused with 429 for the rest of it; 0 means
	// DefaultAdminAuthFailures, negative no limit.
	AdminAuthFailures int
	Logger            *slog.Logger
	// GracePeriod is how long a session lives with no transport attached;
	// 0 means 30s. (The media core's ReconnectGrace is the same period
	// for a lost media connection; cmd/vigil sets both.)
	GracePeriod time.Duration
	// MaxBodyBytes caps a JSON request body; 0 means 64 KiB.
	MaxBodyBytes int64
	// Now is the clock for tokens; nil means time.Now.
	Now func() time.Time
	// MaxLongPolls caps long polls held at once; 0 means 10000.
	MaxLongPolls int
	// OutboxCapacity is how many events a session keeps for resuming;
	// 0 means 1024.
	OutboxCapacity int
	Recordings     *recordings.Manager // the recordings API; nil disables it
	// Incidents records and serves the incidents of proctoring rooms
	// (report_incident, flag_incident, /v1/rooms/{room}/incidents); nil
	// disables them.
	Incidents *incidents.Monitor
	// Metrics is the registry /metrics serves; nil makes one.
	Metrics *metrics.Metrics
	// Webhooks receives room, participant, track and recording events;
	// nil sends none.
	Webhooks *webhooks.Dispatcher
	// DrainTimeout bounds a drain: after it, Drained is closed even if
	// rooms are left (shutting down then ends them). 0: no bound.
	DrainTimeout time.Duration
	// MessageRate caps the client messages of one session a second, in
	// bursts of twice that (limits.go); 0 means DefaultMessageRate, a
	// negative rate no limit.
	MessageRate float64
	// JoinRate caps the sessions opened (and WHIP/WHEP POSTs) a second
	// per client address; 0 means DefaultJoinRate, negative no limit.
	JoinRate float64
	// MintRate caps the join tokens minted a second per client address;
	// 0 means DefaultMintRate, negative no limit.
	MintRate float64
	// TrustedProxies are the addresses or CIDRs of reverse proxies whose
	// X-Forwarded-For names the client; none by default, so that a
	// client cannot pick the address it is limited as.
	TrustedProxies []string
	// CORSOrigins may call the API and the signaling transports from
	// their pages ("*": any origin); by default only the same origin.
	CORSOrigins []string
	// Federation, if set, makes this server one node of a cluster
	// (package federation, docs/cluster.md, federation.go); nil: a
	// single node.
	Federation Federation
}

// Server serves the API, the transports and the web client.
type Server struct {
	cfg    Config
	log    *slog.Logger
	sfu    *sfu.SFU
	tokens *Tokens
	engine *gin.Engine
	admin  [32]byte // SHA-256 of the admin key, compared in constant time

	joins, mints *addrLimiter  // per client address; nil: no limit
	authFailures *authThrottle // failed admin-key attempts per client address (auth_limit.go); nil: no limit

	fed Federation // a cluster's decisions (federation.go); local on a single node
	// relays marks the routes a cluster relays, by method and full
	// pattern (Server.relayed); written by routes in New, read-only after.
	relays map[string]Relay

	hub      *sessionHub  // sessions, admin room feeds and their transports (hub.go)
	evidence *evidenceAPI // incidents, recordings, proctoring (evidence.go)
	// participants is the admin API of participants (admin_participants.go).
	participants *participantsAPI

	resources *resourceTable // WHIP and WHEP resources (whip_resources.go)

	ops *operations // health, readiness, drain, shutdown (ops.go)
}

// New builds the server. cfg.SFU and cfg.AdminKey are required.
func New(cfg Config) (*Server, error) {
	if cfg.SFU == nil || cfg.AdminKey == "" {
		return nil, errors.New("signaling: SFU and AdminKey are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.GracePeriod <= 0 {
		cfg.GracePeriod = 30 * time.Second
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 64 << 10
	}
	if cfg.MaxLongPolls <= 0 {
		cfg.MaxLongPolls = 10000
	}
	if cfg.OutboxCapacity <= 0 {
		cfg.OutboxCapacity = 1024
	}
	rate := func(r *float64, def float64) {
		if *r == 0 {
			*r = def
		}
	}
	rate(&cfg.MessageRate, DefaultMessageRate)
	rate(&cfg.JoinRate, DefaultJoinRate)
	rate(&cfg.MintRate, DefaultMintRate)
	if cfg.AdminAuthFailures == 0 {
		cfg.AdminAuthFailures = DefaultAdminAuthFailures
	}
	if cfg.TokenSecret == "" {
		b := make([]byte, 32)
		_, _ = rand.Read(b)
		cfg.TokenSecret = hex.EncodeToString(b)
	}
	if cfg.TokenSecret == cfg.AdminKey {
		return nil, errors.New("signaling: the token secret must differ from the admin key")
	}
	s := &Server{
		cfg: cfg, log: cfg.Logger, sfu: cfg.SFU,
		tokens: NewTokens(cfg.TokenSecret, cfg.Now),
		fed:    cfg.Federation,
		relays: map[string]Relay{},
		admin:  sha256.Sum256([]byte(cfg.AdminKey)),
	}
	s.resources = newResourceTable(s)
	s.hub = newSessionHub(s)
	s.evidence = newEvidenceAPI(s, s.hub.feed)
	s.participants = &participantsAPI{srv: s, hub: s.hub}
	s.joins, s.mints = newAddrLimiter(cfg.JoinRate), newAddrLimiter(cfg.MintRate)
	s.authFailures = newAuthThrottle(cfg.AdminAuthFailures, time.Minute)
	if cfg.Revocations != nil {
		if err := s.tokens.Persist(cfg.Revocations, cfg.Logger); err != nil {
			return nil, fmt.Errorf("signaling: %w", err)
		}
	}
	if s.fed == nil {
		s.fed = local{}
	}
	s.initOps()
	s.engine = s.routes()
	if err := s.engine.SetTrustedProxies(cfg.TrustedProxies); err != nil {
		return nil, fmt.Errorf("signaling: trusted proxies: %w", err)
	}
	return s, nil
}

// Handler is the HTTP handler of everything Vigil serves.
func (s *Server) Handler() http.Handler { return s.engine }

// Tokens mints and verifies join tokens.
func (s *Server) Tokens() *Tokens { return s.tokens }

func (s *Server) routes() *gin.Engine {
	e := gin.New()
	e.Use(streamDeadlines, s.logRequests, gin.CustomRecovery(func(c *gin.Context, v any) {
		s.log.Error("panic in handler", "path", c.Request.URL.Path, "panic", v)
		writeError(c, errors.New("panic"))
	}))
	// A cluster relays a room's calls to its node, before CORS: the node
	// that serves the call sets the CORS headers.
	e.Use(s.route)
	e.Use(s.corsMiddleware)
	e.HandleMethodNotAllowed = true
	e.NoRoute(func(c *gin.Context) { writeError(c, ErrNotFound) })
	e.NoMethod(func(c *gin.Context) {
		c.AbortWithStatusJSON(http.StatusMethodNotAllowed, errorBody{Error: errorDetail{Code: "method_not_allowed", Message: "method not allowed"}})
	})

	v1 := e.Group("/v1")
	s.adminRoutes(v1.Group("", s.requireAdmin))
	v1.GET("/openapi.json", serveOpenAPI)
	s.relayed(v1, RelayRoom).POST("/rooms/:room/sessions", s.limitAddr(s.joins, "joins"), s.openSession)
	sessions := s.relayed(v1, RelaySession) // served by the node that issued it
	sessions.DELETE("/sessions/:session", s.closeSession)
	s.hub.routes(sessions)
	s.evidence.routes(v1)
	s.hub.feedRoutes(s.relayed(v1.Group("/rooms/:room/events", s.requireAdmin), RelayRoom))

	whipHandler{s.resources}.routes(e)
	whepHandler{s.resources}.routes(e)
	s.ops.routes(e)

	static := web.FS()
	page := func(name string) gin.HandlerFunc {
		return func(c *gin.Context) {
			b, err := fs.ReadFile(static, name)
			if err != nil {
				writeError(c, ErrNotFound)
				return
			}
			c.Header("Cache-Control", "no-cache")
			pageHeaders(c.Writer.Header())
			c.Data(http.StatusOK, "text/html; charset=utf-8", b)
		}
	}
	e.GET("/", page("index.html"))
	e.GET("/room/:room", page("room.html"))
	e.GET("/dashboard", page("dashboard.html"))
	e.StaticFS("/static", http.FS(static))
	return e
}

// pageCSP is the Content-Security-Policy of the web client's pages: its
// own scripts, styles and media only (no inline script or style, no
// eval), its own API and transports ('self' covers ws: and wss: of the
// same host), snapshots and downloads as blob: URLs, and no page of
// another origin may frame it (clickjacking the dashboard or a proctor).
const pageCSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; " +
	"media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// pageHeaders sets the security headers of an HTML page.
func pageHeaders(h http.Header) {
	h.Set("Content-Security-Policy", pageCSP)
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
}

// logRequests logs each request without its query string, which may
// carry a cursor or other client state but never belongs in logs.
func (s *Server) logRequests(c *gin.Context) {
	start := time.Now()
	c.Next()
	s.cfg.Metrics.ObserveHTTP(c.FullPath(), c.Request.Method, c.Writer.Status(), time.Since(start))
	s.log.Debug("http", "method", c.Request.Method, "path", c.Request.URL.Path,
		"status", c.Writer.Status(), "duration", time.Since(start))
}

// bindJSON decodes a size-limited JSON body into v, refusing unknown
// fields and trailing data.
func (s *Server) bindJSON(c *gin.Context, v any) error {
	body := http.MaxBytesReader(c.Writer, c.Request.Body, s.cfg.MaxBodyBytes)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return ErrBodyTooLarge
		}
		if errors.Is(err, io.EOF) {
			return errors.Join(ErrInvalidRequest, errors.New("empty body"))
		}
		return errors.Join(ErrInvalidRequest, err)
	}
	if dec.More() {
		return errors.Join(ErrInvalidRequest, errors.New("trailing data after the JSON object"))
	}
	return nil
}

// Close refuses new sessions, ends every room (each participant told
// why) and waits up to timeout for transports to deliver the last events.
// A node of a cluster tells its participants room_moved rather than
// server_shutdown: its rooms stay in the map and are re-homed once it has
// left the cluster, so clients open new sessions and find them there.
func (s *Server) Close(timeout time.Duration) {
	s.ops.shutDown()
	s.hub.refuse()
	s.resources.refuse()
	reason := s.fed.Close()
	if err := s.sfu.CloseWith(reason); err != nil {
		s.log.Debug("close sfu", "err", err)
	}
	s.hub.close(reason, timeout)
}

// transports is sessionHub.transports, for rooms.go and federation.go.
func (s *Server) transports(room string) map[*sfu.Participant]string {
	return s.hub.transports(room)
}
