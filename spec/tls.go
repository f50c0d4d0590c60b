package spec

import (
	"fmt"
	"net/mail"
	"net/netip"
	"net/url"
	"strings"

	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/orchestrator"
	"github.com/upstreamd/upstreamd/render"
)

// TLS is the [tls] table: the certificates the proxy serves.
type TLS struct {
	Certificate []CertFiles `toml:"certificate"`
}

// CertFiles is one [[tls.certificate]]: PEM files, the certificate
// followed by its chain, and its private key.
type CertFiles struct {
	CertFile string `toml:"cert_file"`
	KeyFile  string `toml:"key_file"`
}

// ACME is the [acme] table: certificates ordered from an ACME CA
// for the services' host names, kept in etcd.
type ACME struct {
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

// acmeOn reports whether the spec has an [acme] table.
func (c *Spec) acmeOn() bool { return c.Project.ACME != nil }

// validateTLS checks the TLS settings; ReadFiles reads and checks the
// certificates.
func (c *Spec) validateTLS(bad badFunc) {
	p := c.Project.Proxy
	if p.PublishTLS != "" {
		if _, _, err := containers.ParsePublish(p.PublishTLS); err != nil {
			bad("proxy.publish_tls", "%v", err)
		}
	} else if len(c.Project.TLS.Certificate) > 0 {
		bad("tls.certificate[0]", "certificates given, but proxy.publish_tls (where nginx's TLS port is published, e.g. \"0.0.0.0:443\") is not set")
	}
	for i, s := range c.Project.Service {
		if s.HTTPSRedirect && p.PublishTLS == "" {
			bad(fmt.Sprintf("service[%d].https_redirect", i), "redirects to HTTPS, which is not served: set proxy.publish_tls and a [[tls.certificate]] or [acme]")
		}
	}
	for i, cc := range c.Project.TLS.Certificate {
		if cc.CertFile == "" || cc.KeyFile == "" {
			bad(fmt.Sprintf("tls.certificate[%d]", i), "cert_file and key_file are both required")
		}
	}
	c.validateACME(bad)
}

// validateTLSPorts refuses the ports TLS would collide with. With
// proxy.publish_tls set, nginx listens on its TLS port in the proxy as soon
// as it has a certificate, and one can come at any time (from etcd or
// ACME): neither nginx's plain port nor the status server may be on it, and
// the host port it is published on must be free of proxy.publish.
func (c *Spec) validateTLSPorts(bad badFunc) {
	p := c.Project.Proxy
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

// validateACME checks the [acme] table; ReadFiles reads acme.ca_file and
// finds the hosts to order for when acme.hosts does not list them.
func (c *Spec) validateACME(bad badFunc) {
	if !c.acmeOn() {
		return
	}
	a := c.Project.ACME
	if c.Project.Proxy.PublishTLS == "" {
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
	for i, s := range c.Project.Service {
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
}

// ACMEReach says, when [acme] is on and nginx's plain port is published
// elsewhere than on port 80 of an outside address, what the operator must
// make sure of: the CA validates on port 80 of each host name.
func (c *Spec) ACMEReach() string {
	if !c.acmeOn() {
		return ""
	}
	host, port, err := containers.ParsePublish(c.Project.Proxy.Publish)
	if err == nil && port == "80" && (host == "" || !netip.MustParseAddr(host).IsLoopback()) {
		return ""
	}
	return "ACME validates on port 80 of each host name, and proxy.publish is not port 80 of an outside address: make sure port 80 of these names reaches the proxy (a port forward, a load balancer), or every order fails"
}
