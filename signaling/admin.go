package signaling

import "github.com/gin-gonic/gin"

// adminRoutes registers the admin API; every route in g requires the
// admin key.
func (s *Server) adminRoutes(g *gin.RouterGroup) {
	g.POST("/rooms", s.createRoom)
	g.GET("/rooms", s.listRooms)
	g.GET("/rooms/:room", s.getRoom)
	g.POST("/rooms/:room/tokens", s.mintToken)
}
