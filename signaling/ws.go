package signaling

import (
	"encoding/json"
	"errors"
	"strconv"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/gorilla/websocket"
	"github.com/vigil-media/vigil/patterns"
)

// WebSocket close codes of our own.
const (
	closeReplaced     = 4000 // a newer transport took over the session
	closeInvalidCur   = 4400 // cursor ahead of the outbox
	closeCursorTooOld = 4410 // events after the cursor are gone
)

const (
	wsWriteWait  = 10 * time.Second
	wsPongWait   = 45 * time.Second
	wsPingPeriod = 20 * time.Second
	wsBatch      = 64
)

// wsConn drains a stream's outbox into one WebSocket. Its writer
// goroutine is the only one that writes to the socket.
type wsConn struct {
	conn     *websocket.Conn
	st       stream
	kick     chan int // a close code for the writer
	readDone chan struct{}
}

// streamRequest finds the stream a transport request names and its
// cursor, or replies with the error.
func streamRequest(c *gin.Context, lookup lookupFunc) (stream, uint64, bool) {
	st, err := lookup(c)
	if err == nil {
		var cursor uint64
		if cursor, err = parseCursor(c); err == nil {
			return st, cursor, true
		}
	}
	writeError(c, err)
	return nil, 0, false
}

// parseCursor reads the cursor query parameter (0 when absent).
func parseCursor(c *gin.Context) (uint64, error) {
	v := c.Query("cursor")
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, errors.Join(ErrInvalidRequest, errors.New("cursor must be a non-negative integer"))
	}
	return n, nil
}

func (h *sessionHub) serveWS(lookup lookupFunc) gin.HandlerFunc {
	return func(c *gin.Context) {
		st, cursor, ok := streamRequest(c, lookup)
		if !ok {
			return
		}
		if !h.trackConn() {
			writeError(c, ErrShuttingDown)
			return
		}
		defer h.conns.Done()
		up := websocket.Upgrader{ReadBufferSize: 4096, WriteBufferSize: 16 << 10, CheckOrigin: h.srv.originAllowed}
		conn, err := up.Upgrade(c.Writer, c.Request, nil)
		if err != nil {
			return // the upgrader has replied
		}
		w := &wsConn{conn: conn, st: st, kick: make(chan int, 1), readDone: make(chan struct{})}
		gen := st.attach("ws", func() {
			select {
			case w.kick <- closeReplaced:
			default:
			}
		})
		writerDone := make(chan struct{})
		go func() {
			defer close(writerDone)
			w.writeLoop(cursor)
		}()
		w.readLoop()
		close(w.readDone)
		<-writerDone
		st.detach(gen)
	}
}

// readLoop reads client messages until the socket fails or closes.
func (w *wsConn) readLoop() {
	w.conn.SetReadLimit(maxMessageBytes)
	_ = w.conn.SetReadDeadline(time.Now().Add(wsPongWait))
	w.conn.SetPongHandler(func(string) error {
		return w.conn.SetReadDeadline(time.Now().Add(wsPongWait))
	})
	for {
		typ, b, err := w.conn.ReadMessage()
		if err != nil {
			return
		}
		_ = w.conn.SetReadDeadline(time.Now().Add(wsPongWait))
		if typ != websocket.TextMessage {
			w.st.reject("", errors.Join(ErrInvalidMessage, errors.New("binary frames are not accepted")))
			continue
		}
		if !w.st.accept(b) {
			return
		}
	}
}

// writeLoop sends every event after cursor, then each new one, with pings
// in between; it ends when the session's outbox is closed and drained,
// when the reader is done, or when a newer transport takes over.
func (w *wsConn) writeLoop(cursor uint64) {
	defer w.conn.Close()
	out := w.st.outbox()
	if cursor > out.Last() {
		w.fail(closeInvalidCur, ErrInvalidCursor, "invalid_cursor")
		return
	}
	ping := time.NewTicker(wsPingPeriod)
	defer ping.Stop()
	for {
		// Closed is read before the events: an outbox closed after the
		// read (its last event, a left, appended just before) is drained
		// at the next turn, never closed over.
		closed := out.Closed()
		evs, err := out.ReadAfter(cursor, wsBatch)
		if errors.Is(err, patterns.ErrCursorTooOld) {
			w.fail(closeCursorTooOld, err, "cursor_too_old")
			return
		}
		for _, ev := range evs {
			_ = w.conn.SetWriteDeadline(time.Now().Add(wsWriteWait))
			if err := w.conn.WriteJSON(ev); err != nil {
				return
			}
			cursor = ev.Seq
		}
		if len(evs) > 0 {
			continue
		}
		if closed {
			w.close(websocket.CloseNormalClosure, "session ended")
			return
		}
		select {
		case <-out.Changed(cursor):
		case <-ping.C:
			if err := w.conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(wsWriteWait)); err != nil {
				return
			}
		case code := <-w.kick:
			w.close(code, "replaced by a newer connection")
			return
		case <-w.readDone:
			return
		}
	}
}

// fail sends an error frame without a sequence number, then closes.
func (w *wsConn) fail(code int, err error, wireCode string) {
	b, _ := json.Marshal(map[string]any{"type": "error", "data": ErrorReply{Code: wireCode, Message: err.Error()}})
	_ = w.conn.SetWriteDeadline(time.Now().Add(wsWriteWait))
	_ = w.conn.WriteMessage(websocket.TextMessage, b)
	w.close(code, wireCode)
}

func (w *wsConn) close(code int, reason string) {
	_ = w.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(wsWriteWait))
}
