package signaling

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/vigil-media/vigil/patterns"
)

const (
	maxPollWait     = 30 * time.Second
	pollBatch       = 256
	shortPollRetry  = "1" // Retry-After hint, seconds, when nothing was new
	messageDeadline = 30 * time.Second
)

// pollResponse is the body of a poll.
type pollResponse struct {
	Events []patterns.Event `json:"events"`
	// Cursor is the sequence number to poll after next.
	Cursor uint64 `json:"cursor"`
	// Closed means the stream has ended: nothing will follow these events.
	Closed bool `json:"closed"`
}

// servePoll answers GET .../poll?cursor=N[&wait=S]: at once (short
// polling; If-None-Match gives 304 while nothing is new) or, with wait,
// held until an event comes, S seconds pass, or the client goes (long
// polling, capped by the server's waiter limit).
func (h *sessionHub) servePoll(lookup lookupFunc) gin.HandlerFunc {
	return func(c *gin.Context) {
		st, cursor, ok := streamRequest(c, lookup)
		if !ok {
			return
		}
		var wait time.Duration
		if v := c.Query("wait"); v != "" {
			secs, err := strconv.ParseFloat(v, 64)
			if err != nil || secs < 0 || secs > maxPollWait.Seconds() {
				writeError(c, fmt.Errorf("%w: wait must be 0 to %v seconds", ErrInvalidRequest, maxPollWait.Seconds()))
				return
			}
			wait = time.Duration(secs * float64(time.Second))
		}
		out := st.outbox()
		if cursor > out.Last() {
			writeError(c, ErrInvalidCursor)
			return
		}
		transport := "poll"
		ctx := c.Request.Context()
		if wait > 0 {
			transport = "longpoll"
			release, err := h.waiters.Acquire()
			if err != nil {
				c.Header("Retry-After", "1")
				writeError(c, err)
				return
			}
			defer release()
			var cancel context.CancelFunc
			ctx, cancel = context.WithCancel(ctx)
			defer cancel()
			gen := st.attach(transport, cancel)
			defer st.detach(gen)
		} else {
			gen := st.attach(transport, func() {})
			defer st.detach(gen)
		}

		evs, err := out.ReadAfter(cursor, pollBatch)
		if err == nil && len(evs) == 0 && !out.Closed() && wait > 0 {
			if _, werr := patterns.WaitAny(ctx, wait, out.Changed(cursor)); werr != nil && c.Request.Context().Err() != nil {
				return // the client went away
			}
			evs, err = out.ReadAfter(cursor, pollBatch)
		}
		if err != nil {
			writeError(c, err)
			return
		}
		// Closed only once this reply holds the last event: an outbox
		// closed after the read above keeps its last events for the next
		// poll.
		next := cursor
		if len(evs) > 0 {
			next = evs[len(evs)-1].Seq
		}
		resp := pollResponse{Events: evs, Cursor: cursor, Closed: out.Closed() && next == out.Last()}
		if resp.Events == nil {
			resp.Events = []patterns.Event{}
		}
		if len(evs) > 0 {
			resp.Cursor = evs[len(evs)-1].Seq
		}
		// The reply to a cursor depends only on what follows it, so the
		// last sequence number (and the end) name it.
		etag := fmt.Sprintf(`"%d-%d-%t"`, cursor, resp.Cursor, resp.Closed)
		c.Header("ETag", etag)
		c.Header("Cache-Control", "no-cache")
		if len(evs) == 0 {
			c.Header("Retry-After", shortPollRetry)
		}
		if inm := c.GetHeader("If-None-Match"); inm != "" && inm == etag {
			c.Status(http.StatusNotModified)
			return
		}
		c.JSON(http.StatusOK, resp)
	}
}

// postMessage is request-response for everything a client sends: one
// message per POST, applied in order with the session's other messages,
// answered with its outcome. With an Idempotency-Key header, a retry of
// the same request gets the first reply and does not act twice; the same
// key with another body is refused.
func (h *sessionHub) postMessage(c *gin.Context) {
	ss, err := h.session(c.Param("session"))
	if err != nil {
		writeError(c, err)
		return
	}
	if ok, wait := ss.rate.allow(); !ok {
		refuseRate(c, wait, fmt.Sprintf("over %v messages a second", h.cfg.MessageRate))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(c.Writer, c.Request.Body, maxMessageBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			writeError(c, ErrBodyTooLarge)
			return
		}
		writeError(c, errors.Join(ErrInvalidRequest, err))
		return
	}
	key := c.GetHeader("Idempotency-Key")
	if len(key) > 255 {
		writeError(c, fmt.Errorf("%w: Idempotency-Key longer than 255 bytes", ErrInvalidRequest))
		return
	}
	sum := sha256.Sum256(body)
	res, replayed, err := h.idem.Do(c.Request.Context(), ss.id, key, hex.EncodeToString(sum[:]), func() patterns.Result {
		return ss.apply(body)
	})
	if err != nil {
		writeError(c, err)
		return
	}
	if replayed {
		c.Header("Idempotent-Replayed", "true")
	}
	c.Data(res.Status, "application/json; charset=utf-8", res.Body)
}

// apply decodes one message, runs it through the session loop and returns
// the reply to send.
func (ss *Session) apply(body []byte) patterns.Result {
	m, err := decodeMessage(body)
	if err == nil {
		m.reply = make(chan error, 1)
		if !ss.enqueue(m) {
			err = ErrSessionNotFound
		} else {
			select {
			case err = <-m.reply:
			case <-ss.stop:
				err = ErrSessionNotFound
			case <-time.After(messageDeadline):
				err = errors.New("message not applied in time")
			}
		}
	}
	if err != nil {
		status, code := codeFor(err)
		b, _ := json.Marshal(errorBody{Error: errorDetail{Code: code, Message: err.Error()}})
		return patterns.Result{Status: status, Body: b}
	}
	return patterns.Result{Status: http.StatusOK, Body: []byte(`{"ok":true}`)}
}
