package vigiltest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pion/webrtc/v4"
)

// Event is a server event as it arrives on a transport.
type Event struct {
	Seq  uint64          `json:"seq"`
	Type string          `json:"type"`
	Data json.RawMessage `json:"data"`
}

// TrackInfo describes a track of an offer's track map: whose it is and
// which source it carries.
type TrackInfo struct {
	ID       string `json:"id"`
	Identity string `json:"identity"`
	Source   string `json:"source"`
}

// Client is a participant speaking the wire protocol with a real pion
// PeerConnection (the polite peer): over a real WebSocket, or over one
// of the HTTP transports (see DialVia). It answers the server's offers,
// counts the packets it receives by "identity/source" and keeps every
// event it receives.
type Client struct {
	// Server is the server the session was opened on.
	Server *Server
	// Session is the session's id.
	Session string
	// PC is the client's PeerConnection.
	PC *webrtc.PeerConnection

	t *testing.T

	// mu guards the fields below it; no other lock is taken while
	// holding it.
	mu         sync.Mutex
	conn       *websocket.Conn
	connEnd    chan error // receives the read error that ended the current socket
	events     []Event
	received   map[string]int // "identity/source" -> packets
	byMid      map[string]TrackInfo
	transport  string             // "ws", "sse", "longpoll" or "poll"
	stopHTTP   context.CancelFunc // ends the current HTTP transport
	posts      int                // messages sent by POST
	postErrors []json.RawMessage  // error bodies of refused POSTs

	// wmu serialises writes to the socket; mu may be taken while
	// holding it.
	wmu sync.Mutex
}

// NewClient makes a Client of the open session sid with the connection
// pc, without handlers and without a transport: the caller sets pc's
// OnTrack and OnICECandidate, then calls Connect or ConnectVia. Attach
// does all of that.
func NewClient(t *testing.T, srv *Server, sid string, pc *webrtc.PeerConnection) *Client {
	return &Client{t: t, Server: srv, Session: sid, PC: pc, received: map[string]int{}, byMid: map[string]TrackInfo{}}
}

// WSURL is the WebSocket address of session resuming after cursor.
func WSURL(srv *Server, session string, cursor uint64) string {
	return "ws" + strings.TrimPrefix(srv.URL, "http") + fmt.Sprintf("/v1/sessions/%s/ws?cursor=%d", session, cursor)
}

// Dial joins room as identity/role and attaches a WebSocket.
func Dial(t *testing.T, srv *Server, room, identity, role string) *Client {
	t.Helper()
	return DialVia(t, srv, room, identity, role, "ws")
}

// Connect attaches a new WebSocket that resumes the session from cursor;
// the test fails if it cannot be dialled.
func (c *Client) Connect(cursor uint64) {
	conn, resp, err := websocket.DefaultDialer.Dial(WSURL(c.Server, c.Session, cursor), nil)
	if err != nil {
		c.t.Fatalf("dial ws: %v (%v)", err, resp)
	}
	end := make(chan error, 1)
	c.mu.Lock()
	c.conn = conn
	c.connEnd = end
	c.transport = "ws"
	c.mu.Unlock()
	go c.readLoop(conn, end)
}

// SocketEnd returns the channel that receives the current socket's end.
func (c *Client) SocketEnd() <-chan error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.connEnd
}

// Conn is the current WebSocket (nil between transports or after Close).
func (c *Client) Conn() *websocket.Conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn
}

// Transport is the transport in use: "ws", "sse", "longpoll" or "poll".
func (c *Client) Transport() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.transport
}

// DropSocket closes the current WebSocket without waiting for its reader
// to stop and returns the events received until then.
func (c *Client) DropSocket() []Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	_ = c.conn.Close()
	return append([]Event(nil), c.events...)
}

func (c *Client) readLoop(conn *websocket.Conn, end chan<- error) {
	for {
		var ev Event
		if err := conn.ReadJSON(&ev); err != nil {
			end <- err
			close(end) // later receivers see the end at once
			return
		}
		c.mu.Lock()
		c.events = append(c.events, ev)
		c.mu.Unlock()
		c.handle(ev)
	}
}

func (c *Client) handle(ev Event) {
	switch ev.Type {
	case "offer":
		var d struct {
			SDP    string               `json:"sdp"`
			Tracks map[string]TrackInfo `json:"tracks"`
		}
		_ = json.Unmarshal(ev.Data, &d)
		c.mu.Lock()
		for mid, ti := range d.Tracks {
			c.byMid[mid] = ti
		}
		c.mu.Unlock()
		if c.PC.SignalingState() == webrtc.SignalingStateHaveLocalOffer {
			// Polite: roll our offer back and take theirs.
			if err := c.PC.SetLocalDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeRollback}); err != nil {
				c.t.Errorf("rollback: %v", err)
			}
		}
		// pion closes the connection when the server's DTLS closes (the
		// participant left): an offer sent just before is then moot, at
		// whichever step the close lands.
		failed := func(what string, err error) {
			if !errors.Is(err, webrtc.ErrConnectionClosed) && c.PC.SignalingState() != webrtc.SignalingStateClosed {
				c.t.Errorf("%s: %v", what, err)
			}
		}
		if err := c.PC.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: d.SDP}); err != nil {
			failed("set remote offer", err)
			return
		}
		ans, err := c.PC.CreateAnswer(nil)
		if err != nil {
			failed("answer", err)
			return
		}
		if err := c.PC.SetLocalDescription(ans); err != nil {
			failed("set local answer", err)
			return
		}
		c.Send("answer", "", map[string]string{"sdp": c.PC.LocalDescription().SDP})
	case "answer":
		var d struct {
			SDP string `json:"sdp"`
		}
		_ = json.Unmarshal(ev.Data, &d)
		if err := c.PC.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: d.SDP}); err != nil {
			c.t.Errorf("set remote answer: %v", err)
		}
	}
}

