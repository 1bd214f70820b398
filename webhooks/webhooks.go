// Package webhooks posts Vigil's events (rooms, participants, tracks,
// recordings, incidents) to the URLs an operator configures. Each POST is
// signed with HMAC-SHA256 over a timestamp and the body; each URL has one
// sender goroutine with a bounded queue, so deliveries to one URL are in
// order, a slow or failing URL delays no other, and Emit never blocks
// (the media path and the signaling loops call it).
//
// Overflow policy: when a URL's queue is full, the new event is dropped
// for that URL and counted (Stats.Dropped); events already queued keep
// their order. An event that fails MaxAttempts times is given up (counted
// in Stats.Failed) and the next one is sent.
package webhooks

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Event types.
const (
	RoomCreated        = "room.created"
	RoomClosed         = "room.closed"
	ParticipantJoined  = "participant.joined"
	ParticipantLeft    = "participant.left"
	ParticipantUpdated = "participant.updated"
	TrackPublished     = "track.published"
	TrackUnpublished   = "track.unpublished"
	TrackMuted         = "track.muted"
	RecordingStarted   = "recording.started"
	RecordingCompleted = "recording.completed"
	RecordingFailed    = "recording.failed"
	RecordingRefused   = "recording.refused" // not started: the disk is under min_free_disk
	IncidentCreated    = "incident.created"
	ServerDraining     = "server.draining"
	// RoomRehomed is sent by the node that took over a room whose node
	// died (cluster mode, docs/cluster.md).
	RoomRehomed = "room.rehomed"
)

// Types lists every event type.
var Types = []string{
	RoomCreated, RoomClosed, ParticipantJoined, ParticipantLeft, ParticipantUpdated,
	TrackPublished, TrackUnpublished, TrackMuted,
	RecordingStarted, RecordingCompleted, RecordingFailed, RecordingRefused, IncidentCreated, ServerDraining, RoomRehomed,
}

// SignatureHeader carries "t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
// t + "." + body)>".
const SignatureHeader = "Vigil-Signature"

// Config configures a Dispatcher.
type Config struct {
	// URLs receive every event. None: Emit does nothing.
	URLs []string
	// Secret is the HMAC key; required when URLs are set.
	Secret string
	// QueueSize bounds each URL's queue; 0 means 1024.
	QueueSize int
	// MaxAttempts is how many times one event is tried; 0 means 8.
	MaxAttempts int
	// MinBackoff is the wait after the first failure, doubled after each
	// further one up to MaxBackoff (with +-20% jitter); 0 means 500ms and
	// 30s.
	MinBackoff, MaxBackoff time.Duration
	// Timeout bounds one attempt; 0 means 10s.
	Timeout time.Duration
	// Client sends the POSTs (a copy of it, which follows no redirect);
	// nil means a default client.
	Client *http.Client
	Logger *slog.Logger
	// Now is the clock of the signatures; nil means time.Now.
	Now func() time.Time
}

// Event is the JSON body of every POST. Seq grows by one with each event
// emitted, across types: a receiver sees them in that order per URL, and
// a gap means an event was dropped or given up.
type Event struct {
	ID   string          `json:"id"`
	Seq  uint64          `json:"seq"`
	Type string          `json:"type"`
	Time time.Time       `json:"time"`
	Data json.RawMessage `json:"data"`
}

// Stats are the dispatcher's counters, summed over its URLs.
type Stats struct {
	Emitted   uint64 // events emitted
	Delivered uint64 // deliveries answered 2xx
	Retries   uint64 // attempts after a failed one
	Failed    uint64 // events given up after MaxAttempts
	Dropped   uint64 // events dropped because a queue was full
	Queued    int    // events waiting now
}

// Dispatcher delivers events to the configured URLs.
type Dispatcher struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex // orders Emit: seq order is queue order
	seq     uint64
	closed  bool
	senders []*sender

	ctx    context.Context // cancelled when Close gives up waiting
	cancel context.CancelFunc
	wg     sync.WaitGroup

	emitted, delivered, retries, failed, dropped atomic.Uint64
}

type item struct {
	id, typ string
	body    []byte
}

type sender struct {
	url   string
	queue chan item
}

// New validates cfg and starts one sender per URL.
func New(cfg Config) (*Dispatcher, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 1024
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 8
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 500 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	cfg.MaxBackoff = max(cfg.MaxBackoff, cfg.MinBackoff)
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	// The client follows no redirect: a 3xx is a failed attempt like any
	// other non-2xx, so that a receiver cannot bounce signed events (or
	// the server's requests) to another host. A given client is copied.
	client := &http.Client{}
	if cfg.Client != nil {
		c := *cfg.Client
		client = &c
	}
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	cfg.Client = client
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if len(cfg.URLs) > 0 && cfg.Secret == "" {
		return nil, errors.New("webhooks: a secret is required to sign events")
	}
	d := &Dispatcher{cfg: cfg, log: cfg.Logger.With("component", "webhooks")}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	for _, raw := range cfg.URLs {
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			d.cancel()
			return nil, fmt.Errorf("webhooks: URL %q: want http:// or https://", raw)
		}
		s := &sender{url: raw, queue: make(chan item, cfg.QueueSize)}
		d.senders = append(d.senders, s)
	}
	for _, s := range d.senders {
		d.wg.Add(1)
		go d.run(s)
	}
	return d, nil
}

// Enabled reports whether any URL is configured.
func (d *Dispatcher) Enabled() bool { return d != nil && len(d.senders) > 0 }

