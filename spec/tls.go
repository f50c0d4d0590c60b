package spec

import (
	"crypto/x509"
	"fmt"
	"net/mail"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/upstreamd/upstreamd/certs"

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

// ACMEConfig is the [acme] table: certificates ordered from an ACME CA
// for the services' host names, kept in etcd.
type ACMEConfig struct {
	// Email is the account's contact (optional).
	Email string `toml:"email"`
	// Directory is the CA's ACME directory URL (Let's Encrypt's by
	// default).
	Directory string `toml:"directory"`
	// CAFile is a PEM file of the CA that signs the directory's HTTPS
	// certificate, for a private ACME server; the system's roots otherwise.
	CAFile string `toml:"ca_file"`
	// Hosts are the names to order certificates for; by default every
	// host name of every service that no [[tls.certificate]] covers
	// (wildcards excepted: HTTP-01 cannot validate them).
	Hosts []string `toml:"hosts"`
}

// DefaultACMEDirectory is Let's Encrypt's production directory.
const DefaultACMEDirectory = "https://acme-v02.api.letsencrypt.org/directory"

// acmeOn reports whether the file has an [acme] table.
func (c *Spec) acmeOn() bool { return c.written("acme") }

// acmeServed are the hosts whose ACME certificates in etcd are served:
// acme.hosts; none without [acme].
func (c *Spec) acmeServed() []string {
	if !c.acmeOn() {
		return nil
	}
	return c.ACME.Hosts
}

// now is the clock certificates are checked against (tests replace it).
var now = time.Now

// validateTLS reads and checks the certificates and the TLS settings,
// and keeps what the proxy is to serve (c.tls). A certificate that does
// not match its key, has expired, names no host or cannot be read is an
// error: it never reaches nginx.
func (c *Spec) validateTLS(bad badFunc) {
	p := c.Proxy
	t := &render.TLS{Port: orchestrator.TLSPort, PublicPort: 443}
	if p.PublishTLS != "" {
		if _, port, err := containers.ParsePublish(p.PublishTLS); err != nil {
			bad("proxy.publish_tls", "%v", err)
		} else if port != "" {
			t.PublicPort, _ = strconv.Atoi(port)
		}
	} else if len(c.TLS.Certificate) > 0 {
		bad("tls.certificate[0]", "certificates given, but proxy.publish_tls (where nginx's TLS port is published, e.g. \"0.0.0.0:443\") is not set")
	}
	for i, s := range c.Service {
		if s.HTTPSRedirect && p.PublishTLS == "" {
			bad(fmt.Sprintf("service[%d].https_redirect", i), "redirects to HTTPS, which is not served: set proxy.publish_tls and a [[tls.certificate]] or [acme]")
		}
	}
	ok := true
	for i, cc := range c.TLS.Certificate {
		k := fmt.Sprintf("tls.certificate[%d]", i)
		cert, leaf, err := c.readCert(cc)
		if err != nil {
			bad(k, "%v", err)
			ok = false
			continue
		}
		t.Certs = append(t.Certs, cert)
		c.fileCerts = append(c.fileCerts, leaf)
	}
	c.validateACME(bad, t)
	if ok && p.PublishTLS != "" {
		c.tls = t
	}
}

// validateTLSPorts refuses the ports TLS would collide with. With
// proxy.publish_tls set, nginx listens on its TLS port in the proxy as soon
// as it has a certificate, and one can come at any time (from etcd or
// ACME): neither nginx's plain port nor the status server may be on it, and
// the host port it is published on must be free of proxy.publish.
func (c *Spec) validateTLSPorts(bad badFunc) {
	p := c.Proxy
	if p.PublishTLS == "" {
		return
	}
	for _, k := range []struct {
		key  string
		port int
	}{{"proxy.port", p.Port}, {"proxy.status_port", *p.StatusPort}} {
		if k.port == orchestrator.TLSPort {
			bad(k.key, "%d is nginx's TLS port in the proxy (proxy.publish_tls is set: a certificate from a file, etcd or ACME turns TLS on): choose another port", k.port)
		}
	}
	host, port, err := containers.ParsePublish(p.Publish)
	thost, tport, terr := containers.ParsePublish(p.PublishTLS)
	if err == nil && terr == nil && port == tport && (host == thost || anyAddress(host) || anyAddress(thost)) {
		bad("proxy.publish_tls", "%q takes the host port of proxy.publish (%q): publish them on different ports", p.PublishTLS, p.Publish)
	}
}

// anyAddress reports whether a published host address is every address.
func anyAddress(host string) bool { return host == "" || host == "0.0.0.0" || host == "::" }

// validateACME checks the [acme] table and sets its defaults.
func (c *Spec) validateACME(bad badFunc, t *render.TLS) {
	if !c.acmeOn() {
		return
	}
	a := &c.ACME
	setStr(&a.Directory, DefaultACMEDirectory)
	if c.Proxy.PublishTLS == "" {
		bad("acme", "orders certificates, which are served over TLS: set proxy.publish_tls (e.g. \"0.0.0.0:443\")")
	}
	if u, err := url.Parse(a.Directory); err != nil || u.Scheme != "https" || u.Host == "" {
		bad("acme.directory", "%q is not an https:// URL of an ACME directory", a.Directory)
	}
	if a.Email != "" {
		if _, err := mail.ParseAddress(a.Email); err != nil || strings.ContainsAny(a.Email, "<> ") {
			bad("acme.email", "%q is not an e-mail address", a.Email)
		}
	}
	if a.CAFile != "" {
		c.acmeRoots = x509.NewCertPool()
		if b, err := os.ReadFile(c.resolve(a.CAFile)); err != nil {
			bad("acme.ca_file", "%v", err)
		} else if !c.acmeRoots.AppendCertsFromPEM(b) {
			bad("acme.ca_file", "%s holds no PEM certificate", a.CAFile)
		}
	}
	for i, s := range c.Service {
		// The proxy answers the CA there, on every host.
		if p := s.PathPrefix; p == render.ChallengePrefix || strings.HasPrefix(p, render.ChallengePrefix+"/") {
			bad(fmt.Sprintf("service[%d].path_prefix", i), "%q is where [acme] answers the CA's HTTP-01 challenges: route another path", p)
		}
	}
	for i, h := range a.Hosts {
		if len(h) > 253 || !hostName.MatchString(h) || strings.HasPrefix(h, "*.") {
			bad(fmt.Sprintf("acme.hosts[%d]", i), "%q is not a host name an HTTP-01 challenge can validate (no wildcards, no ports)", h)
		}
	}
	if len(a.Hosts) == 0 {
		a.Hosts = c.acmeHosts(t)
		if len(a.Hosts) == 0 {
			bad("acme", "no host name to order a certificate for: give the services hosts (service.hosts) or list acme.hosts")
		}
	}
}

// acmeHosts are the host names ACME orders by default: every service's,
// in spec order, except wildcards and those a configured certificate
// covers.
func (c *Spec) acmeHosts(t *render.TLS) []string {
	var out []string
	for _, s := range c.Service {
		for _, h := range s.Hosts {
			if strings.HasPrefix(h, "*.") || slices.Contains(out, h) {
				continue
			}
			covered := false
			for _, cert := range t.Certs {
				covered = covered || render.Covers(cert.Names, h)
			}
			if !covered {
				out = append(out, h)
			}
		}
	}
	return out
}

// readCert reads and checks one certificate and its key.
func (c *Spec) readCert(cc CertConfig) (render.TLSCert, *x509.Certificate, error) {
	if cc.CertFile == "" || cc.KeyFile == "" {
		return render.TLSCert{}, nil, fmt.Errorf("cert_file and key_file are both required")
	}
	certPEM, err := os.ReadFile(c.resolve(cc.CertFile))
	if err != nil {
		return render.TLSCert{}, nil, fmt.Errorf("cert_file: %w", err)
	}
	keyPEM, err := os.ReadFile(c.resolve(cc.KeyFile))
	if err != nil {
		return render.TLSCert{}, nil, fmt.Errorf("key_file: %w", err)
	}
	leaf, err := certs.Check(certPEM, keyPEM, now())
	if err != nil {
		return render.TLSCert{}, nil, fmt.Errorf("%s and %s: %w", cc.CertFile, cc.KeyFile, err)
	}
	return render.NewTLSCert(c.Proxy.ConfigDir, leaf.DNSNames, certPEM, keyPEM), leaf, nil
}

// acmeReach says, when [acme] is on and nginx's plain port is published
// elsewhere than on port 80 of an outside address, what the operator must
// make sure of: the CA validates on port 80 of each host name.
func (c *Spec) acmeReach() string {
	if !c.acmeOn() {
		return ""
	}
	host, port, err := containers.ParsePublish(c.Proxy.Publish)
	if err == nil && port == "80" && (host == "" || !netip.MustParseAddr(host).IsLoopback()) {
		return ""
	}
	return "ACME validates on port 80 of each host name, and proxy.publish is not port 80 of an outside address: make sure port 80 of these names reaches the proxy (a port forward, a load balancer), or every order fails"
}
