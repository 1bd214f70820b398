package transports

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/vigil-media/vigil/tools/vigil-load/internal/api"
)

// The transports a client can drain its session with. "none" opens the
// session and attaches nothing (a short poll every 10 s keeps it within
// the grace period): the baseline that shows what a participant costs
// without a transport.
const (
	trNone     = "none"
	trWS       = "ws"
	trSSE      = "sse"
	trLongPoll = "longpoll"
	trPoll     = "poll"
)

var allTransports = []string{trNone, trWS, trSSE, trLongPoll, trPoll}

// keepAlive is how often a "none" client touches its session: within the
// server's 15 s grace period.
const keepAlive = 10 * time.Second

// stepState is what the clients of one step share.
type stepState struct {
	base         string // http://127.0.0.1:port
	wsBase       string // ws://127.0.0.1:port
	hc           *http.Client
	keepHC       *http.Client // unmetered, for "none" keep-alives
	dialer       *websocket.Dialer
	m            *api.Meter
	pollInterval time.Duration
	longPollWait time.Duration

	joinEvents atomic.Int64 // events before the first chat
	chats      atomic.Int64 // chat events delivered
	want       int64        // chat events expected in all
	done       chan struct{}
	doneOnce   sync.Once
}

func (st *stepState) delivered() {
	if st.chats.Add(1) == st.want {
		st.doneOnce.Do(func() { close(st.done) })
	}
}

// client drains one session. Only its own goroutine touches it until
// the step ends.
type client struct {
	st     *stepState
	sid    string
	cursor uint64
	etag   string
	lat    []time.Duration
	dups   int // events at or below the cursor: delivered twice
	drops  int // transport errors and reconnects
	left   bool
	fatal  error
	buf    []byte
	line   []byte
}

// event takes one event received at now.
func (c *client) event(seq uint64, typ, text []byte, now time.Time) {
	if seq != 0 && seq <= c.cursor {
		c.dups++
		return
	}
	c.cursor = seq
	switch {
	case bytes.Equal(typ, typeChat):
		ts, _ := parseUint(text)
		c.lat = append(c.lat, now.Sub(time.Unix(0, int64(ts))))
		c.st.delivered()
	case bytes.Equal(typ, typeLeft):
		c.left = true
		c.st.joinEvents.Add(1)
	default:
		c.st.joinEvents.Add(1)
	}
}

func (c *client) scan(b []byte, now time.Time) int {
	return scanEvents(b, func(seq uint64, typ, text []byte) { c.event(seq, typ, text, now) })
}

// trim drops a read buffer that a big event (a joined roster) grew.
func (c *client) trim() {
	if cap(c.buf) > 64<<10 {
		c.buf = nil
	}
	if cap(c.line) > 64<<10 {
		c.line = nil
	}
}

func (c *client) run(ctx context.Context, transport string) {
	switch transport {
	case trNone:
		c.runNone(ctx)
	case trWS:
		c.runWS(ctx)
	case trSSE:
		c.runSSE(ctx)
	case trLongPoll:
		c.runLongPoll(ctx)
	case trPoll:
		c.runPoll(ctx)
	}
}

// pause waits before a retry; false when the step is over.
func pause(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (c *client) path(suffix string) string {
	return "/v1/sessions/" + c.sid + suffix + "?cursor=" + strconv.FormatUint(c.cursor, 10)
}

// isFinal reports whether a refusal means the session cannot be drained
// any more (gone, cursor too old or invalid).
func isFinal(status int) bool {
	return status == http.StatusNotFound || status == http.StatusGone || status == http.StatusBadRequest
}

func (c *client) runWS(ctx context.Context) {
	for ctx.Err() == nil && !c.left && c.fatal == nil {
		c.st.m.Requests.Add(1)
		conn, resp, err := c.st.dialer.DialContext(ctx, c.st.wsBase+c.path("/ws"), nil)
		if err != nil {
			if resp != nil && isFinal(resp.StatusCode) {
				c.fatal = fmt.Errorf("ws: %s", resp.Status)
				return
			}
			c.drops++
			pause(ctx, 100*time.Millisecond)
			continue
		}
		stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
		for {
			_, r, err := conn.NextReader()
			if err != nil {
				var ce *websocket.CloseError
				if errors.As(err, &ce) && ce.Code >= 4400 {
					c.fatal = fmt.Errorf("ws closed: %d %s", ce.Code, ce.Text)
				}
				break
			}
			if c.buf, err = readAll(c.buf[:0], r); err != nil {
				break
			}
			c.scan(c.buf, time.Now())
			c.trim()
		}
		stop()
		_ = conn.Close()
		if ctx.Err() == nil && !c.left && c.fatal == nil {
			c.drops++
			pause(ctx, 100*time.Millisecond)
		}
	}
}

func (c *client) runSSE(ctx context.Context) {
	for ctx.Err() == nil && !c.left && c.fatal == nil {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.st.base+c.path("/events"), nil)
		if err != nil {
			c.fatal = err
			return
		}
		req.Header.Set("Accept", "text/event-stream")
		c.st.m.Requests.Add(1)
		resp, err := c.st.hc.Do(req)
		if err != nil {
			c.drops++
			pause(ctx, 100*time.Millisecond)
			continue
		}
		if resp.StatusCode != http.StatusOK {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if isFinal(resp.StatusCode) {
				c.fatal = fmt.Errorf("sse: %s", resp.Status)
				return
			}
			c.drops++
			pause(ctx, 100*time.Millisecond)
			continue
		}
		br := bufio.NewReaderSize(resp.Body, 8<<10)
		for {
			line, err := readLine(br, &c.line)
			if err != nil {
				break
			}
			if data, ok := bytes.CutPrefix(line, []byte("data: ")); ok {
				if c.scan(data, time.Now()) == 0 && bytes.Contains(data, []byte(`"error"`)) {
					c.fatal = fmt.Errorf("sse: %s", bytes.TrimSpace(data))
				}
				c.trim()
			}
		}
		_ = resp.Body.Close()
		if ctx.Err() == nil && !c.left && c.fatal == nil {
			c.drops++
			pause(ctx, 100*time.Millisecond)
		}
	}
}

