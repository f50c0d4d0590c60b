package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/orchestrator"
	"github.com/upstreamd/upstreamd/render"
)

// TLSConfig is the [tls] table: the certificates the proxy serves.
type TLSConfig struct {
	Certificate []CertConfig `toml:"certificate"`
}

// CertConfig is one [[tls.certificate]]: PEM files, the certificate
// followed by its chain, and its private key.
type CertConfig struct {
	CertFile string `toml:"cert_file"`
	KeyFile  string `toml:"key_file"`
}

// now is the clock certificates are checked against (tests replace it).
var now = time.Now

// validateTLS reads and checks the certificates and the TLS settings,
// and keeps what the proxy is to serve (c.tls). A certificate that does
// not match its key, has expired, names no host or cannot be read is an
// error: it never reaches nginx.
func (c *Config) validateTLS(bad badFunc) {
	p := c.Proxy
	t := &render.TLS{Port: orchestrator.TLSPort, PublicPort: 443}
	if p.PublishTLS != "" {
		if _, port, err := containers.ParsePublish(p.PublishTLS); err != nil {
			bad("proxy.publish_tls", "%v", err)
		} else if port != "" {
			t.PublicPort, _ = strconv.Atoi(port)
		}
		if len(c.TLS.Certificate) == 0 {
			bad("proxy.publish_tls", "publishes TLS, but no [[tls.certificate]] is given")
		}
	} else if len(c.TLS.Certificate) > 0 {
		bad("tls.certificate[0]", "certificates given, but proxy.publish_tls (where nginx's TLS port is published, e.g. \"0.0.0.0:443\") is not set")
	}
	for i, s := range c.Service {
		if s.HTTPSRedirect && p.PublishTLS == "" {
			bad(fmt.Sprintf("service[%d].https_redirect", i), "redirects to HTTPS, which is not served: set proxy.publish_tls and a [[tls.certificate]]")
		}
	}
	ok := true
	for i, cc := range c.TLS.Certificate {
		k := fmt.Sprintf("tls.certificate[%d]", i)
		cert, err := c.readCert(cc)
		if err != nil {
			bad(k, "%v", err)
			ok = false
			continue
		}
		t.Certs = append(t.Certs, cert)
	}
	if ok && len(t.Certs) > 0 && p.PublishTLS != "" {
		c.tls = t
	}
}

// readCert reads and checks one certificate and its key.
func (c *Config) readCert(cc CertConfig) (render.TLSCert, error) {
	if cc.CertFile == "" || cc.KeyFile == "" {
		return render.TLSCert{}, fmt.Errorf("cert_file and key_file are both required")
	}
	certPEM, err := os.ReadFile(c.resolve(cc.CertFile))
	if err != nil {
		return render.TLSCert{}, fmt.Errorf("cert_file: %w", err)
	}
	keyPEM, err := os.ReadFile(c.resolve(cc.KeyFile))
	if err != nil {
		return render.TLSCert{}, fmt.Errorf("key_file: %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return render.TLSCert{}, fmt.Errorf("%s and %s: %w", cc.CertFile, cc.KeyFile, err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return render.TLSCert{}, fmt.Errorf("%s: %w", cc.CertFile, err)
	}
	switch t := now(); {
	case t.After(leaf.NotAfter):
		return render.TLSCert{}, fmt.Errorf("%s expired on %s", cc.CertFile, leaf.NotAfter.UTC().Format(time.RFC3339))
	case t.Before(leaf.NotBefore):
		return render.TLSCert{}, fmt.Errorf("%s is not valid before %s", cc.CertFile, leaf.NotBefore.UTC().Format(time.RFC3339))
	case len(leaf.DNSNames) == 0:
		return render.TLSCert{}, fmt.Errorf("%s names no host (no DNS subjectAltName)", cc.CertFile)
	}
	return render.NewTLSCert(c.Proxy.ConfigDir, leaf.DNSNames, certPEM, keyPEM), nil
}
