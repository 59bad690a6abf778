package ui

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"path"
	"regexp"
	"strings"
	"testing"
)

func get(t *testing.T, h http.Handler, method, target string) *http.Response {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, target, nil))
	return rec.Result()
}

func TestHandlerServesThePageAndAssets(t *testing.T) {
	h := Handler()
	for _, tc := range []struct {
		target, ctype, contains string
	}{
		{"/", "text/html; charset=utf-8", `<script type="module" src="js/app.js">`},
		{"/index.html", "text/html; charset=utf-8", `id="login-form"`},
		{"/js/app.js", "text/javascript; charset=utf-8", "import"},
		{"/js/pages/queues.js", "text/javascript; charset=utf-8", "/get"},
		{"/css/app.css", "text/css; charset=utf-8", ".chart"},
	} {
		res := get(t, h, http.MethodGet, tc.target)
		body, _ := io.ReadAll(res.Body)
		if res.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %d", tc.target, res.StatusCode)
			continue
		}
		if ct := res.Header.Get("Content-Type"); ct != tc.ctype {
			t.Errorf("GET %s: Content-Type %q, want %q", tc.target, ct, tc.ctype)
		}
		if !strings.Contains(string(body), tc.contains) {
			t.Errorf("GET %s: body lacks %q", tc.target, tc.contains)
		}
		if csp := res.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "connect-src 'self'") {
			t.Errorf("GET %s: Content-Security-Policy %q", tc.target, csp)
		}
		if res.Header.Get("X-Content-Type-Options") != "nosniff" || res.Header.Get("X-Frame-Options") != "DENY" {
			t.Errorf("GET %s: missing nosniff / frame headers: %v", tc.target, res.Header)
		}
	}
}

func TestHandlerRefusesWhatItDoesNotServe(t *testing.T) {
	h := Handler()
	for _, target := range []string{"/nope", "/js/", "/js", "/static/index.html", "/../ui.go", "/js/missing.js"} {
		if res := get(t, h, http.MethodGet, target); res.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", target, res.StatusCode)
		}
	}
	res := get(t, h, http.MethodPost, "/")
	if res.StatusCode != http.StatusMethodNotAllowed || res.Header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST /: %d Allow %q, want 405 with Allow: GET, HEAD", res.StatusCode, res.Header.Get("Allow"))
	}
	res = get(t, h, http.MethodHead, "/")
	if b, _ := io.ReadAll(res.Body); res.StatusCode != http.StatusOK || len(b) != 0 {
		t.Errorf("HEAD /: %d with %d body bytes", res.StatusCode, len(b))
	}
}

// Every module a page imports, and every file index.html names, must be embedded: a typo
// would otherwise show up only as a blank page in a browser.
func TestEveryReferencedFileIsEmbedded(t *testing.T) {
	importRE := regexp.MustCompile(`(?m)^\s*(?:import|export)\s[^'"]*?from\s+'([^']+)'|^\s*import\s+'([^']+)'`)
	err := fs.WalkDir(static, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".js") {
			return err
		}
		src, err := fs.ReadFile(static, p)
		if err != nil {
			return err
		}
		found := 0
		for _, m := range importRE.FindAllStringSubmatch(string(src), -1) {
			spec := m[1] + m[2]
			if !strings.HasPrefix(spec, "./") && !strings.HasPrefix(spec, "../") {
				t.Errorf("%s imports %q: only relative imports of embedded files are allowed", p, spec)
				continue
			}
			target := path.Join(path.Dir(p), spec)
			if _, err := fs.Stat(static, target); err != nil {
				t.Errorf("%s imports %q: %s is not embedded", p, spec, target)
			}
			found++
		}
		if p == "js/app.js" && found < 6 {
			t.Errorf("js/app.js: found %d imports, the pattern no longer matches the code", found)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	page, _ := fs.ReadFile(static, "index.html")
	refs := regexp.MustCompile(`(?:src|href)="([^"#:]+)"`).FindAllStringSubmatch(string(page), -1)
	if len(refs) < 2 {
		t.Fatalf("index.html: found %d asset references", len(refs))
	}
	for _, m := range refs {
		if _, err := fs.Stat(static, m[1]); err != nil {
			t.Errorf("index.html references %s, which is not embedded", m[1])
		}
	}
}

// The UI runs with no internet access: nothing may load from another origin.
func TestNothingLoadsFromTheNetwork(t *testing.T) {
	urlRE := regexp.MustCompile(`https?://[^\s'"` + "`" + `)]+`)
	err := fs.WalkDir(static, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		src, err := fs.ReadFile(static, p)
		if err != nil {
			return err
		}
		for _, u := range urlRE.FindAllString(string(src), -1) {
			if u == "http://www.w3.org/2000/svg" { // the SVG namespace name, never fetched
				continue
			}
			t.Errorf("%s refers to %s: the UI must not load anything from the network", p, u)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
