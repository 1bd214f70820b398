package signaling

import (
	_ "embed" // the OpenAPI document
	"net/http"

	"github.com/gin-gonic/gin"
)

// openAPIDoc is the OpenAPI 3 document of every /v1 route. A test checks
// it against the routes the server registers, both ways.
//
//go:embed openapi.json
var openAPIDoc string

// serveOpenAPI serves the OpenAPI document; it needs no key.
func serveOpenAPI(c *gin.Context) {
	c.Header("Cache-Control", "no-cache")
	c.Data(http.StatusOK, "application/json; charset=utf-8", []byte(openAPIDoc))
}