// Emit queues an event of type typ with data (JSON-encoded) for every
// URL. It never blocks; a nil Dispatcher does nothing.
func (d *Dispatcher) Emit(typ string, data any) {
	if !d.Enabled() {
		return
	}
	raw, err := json.Marshal(data)
	if err != nil {
		d.log.Error("encode event", "type", typ, "err", err)
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	d.seq++
	ev := Event{ID: newID(), Seq: d.seq, Type: typ, Time: d.cfg.Now().UTC(), Data: raw}
	body, _ := json.Marshal(ev) // cannot fail: raw is valid JSON
	d.emitted.Add(1)
	for _, s := range d.senders {
		select {
		case s.queue <- item{id: ev.ID, typ: typ, body: body}:
		default:
			if n := d.dropped.Add(1); n == 1 || n%100 == 0 {
				d.log.Warn("webhook queue full: event dropped", "url", redact(s.url), "type", typ, "dropped_total", n)
			}
		}
	}
}

// Stats returns the dispatcher's counters.
func (d *Dispatcher) Stats() Stats {
	if d == nil {
		return Stats{}
	}
	st := Stats{
		Emitted: d.emitted.Load(), Delivered: d.delivered.Load(), Retries: d.retries.Load(),
		Failed: d.failed.Load(), Dropped: d.dropped.Load(),
	}
	for _, s := range d.senders {
		st.Queued += len(s.queue)
	}
	return st
}

// Close stops taking events and waits up to timeout for the queued ones
// to be delivered (or given up); then it abandons what is left.
func (d *Dispatcher) Close(timeout time.Duration) {
	if d == nil {
		return
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return
	}
	d.closed = true
	for _, s := range d.senders {
		close(s.queue)
	}
	d.mu.Unlock()
	done := make(chan struct{})
	go func() {
		d.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(timeout):
		d.log.Warn("webhooks still queued at shutdown: abandoned", "queued", d.Stats().Queued)
		d.cancel()
		<-done
	}
	d.cancel()
}

// run delivers s's events in order, one at a time.
func (d *Dispatcher) run(s *sender) {
	defer d.wg.Done()
	for it := range s.queue {
		if d.ctx.Err() != nil {
			continue // abandoned: empty the queue
		}
		d.deliver(s, it)
	}
}

// deliver tries one event until a 2xx, MaxAttempts, or abandonment.
func (d *Dispatcher) deliver(s *sender, it item) {
	for attempt := 1; ; attempt++ {
		err := d.attempt(s, it, attempt)
		if err == nil {
			d.delivered.Add(1)
			return
		}
		if attempt >= d.cfg.MaxAttempts {
			d.failed.Add(1)
			d.log.Warn("webhook given up", "url", redact(s.url), "type", it.typ, "id", it.id, "attempts", attempt, "err", err)
			return
		}
		wait := d.backoff(attempt)
		d.log.Debug("webhook failed, retrying", "url", redact(s.url), "type", it.typ, "attempt", attempt, "in", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-d.ctx.Done():
			t.Stop()
			return
		}
		d.retries.Add(1)
	}
}

func (d *Dispatcher) backoff(attempt int) time.Duration {
	b := d.cfg.MinBackoff << min(attempt-1, 30)
	if b <= 0 || b > d.cfg.MaxBackoff {
		b = d.cfg.MaxBackoff
	}
	return time.Duration(float64(b) * (0.8 + 0.4*mrand.Float64()))
}

func (d *Dispatcher) attempt(s *sender, it item, n int) error {
	ctx, cancel := context.WithTimeout(d.ctx, d.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(it.body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "vigil-webhooks/1")
	req.Header.Set("Vigil-Event", it.typ)
	req.Header.Set("Vigil-Delivery", it.id)
	req.Header.Set("Vigil-Attempt", strconv.Itoa(n))
	req.Header.Set(SignatureHeader, Sign(d.cfg.Secret, d.cfg.Now(), it.body))
	resp, err := d.cfg.Client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// Sign returns the Vigil-Signature header value for body sent at t.
func Sign(secret string, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + mac(secret, ts, body)
}

func mac(secret, ts string, body []byte) string {
	h := hmac.New(sha256.New, []byte(secret))
	h.Write([]byte(ts))
	h.Write([]byte("."))
	h.Write(body)
	return hex.EncodeToString(h.Sum(nil))
}

// Errors of Verify.
var (
	ErrBadSignature = errors.New("webhooks: signature does not match")
	ErrStale        = errors.New("webhooks: timestamp outside the tolerance")
	ErrMalformed    = errors.New("webhooks: malformed signature header")
)

// Verify checks a Vigil-Signature header against body: one of its v1
// signatures must match, and its timestamp be within tolerance of now
// (which guards against replays). A receiver should use it as is.
func Verify(secret, header string, body []byte, now time.Time, tolerance time.Duration) error {
	var ts string
	var sigs []string
	for _, part := range strings.Split(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return ErrMalformed
		}
		switch k {
		case "t":
			ts = v
		case "v1":
			sigs = append(sigs, v)
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sigs) == 0 {
		return ErrMalformed
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return ErrStale
	}
	want := mac(secret, ts, body)
	for _, s := range sigs {
		if hmac.Equal([]byte(s), []byte(want)) {
			return nil
		}
	}
	return ErrBadSignature
}

func newID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return "EV" + hex.EncodeToString(b)
}

// redact hides a URL's credentials and query (which may hold a token).
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(invalid URL)"
	}
	u.User, u.RawQuery, u.Fragment = nil, "", ""
	return u.String()
}