// get sends one poll and reads its reply into c.buf.
func (c *client) get(ctx context.Context, hc *http.Client, url, etag string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	if etag != "" {
		req.Header.Set("If-None-Match", etag)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	c.buf, err = readAll(c.buf[:0], resp.Body)
	return resp.StatusCode, resp.Header.Get("ETag"), err
}

// pollReply takes a 200 poll reply in c.buf.
func (c *client) pollReply(now time.Time) {
	c.scan(c.buf, now)
	if cur, closed, ok := pollCursor(c.buf); ok {
		if cur > c.cursor {
			c.cursor = cur
		}
		if closed {
			c.left = true
		}
	}
	c.trim()
}

func (c *client) runLongPoll(ctx context.Context) {
	wait := "&wait=" + strconv.FormatFloat(c.st.longPollWait.Seconds(), 'f', -1, 64)
	for ctx.Err() == nil && !c.left && c.fatal == nil {
		c.st.m.Requests.Add(1)
		status, _, err := c.get(ctx, c.st.hc, c.st.base+c.path("/poll")+wait, "")
		switch {
		case err != nil:
			if ctx.Err() == nil {
				c.drops++
				pause(ctx, 100*time.Millisecond)
			}
		case status == http.StatusOK:
			c.pollReply(time.Now())
		case isFinal(status):
			c.fatal = fmt.Errorf("longpoll: %d %s", status, bytes.TrimSpace(c.buf))
		default: // 503 too_many_waiters, or worse
			c.drops++
			pause(ctx, time.Second)
		}
	}
}

func (c *client) runPoll(ctx context.Context) {
	// Clients start at random moments, so polls spread over the interval.
	if !pause(ctx, rand.N(c.st.pollInterval)) {
		return
	}
	tick := time.NewTicker(c.st.pollInterval)
	defer tick.Stop()
	for ctx.Err() == nil && !c.left && c.fatal == nil {
		c.st.m.Requests.Add(1)
		status, etag, err := c.get(ctx, c.st.hc, c.st.base+c.path("/poll"), c.etag)
		switch {
		case err != nil:
			if ctx.Err() == nil {
				c.drops++
			}
		case status == http.StatusOK:
			c.etag = etag
			c.pollReply(time.Now())
		case status == http.StatusNotModified:
		case isFinal(status):
			c.fatal = fmt.Errorf("poll: %d %s", status, bytes.TrimSpace(c.buf))
		default:
			c.drops++
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}

// runNone keeps the session alive with no transport attached between
// short polls far apart, on an unmetered client.
func (c *client) runNone(ctx context.Context) {
	for pause(ctx, keepAlive) {
		status, _, err := c.get(ctx, c.st.keepHC, c.st.base+c.path("/poll"), "")
		if err == nil && status == http.StatusOK {
			if cur, _, ok := pollCursor(c.buf); ok {
				c.cursor = cur
			}
			c.buf = nil
		}
	}
}

// readAll appends everything r has to buf.
func readAll(buf []byte, r io.Reader) ([]byte, error) {
	if cap(buf) == 0 {
		buf = make([]byte, 0, 2048)
	}
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// readLine reads one line, however long, using scratch for lines longer
// than the reader's buffer.
func readLine(br *bufio.Reader, scratch *[]byte) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err != bufio.ErrBufferFull {
		return line, err
	}
	*scratch = append((*scratch)[:0], line...)
	for {
		line, err = br.ReadSlice('\n')
		*scratch = append(*scratch, line...)
		if err != bufio.ErrBufferFull {
			return *scratch, err
		}
	}
}
