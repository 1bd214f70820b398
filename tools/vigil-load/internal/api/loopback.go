package api

import "strings"

// IsLoopbackURL reports whether u is http:// on 127.0.0.0/8: the only
// servers the load lab may target.
func IsLoopbackURL(u string) bool {
	rest, ok := strings.CutPrefix(u, "http://")
	if !ok {
		return false
	}
	host, _, _ := strings.Cut(rest, "/")
	if h, _, ok := strings.Cut(host, ":"); ok {
		host = h
	}
	return strings.HasPrefix(host, "127.")
}
