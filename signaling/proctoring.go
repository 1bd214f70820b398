package signaling

import (
	"fmt"
	"net/http"

	"github.com/gin-gonic/gin"
	"github.com/vigil-media/vigil/sfu"
)

// proctoringRoutes are the admin side of proctoring: what a proctor does
// from its page (admit, end an exam), for an admin or a script.
func (a *evidenceAPI) proctoringRoutes(g *gin.RouterGroup) {
	room := a.srv.relayed(g, RelayRoom) // served by the room's node
	room.POST("/rooms/:room/participants/:identity/admit", a.admitCandidate)
	room.POST("/rooms/:room/participants/:identity/end-exam", a.endExam)
}

// endExamRequest is the body of an end-exam call.
type endExamRequest struct {
	Message string `json:"message"`
}

func (a *evidenceAPI) admitCandidate(c *gin.Context) {
	room, err := a.srv.sfu.Room(c.Param("room"))
	if err != nil {
		writeError(c, err)
		return
	}
	if err := room.Admit(nil, c.Param("identity")); err != nil {
		writeError(c, err)
		return
	}
	p := room.Participant(c.Param("identity"))
	if p == nil {
		writeError(c, sfu.ErrParticipantNotFound)
		return
	}
	c.JSON(http.StatusOK, p.Info())
}

func (a *evidenceAPI) endExam(c *gin.Context) {
	room, err := a.srv.sfu.Room(c.Param("room"))
	if err != nil {
		writeError(c, err)
		return
	}
	var req endExamRequest
	if c.Request.ContentLength != 0 {
		if err := a.srv.bindJSON(c, &req); err != nil {
			writeError(c, err)
			return
		}
	}
	if len(req.Message) > maxReasonBytes {
		writeError(c, fmt.Errorf("%w: message longer than %d bytes", ErrInvalidRequest, maxReasonBytes))
		return
	}
	if err := room.EndExam(nil, c.Param("identity"), req.Message); err != nil {
		writeError(c, err)
		return
	}
	c.Status(http.StatusNoContent)
}
