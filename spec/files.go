package spec

import (
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/upstreamd/upstreamd/certs"
	"github.com/upstreamd/upstreamd/render"
)

// Files is what the files a spec names hold, read and checked by
// ReadFiles: the part of a loaded spec that is not in its text. The
// template (proxy.template) is read apart, by LoadTemplate.
type Files struct {
	// Certs are the [[tls.certificate]] files, in order.
	Certs []Cert
	// ACMERoots are acme.ca_file's roots; nil: the system's.
	ACMERoots *x509.CertPool
	// ACMEHosts are the hosts [acme] orders certificates for, whose
	// certificates in etcd the proxy serves: acme.hosts, or by default
	// every service host that no certificate file covers, wildcards
	// excepted. None without [acme].
	ACMEHosts []string
	// AdminToken is the token of admin.token_file; "": none.
	AdminToken string
	// EtcdPassword is what etcd.password_file holds, its line end
	// trimmed; "": no file.
	EtcdPassword string
}

// Cert is one certificate file and its key, read and checked.
type Cert struct {
	// TLSCert is the certificate as the proxy reads it.
	TLSCert render.TLSCert
	// Leaf is the certificate, parsed: its names and expiry.
	Leaf *x509.Certificate
}

// ReadFiles reads and checks the files the spec names, against the
// clock's now: the certificates and their keys, acme.ca_file, the admin
// token, the etcd password, and that the template and etcd's TLS files
// exist. Each error names the file, the line and the key, as Validate's.
func (c *Spec) ReadFiles(now time.Time) (Files, error) {
	f, errs := c.readFiles(now)
	return f, joinByLine(errs)
}

func (c *Spec) readFiles(now time.Time) (Files, []error) {
	var f Files
	var errs []error
	bad := c.reporter(&errs)
	// etcd's TLS files are read by the etcd client: here, only found.
	for key, file := range map[string]string{"etcd.ca_file": c.Node.Etcd.CAFile, "etcd.cert_file": c.Node.Etcd.CertFile, "etcd.key_file": c.Node.Etcd.KeyFile} {
		if file != "" {
			if _, err := os.Stat(c.resolve(file)); err != nil {
				bad(key, "%v", err)
			}
		}
	}
	if file := c.resolve(c.Node.Etcd.PasswordFile); file != "" {
		if _, err := os.Stat(file); err != nil {
			bad("etcd.password_file", "%v", err)
		} else if b, err := os.ReadFile(file); err != nil {
			bad("etcd.password_file", "%v", err)
		} else {
			f.EtcdPassword = strings.TrimRight(string(b), "\r\n")
		}
	}
	if c.Node.Admin.TokenFile != "" {
		var err error
		if f.AdminToken, err = c.readToken(); err != nil {
			bad("admin.token_file", "%v", err)
		}
	}
	if p := c.Project.Proxy.Template; p != "" {
		if _, err := os.Stat(c.resolve(p)); err != nil {
			bad("proxy.template", "%v", err)
		}
	}
	for i, cc := range c.Project.TLS.Certificate {
		if cc.CertFile == "" || cc.KeyFile == "" {
			continue // said by validate
		}
		cert, err := c.readCert(cc, now)
		if err != nil {
			bad(fmt.Sprintf("tls.certificate[%d]", i), "%v", err)
			continue
		}
		f.Certs = append(f.Certs, cert)
	}
	c.readACME(bad, &f)
	return f, errs
}

// readToken reads admin.token_file: the token, its surrounding white
// space trimmed. An empty or short token is an error.
func (c *Spec) readToken() (string, error) {
	b, err := os.ReadFile(c.resolve(c.Node.Admin.TokenFile))
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(b))
	switch {
	case tok == "":
		return "", fmt.Errorf("%s is empty", c.Node.Admin.TokenFile)
	case len(tok) < 16:
		return "", fmt.Errorf("the token in %s has %d characters: use at least 16 (e.g. openssl rand -hex 16)", c.Node.Admin.TokenFile, len(tok))
	case strings.ContainsAny(tok, " \t\r\n"):
		return "", fmt.Errorf("the token in %s holds white space: one token on one line", c.Node.Admin.TokenFile)
	}
	return tok, nil
}

// readCert reads and checks one certificate and its key.
func (c *Spec) readCert(cc CertFiles, now time.Time) (Cert, error) {
	certPEM, err := os.ReadFile(c.resolve(cc.CertFile))
	if err != nil {
		return Cert{}, fmt.Errorf("cert_file: %w", err)
	}
	keyPEM, err := os.ReadFile(c.resolve(cc.KeyFile))
	if err != nil {
		return Cert{}, fmt.Errorf("key_file: %w", err)
	}
	leaf, err := certs.Check(certPEM, keyPEM, now)
	if err != nil {
		return Cert{}, fmt.Errorf("%s and %s: %w", cc.CertFile, cc.KeyFile, err)
	}
	return Cert{TLSCert: render.NewTLSCert(c.Project.Proxy.ConfigDir, leaf.DNSNames, certPEM, keyPEM), Leaf: leaf}, nil
}

// readACME reads acme.ca_file and finds the hosts to order for, with [acme].
func (c *Spec) readACME(bad badFunc, f *Files) {
	if !c.acmeOn() {
		return
	}
	a := c.Project.ACME
	if a.CAFile != "" {
		f.ACMERoots = x509.NewCertPool()
		if b, err := os.ReadFile(c.resolve(a.CAFile)); err != nil {
			bad("acme.ca_file", "%v", err)
		} else if !f.ACMERoots.AppendCertsFromPEM(b) {
			bad("acme.ca_file", "%s holds no PEM certificate", a.CAFile)
		}
	}
	f.ACMEHosts = a.Hosts
	if len(f.ACMEHosts) == 0 {
		f.ACMEHosts = c.acmeHosts(f.Certs)
		if len(f.ACMEHosts) == 0 {
			bad("acme", "no host name to order a certificate for: give the services hosts (service.hosts) or list acme.hosts")
		}
	}
}

// acmeHosts are the host names ACME orders by default: every service's,
// in spec order, except wildcards and those a certificate file covers.
func (c *Spec) acmeHosts(files []Cert) []string {
	var out []string
	for _, s := range c.Project.Service {
		for _, h := range s.Hosts {
			if strings.HasPrefix(h, "*.") || slices.Contains(out, h) {
				continue
			}
			covered := false
			for _, cert := range files {
				covered = covered || render.Covers(cert.TLSCert.Names, h)
			}
			if !covered {
				out = append(out, h)
			}
		}
	}
	return out
}

// LoadTemplate reads and parses proxy.template, or returns the built-in
// template: apart from ReadFiles, so that a command that renders nothing
// does not need the template to parse.
func (c *Spec) LoadTemplate() (*render.Template, error) {
	if c.Project.Proxy.Template == "" {
		return render.Default(), nil
	}
	f := c.resolve(c.Project.Proxy.Template)
	text, err := os.ReadFile(f)
	if err != nil {
		return nil, fmt.Errorf("%s: proxy.template: %w", c.file, err)
	}
	t, err := render.Parse(f, string(text))
	if err != nil {
		return nil, fmt.Errorf("%s: proxy.template: %w", c.file, err)
	}
	return t, nil
}

// resolve makes a path in the spec relative to the spec file's directory.
func (c *Spec) resolve(p string) string {
	if p == "" || filepath.IsAbs(p) || c.file == noFile {
		return p
	}
	return filepath.Join(filepath.Dir(c.file), p)
}
