package federation_test

// Copied from signaling/transport_client_test.go: the HTTP transports of
// the test participant.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/signaling/vigiltest"
)

// dialVia joins room and drains the session over transport: "ws", "sse",
// "longpoll" or "poll". Client messages go over the socket for ws and by
// POST otherwise.
func dialVia(t *testing.T, srv *vigiltest.Server, room, identity, role, transport string) *wsClient {
	t.Helper()
	sid, err := srv.OpenSession(t, room, srv.Token(t, room, identity, role))
	if err != nil {
		t.Fatal(err)
	}
	return attachVia(t, srv, sid, vigiltest.PionAPI(t), webrtc.Configuration{}, transport)
}

// attachVia makes a wsClient of an open session with a pion connection
// of api and cfg, and drains its events over transport.
func attachVia(t *testing.T, srv *vigiltest.Server, sid string, api *webrtc.API, cfg webrtc.Configuration, transport string) *wsClient {
	t.Helper()
	pc, err := api.NewPeerConnection(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := &wsClient{t: t, srv: srv, session: sid, pc: pc, received: map[string]int{}, byMid: map[string]trackInfo{}, closed: make(chan struct{})}
	pc.OnTrack(func(tr *webrtc.TrackRemote, recv *webrtc.RTPReceiver) {
		var mid string
		for _, tx := range pc.GetTransceivers() {
			if tx.Receiver() == recv {
				mid = tx.Mid()
			}
		}
		for {
			if _, _, err := tr.ReadRTP(); err != nil {
				return
			}
			c.mu.Lock()
			info := c.byMid[mid]
			c.received[info.Identity+"/"+info.Source]++
			c.mu.Unlock()
		}
	})
	pc.OnICECandidate(func(cand *webrtc.ICECandidate) {
		if cand != nil {
			c.send("candidate", "", cand.ToJSON())
		}
	})
	c.connectVia(transport, 0)
	t.Cleanup(c.close)
	return c
}

// disconnect ends the current transport and waits until it stopped
// delivering events.
func (c *wsClient) disconnect() {
	c.mu.Lock()
	conn, stop, end := c.conn, c.stopHTTP, c.connEnd
	c.conn, c.stopHTTP = nil, nil
	c.mu.Unlock()
	if conn != nil {
		_ = conn.Close()
	}
	if stop != nil {
		stop()
	}
	if end != nil && (conn != nil || stop != nil) {
		select {
		case <-end:
		case <-time.After(5 * time.Second):
			c.t.Errorf("transport did not stop")
		}
	}
}

// connectVia resumes the session from cursor over transport.
func (c *wsClient) connectVia(transport string, cursor uint64) {
	if transport == "ws" {
		c.connect(cursor)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	end := make(chan error, 1)
	c.mu.Lock()
	c.transport, c.stopHTTP, c.connEnd = transport, cancel, end
	c.mu.Unlock()
	run := func(loop func() error) {
		end <- loop()
		close(end)
	}
	switch transport {
	case "sse":
		go run(func() error { return c.sseLoop(ctx, cursor) })
	case "longpoll":
		go run(func() error { return c.pollLoop(ctx, cursor, 5*time.Second) })
	case "poll":
		go run(func() error { return c.pollLoop(ctx, cursor, 0) })
	default:
		c.t.Fatalf("unknown transport %q", transport)
	}
}

func (c *wsClient) deliver(ev event) {
	c.mu.Lock()
	c.events = append(c.events, ev)
	c.mu.Unlock()
	c.handle(ev)
}

// sseLoop reads Server-Sent Events from cursor until ctx ends.
func (c *wsClient) sseLoop(ctx context.Context, cursor uint64) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.srv.URL+"/v1/sessions/"+c.session+"/events", nil)
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Last-Event-ID", strconv.FormatUint(cursor, 10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("sse: %d %s", resp.StatusCode, b)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var id, data string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if data != "" {
				var ev event
				if err := json.Unmarshal([]byte(data), &ev); err != nil {
					return err
				}
				if id != "" && strconv.FormatUint(ev.Seq, 10) != id {
					return fmt.Errorf("sse id %s carries seq %d", id, ev.Seq)
				}
				c.deliver(ev)
			}
			id, data = "", ""
		case strings.HasPrefix(line, "id: "):
			id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "data: "):
			data = strings.TrimPrefix(line, "data: ")
		}
	}
	return sc.Err()
}

type pollReply struct {
	Events []event `json:"events"`
	Cursor uint64  `json:"cursor"`
	Closed bool    `json:"closed"`
}

// pollLoop polls from cursor until ctx ends or the stream closes: held
// for up to wait (long polling), or every 50ms with If-None-Match.
func (c *wsClient) pollLoop(ctx context.Context, cursor uint64, wait time.Duration) error {
	etag := ""
	for ctx.Err() == nil {
		url := fmt.Sprintf("%s/v1/sessions/%s/poll?cursor=%d", c.srv.URL, c.session, cursor)
		if wait > 0 {
			url += fmt.Sprintf("&wait=%g", wait.Seconds())
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if etag != "" {
			req.Header.Set("If-None-Match", etag)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusNotModified:
		case http.StatusOK:
			var r pollReply
			if err := json.Unmarshal(b, &r); err != nil {
				return err
			}
			for _, ev := range r.Events {
				c.deliver(ev)
			}
			cursor = r.Cursor
			etag = resp.Header.Get("ETag")
			if r.Closed {
				return nil
			}
		default:
			return fmt.Errorf("poll: %d %s", resp.StatusCode, b)
		}
		if wait == 0 {
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return ctx.Err()
}

// post sends one client message by request-response.
func (c *wsClient) post(b []byte, key string) (int, []byte, bool) {
	req, _ := http.NewRequest(http.MethodPost, c.srv.URL+"/v1/sessions/"+c.session+"/messages", bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Errorf("post: %v", err)
		return 0, nil, false
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	c.mu.Lock()
	c.posts++
	c.mu.Unlock()
	if resp.StatusCode != http.StatusOK {
		// Refusals come back in the reply, not as error events.
		var e struct {
			Error json.RawMessage `json:"error"`
		}
		_ = json.Unmarshal(body, &e)
		c.mu.Lock()
		c.postErrors = append(c.postErrors, e.Error)
		c.mu.Unlock()
	}
	return resp.StatusCode, body, resp.Header.Get("Idempotent-Replayed") == "true"
}
