//go:build integration

package integration

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestRouting: two services routed by host and by path through the real
// nginx: the apache service answers www.example (and *.www.example), the
// api service /api/… of any host with the prefix stripped, and with no
// default service an unknown host gets a clear 404; response headers and
// a body limit apply per service; `render` lists the routes.
func TestRouting(t *testing.T) {
	s := newStack(t, withReplicas(1),
		withServiceTOML("hosts = [\"www.example\", \"*.www.example\"]\nclient_max_body_size = \"1k\"\n[service.response_headers]\nX-Served-By = \"upstreamd $host\""),
		withExtraTOML(`[[service]]
name = "api"
image = "upstreamd/apache:latest"
replicas = 1
stop_grace = "2s"
path_prefix = "/api"
strip_prefix = true
[service.health]
path = "/healthz"
interval = "500ms"
timeout = "400ms"`))
	s.startDaemon()

	backendOf := func(service string) string {
		for _, c := range s.allBackends() {
			if c.Service == service {
				return c.Name
			}
		}
		return ""
	}
	type want struct {
		host, path string
		code       int
		service    string // whose backend answers; "" for none
	}
	cases := []want{
		{"www.example", "/", 200, "apache"},
		{"a.www.example", "/", 200, "apache"},
		{"www.example", "/api/", 200, "api"},
		{"www.example", "/api", 200, "api"},
		{"elsewhere.example", "/api/", 200, "api"},
		{"elsewhere.example", "/", 404, ""},
		{"www.example.evil", "/", 404, ""},
		{"elsewhere.example", "/apix", 404, ""},
	}
	eventually(t, 90*time.Second, "every route answers as the spec says", func() error {
		for _, c := range cases {
			code, backend, body, err := s.getVia(c.host, c.path)
			if err != nil {
				return err
			}
			want := backendOf(c.service)
			if code != c.code || c.service != "" && (want == "" || backend != want) {
				return fmt.Errorf("%s%s: %d from %q, want %d from %s (%q): %.120s", c.host, c.path, code, backend, c.code, c.service, want, body)
			}
			if c.code == 404 && !strings.Contains(body, "no service here") {
				return fmt.Errorf("%s%s: 404 without saying why: %.120s", c.host, c.path, body)
			}
		}
		return nil
	})

	// Per-service settings: the header on apache's answers, not api's; the
	// body limit.
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+s.publish+"/", nil)
	require.NoError(t, err)
	req.Host = "www.example"
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	_ = resp.Body.Close()
	require.Equal(t, "upstreamd www.example", resp.Header.Get("X-Served-By"))
	req.URL.Path = "/api/"
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	_ = resp.Body.Close()
	require.Empty(t, resp.Header.Get("X-Served-By"), "apache's header on api's answer")
	big, err := http.NewRequestWithContext(t.Context(), http.MethodPost, "http://"+s.publish+"/", strings.NewReader(strings.Repeat("x", 4096)))
	require.NoError(t, err)
	big.Host = "www.example"
	resp, err = http.DefaultClient.Do(big)
	require.NoError(t, err)
	_ = resp.Body.Close()
	require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode, "a 4 KiB body through a 1k limit")

	out, err := s.cli("render")
	require.NoError(t, err)
	for _, line := range []string{
		"# Routes:",
		"#   *.www.example www.example /api/… → api",
		"#   *.www.example www.example /… → apache",
		"#   any other host /api/… → api (prefix stripped)",
		"#   any other host /… → 404",
	} {
		require.Contains(t, out, line)
	}
}
