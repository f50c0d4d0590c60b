//go:build integration

package integration

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/upstreamd/upstreamd/certs"
	"github.com/upstreamd/upstreamd/integration/internal/daemon"
	"github.com/upstreamd/upstreamd/integration/internal/pki"
	"github.com/upstreamd/upstreamd/render"
	"github.com/upstreamd/upstreamd/store"
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

// tlsFiles lists the certificate files in the proxy's data volume, as
// "mode name".
func (s *stack) tlsFiles() ([]string, error) {
	const dir = "/etc/nginx/" + render.TLSDir
	res, err := s.docker.Exec(s.t.Context(), s.proxy().ID, []string{"sh", "-c",
		`[ -d "$1" ] || exit 0; find "$1" -mindepth 1 -maxdepth 1 -printf '%m %f\n' | sort`, "ls", dir})
	if err != nil {
		return nil, err
	}
	if res.ExitCode != 0 {
		return nil, fmt.Errorf("list %s: %s", dir, res.Output())
	}
	return strings.Fields(strings.ReplaceAll(strings.TrimSpace(string(res.Stdout)), " ", "_")), nil
}

// TestTLSOldFilesRemoved: a certificate from etcd replaced by another is
// served, and its old files, the private key first, are gone from the
// proxy's data volume; one removed leaves no file behind. An ACME
// certificate for a host the spec's [acme] does not name is not served.
func TestTLSOldFilesRemoved(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	ca.issue(t, dir, "c1", "c.example")
	ca.issue(t, dir, "c2", "c.example")
	ca.issue(t, dir, "e", "e.example")
	tlsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	s := newStack(t, withReplicas(1), withProxyTOML(fmt.Sprintf("publish_tls = %q", tlsAddr)),
		withServiceTOML(`hosts = ["c.example", "e.example"]`))
	s.startDaemon()
	files := func(name string) []string {
		certPEM, err := os.ReadFile(filepath.Join(dir, name+".pem"))
		require.NoError(t, err)
		keyPEM, err := os.ReadFile(filepath.Join(dir, name+".key"))
		require.NoError(t, err)
		c := render.NewTLSCert("/etc/nginx", nil, certPEM, keyPEM)
		return []string{"600_" + path.Base(c.CertPath), "600_" + path.Base(c.KeyPath)}
	}
	serves := func(name string) {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dir, name+".pem"))
		require.NoError(t, err)
		blk, _ := pem.Decode(b)
		want, err := x509.ParseCertificate(blk.Bytes)
		require.NoError(t, err)
		eventually(t, 60*time.Second, "nginx serves "+name, func() error {
			c, err := servedCert(t.Context(), ca.Pool, tlsAddr, "c.example")
			if err != nil {
				return err
			}
			if !c.Equal(want) {
				return fmt.Errorf("serial %s served", c.SerialNumber.Text(16))
			}
			return nil
		})
	}
	onlyFiles := func(want []string) {
		t.Helper()
		slices.Sort(want)
		eventually(t, 30*time.Second, fmt.Sprintf("the data volume holds %q", want), func() error {
			got, err := s.tlsFiles()
			if err != nil {
				return err
			}
			if !slices.Equal(got, want) {
				return fmt.Errorf("it holds %q", got)
			}
			return nil
		})
	}

	_, err := s.cli("certs", "import", "c.example", "--cert", filepath.Join(dir, "c1.pem"), "--key", filepath.Join(dir, "c1.key"))
	require.NoError(t, err)
	serves("c1")
	onlyFiles(files("c1"))

	// An ACME certificate of a host no [acme] names, then the replacement
	// of c.example: once that is served, etcd's change before it was seen.
	ePEM, err := os.ReadFile(filepath.Join(dir, "e.pem"))
	require.NoError(t, err)
	eKey, err := os.ReadFile(filepath.Join(dir, "e.key"))
	require.NoError(t, err)
	_, err = s.etcd.Put(t.Context(), store.CertHostKey(s.project, "e.example"),
		certs.Record{Cert: string(ePEM), Key: string(eKey), Source: certs.SourceACME}.Encode(), 0)
	require.NoError(t, err)
	_, err = s.cli("certs", "import", "c.example", "--cert", filepath.Join(dir, "c2.pem"), "--key", filepath.Join(dir, "c2.key"))
	require.NoError(t, err)
	serves("c2")
	onlyFiles(files("c2"))
	_, err = servedCert(t.Context(), ca.Pool, tlsAddr, "e.example")
	require.Error(t, err, "the ACME certificate of a host [acme] does not name is served")

	_, err = s.cli("certs", "remove", "c.example")
	require.NoError(t, err)
	onlyFiles(nil)
}
