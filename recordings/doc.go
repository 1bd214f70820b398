// Package recordings will write forwarded RTP to WebM/Matroska files on
// disk, one recorder per recorded participant. It is a subscriber of the
// sfu like any other, through a small sink interface.
package recordings
