package render

import (
	"path"
	"strconv"
	"strings"
)

// TLS is what the proxy serves over TLS: certificates, as files it reads,
// chosen by SNI; the first is the default.
type TLS struct {
	Certs []TLSCert
	// Port is nginx's TLS listen port inside the container (443).
	Port int
	// PublicPort is where clients reach it, for redirects to HTTPS (443:
	// left out of the URL).
	PublicPort int
}

// TLSCert is one certificate and its key, as the proxy reads them.
type TLSCert struct {
	// Names are the DNS names it is valid for ("*.example" included).
	Names []string
	// CertPath and KeyPath are where the proxy reads the PEM files;
	// Cert and Key their contents, delivered before the config that
	// names them.
	CertPath, KeyPath string
	Cert, Key         []byte
}

// TLSDir is where certificates are delivered in the proxy, under its
// config dir; each file is named by the hash of its content, so a new
// certificate never replaces a file the live config reads.
const TLSDir = "upstreamd-tls"

// NewTLSCert returns the TLSCert of cert and key (PEM) for names, with its
// files under configDir.
func NewTLSCert(configDir string, names []string, cert, key []byte) TLSCert {
	h := Hash(append(append([]byte{}, cert...), key...))
	dir := path.Join(configDir, TLSDir)
	return TLSCert{Names: names, Cert: cert, Key: key,
		CertPath: path.Join(dir, h+".crt"), KeyPath: path.Join(dir, h+".key")}
}

// covers reports whether the certificate is valid for host (a server
// name, possibly itself a wildcard).
func (c TLSCert) covers(host string) bool { return Covers(c.Names, host) }

// Covers reports whether a certificate valid for names is valid for host:
// a wildcard name covers one label, and no wildcard host.
func Covers(names []string, host string) bool {
	for _, n := range names {
		if n == host {
			return true
		}
		if suffix, ok := strings.CutPrefix(n, "*."); ok && !strings.HasPrefix(host, "*.") {
			if first, rest, found := strings.Cut(host, "."); found && first != "" && rest == suffix {
				return true
			}
		}
	}
	return false
}

// splitByCert gives each server block the certificate of its names: a
// block whose hosts need different certificates becomes one block per
// certificate (nginx picks a certificate by the block SNI selects).
func splitByCert(servers []Server, t *TLS) []Server {
	var out []Server
	for _, srv := range servers {
		if srv.Default() {
			srv.Cert = t.certFor(nil)
			out = append(out, srv)
			continue
		}
		var order []*TLSCert
		byCert := map[*TLSCert][]string{}
		for _, name := range srv.Names {
			c := t.certFor([]string{name})
			if _, ok := byCert[c]; !ok {
				order = append(order, c)
			}
			byCert[c] = append(byCert[c], name)
		}
		for _, c := range order {
			part := srv
			part.Names, part.Cert = byCert[c], c
			out = append(out, part)
		}
	}
	return out
}

// certFor picks the certificate of a server: the first valid for all its
// names, else the first valid for one, else the default.
func (t *TLS) certFor(names []string) *TLSCert {
	if t == nil || len(t.Certs) == 0 {
		return nil
	}
	for _, all := range []bool{true, false} {
		for i := range t.Certs {
			n := 0
			for _, name := range names {
				if t.Certs[i].covers(name) {
					n++
				}
			}
			if len(names) > 0 && (all && n == len(names) || !all && n > 0) {
				return &t.Certs[i]
			}
		}
	}
	return &t.Certs[0]
}

// Redirect is the start of the HTTPS URL a plain request is sent to
// ("https://$host" or "https://$host:8443").
func (t *TLS) Redirect() string {
	if t == nil || t.PublicPort == 443 || t.PublicPort == 0 {
		return "https://$host"
	}
	return "https://$host:" + strconv.Itoa(t.PublicPort)
}

// Files are the certificate files to deliver, by path in the proxy.
func (v View) Files() map[string][]byte {
	if v.TLS == nil {
		return nil
	}
	out := map[string][]byte{}
	for _, c := range v.TLS.Certs {
		out[c.CertPath] = c.Cert
		out[c.KeyPath] = c.Key
	}
	return out
}
