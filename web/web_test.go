package web_test

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/magpie-im/magpie/web"
)

func get(t *testing.T, h http.Handler, method, path string, hdr map[string]string) *http.Response {
	t.Helper()
	req := httptest.NewRequest(method, path, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Result()
}

func TestHandlerServesFiles(t *testing.T) {
	h := web.Handler()
	for _, tc := range []struct {
		path, ctype, contains string
	}{
		{"/", "text/html; charset=utf-8", "<title>Magpie</title>"},
		{"/index.html", "text/html; charset=utf-8", `src="app.js"`},
		{"/app.js", "text/javascript; charset=utf-8", "MagpieClient"},
		{"/sdk/magpie.js", "text/javascript; charset=utf-8", "export class MagpieClient"},
		{"/style.css", "text/css; charset=utf-8", ".shell"},
		{"/icon.svg", "image/svg+xml", "<svg"},
	} {
		res := get(t, h, "GET", tc.path, nil)
		body, _ := io.ReadAll(res.Body)
		if res.StatusCode != 200 {
			t.Errorf("GET %s: %d", tc.path, res.StatusCode)
			continue
		}
		if got := res.Header.Get("Content-Type"); got != tc.ctype {
			t.Errorf("GET %s: Content-Type %q, want %q", tc.path, got, tc.ctype)
		}
		if !strings.Contains(string(body), tc.contains) {
			t.Errorf("GET %s: body lacks %q", tc.path, tc.contains)
		}
		if res.Header.Get("Cache-Control") != "no-cache" || res.Header.Get("ETag") == "" {
			t.Errorf("GET %s: Cache-Control %q ETag %q", tc.path, res.Header.Get("Cache-Control"), res.Header.Get("ETag"))
		}
		if res.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: no nosniff", tc.path)
		}
	}
	if csp := get(t, h, "GET", "/", nil).Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "connect-src 'self' ws: wss:") {
		t.Errorf("CSP %q", csp)
	}
}

func TestHandlerRevalidates(t *testing.T) {
	h := web.Handler()
	res := get(t, h, "GET", "/app.js", nil)
	etag := res.Header.Get("ETag")
	res = get(t, h, "GET", "/app.js", map[string]string{"If-None-Match": etag})
	if res.StatusCode != http.StatusNotModified {
		t.Fatalf("If-None-Match: %d, want 304", res.StatusCode)
	}
	if other := get(t, h, "GET", "/style.css", nil).Header.Get("ETag"); other == etag {
		t.Fatal("two files share an ETag")
	}
}

func TestHandlerRejects(t *testing.T) {
	h := web.Handler()
	for _, p := range []string{"/nope", "/sdk/magpie.test.js", "/sdk/testing_fakes.js", "/sdk/package.json", "/web.go", "/sdk/", "/../web.go"} {
		if res := get(t, h, "GET", p, nil); res.StatusCode != 404 {
			t.Errorf("GET %s: %d, want 404", p, res.StatusCode)
		}
	}
	res := get(t, h, "POST", "/", nil)
	if res.StatusCode != http.StatusMethodNotAllowed || res.Header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST /: %d Allow %q", res.StatusCode, res.Header.Get("Allow"))
	}
	res = get(t, h, "HEAD", "/", nil)
	if body, _ := io.ReadAll(res.Body); res.StatusCode != 200 || len(body) != 0 {
		t.Errorf("HEAD /: %d with %d body bytes", res.StatusCode, len(body))
	}
}

// TestIndexReferencesEmbeddedFiles checks that every local src/href of the
// page is served (no CDN, nothing missing from the embed list).
func TestIndexReferencesEmbeddedFiles(t *testing.T) {
	h := web.Handler()
	b, err := fs.ReadFile(web.FS(), "index.html")
	if err != nil {
		t.Fatal(err)
	}
	refs := regexp.MustCompile(`(?:src|href)="([^"]+)"`).FindAllStringSubmatch(string(b), -1)
	if len(refs) < 3 {
		t.Fatalf("found only %d references", len(refs))
	}
	for _, m := range refs {
		ref := m[1]
		if strings.Contains(ref, "://") || strings.HasPrefix(ref, "//") {
			t.Errorf("external reference %q", ref)
			continue
		}
		if res := get(t, h, "GET", "/"+strings.TrimPrefix(ref, "/"), nil); res.StatusCode != 200 {
			t.Errorf("%q: %d", ref, res.StatusCode)
		}
	}
	app, _ := fs.ReadFile(web.FS(), "app.js")
	if !strings.Contains(string(app), `from "./sdk/magpie.js"`) {
		t.Error("app.js does not import the SDK by a relative path")
	}
}

// TestNoHTMLInjectionSinks keeps user data out of the HTML parser: the UI
// builds its DOM with createElement and textContent only.
func TestNoHTMLInjectionSinks(t *testing.T) {
	sinks := regexp.MustCompile(`innerHTML|outerHTML|insertAdjacentHTML|document\.write|createContextualFragment|\beval\(|new Function\(`)
	for _, name := range []string{"app.js", "sdk/magpie.js"} {
		b, err := fs.ReadFile(web.FS(), name)
		if err != nil {
			t.Fatal(err)
		}
		if loc := sinks.FindIndex(b); loc != nil {
			t.Errorf("%s uses %q", name, b[loc[0]:loc[1]])
		}
	}
}

// TestSDKUnderNode runs the SDK's unit tests (`node --test sdk/`) so
// `go test ./web/` covers them too. Without node it is skipped, except in CI.
func TestSDKUnderNode(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("node not found (CI is set)")
		}
		t.Skip("node not found")
	}
	cmd := exec.Command(node, "--test", "sdk/")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node --test sdk/: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "# fail 0") {
		t.Fatalf("unexpected node output:\n%s", out)
	}
}
