// Package recordings writes participants' media to disk and keeps the
// index of recordings.
//
// A recorder is a subscriber like any other: it attaches an sfu.PacketSink
// to each track it records. One recording per participant and group: the
// camera and microphone together in one A/V-synchronized file ("av"), the
// screen in its own ("screen"). VP8/VP9 and Opus go into WebM, H.264 into
// Matroska. Frame times come from RTP, mapped to the server's wall clock,
// so gaps stay gaps.
//
// Files are written cluster by cluster (about every second): a server
// killed with SIGKILL leaves every file playable up to its last seconds. A
// clean stop finalizes each file with its duration and cues. A
// participant who comes back within the reconnect grace period continues
// the same recording in a new segment file. Each recording's directory
// holds a manifest.json (see Manifest) with a SHA-256 of each finished
// file; the index is rebuilt from the manifests at start.
//
// The packet path never blocks and never does file I/O: WritePacket copies
// each packet into the recording's bounded queue (dropping and counting
// when it is full), and one writer goroutine per recording reassembles
// frames and writes them.
//
// Who is recorded: rooms with AutoRecord everyone, proctoring rooms every
// candidate from its admission, other rooms whom Start names, until Stop.
// Finished recordings can be listed, opened, verified against their
// hashes and deleted; with Config.Retention, older ones are swept.
//
// Files: manager.go, the Manager (the sfu observer, Start and Stop);
// index.go, the index and what reads it; sink.go, the packet path;
// recorder.go, one recording's writer goroutine; segment.go, its files;
// track.go, depacketizing; mkv.go and codec.go, the Matroska/WebM muxer
// and codec headers; manifest.go, the manifest and verification;
// events.go, events and stats.
package recordings
