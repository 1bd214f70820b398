package signaling

import (
	"github.com/gin-gonic/gin"
	"github.com/vigil-media/vigil/incidents"
	"github.com/vigil-media/vigil/recordings"
)

// evidenceAPI serves what proctoring leaves behind and what a proctor
// does from outside the room: the incidents API (incidents.go), the
// recordings API with its signed file URLs (recordings.go,
// recording_access.go), the recording events of the admin room feeds
// (recording_events.go) and the admin side of proctoring (proctoring.go).
// It holds no mutable state, so no lock: the incidents Monitor and the
// recordings Manager guard their own.
type evidenceAPI struct {
	// srv is the composition root: the media core, the join tokens, the
	// authentication and bindJSON; none of its locks is taken here.
	srv        *Server
	incidents  *incidents.Monitor  // nil: the incidents API is disabled
	recordings *recordings.Manager // nil: the recordings API is disabled
	urlKey     []byte              // signs recording file URLs (fileURLKey)
	// feed is the admin feed of a room if an admin has started it
	// (sessionHub.feed), or nil.
	feed func(room string) *roomFeed
}

func newEvidenceAPI(s *Server, feed func(room string) *roomFeed) *evidenceAPI {
	return &evidenceAPI{
		srv: s, incidents: s.cfg.Incidents, recordings: s.cfg.Recordings,
		urlKey: fileURLKey(s.cfg.TokenSecret), feed: feed,
	}
}

// routes registers the readers' routes: the incidents and a recording
// with its files, each open to the admin key or a proctor of the room.
func (a *evidenceAPI) routes(g *gin.RouterGroup) {
	a.incidentRoutes(g)        // admin key or a proctor's join token
	a.recordingReaderRoutes(g) // admin key, a proctor's join token or a signed URL
}

// adminRoutes registers the routes of g, a group behind the admin key:
// starting, stopping, listing and deleting recordings; admitting a
// candidate and ending an exam.
func (a *evidenceAPI) adminRoutes(g *gin.RouterGroup) {
	a.recordingRoutes(g)
	a.proctoringRoutes(g)
}
