//go:build integration

package integration

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/upstreamd/upstreamd/integration/internal/daemon"
	"github.com/upstreamd/upstreamd/integration/internal/pki"
)

// newTestCA returns a throwaway certificate authority.
func newTestCA(t *testing.T) *testCA {
	t.Helper()
	ca, err := pki.NewCA()
	require.NoError(t, err)
	return &testCA{ca}
}

// testCA is a pki.CA that fails the test instead of returning errors.
type testCA struct{ *pki.CA }

// issue writes a server certificate for names signed by the CA, and its
// key, as dir/name.pem and dir/name.key.
func (ca *testCA) issue(t *testing.T, dir, name string, names ...string) {
	t.Helper()
	require.NoError(t, ca.IssueServer(dir, name, names...))
}

// getTLS GETs https://addr/ for server name sni, verifying the chain
// against the CA, and returns the response (body read), the certificate's
// names and the protocol.
func getTLS(t *testing.T, ca *testCA, addr, sni string) (code int, backend string, names []string, proto string, err error) {
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool, ServerName: sni}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "https://"+addr+"/", nil)
	if err != nil {
		return 0, "", nil, "", err
	}
	req.Host = sni
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return 0, "", nil, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if m := hostRE.FindSubmatch(body); m != nil {
		backend = string(m[1])
	}
	if resp.TLS != nil && len(resp.TLS.PeerCertificates) > 0 {
		names = resp.TLS.PeerCertificates[0].DNSNames
	}
	return resp.StatusCode, backend, names, resp.Proto, err
}

// TestTLS: the proxy serves TLS from certificate files: SNI picks the
// certificate (the client verifies the chain and the name), HTTP/2 is
// negotiated, plain HTTP is redirected to HTTPS; a key that does not
// match its certificate stops the daemon with a clear error before
// anything reaches nginx, which keeps serving the last good config.
func TestTLS(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	ca.issue(t, dir, "a", "a.example")
	ca.issue(t, dir, "b", "b.example", "*.b.example")
	tlsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	certs := func(aKey string) string {
		return fmt.Sprintf("[[tls.certificate]]\ncert_file = %q\nkey_file = %q\n[[tls.certificate]]\ncert_file = %q\nkey_file = %q\n",
			filepath.Join(dir, "a.pem"), filepath.Join(dir, aKey), filepath.Join(dir, "b.pem"), filepath.Join(dir, "b.key"))
	}
	s := newStack(t, withReplicas(1), withProxyTOML(fmt.Sprintf("publish_tls = %q", tlsAddr)),
		withServiceTOML("hosts = [\"a.example\", \"b.example\", \"x.b.example\"]\nhttps_redirect = true"),
		withExtraTOML(certs("a.key")))
	d := s.startDaemon()
	var backend string
	eventually(t, 90*time.Second, "nginx serves a.example over TLS", func() error {
		code, b, names, proto, err := getTLS(t, ca, tlsAddr, "a.example")
		if err != nil {
			return err
		}
		if code != http.StatusOK || b == "" {
			return fmt.Errorf("a.example: %d from %q", code, b)
		}
		if strings.Join(names, ",") != "a.example" || proto != "HTTP/2.0" {
			return fmt.Errorf("a.example: certificate for %v, %s", names, proto)
		}
		backend = b
		return nil
	})
	for _, sni := range []string{"b.example", "x.b.example"} {
		code, b, names, proto, err := getTLS(t, ca, tlsAddr, sni)
		require.NoError(t, err, sni)
		require.Equal(t, http.StatusOK, code, sni)
		require.Equal(t, backend, b, sni)
		require.Equal(t, []string{"b.example", "*.b.example"}, names, "the certificate %s gets", sni)
		require.Equal(t, "HTTP/2.0", proto, sni)
	}

	// Plain HTTP: a redirect to the same URL over HTTPS, on the TLS port.
	// (Right after the first reload, nginx's old workers may still answer
	// a connection on port 80 with the placeholder.)
	_, port, _ := strings.Cut(tlsAddr, ":")
	eventually(t, 10*time.Second, "plain HTTP is redirected to HTTPS", func() error {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+s.publish+"/some/page?q=1", nil)
		if err != nil {
			return err
		}
		req.Host = "a.example"
		c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		_ = resp.Body.Close()
		if want := "https://a.example:" + port + "/some/page?q=1"; resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != want {
			return fmt.Errorf("%d to %q, want 301 to %s", resp.StatusCode, resp.Header.Get("Location"), want)
		}
		return nil
	})

	// The key of another certificate: refused before anything reaches
	// nginx, which keeps serving.
	require.NoError(t, d.Stop(20*time.Second))
	s.opts.extra = certs("b.key")
	s.writeConfig()
	bad, err := daemon.Start(binPath, []string{"run", "--config", s.configFile, "--log-format", "console"}, nil)
	require.NoError(t, err)
	select {
	case <-bad.Done():
	case <-time.After(30 * time.Second):
		bad.Kill()
		t.Fatalf("the daemon runs with a key that does not match its certificate:\n%s", bad.Logs())
	}
	require.Error(t, bad.Err())
	require.Contains(t, bad.Logs(), "tls.certificate[0]: "+filepath.Join(dir, "a.pem")+" and "+filepath.Join(dir, "b.key")+": tls: private key does not match public key")
	code, b, names, _, err := getTLS(t, ca, tlsAddr, "a.example")
	require.NoError(t, err, "nginx keeps serving the last good config")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, backend, b)
	require.Equal(t, []string{"a.example"}, names)
}
