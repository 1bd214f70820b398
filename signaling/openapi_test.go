package signaling

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/gin-gonic/gin"
	"github.com/vigil-media/vigil/sfu"
)

// newBareServer builds a signaling server whose routes can be served
// in-process.
func newBareServer(t *testing.T) *Server {
	t.Helper()
	gin.SetMode(gin.ReleaseMode)
	media, err := sfu.New(sfu.Config{UDPAddr: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{SFU: media, AdminKey: "k", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(0) })
	return s
}

type openAPIDocument struct {
	Paths      map[string]map[string]json.RawMessage `json:"paths"`
	Components struct {
		Schemas map[string]struct {
			Enum []string `json:"enum"`
		} `json:"schemas"`
	} `json:"components"`
}

type openAPIOperation struct {
	Security   []map[string][]string `json:"security"`
	Parameters []openAPIParam        `json:"parameters"`
	Responses  map[string]any        `json:"responses"`
}

type openAPIParam struct {
	Name string `json:"name"`
	In   string `json:"in"`
	Ref  string `json:"$ref"`
}

var httpMethods = map[string]bool{"get": true, "put": true, "post": true, "delete": true, "patch": true, "head": true, "options": true}

func loadOpenAPI(t *testing.T) openAPIDocument {
	t.Helper()
	var doc openAPIDocument
	if err := json.Unmarshal([]byte(openAPIDoc), &doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	return doc
}

var ginParam = regexp.MustCompile(`[:*]([A-Za-z_]+)`)

// documentedOps lists "METHOD /path" of every operation in the document.
func documentedOps(doc openAPIDocument) map[string]openAPIOperation {
	out := map[string]openAPIOperation{}
	for path, item := range doc.Paths {
		for m, raw := range item {
			if !httpMethods[m] {
				continue
			}
			var op openAPIOperation
			_ = json.Unmarshal(raw, &op)
			out[strings.ToUpper(m)+" "+path] = op
		}
	}
	return out
}

// TestOpenAPIMatchesRoutes checks the document against the gin engine:
// every /v1 route is documented with its method, every documented
// operation is served, path parameters are declared, and an operation
// documented as needing the admin key is refused without it (and only
// those).
func TestOpenAPIMatchesRoutes(t *testing.T) {
	s := newBareServer(t)
	doc := loadOpenAPI(t)
	ops := documentedOps(doc)

	served := map[string]bool{}
	for _, r := range s.engine.Routes() {
		if !strings.HasPrefix(r.Path, "/v1/") {
			continue
		}
		key := r.Method + " " + ginParam.ReplaceAllString(r.Path, "{$1}")
		served[key] = true
		if _, ok := ops[key]; !ok {
			t.Errorf("route %s %s is not in openapi.json (as %s)", r.Method, r.Path, key)
		}
	}
	if len(served) < 10 {
		t.Fatalf("only %d /v1 routes found: %v", len(served), served)
	}
	for key, op := range ops {
		if !served[key] {
			t.Errorf("openapi.json documents %s, which the server does not serve", key)
		}
		if len(op.Responses) == 0 {
			t.Errorf("%s documents no responses", key)
		}
	}

	// Path parameters are declared, at the path or the operation.
	for path, item := range doc.Paths {
		declared := map[string]bool{}
		collect := func(raw json.RawMessage) {
			var ps []openAPIParam
			_ = json.Unmarshal(raw, &ps)
			for _, p := range ps {
				if p.In == "path" {
					declared[p.Name] = true
				}
			}
		}
		collect(item["parameters"])
		for m, raw := range item {
			if httpMethods[m] {
				var op struct {
					Parameters json.RawMessage `json:"parameters"`
				}
				_ = json.Unmarshal(raw, &op)
				collect(op.Parameters)
			}
		}
		for _, m := range regexp.MustCompile(`\{([^}]+)\}`).FindAllStringSubmatch(path, -1) {
			if !declared[m[1]] {
				t.Errorf("%s: path parameter %q is not declared", path, m[1])
			}
			delete(declared, m[1])
		}
		for name := range declared {
			t.Errorf("%s: declares path parameter %q that is not in the path", path, name)
		}
	}

	// Security as documented: without a key, an admin operation is
	// refused with unauthorized before anything else; others are not.
	for key, op := range ops {
		method, path, _ := strings.Cut(key, " ")
		admin := false
		for _, req := range op.Security {
			if _, ok := req["adminKey"]; ok {
				admin = true
			}
		}
		url := regexp.MustCompile(`\{[^}]+\}`).ReplaceAllString(path, "x")
		w := httptest.NewRecorder()
		s.engine.ServeHTTP(w, httptest.NewRequest(method, url, strings.NewReader("{}")))
		var body errorBody
		_ = json.Unmarshal(w.Body.Bytes(), &body)
		refused := w.Code == http.StatusUnauthorized && body.Error.Code == "unauthorized"
		if admin != refused {
			t.Errorf("%s: documented as admin=%v, but without a key got %d %q", key, admin, w.Code, body.Error.Code)
		}
	}
}

// TestOpenAPIReferencesResolve checks that every $ref names a component.
func TestOpenAPIReferencesResolve(t *testing.T) {
	var doc map[string]any
	if err := json.Unmarshal([]byte(openAPIDoc), &doc); err != nil {
		t.Fatal(err)
	}
	if v, _ := doc["openapi"].(string); !strings.HasPrefix(v, "3.") {
		t.Fatalf("openapi version %q, want 3.x", v)
	}
	components, _ := doc["components"].(map[string]any)
	n := 0
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if ref, ok := v["$ref"].(string); ok {
				n++
				parts := strings.Split(strings.TrimPrefix(ref, "#/components/"), "/")
				sect, _ := components[parts[0]].(map[string]any)
				if len(parts) != 2 || sect[parts[1]] == nil {
					t.Errorf("$ref %q does not resolve", ref)
				}
			}
			for _, e := range v {
				walk(e)
			}
		case []any:
			for _, e := range v {
				walk(e)
			}
		}
	}
	walk(doc)
	if n == 0 {
		t.Fatal("no $ref found: the walk is broken")
	}
}

