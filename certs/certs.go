// Package certs keeps the proxy's TLS certificates in etcd and orders them
// from an ACME CA.
//
// Certificates live under /upstreamd/<project>/certs/: every node and every
// newly elected proxy reads them from there, so a certificate is ordered
// once per project, not once per proxy. A Cache watches that prefix (the
// certificates, checked like any input read from etcd, and the HTTP-01
// answers the proxies serve); the Manager orders what is missing or due,
// one node at a time under an etcd lock. An operator's own certificates
// can be kept there too (`upstreamd certs import`).
package certs

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Prefix is where a project's certificates and ACME state live.
func Prefix(project string) string { return "/upstreamd/" + project + "/certs/" }

// HostsPrefix holds one certificate per key, named by its first name.
func HostsPrefix(project string) string { return Prefix(project) + "hosts/" }

// HostKey is where the certificate named name is kept.
func HostKey(project, name string) string { return HostsPrefix(project) + name }

// AccountKey holds the ACME account: its key and registration.
func AccountKey(project string) string { return Prefix(project) + "acme/account" }

// ChallengesPrefix holds the HTTP-01 answers being validated, by token,
// under the lease of the node ordering them.
func ChallengesPrefix(project string) string { return Prefix(project) + "acme/challenges/" }

// LockKey is the etcd mutex a node holds while it orders. It is outside
// Prefix, so taking it wakes no watcher of the certificates.
func LockKey(project string) string { return "/upstreamd/" + project + "/locks/acme" }

// Sources of a Record.
const (
	SourceACME   = "acme"
	SourceImport = "import"
)

// Record is a certificate as kept in etcd (JSON).
type Record struct {
	// Cert is PEM: the certificate, then its chain; Key its private key.
	Cert string `json:"cert"`
	Key  string `json:"key"`
	// Source is SourceACME or SourceImport.
	Source string `json:"source"`
	// RenewAt is when an ACME certificate is ordered again: two thirds
	// into its lifetime, or sooner when `upstreamd certs renew` asked.
	RenewAt time.Time `json:"renew_at,omitzero"`
	// Directory is the ACME directory that issued it.
	Directory string `json:"directory,omitempty"`
	// Node stored it, at Stored.
	Node   string    `json:"node,omitempty"`
	Stored time.Time `json:"stored,omitzero"`
}

// Encode is the record's value in etcd.
func (r Record) Encode() string {
	b, _ := json.Marshal(r) // strings and times only: cannot fail
	return string(b)
}

// Cert is a checked Record.
type Cert struct {
	Record
	// Key is the etcd key it was read from; Name its last element.
	EtcdKey, Name string
	// Leaf is the certificate itself (the first of Cert).
	Leaf *x509.Certificate
}

// Names are the DNS names the certificate is valid for.
func (c Cert) Names() []string { return c.Leaf.DNSNames }

// Decode reads a record, unchecked.
func Decode(value []byte) (Record, error) {
	var r Record
	if err := json.Unmarshal(value, &r); err != nil {
		return Record{}, fmt.Errorf("not a certificate record: %w", err)
	}
	return r, nil
}

// Parse reads and checks a record from etcd: untrusted input, so a value
// that is not a usable certificate and key is an error saying why.
func Parse(key string, value []byte, now time.Time) (Cert, error) {
	r, err := Decode(value)
	if err != nil {
		return Cert{}, err
	}
	leaf, err := Check([]byte(r.Cert), []byte(r.Key), now)
	if err != nil {
		return Cert{}, err
	}
	return Cert{Record: r, EtcdKey: key, Name: key[strings.LastIndex(key, "/")+1:], Leaf: leaf}, nil
}

// ErrExpired is the error of a certificate past its NotAfter.
var ErrExpired = errors.New("expired")

// Check checks a certificate (PEM, its chain after it) and its private key:
// they must match, and the certificate must be valid now and name at least
// one DNS host. It returns the certificate.
func Check(certPEM, keyPEM []byte, now time.Time) (*x509.Certificate, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, err
	}
	switch {
	case now.After(leaf.NotAfter):
		return nil, fmt.Errorf("%w on %s", ErrExpired, leaf.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(leaf.NotBefore):
		return nil, fmt.Errorf("not valid before %s", leaf.NotBefore.UTC().Format(time.RFC3339))
	case len(leaf.DNSNames) == 0:
		return nil, errors.New("names no host (no DNS subjectAltName)")
	}
	return leaf, nil
}

// RenewAt is when a certificate valid from notBefore to notAfter is
// renewed: two thirds into its lifetime.
func RenewAt(leaf *x509.Certificate) time.Time {
	return leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) * 2 / 3)
}
