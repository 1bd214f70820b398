// Package web holds Vigil's browser client: plain HTML, CSS and ES modules
// under static/, embedded into the binary. The server serves "/" as
// static/index.html, "/room/{room}" as static/room.html and "/static/*"
// from static/.
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
