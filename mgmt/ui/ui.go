// Package ui is Warren's management web UI: static HTML, CSS and JavaScript modules embedded
// in the binary and served by Handler. The pages talk only to the RabbitMQ-compatible
// management API under /api/ (package mgmt), from the browser, with the user's own HTTP basic
// credentials; this package has no server-side logic and no access to the broker, so the UI
// can do nothing the API would not let the same user do with curl.
//
// Everything is plain files with no build step and nothing loaded from the network at run
// time: `go run .` from a fresh clone serves the UI.
package ui

import (
	"embed"
	"io/fs"
	"net/http"
	"path"
	"strings"
)

//go:embed static
var files embed.FS

// static is the embedded tree rooted at static/, so that URL paths map to file names directly.
var static = func() fs.FS {
	sub, err := fs.Sub(files, "static")
	if err != nil {
		// fs.Sub fails only for an invalid path literal: a programming error caught by any test.
		panic(err)
	}
	return sub
}()

// contentSecurityPolicy allows only the UI's own files and same-origin API calls: no inline
// script, no third-party origin. A compromised or spoofed API answer rendered by mistake as
// HTML still cannot run code.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; " +
	"img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// Handler serves the UI. Mount it at "/" beside the API ("/api/"): the pages call /api/...
// on their own origin. "/" and "/index.html" give the single page (the page's routes live in
// the URL fragment, so no other path needs the page); other paths are the embedded assets,
// or 404. Only GET and HEAD are answered.
func Handler() http.Handler {
	fileServer := http.FileServerFS(static)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h := w.Header()
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		// The files change only with the binary; revalidation keeps an upgraded broker from
		// serving a stale mix of old and new modules. (Embedded files carry no modification
		// time, so FileServer sends no validators and the browser simply refetches: the whole UI is
		// well under 100 KB.)
		h.Set("Cache-Control", "no-cache")

		p := path.Clean("/" + r.URL.Path)
		if p == "/" || p == "/index.html" {
			serveFile(w, r, "index.html")
			return
		}
		name := strings.TrimPrefix(p, "/")
		if st, err := fs.Stat(static, name); err != nil || st.IsDir() {
			// No directory listings, and the same plain 404 for anything unknown.
			http.NotFound(w, r)
			return
		}
		if strings.HasSuffix(name, ".js") {
			// Module scripts are refused by browsers unless served with a JavaScript type;
			// set it here rather than trust the host's MIME tables.
			h.Set("Content-Type", "text/javascript; charset=utf-8")
		}
		r2 := r.Clone(r.Context())
		r2.URL.Path = p
		fileServer.ServeHTTP(w, r2)
	})
}

// serveFile writes one embedded file; used for the page itself, which FileServer would
// redirect from /index.html to /.
func serveFile(w http.ResponseWriter, r *http.Request, name string) {
	b, err := fs.ReadFile(static, name)
	if err != nil {
		http.Error(w, "ui: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(b)
}
