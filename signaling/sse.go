package signaling

import (
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

const sseHeartbeat = 15 * time.Second

// serveSSE drains a stream as Server-Sent Events. Each event's id is its
// sequence number, so a reconnecting EventSource resumes by itself with
// Last-Event-ID; ?cursor= does the same for a first connection.
func (h *sessionHub) serveSSE(lookup lookupFunc) gin.HandlerFunc {
	return func(c *gin.Context) {
		st, cursor, ok := streamRequest(c, lookup)
		if !ok {
			return
		}
		if id := c.GetHeader("Last-Event-ID"); id != "" {
			var err error
			if cursor, err = strconv.ParseUint(id, 10, 64); err != nil {
				writeError(c, errors.Join(ErrInvalidRequest, errors.New("Last-Event-ID must be a sequence number")))
				return
			}
		}
		out := st.outbox()
		if cursor > out.Last() {
			writeError(c, ErrInvalidCursor)
			return
		}
		if cursor+1 < out.First() {
			writeError(c, patterns.ErrCursorTooOld)
			return
		}
		if !h.trackConn() {
			writeError(c, ErrShuttingDown)
			return
		}
		defer h.conns.Done()

		kick := make(chan struct{}, 1)
		gen := st.attach("sse", func() {
			select {
			case kick <- struct{}{}:
			default:
			}
		})
		defer st.detach(gen)

		h := c.Writer.Header()
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-store")
		h.Set("X-Accel-Buffering", "no")
		c.Status(http.StatusOK)
		rc := http.NewResponseController(c.Writer)
		w := c.Writer
		write := func(f func(io.Writer) error) bool {
			_ = rc.SetWriteDeadline(time.Now().Add(wsWriteWait))
			if err := f(w); err != nil {
				return false
			}
			return rc.Flush() == nil
		}
		// Tell EventSource how soon to come back after a drop.
		if !write(func(w io.Writer) error { _, err := io.WriteString(w, "retry: 1000\n\n"); return err }) {
			return
		}
		beat := time.NewTicker(sseHeartbeat)
		defer beat.Stop()
		for {
			closed := out.Closed() // before the read, as in the WebSocket's writeLoop
			evs, err := out.ReadAfter(cursor, wsBatch)
			if errors.Is(err, patterns.ErrCursorTooOld) {
				write(func(w io.Writer) error { return writeSSEError(w, "cursor_too_old", err) })
				return
			}
			if len(evs) > 0 {
				ok := write(func(w io.Writer) error {
					for _, ev := range evs {
						if err := writeSSE(w, ev); err != nil {
							return err
						}
					}
					return nil
				})
				if !ok {
					return
				}
				cursor = evs[len(evs)-1].Seq
				continue
			}
			if closed {
				return
			}
			select {
			case <-out.Changed(cursor):
			case <-beat.C:
				if !write(func(w io.Writer) error { _, err := io.WriteString(w, ": ping\n\n"); return err }) {
					return
				}
			case <-kick:
				return
			case <-c.Request.Context().Done():
				return
			}
		}
	}
}

// writeSSE writes one event: its id and the whole event (as on the
// WebSocket) as data. There is no "event:" field: every event is a plain
// message, so that our "error" events never meet EventSource's own.
func writeSSE(w io.Writer, ev patterns.Event) error {
	b, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "id: %d\ndata: %s\n\n", ev.Seq, b)
	return err
}

// writeSSEError writes an error event without an id, so that the client's
// cursor does not move.
func writeSSEError(w io.Writer, code string, err error) error {
	b, _ := json.Marshal(map[string]any{"type": "error", "data": ErrorReply{Code: code, Message: err.Error()}})
	_, werr := fmt.Fprintf(w, "data: %s\n\n", b)
	return werr
}
