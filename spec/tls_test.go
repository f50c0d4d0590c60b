package spec

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/upstreamd/upstreamd/store"
)

// selfSigned writes a self-signed certificate for names, valid until
// notAfter, and its key, into dir as <name>.pem and <name>.key.
func selfSigned(t *testing.T, dir, name string, names []string, notAfter time.Time) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: names,
		NotBefore: time.Now().Add(-96 * time.Hour), NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for file, block := range map[string]*pem.Block{name + ".pem": {Type: "CERTIFICATE", Bytes: der}, name + ".key": {Type: "EC PRIVATE KEY", Bytes: kder}} {
		if err := os.WriteFile(filepath.Join(dir, file), pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func TestTLSConfig(t *testing.T) {
	dir := t.TempDir()
	later := time.Now().Add(30 * 24 * time.Hour)
	selfSigned(t, dir, "a", []string{"a.example"}, later)
	selfSigned(t, dir, "b", []string{"b.example", "*.b.example"}, later)
	selfSigned(t, dir, "old", []string{"old.example"}, time.Now().Add(-time.Hour))
	selfSigned(t, dir, "nameless", nil, later)
	const tlsOn = "[proxy]\npublish_tls = \"127.0.0.1:8443\"\n"
	cert := func(c, k string) string {
		return "[[tls.certificate]]\ncert_file = \"" + c + "\"\nkey_file = \"" + k + "\"\n"
	}
	for _, tt := range []struct {
		name, body string
		want       []string // error lines; none: valid
		certs      int      // when valid: the certificates read
		acme       []string // when valid: the hosts ACME orders
	}{
		{"two certificates", tlsOn + cert("a.pem", "a.key") + cert("b.pem", "b.key"), nil, 2, nil},
		{"key of another certificate", tlsOn + cert("a.pem", "b.key"), []string{"tls.certificate[0]: a.pem and b.key: tls: private key does not match public key"}, 0, nil},
		{"expired", tlsOn + cert("old.pem", "old.key"), []string{"tls.certificate[0]: old.pem and old.key: expired on "}, 0, nil},
		{"no names", tlsOn + cert("nameless.pem", "nameless.key"), []string{"tls.certificate[0]: nameless.pem and nameless.key: names no host"}, 0, nil},
		{"missing file", tlsOn + cert("none.pem", "a.key"), []string{"tls.certificate[0]: cert_file: open "}, 0, nil},
		// Certificates then come from etcd (imported, or ordered by ACME).
		{"publish_tls without certificates", tlsOn, nil, 0, nil},
		{"acme", tlsOn + cert("b.pem", "b.key") + "[acme]\nemail = \"ops@a.example\"\n[[service]]\nname = \"apache\"\nhosts = [\"a.example\", \"*.c.example\", \"x.b.example\"]\n", nil, 1, []string{"a.example"}},
		{"acme without TLS", "[acme]\nhosts = [\"a.example\"]\n", []string{"acme: orders certificates, which are served over TLS: set proxy.publish_tls"}, 0, nil},
		{"acme without hosts", tlsOn + "[acme]\n", []string{"acme: no host name to order a certificate for"}, 0, nil},
		{"acme hosts covered by files", tlsOn + cert("a.pem", "a.key") + "[acme]\n[[service]]\nname = \"apache\"\nhosts = [\"a.example\"]\n", []string{"acme: no host name to order"}, 0, nil},
		{"acme bad values", tlsOn + "[acme]\nemail = \"nobody\"\ndirectory = \"http://ca.example/dir\"\nca_file = \"a.key\"\nhosts = [\"*.a.example\", \"A.example\"]\n", []string{
			"acme.email: \"nobody\" is not an e-mail address",
			"acme.directory: \"http://ca.example/dir\" is not an https:// URL",
			"acme.ca_file: a.key holds no PEM certificate",
			"acme.hosts[0]: \"*.a.example\" is not a host name an HTTP-01 challenge can validate",
			"acme.hosts[1]: \"A.example\" is not a host name"}, 0, nil},
		// The built-in template serves the ACME answers at
		// /.well-known/acme-challenge/: no service may route it.
		{"acme beside a path_prefix at its answers", tlsOn + "[acme]\n[[service]]\nname = \"apache\"\nhosts = [\"a.example\"]\npath_prefix = \"/.well-known/acme-challenge\"\n[[service]]\nname = \"b\"\nimage = \"x\"\npath_prefix = \"/.well-known/acme-challenge/x\"\n", []string{
			`service[0] (apache).path_prefix: "/.well-known/acme-challenge" is where [acme] answers the CA's HTTP-01 challenges: route another path`,
			`service[1] (b).path_prefix: "/.well-known/acme-challenge/x" is where [acme] answers`}, 0, nil},
		{"acme beside /.well-known", tlsOn + "[acme]\n[[service]]\nname = \"apache\"\nhosts = [\"a.example\"]\npath_prefix = \"/.well-known\"\n[[service]]\nname = \"b\"\nimage = \"x\"\npath_prefix = \"/.well-known/acme-challenges\"\n", nil, 0, []string{"a.example"}},
		{"certificates without publish_tls", cert("a.pem", "a.key"), []string{"tls.certificate[0]: certificates given, but proxy.publish_tls"}, 0, nil},
		{"https_redirect without TLS", "[[service]]\nname = \"apache\"\nhttps_redirect = true\n", []string{"service[0] (apache).https_redirect: redirects to HTTPS, which is not served"}, 0, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(dir, "upstreamd.toml")
			if err := os.WriteFile(file, []byte(tt.body), 0o644); err != nil {
				t.Fatal(err)
			}
			cfg, files, err := Load(file, testHost)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				tls := cfg.ViewInput(files).TLS
				delivered := cfg.View(files, store.Snapshot{}).Files()
				if tls == nil || len(tls.Certs) != tt.certs || len(files.Certs) != tt.certs || len(delivered) != 2*tt.certs || tls.PublicPort != 8443 {
					t.Errorf("tls %+v, %d files", tls, len(delivered))
				}
				if !slices.Equal(files.ACMEHosts, tt.acme) {
					t.Errorf("acme.hosts = %q, want %q", files.ACMEHosts, tt.acme)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// TestACMEReach: the warning when the CA's port 80 may not reach nginx.
func TestACMEReach(t *testing.T) {
	for publish, warn := range map[string]bool{
		":80": false, "0.0.0.0:80": false, "203.0.113.5:80": false,
		"127.0.0.1:80": true, "127.0.0.1:8080": true, ":8080": true,
	} {
		cfg := &Spec{Project: Project{Proxy: Proxy{Publish: publish}, ACME: &ACME{}}}
		if got := cfg.ACMEReach() != ""; got != warn {
			t.Errorf("publish %s: warned %v, want %v", publish, got, warn)
		}
	}
	if (&Spec{Project: Project{Proxy: Proxy{Publish: "127.0.0.1:8080"}}}).ACMEReach() != "" {
		t.Error("warned without [acme]")
	}
}
