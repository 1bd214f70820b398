package signaling

import "github.com/gin-gonic/gin"

// adminRoutes registers the admin API; every route in g requires the
// admin key. docs/api.md and openapi.json describe each one; a test keeps
// them in step.
func (s *Server) adminRoutes(g *gin.RouterGroup) {
	g.POST("/rooms", s.createRoom)
	g.GET("/rooms", s.listRooms)
	room := s.relayed(g, RelayRoom) // served by the room's node
	room.GET("/rooms/:room", s.getRoom)
	room.DELETE("/rooms/:room", s.deleteRoom)
	room.POST("/rooms/:room/tokens", s.limitAddr(s.mints, "token mints"), s.mintToken)
	room.POST("/rooms/:room/tokens/revoke", s.revokeTokens)
	room.GET("/rooms/:room/participants", s.listParticipants)
	room.GET("/rooms/:room/participants/:identity", s.getParticipant)
	room.PATCH("/rooms/:room/participants/:identity", s.updateParticipant)
	room.POST("/rooms/:room/participants/:identity/kick", s.kickParticipant)
	room.POST("/rooms/:room/participants/:identity/tracks/:source/mute", s.muteTrack)
	s.recordingRoutes(g)
}
