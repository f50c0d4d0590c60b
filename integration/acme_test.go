//go:build integration

package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/upstreamd/upstreamd/admin"
	"github.com/upstreamd/upstreamd/certs"
	"github.com/upstreamd/upstreamd/integration/internal/acmeca"
	"github.com/upstreamd/upstreamd/store"
)

// servedCert dials addr over TLS for sni, verifying the chain against
// roots and the name, and returns the certificate nginx served.
func servedCert(ctx context.Context, roots *x509.CertPool, addr, sni string) (*x509.Certificate, error) {
	d := tls.Dialer{Config: &tls.Config{RootCAs: roots, ServerName: sni, MinVersion: tls.VersionTLS12}}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.(*tls.Conn).ConnectionState().PeerCertificates[0], nil
}

// tlsLoad sends GET https://addr/ for host until stopped, half on new
// connections and half on kept-alive ones, verifying every chain, and
// counts what failed. It is bounded by limit and by 20,000 requests.
type tlsLoad struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	stop       context.CancelFunc
	done       sync.WaitGroup
}

func startTLSLoad(ctx context.Context, roots *x509.CertPool, addr, host string, limit time.Duration) *tlsLoad {
	ctx, cancel := context.WithTimeout(ctx, limit)
	l := &tlsLoad{stop: cancel}
	for i, keepAlive := range []bool{false, false, true, true} {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: host},
			DisableKeepAlives: !keepAlive, DialContext: (&net.Dialer{}).DialContext}
		c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
		l.done.Add(1)
		go func() {
			defer l.done.Done()
			defer tr.CloseIdleConnections()
			for n := 0; n < 5000 && ctx.Err() == nil; n++ {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+"/", nil)
				req.Host = host
				resp, err := c.Do(req)
				if ctx.Err() != nil {
					return
				}
				if err == nil {
					_ = resp.Body.Close()
					if resp.StatusCode == http.StatusOK {
						l.ok.Add(1)
						continue
					}
					err = fmt.Errorf("worker %d: %s", i, resp.Status)
				}
				l.failed.Add(1)
				l.mu.Lock()
				if len(l.errs) < 10 {
					l.errs = append(l.errs, err.Error())
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

func (l *tlsLoad) Stop() (ok, failed int64, errs []string) {
	l.stop()
	l.done.Wait()
	return l.ok.Load(), l.failed.Load(), l.errs
}

// TestACME: [acme] against a real ACME server (pebble, Let's Encrypt's
// test CA, validating HTTP-01 through the proxy's published port): a
// certificate is ordered, validated, stored in etcd with the account, and
// served by nginx with a chain to pebble's root; a restarted daemon
// serves it from etcd without ordering again; `upstreamd certs renew`
// replaces it under TLS load with no failed request.
func TestACME(t *testing.T) {
	s := newStack(t, withReplicas(2))
	_, port, err := net.SplitHostPort(s.publish)
	require.NoError(t, err)
	httpPort := 0
	_, err = fmt.Sscan(port, &httpPort)
	require.NoError(t, err)
	dir := t.TempDir()
	ca, err := acmeca.Run(t.Context(), acmeca.DefaultImage, acmeca.Options{HTTPPort: httpPort, Dir: dir})
	if ca != nil {
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("pebble logs:\n%s", ca.Logs(context.Background()))
			}
			_ = ca.Terminate(context.Background())
		})
	}
	require.NoError(t, err)
	roots, err := ca.Roots(t.Context())
	require.NoError(t, err)

	tlsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	s.opts.proxyTOML += fmt.Sprintf("publish_tls = %q\n", tlsAddr)
	s.opts.serviceTOML += "hosts = [\"a.example\", \"b.example\", \"c.example\"]\nhttps_redirect = true\n"
	s.opts.extra += fmt.Sprintf("[acme]\nemail = \"ops@a.example\"\ndirectory = %q\nca_file = %q\nhosts = [\"a.example\", \"b.example\"]\n",
		ca.Directory, filepath.Join(dir, filepath.Base(ca.CAFile)))
	s.writeConfig()
	d := s.startDaemon()

	serials := map[string]string{}
	for _, host := range []string{"a.example", "b.example"} {
		eventually(t, 120*time.Second, "nginx serves the ACME certificate of "+host, func() error {
			c, err := servedCert(t.Context(), roots, tlsAddr, host)
			if err != nil {
				return err
			}
			serials[host] = c.SerialNumber.Text(16)
			return nil
		})
	}
	// Stored in etcd, with the account.
	kv, ok, err := s.etcd.Get(t.Context(), store.CertHostKey(s.project, "a.example"))
	require.NoError(t, err)
	require.True(t, ok, "the certificate is in etcd")
	stored, err := certs.Parse(kv.Key, kv.Value, time.Now())
	require.NoError(t, err)
	require.Equal(t, certs.SourceACME, stored.Source)
	require.Equal(t, serials["a.example"], stored.Leaf.SerialNumber.Text(16), "nginx serves what etcd holds")
	require.WithinDuration(t, certs.RenewAt(stored.Leaf), stored.RenewAt, time.Second, "renewal two thirds into the lifetime")
	_, ok, err = s.etcd.Get(t.Context(), store.ACMEAccountKey(s.project))
	require.NoError(t, err)
	require.True(t, ok, "the ACME account is in etcd")
	out, err := s.cli("certs", "list")
	require.NoError(t, err)
	require.Regexp(t, `a\.example\s+acme\s+a\.example\s`, out)
	code, body, err := s.adminGet("/metrics")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, string(body), `upstreamd_acme_orders_total{result="issued"} 2`)
	require.Regexp(t, `upstreamd_cert_expiry_seconds\{host="a\.example",source="acme"\} [0-9.e+]+\n`, string(body))
	st, err := s.adminStatus()
	require.NoError(t, err)
	require.Equal(t, []admin.ACMEHost{{Host: "a.example"}, {Host: "b.example"}}, st.ACME, "both hosts ordered, none failing")
	require.Len(t, st.Certificates, 2)
	for _, c := range st.Certificates {
		require.Equal(t, "acme", c.Source)
		require.Equal(t, stored.Leaf.NotAfter.Year(), c.NotAfter.Year())
	}

	// A restarted daemon serves them from etcd and orders nothing.
	require.NoError(t, d.Stop(20*time.Second))
	d = s.startDaemon()
	eventually(t, 90*time.Second, "the restarted daemon looked at its certificates", func() error {
		if !strings.Contains(d.Logs(), "ACME: nothing to order now") {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	for host, serial := range serials {
		c, err := servedCert(t.Context(), roots, tlsAddr, host)
		require.NoError(t, err, host)
		require.Equal(t, serial, c.SerialNumber.Text(16), "%s: the same certificate after a restart", host)
	}
	require.NotContains(t, d.Logs(), "ACME: ordering a certificate", "the restarted daemon ordered again")

	// Forced renewal under load: the new certificate replaces the old one
	// with no failed request.
	load := startTLSLoad(t.Context(), roots, tlsAddr, "a.example", 90*time.Second)
	eventually(t, 10*time.Second, "load running", func() error {
		if load.ok.Load() < 20 {
			return fmt.Errorf("%d requests so far", load.ok.Load())
		}
		return nil
	})
	out, err = s.cli("certs", "renew", "a.example")
	require.NoError(t, err)
	require.Contains(t, out, "a.example: due for renewal now")
	eventually(t, 60*time.Second, "the renewed certificate served", func() error {
		c, err := servedCert(t.Context(), roots, tlsAddr, "a.example")
		if err != nil {
			return err
		}
		if c.SerialNumber.Text(16) == serials["a.example"] {
			return fmt.Errorf("still serial %s", serials["a.example"])
		}
		return nil
	})
	before := load.ok.Load()
	eventually(t, 10*time.Second, "load on the new certificate", func() error {
		if load.ok.Load() < before+20 {
			return fmt.Errorf("%d requests since", load.ok.Load()-before)
		}
		return nil
	})
	okN, failed, errs := load.Stop()
	t.Logf("renewal under load: %d requests, %d failed", okN+failed, failed)
	require.Zero(t, failed, "requests failed while the certificate was renewed: %s", strings.Join(errs, "; "))
	c, err := servedCert(t.Context(), roots, tlsAddr, "b.example")
	require.NoError(t, err)
	require.Equal(t, serials["b.example"], c.SerialNumber.Text(16), "b.example was not renewed")

	// An operator's own certificate, imported into etcd: served by SNI at
	// once, without a restart; removed, it is no longer served.
	own := newTestCA(t)
	own.issue(t, dir, "c", "c.example")
	own.issue(t, dir, "d", "d.example")
	out, err = s.cli("certs", "import", "c.example", "--cert", filepath.Join(dir, "c.pem"), "--key", filepath.Join(dir, "c.key"))
	require.NoError(t, err)
	require.Contains(t, out, "c.example: imported (c.example, valid until ")
	eventually(t, 30*time.Second, "the imported certificate served for c.example", func() error {
		_, err := servedCert(t.Context(), own.Pool, tlsAddr, "c.example")
		return err
	})
	_, err = s.cli("certs", "import", "c.example", "--cert", filepath.Join(dir, "c.pem"), "--key", filepath.Join(dir, "d.key"))
	require.ErrorContains(t, err, "private key does not match public key", "a mismatched pair never reaches etcd")
	out, err = s.cli("certs", "remove", "c.example")
	require.NoError(t, err)
	require.Contains(t, out, "c.example: removed")
	eventually(t, 30*time.Second, "the removed certificate no longer served", func() error {
		if _, err := servedCert(t.Context(), own.Pool, tlsAddr, "c.example"); err == nil {
			return fmt.Errorf("still served")
		}
		return nil
	})
}
