package signaling

import (
	"errors"
	"fmt"
	"mime"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/vigil-media/vigil/recordings"
	"github.com/vigil-media/vigil/sfu"
)

// ErrRecordingsDisabled is returned by the recordings API of a server
// configured without a recordings manager.
var ErrRecordingsDisabled = errors.New("recordings are not enabled on this server")

// recordingRoutes registers the admin routes of the recordings API
// (docs/recordings.md). Reading one recording and its files is also open
// to a proctor of its room (recordingReaderRoutes).
func (a *evidenceAPI) recordingRoutes(g *gin.RouterGroup) {
	room := a.srv.relayed(g, RelayRoom) // served by the room's node
	room.POST("/rooms/:room/recordings", a.startRecording)
	room.DELETE("/rooms/:room/recordings", a.stopRecording)
	g.GET("/recordings", a.listRecordings)
	g.DELETE("/recordings/:id", a.deleteRecording)
}

// recordingsManager returns the manager or writes the error.
func (a *evidenceAPI) recordingsManager(c *gin.Context) *recordings.Manager {
	if a.recordings == nil {
		writeError(c, ErrRecordingsDisabled)
		return nil
	}
	return a.recordings
}

// startRecordingRequest is the optional body of POST
// /v1/rooms/{room}/recordings: no identity means everyone.
type startRecordingRequest struct {
	Identity string `json:"identity"`
}

// recordingsReply answers a start or a stop.
type recordingsReply struct {
	Room       string                `json:"room"`
	Identity   string                `json:"identity,omitempty"`
	Recordings []recordings.Manifest `json:"recordings"`
}

func (a *evidenceAPI) startRecording(c *gin.Context) {
	m := a.recordingsManager(c)
	if m == nil {
		return
	}
	r, err := a.srv.sfu.Room(c.Param("room"))
	if err != nil {
		writeError(c, err)
		return
	}
	var req startRecordingRequest
	if c.Request.ContentLength != 0 {
		if err := a.srv.bindJSON(c, &req); err != nil {
			writeError(c, err)
			return
		}
	}
	recs, err := m.Start(r, req.Identity)
	if err != nil {
		writeError(c, err)
		return
	}
	c.JSON(http.StatusOK, recordingsReply{Room: r.Name(), Identity: req.Identity, Recordings: recs})
}

func (a *evidenceAPI) stopRecording(c *gin.Context) {
	m := a.recordingsManager(c)
	if m == nil {
		return
	}
	r, err := a.srv.sfu.Room(c.Param("room"))
	if err != nil {
		writeError(c, err)
		return
	}
	identity := c.Query("identity")
	recs, err := m.Stop(r, identity)
	if err != nil {
		writeError(c, err)
		return
	}
	c.JSON(http.StatusOK, recordingsReply{Room: r.Name(), Identity: identity, Recordings: recs})
}

func (a *evidenceAPI) listRecordings(c *gin.Context) {
	m := a.recordingsManager(c)
	if m == nil {
		return
	}
	f := recordings.Filter{Room: c.Query("room"), Instance: c.Query("instance"), Identity: c.Query("identity")}
	switch {
	case f.Instance == instanceAll:
		f.Instance = ""
	case f.Instance != "" && !sfu.ValidInstance(f.Instance):
		writeError(c, fmt.Errorf("%w: instance %q: want a room instance or %q", ErrInvalidRequest, f.Instance, instanceAll))
		return
	}
	list := m.List(f)
	c.JSON(http.StatusOK, gin.H{"recordings": list})
}

// recordingReply is the manifest with a signed URL for each file (what a
// <video> element can load without an Authorization header).
type recordingReply struct {
	recordings.Manifest
	Files []recordingFileURL `json:"files"`
}

// recordingFileURL is a signed URL of one file of a recording.
type recordingFileURL struct {
	Name      string    `json:"name"`
	URL       string    `json:"url"`
	ExpiresAt time.Time `json:"expires_at"`
}

// getRecording returns the manifest, each file verified against its
// SHA-256 now, and a signed URL for each file.
func (a *evidenceAPI) getRecording(c *gin.Context) {
	m := a.recordingsManager(c)
	if m == nil {
		return
	}
	man, err := m.Inspect(c.Param("id"))
	if err != nil {
		writeError(c, err)
		return
	}
	reply := recordingReply{Manifest: man, Files: make([]recordingFileURL, 0, len(man.Segments))}
	for _, seg := range man.Segments {
		u, exp := a.signedFileURL(man.ID, seg.File)
		reply.Files = append(reply.Files, recordingFileURL{Name: seg.File, URL: u, ExpiresAt: exp})
	}
	c.JSON(http.StatusOK, reply)
}

func (a *evidenceAPI) deleteRecording(c *gin.Context) {
	m := a.recordingsManager(c)
	if m == nil {
		return
	}
	if err := m.Delete(c.Param("id")); err != nil {
		writeError(c, err)
		return
	}
	c.Status(http.StatusNoContent)
}

// downloadRecording serves one file of a recording with Range support
// (206 Partial Content), so that a player can seek.
func (a *evidenceAPI) downloadRecording(c *gin.Context) {
	m := a.recordingsManager(c)
	if m == nil {
		return
	}
	name := c.Param("name")
	f, fi, err := m.Open(c.Param("id"), name)
	if err != nil {
		writeError(c, err)
		return
	}
	defer f.Close()
	ctype := "video/webm"
	if strings.HasSuffix(name, ".mkv") {
		ctype = "video/x-matroska"
	}
	h := c.Writer.Header()
	h.Set("Content-Type", ctype)
	h.Set("Content-Disposition", mime.FormatMediaType("inline", map[string]string{"filename": path.Base(name)}))
	h.Set("Cache-Control", "private, no-cache")
	h.Set("X-Content-Type-Options", "nosniff")
	http.ServeContent(c.Writer, c.Request, name, fi.ModTime(), f)
}
