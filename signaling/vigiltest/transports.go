package vigiltest

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
)

// DialVia joins room as identity/role and drains the session over
// transport: "ws", "sse", "longpoll" or "poll". Client messages go over
// the socket for ws and by POST otherwise. The client is closed when the
// test ends.
func DialVia(t *testing.T, srv *Server, room, identity, role, transport string) *Client {
	t.Helper()
	sid, err := srv.OpenSession(t, room, srv.Token(t, room, identity, role))
	if err != nil {
		t.Fatal(err)
	}
	return Attach(t, srv, sid, PionAPI(t), webrtc.Configuration{}, transport)
}

// Attach makes a Client of an open session with a pion connection of api
// and cfg, counting the packets it receives and trickling its ICE
// candidates, and drains its events over transport. The client is closed
// when the test ends.
func Attach(t *testing.T, srv *Server, sid string, api *webrtc.API, cfg webrtc.Configuration, transport string) *Client {
	t.Helper()
	pc, err := api.NewPeerConnection(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := NewClient(t, srv, sid, pc)
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
			c.CountPacket(mid)
		}
	})
	pc.OnICECandidate(func(cand *webrtc.ICECandidate) {
		if cand != nil {
			c.Send("candidate", "", cand.ToJSON())
		}
	})
	c.ConnectVia(transport, 0)
	t.Cleanup(c.Close)
	return c
}

// Disconnect ends the current transport and waits until it stopped
// delivering events.
func (c *Client) Disconnect() {
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

// ConnectVia resumes the session from cursor over transport.
func (c *Client) ConnectVia(transport string, cursor uint64) {
	if transport == "ws" {
		c.Connect(cursor)
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

func (c *Client) deliver(ev Event) {
	c.mu.Lock()
	c.events = append(c.events, ev)
	c.mu.Unlock()
	c.handle(ev)
}

// sseLoop reads Server-Sent Events from cursor until ctx ends.
func (c *Client) sseLoop(ctx context.Context, cursor uint64) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.Server.URL+"/v1/sessions/"+c.Session+"/events", nil)
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
				var ev Event
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

// PollReply is the body of a poll reply: the events after the cursor,
// the cursor to poll from next, and whether the stream has closed.
type PollReply struct {
	Events []Event `json:"events"`
	Cursor uint64  `json:"cursor"`
	Closed bool    `json:"closed"`
}

// pollLoop polls from cursor until ctx ends or the stream closes: held
// for up to wait (long polling), or every 50ms with If-None-Match.
func (c *Client) pollLoop(ctx context.Context, cursor uint64, wait time.Duration) error {
	etag := ""
	for ctx.Err() == nil {
		url := fmt.Sprintf("%s/v1/sessions/%s/poll?cursor=%d", c.Server.URL, c.Session, cursor)
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
			var r PollReply
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

// Post sends one client message by request-response, with an
// Idempotency-Key unless key is empty. It returns the status, the body
// and whether the reply was a replay. A refusal's error is kept (see
// Posts), not turned into an error event.
func (c *Client) Post(b []byte, key string) (int, []byte, bool) {
	req, _ := http.NewRequest(http.MethodPost, c.Server.URL+"/v1/sessions/"+c.Session+"/messages", bytes.NewReader(b))
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

// Posts is how many messages were sent by POST and how many of them were
// refused.
func (c *Client) Posts() (sent, refused int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.posts, len(c.postErrors)
}