// errorCodes reads the codeFor table in errors.go: code -> status.
func errorCodes(t *testing.T) map[string]int {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "errors.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	statuses := map[string]int{
		"StatusBadRequest": 400, "StatusUnauthorized": 401, "StatusPaymentRequired": 402, "StatusForbidden": 403,
		"StatusNotFound": 404, "StatusMethodNotAllowed": 405, "StatusNotAcceptable": 406, "StatusRequestTimeout": 408,
		"StatusConflict": 409, "StatusGone": 410, "StatusLengthRequired": 411, "StatusPreconditionFailed": 412,
		"StatusRequestEntityTooLarge": 413, "StatusRequestURITooLong": 414, "StatusUnsupportedMediaType": 415,
		"StatusRequestedRangeNotSatisfiable": 416, "StatusExpectationFailed": 417, "StatusMisdirectedRequest": 421,
		"StatusUnprocessableEntity": 422, "StatusLocked": 423, "StatusFailedDependency": 424, "StatusTooEarly": 425,
		"StatusUpgradeRequired": 426, "StatusPreconditionRequired": 428, "StatusTooManyRequests": 429,
		"StatusRequestHeaderFieldsTooLarge": 431, "StatusUnavailableForLegalReasons": 451,
		"StatusInternalServerError": 500, "StatusNotImplemented": 501, "StatusBadGateway": 502,
		"StatusServiceUnavailable": 503, "StatusGatewayTimeout": 504, "StatusInsufficientStorage": 507,
	}
	out := map[string]int{}
	ast.Inspect(f, func(n ast.Node) bool {
		fn, ok := n.(*ast.FuncDecl)
		if !ok || fn.Name.Name != "codeFor" {
			return true
		}
		ast.Inspect(fn.Body, func(n ast.Node) bool {
			lit, ok := n.(*ast.CompositeLit)
			if !ok || len(lit.Elts) != 3 {
				return true
			}
			sel, ok1 := lit.Elts[1].(*ast.SelectorExpr)
			code, ok2 := lit.Elts[2].(*ast.BasicLit)
			if !ok1 || !ok2 || code.Kind != token.STRING {
				return true
			}
			status, known := statuses[sel.Sel.Name]
			if !known {
				t.Errorf("codeFor row with status %s: add it to this test's table", sel.Sel.Name)
			}
			c, _ := strconv.Unquote(code.Value)
			if old, dup := out[c]; dup && old != status {
				t.Errorf("code %q has two statuses, %d and %d", c, old, status)
			}
			out[c] = status
			return true
		})
		return false
	})
	if len(out) < 10 {
		t.Fatalf("read only %d codes from codeFor", len(out))
	}
	// Not in the table, but on the wire.
	out["internal"] = http.StatusInternalServerError
	out["method_not_allowed"] = http.StatusMethodNotAllowed
	return out
}

// TestErrorCodesDocumented checks that the error codes of codeFor are
// exactly the ErrorCode enum of openapi.json, and that docs/api.md lists
// each with its status.
func TestErrorCodesDocumented(t *testing.T) {
	codes := errorCodes(t)
	doc := loadOpenAPI(t)
	enum := map[string]bool{}
	for _, c := range doc.Components.Schemas["ErrorCode"].Enum {
		enum[c] = true
		if _, ok := codes[c]; !ok {
			t.Errorf("openapi.json ErrorCode %q is not a code of codeFor", c)
		}
	}
	md, err := os.ReadFile("../docs/api.md")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for c := range codes {
		names = append(names, c)
	}
	sort.Strings(names)
	for _, c := range names {
		if !enum[c] {
			t.Errorf("code %q is missing from openapi.json's ErrorCode enum", c)
		}
		row := "| " + strconv.Itoa(codes[c]) + " | `" + c + "` |"
		if !strings.Contains(string(md), row) {
			t.Errorf("docs/api.md has no row %q", row)
		}
	}
}

// TestAPIDocListsEveryOperation checks that docs/api.md names every
// documented operation as "METHOD /path".
func TestAPIDocListsEveryOperation(t *testing.T) {
	md, err := os.ReadFile("../docs/api.md")
	if err != nil {
		t.Fatal(err)
	}
	for key := range documentedOps(loadOpenAPI(t)) {
		if !strings.Contains(string(md), key) {
			t.Errorf("docs/api.md does not mention %q", key)
		}
	}
}

func TestOpenAPIServedWithoutKey(t *testing.T) {
	s := newBareServer(t)
	w := httptest.NewRecorder()
	s.engine.ServeHTTP(w, httptest.NewRequest("GET", "/v1/openapi.json", nil))
	if w.Code != 200 || !strings.HasPrefix(w.Header().Get("Content-Type"), "application/json") {
		t.Fatalf("GET /v1/openapi.json: %d %s", w.Code, w.Header().Get("Content-Type"))
	}
	if w.Body.String() != openAPIDoc {
		t.Fatal("served document differs from openapi.json")
	}
}