// Send writes one client message {"type", "id", "data"}.
func (c *Client) Send(typ, id string, data any) {
	c.SendRaw(MustJSON(map[string]any{"type": typ, "id": id, "data": data}))
}

// SendRaw writes b as one client message: over the socket for ws, by
// POST otherwise. Between transports or after Close it is dropped.
func (c *Client) SendRaw(b []byte) {
	c.mu.Lock()
	transport := c.transport
	c.mu.Unlock()
	if transport != "" && transport != "ws" {
		c.Post(b, "")
		return
	}
	c.WriteMessage(websocket.TextMessage, b)
}

// WriteMessage writes one frame of messageType on the current socket;
// without one it does nothing.
func (c *Client) WriteMessage(messageType int, b []byte) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	conn := c.conn
	c.mu.Unlock()
	if conn == nil {
		return // between transports, or closed
	}
	_ = conn.WriteMessage(messageType, b)
}

// MustJSON marshals v and panics if it cannot.
func MustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// Publish adds tracks as send-only transceivers (reading their RTCP) and
// offers them with their declared sources (the map's keys).
func (c *Client) Publish(tracks map[string]webrtc.TrackLocal) {
	for _, tr := range tracks {
		tx, err := c.PC.AddTransceiverFromTrack(tr, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
		if err != nil {
			c.t.Fatal(err)
		}
		go func() {
			for {
				if _, _, err := tx.Sender().ReadRTCP(); err != nil {
					return
				}
			}
		}()
	}
	c.Offer(tracks)
}

// Offer sends an offer of the connection as it is, declaring the source
// of each of tracks (keyed by source) that is being sent.
func (c *Client) Offer(tracks map[string]webrtc.TrackLocal) {
	offer, err := c.PC.CreateOffer(nil)
	if err != nil {
		c.t.Fatal(err)
	}
	if err := c.PC.SetLocalDescription(offer); err != nil {
		c.t.Fatal(err)
	}
	sources := map[string]string{}
	for _, tx := range c.PC.GetTransceivers() {
		for src, tr := range tracks {
			if tx.Sender() != nil && tx.Sender().Track() == tr {
				sources[tx.Mid()] = src
			}
		}
	}
	c.Send("offer", "pub", map[string]any{"sdp": offer.SDP, "sources": sources})
}

// Track is what the server's offers said of the track at mid.
func (c *Client) Track(mid string) TrackInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.byMid[mid]
}

// CountPacket counts one packet received on the track at mid, under its
// "identity/source" key, and returns the track's info.
func (c *Client) CountPacket(mid string) TrackInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	info := c.byMid[mid]
	c.received[info.Identity+"/"+info.Source]++
	return info
}

// Packets is how many packets were received of key ("identity/source").
func (c *Client) Packets(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.received[key]
}

// Events returns a copy of every event received so far, in order.
func (c *Client) Events() []Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Event(nil), c.events...)
}

// EventsOf returns the events of one type seen so far.
func (c *Client) EventsOf(typ string) []Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Event
	for _, e := range c.events {
		if e.Type == typ {
			out = append(out, e)
		}
	}
	return out
}

// WaitEvent waits up to 10 s for an event of typ matching cond (any
// event of typ when cond is nil); the test fails if none comes.
func (c *Client) WaitEvent(typ string, cond func(json.RawMessage) bool) Event {
	c.t.Helper()
	return c.WaitEventWithin(10*time.Second, typ, cond)
}

// WaitEventWithin is WaitEvent with a deadline of d.
func (c *Client) WaitEventWithin(d time.Duration, typ string, cond func(json.RawMessage) bool) Event {
	c.t.Helper()
	var found Event
	WaitFor(c.t, d, "event "+typ, func() bool {
		for _, e := range c.EventsOf(typ) {
			if cond == nil || cond(e.Data) {
				found = e
				return true
			}
		}
		return false
	})
	return found
}

// LastSeq is the sequence number of the last event received.
func (c *Client) LastSeq() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.events) == 0 {
		return 0
	}
	return c.events[len(c.events)-1].Seq
}

// Close ends the transport and closes the PeerConnection.
func (c *Client) Close() {
	c.Disconnect()
	_ = c.PC.Close()
}

// WaitFor polls cond every 10 ms; the test fails if it is not true
// within d.
func WaitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ErrorCode extracts the code of an error reply
// {"error":{"code","message"}}; the test fails if body is not one or
// has no message.
func ErrorCode(t *testing.T, body []byte) string {
	t.Helper()
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error.Code == "" {
		t.Fatalf("not a JSON error body: %s", body)
	}
	if e.Error.Message == "" {
		t.Fatalf("error without a message: %s", body)
	}
	return e.Error.Code
}

// Received returns a copy of the packet counts by "identity/source".
func (c *Client) Received() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int, len(c.received))
	for k, n := range c.received {
		out[k] = n
	}
	return out
}
