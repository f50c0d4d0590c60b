// Package pki makes a throwaway certificate authority for tests and the
// certificates it signs, all ECDSA P-256, written as PEM files: for etcd
// (Generate: a server certificate for 127.0.0.1 and localhost, and a
// client certificate) and for the proxy's TLS (IssueServer).
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Files are the PEM files Generate wrote.
type Files struct {
	CA         string // the CA certificate
	ServerCert string // server certificate for 127.0.0.1 and localhost
	ServerKey  string
	ClientCert string // client certificate with ClientCN as its common name
	ClientKey  string
}

// CA is a throwaway certificate authority: it signs leaf certificates,
// and Pool trusts it.
type CA struct {
	Cert *x509.Certificate
	DER  []byte
	Pool *x509.CertPool
	key  *ecdsa.PrivateKey
	now  time.Time // the validity of what it signs starts here
}

// NewCA makes a CA valid for a day.
func NewCA() (*CA, error) {
	now := time.Now().Add(-time.Minute) // tolerate a little clock skew
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "upstreamd test CA"},
		NotBefore:             now,
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &CA{Cert: cert, DER: der, Pool: pool, key: key, now: now}, nil
}

// Issue signs a leaf certificate of tmpl (its serial, validity and key
// usage filled in) with a new P-256 key, and writes both as PEM files:
// the certificate at certPath (0644), the key at keyPath (0600).
func (ca *CA) Issue(certPath, keyPath string, tmpl *x509.Certificate) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate key for %s: %w", certPath, err)
	}
	tmpl.SerialNumber = serial()
	tmpl.NotBefore, tmpl.NotAfter = ca.now, ca.now.Add(24*time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return fmt.Errorf("create certificate %s: %w", certPath, err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("marshal key for %s: %w", certPath, err)
	}
	if err := writePEM(certPath, "CERTIFICATE", der, 0o644); err != nil {
		return err
	}
	return writePEM(keyPath, "EC PRIVATE KEY", keyDER, 0o600)
}

// IssueServer writes a server certificate for the DNS names as
// dir/name.pem, and its key as dir/name.key.
func (ca *CA) IssueServer(dir, name string, names ...string) error {
	return ca.Issue(filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key"), &x509.Certificate{
		Subject:     pkix.Name{CommonName: names[0]},
		DNSNames:    names,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
}

// Generate writes a new CA, a server certificate (also usable as a client
// certificate, as etcd's own gateway needs) and a client certificate with
// common name clientCN into dir.
func Generate(dir, clientCN string) (Files, error) {
	f := Files{
		CA:         filepath.Join(dir, "ca.pem"),
		ServerCert: filepath.Join(dir, "server.pem"),
		ServerKey:  filepath.Join(dir, "server-key.pem"),
		ClientCert: filepath.Join(dir, "client.pem"),
		ClientKey:  filepath.Join(dir, "client-key.pem"),
	}
	ca, err := NewCA()
	if err != nil {
		return f, err
	}
	if err := writePEM(f.CA, "CERTIFICATE", ca.DER, 0o644); err != nil {
		return f, err
	}
	if err := ca.Issue(f.ServerCert, f.ServerKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "localhost"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return f, err
	}
	return f, ca.Issue(f.ClientCert, f.ClientKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: clientCN},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	b := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if err := os.WriteFile(path, b, mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
