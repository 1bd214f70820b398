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
	s.participants.routes(room)
	s.evidence.adminRoutes(g)
}
