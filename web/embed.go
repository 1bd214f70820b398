// Package web holds Vigil's browser client: plain HTML, CSS and ES modules
// under static/, embedded into the binary. The server serves "/" as
// static/index.html (join a room), "/room/{room}" as static/room.html
// (a conference or broadcast room, and the candidate's and proctor's
// pages of a proctoring room: candidate.js, proctor.js),
// "/dashboard" as static/dashboard.html (the admin's view of rooms), and
// "/static/*" from static/. The signaling client (signaling.js,
// transports.js) speaks the protocol of docs/protocol.md.
//
// Its tests drive headless Chromium against an in-process server;
// testdata/ holds WHIP and WHEP test pages.
package web

import (
	"embed"
	"io/fs"
)

//go:embed static
var static embed.FS

// FS returns the client's files, rooted at the static directory (so it
// holds "index.html", "room.html", "room.js", ...).
func FS() fs.FS {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		// fs.Sub fails only for an invalid path; "static" is valid.
		panic(err)
	}
	return sub
}
