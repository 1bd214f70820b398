package federation_test

// Copied from signaling/client_test.go: a participant over a real
// WebSocket, for the cluster and cascade tests.

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
	"github.com/vigil-media/vigil/signaling/vigiltest"
)

// event is a server event as it arrives on the socket.
type event struct {
	Seq  uint64          `json:"seq"`
	Type string          `json:"type"`
	Data json.RawMessage `json:"data"`
}

// wsClient is a participant speaking the wire protocol over a real
// WebSocket with a real pion PeerConnection (the polite peer).
type wsClient struct {
	t       *testing.T
	srv     *vigiltest.Server
	session string
	conn    *websocket.Conn
	connEnd chan error // receives the read error that ended the current socket
	pc      *webrtc.PeerConnection

	mu       sync.Mutex
	events   []event
	received map[string]int // "identity/source" -> packets
	byMid    map[string]trackInfo
	closed   chan struct{}
	wmu      sync.Mutex

	transport  string             // "ws", "sse", "longpoll" or "poll"
	stopHTTP   context.CancelFunc // ends the current HTTP transport
	posts      int                // messages sent by POST
	postErrors []json.RawMessage  // error bodies of refused POSTs
}

type trackInfo struct {
	ID       string `json:"id"`
	Identity string `json:"identity"`
	Source   string `json:"source"`
}

func wsURL(srv *vigiltest.Server, session string, cursor uint64) string {
	return "ws" + strings.TrimPrefix(srv.URL, "http") + fmt.Sprintf("/v1/sessions/%s/ws?cursor=%d", session, cursor)
}

// dial joins room as identity/role and attaches a WebSocket.
func dial(t *testing.T, srv *vigiltest.Server, room, identity, role string) *wsClient {
	t.Helper()
	return dialVia(t, srv, room, identity, role, "ws")
}

func (c *wsClient) connect(cursor uint64) {
	conn, resp, err := websocket.DefaultDialer.Dial(wsURL(c.srv, c.session, cursor), nil)
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

func (c *wsClient) readLoop(conn *websocket.Conn, end chan<- error) {
	for {
		var ev event
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

func (c *wsClient) handle(ev event) {
	switch ev.Type {
	case "offer":
		var d struct {
			SDP    string               `json:"sdp"`
			Tracks map[string]trackInfo `json:"tracks"`
		}
		_ = json.Unmarshal(ev.Data, &d)
		c.mu.Lock()
		for mid, ti := range d.Tracks {
			c.byMid[mid] = ti
		}
		c.mu.Unlock()
		if c.pc.SignalingState() == webrtc.SignalingStateHaveLocalOffer {
			// Polite: roll our offer back and take theirs.
			if err := c.pc.SetLocalDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeRollback}); err != nil {
				c.t.Errorf("rollback: %v", err)
			}
		}
		// pion closes the connection when the server's DTLS closes (the
		// participant left): an offer sent just before is then moot.
		failed := func(what string, err error) {
			if !errors.Is(err, webrtc.ErrConnectionClosed) {
				c.t.Errorf("%s: %v", what, err)
			}
		}
		if err := c.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: d.SDP}); err != nil {
			failed("set remote offer", err)
			return
		}
		ans, err := c.pc.CreateAnswer(nil)
		if err != nil {
			failed("answer", err)
			return
		}
		if err := c.pc.SetLocalDescription(ans); err != nil {
			failed("set local answer", err)
			return
		}
		c.send("answer", "", map[string]string{"sdp": c.pc.LocalDescription().SDP})
	case "answer":
		var d struct {
			SDP string `json:"sdp"`
		}
		_ = json.Unmarshal(ev.Data, &d)
		if err := c.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: d.SDP}); err != nil {
			c.t.Errorf("set remote answer: %v", err)
		}
	}
}

// send writes one client message.
func (c *wsClient) send(typ, id string, data any) {
	c.sendRaw(mustJSON(map[string]any{"type": typ, "id": id, "data": data}))
}

func (c *wsClient) sendRaw(b []byte) {
	c.mu.Lock()
	transport := c.transport
	c.mu.Unlock()
	if transport != "" && transport != "ws" {
		c.post(b, "")
		return
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	conn := c.conn
	c.mu.Unlock()
	if conn == nil {
		return // between transports, or closed
	}
	_ = conn.WriteMessage(websocket.TextMessage, b)
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func (c *wsClient) offer(tracks map[string]webrtc.TrackLocal) {
	offer, err := c.pc.CreateOffer(nil)
	if err != nil {
		c.t.Fatal(err)
	}
	if err := c.pc.SetLocalDescription(offer); err != nil {
		c.t.Fatal(err)
	}
	sources := map[string]string{}
	for _, tx := range c.pc.GetTransceivers() {
		for src, tr := range tracks {
			if tx.Sender() != nil && tx.Sender().Track() == tr {
				sources[tx.Mid()] = src
			}
		}
	}
	c.send("offer", "pub", map[string]any{"sdp": offer.SDP, "sources": sources})
}

// eventsOf returns the events of one type seen so far.
func (c *wsClient) eventsOf(typ string) []event {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []event
	for _, e := range c.events {
		if e.Type == typ {
			out = append(out, e)
		}
	}
	return out
}

// waitEvent waits for an event of typ matching cond.
func (c *wsClient) waitEvent(typ string, cond func(json.RawMessage) bool) event {
	c.t.Helper()
	var found event
	waitFor(c.t, 10*time.Second, "event "+typ, func() bool {
		for _, e := range c.eventsOf(typ) {
			if cond == nil || cond(e.Data) {
				found = e
				return true
			}
		}
		return false
	})
	return found
}

func (c *wsClient) close() {
	c.disconnect()
	_ = c.pc.Close()
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// errorCode extracts the code of an error reply.
func errorCode(t *testing.T, body []byte) string {
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
