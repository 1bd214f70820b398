package signaling

import (
	"net/http"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
)

// Deadlines. The HTTP server (cmd/vigil) reads each request within its
// ReadTimeout, which is right for every request-response route and wrong
// for the streaming transports: a WebSocket, an SSE stream or a long
// poll holds its request open for longer, by design (and net/http
// cancels a request's context when its read deadline passes, even once
// the request is read). A recording file download, which has no body but
// may take long to send, is the same. streamDeadlines lifts the read and
// write deadlines of those routes; each transport then keeps its own
// (WebSocket pings and pongs, SSE heartbeats with a write deadline, the
// long poll's bounded wait). Its position first in
// the chain means that it also applies where a node of a cluster relays
// a stream to another.

// streamDeadlines clears the connection deadlines of a streaming route.
func streamDeadlines(c *gin.Context) {
	if streamingRoute(c.FullPath(), c.Request) {
		rc := http.NewResponseController(c.Writer)
		_ = rc.SetReadDeadline(time.Time{})  // not every writer supports it (tests)
		_ = rc.SetWriteDeadline(time.Time{}) // likewise
	}
	c.Next()
}

// streamingRoute reports whether the route (its registered pattern) of r
// streams: the sessions' and the admin room feeds' WebSocket and SSE,
// their polls when they wait (long polling), and recording file
// downloads.
func streamingRoute(route string, r *http.Request) bool {
	if r.Method != http.MethodGet || !strings.HasPrefix(route, "/v1/") {
		return false
	}
	switch {
	case route == "/v1/sessions/:session/ws", route == "/v1/sessions/:session/events",
		route == "/v1/rooms/:room/events", route == "/v1/rooms/:room/events/ws",
		route == "/v1/recordings/:id/files/:name":
		return true
	case route == "/v1/sessions/:session/poll", route == "/v1/rooms/:room/events/poll":
		return r.URL.Query().Get("wait") != ""
	}
	return false
}
