// Package web holds the browser chat UI and its JS SDK, embedded into the
// magpie binary. There is no build step: the files under web/ are served as
// they are, ES modules included.
//
// Layout:
//
//	index.html, app.js, style.css, icon.svg  the chat UI
//	sdk/magpie.js                            the JS SDK (also importable in Node)
//	sdk/*.test.js, sdk/testing_fakes.js      SDK unit tests (`node --test web/sdk/`), not embedded
package web

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"time"
)

//go:embed index.html app.js style.css icon.svg sdk/magpie.js
var files embed.FS

// contentTypes is explicit so the answer never depends on the host's
// /etc/mime.types: a module script served as text/plain does not run.
var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".svg":  "image/svg+xml",
}

// csp allows only same-origin scripts and styles. connect-src lists ws: and
// wss: because the WebSocket listener is on another port (another origin)
// than the page.
const csp = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'"

type asset struct {
	body  []byte
	ctype string
	etag  string
}

// FS returns the embedded files (for tests and tools).
func FS() fs.FS { return files }

// Handler serves the embedded UI: "/" is index.html, every other path the
// file of that name. GET and HEAD only; anything else gets 405, unknown
// paths 404.
//
// Responses carry a strong ETag (a hash of the content) and
// "Cache-Control: no-cache": browsers revalidate on every load and get 304
// while the binary is unchanged, so a new release is never hidden behind a
// stale cache and an unchanged one costs no body. Every response also sets
// X-Content-Type-Options: nosniff and a strict Content-Security-Policy.
//
// The handler is safe for concurrent use; the server mounts it at "/" on its
// HTTP mux next to /api/*, /healthz and /metrics.
func Handler() http.Handler {
	assets := map[string]*asset{}
	err := fs.WalkDir(files, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := files.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		ct := contentTypes[path.Ext(p)]
		if ct == "" {
			ct = "application/octet-stream"
		}
		assets["/"+p] = &asset{body: b, ctype: ct, etag: `"` + hex.EncodeToString(sum[:12]) + `"`}
		return nil
	})
	if err != nil {
		panic("web: reading embedded files: " + err.Error()) // cannot happen with a valid embed
	}
	assets["/"] = assets["/index.html"]
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		a, ok := assets[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			h.Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h.Set("Content-Type", a.ctype)
		h.Set("Cache-Control", "no-cache")
		h.Set("ETag", a.etag)
		h.Set("Referrer-Policy", "no-referrer")
		if strings.HasPrefix(a.ctype, "text/html") {
			h.Set("Content-Security-Policy", csp)
			h.Set("X-Frame-Options", "DENY")
		}
		// ServeContent handles If-None-Match (304), Range and HEAD.
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(a.body))
	})
}
