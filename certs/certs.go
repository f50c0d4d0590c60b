// Package certs keeps the proxy's TLS certificates in etcd and orders them
// from an ACME CA.
//
// Certificates live under /upstreamd/<project>/certs/ (store/keys.go lays
// out every key): every node and every newly elected proxy reads them from
// there, so a certificate is ordered once per project, not once per proxy. A Cache watches that prefix (the
// certificates, checked like any input read from etcd; the HTTP-01
// answers the proxies serve, and each node's acknowledgement that its
// proxy does; the hosts whose orders failed); the Manager orders what is
// missing or due, one node at a time under an etcd lock, and an Acker on
// each node acknowledges the answers. An operator's own certificates
// can be kept there too (`upstreamd certs import`).
package certs

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode"

	"github.com/upstreamd/upstreamd/store"
)

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
func (r Record) Encode() string { return encode(r) }

// encode is v as JSON: the records are strings, numbers and times, which
// cannot fail to encode.
func encode(v any) string {
	b, _ := json.Marshal(v)
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

// Read reads a record from etcd and checks what does not change with
// time: untrusted input, so a value that is not a certificate and its key
// naming a host is an error saying why. Whether it is valid now is
// ValidAt's to say.
func Read(key string, value []byte) (Cert, error) {
	r, err := Decode(value)
	if err != nil {
		return Cert{}, err
	}
	leaf, err := checkPair([]byte(r.Cert), []byte(r.Key))
	if err != nil {
		return Cert{}, err
	}
	return Cert{Record: r, EtcdKey: key, Name: key[strings.LastIndex(key, "/")+1:], Leaf: leaf}, nil
}

// Parse reads a record from etcd (Read) that must be valid at now.
func Parse(key string, value []byte, now time.Time) (Cert, error) {
	c, err := Read(key, value)
	if err != nil {
		return Cert{}, err
	}
	if err := ValidAt(c.Leaf, now); err != nil {
		return Cert{}, err
	}
	return c, nil
}

// Errors of a certificate outside its validity, checked with errors.Is.
var (
	// ErrExpired: past its NotAfter.
	ErrExpired = errors.New("expired")
	// ErrNotYetValid: before its NotBefore, by more than Skew.
	ErrNotYetValid = errors.New("not valid before")
)

// Skew is how far a certificate's NotBefore may lie ahead of this node's
// clock for it to count as valid: a CA whose clock is a little ahead
// issues certificates that start a little in the future, and a client's
// clock is no closer to the CA's than this node's.
const Skew = 5 * time.Minute

// Check checks a certificate (PEM, its chain after it) and its private key:
// they must match, and the certificate must name at least one DNS host
// and be valid at now (ValidAt). It returns the certificate.
func Check(certPEM, keyPEM []byte, now time.Time) (*x509.Certificate, error) {
	leaf, err := checkPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	if err := ValidAt(leaf, now); err != nil {
		return nil, err
	}
	return leaf, nil
}

// checkPair is Check without the time.
func checkPair(certPEM, keyPEM []byte) (*x509.Certificate, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, err
	}
	if len(leaf.DNSNames) == 0 {
		return nil, errors.New("names no host (no DNS subjectAltName)")
	}
	return leaf, nil
}

// ValidAt says whether leaf is valid at now: an error matching ErrExpired
// after its NotAfter, ErrNotYetValid more than Skew before its NotBefore.
func ValidAt(leaf *x509.Certificate, now time.Time) error {
	switch {
	case now.After(leaf.NotAfter):
		return fmt.Errorf("%w on %s", ErrExpired, leaf.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(leaf.NotBefore.Add(-Skew)):
		return fmt.Errorf("%w %s", ErrNotYetValid, leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

// validity is when leaf changes from not yet valid to valid, or from valid
// to expired, next after now (ValidAt's boundaries); ok is false when it
// has expired and never changes again.
func validity(leaf *x509.Certificate, now time.Time) (next time.Time, ok bool) {
	if from := leaf.NotBefore.Add(-Skew); now.Before(from) {
		return from, true
	}
	if until := leaf.NotAfter.Add(time.Nanosecond); now.Before(until) {
		return until, true
	}
	return time.Time{}, false
}

// RenewAt is when a certificate valid from notBefore to notAfter is
// renewed: two thirds into its lifetime.
func RenewAt(leaf *x509.Certificate) time.Time {
	return leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) * 2 / 3)
}

// Failure is a host's run of failed orders, as kept in etcd (JSON) under
// FailureKey for the whole project.
type Failure struct {
	// Count is how many orders of the host failed in a row; Next is when
	// it is tried again.
	Count int       `json:"count"`
	Next  time.Time `json:"next"`
	// Err is why the last one failed; Node is the node that tried, at At.
	Err  string    `json:"error"`
	Node string    `json:"node,omitempty"`
	At   time.Time `json:"at"`
}

// Encode is the failure's value in etcd.
func (f Failure) Encode() string { return encode(f) }

// maxFailures bounds Count as read from etcd; maxFailureErr the reason's
// length kept.
const (
	maxFailures   = 1 << 20
	maxFailureErr = 1000
)

// hostRE is what a host name kept under a key is made of.
var hostRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$`)

// ParseFailure reads the failure of host (what follows
// store.ACMEFailuresPrefix in its key) from etcd: untrusted input, so a
// value that is not one is an error saying why. The reason is made
// printable.
func ParseFailure(host string, value []byte) (Failure, error) {
	if !hostRE.MatchString(host) {
		return Failure{}, fmt.Errorf("%q is not a host name", clip(host))
	}
	var f Failure
	if err := json.Unmarshal(value, &f); err != nil {
		return Failure{}, fmt.Errorf("not a failure record: %w", err)
	}
	switch {
	case f.Count < 1 || f.Count > maxFailures:
		return Failure{}, fmt.Errorf("count %d is not 1-%d", f.Count, maxFailures)
	case f.Next.IsZero() || f.At.IsZero():
		return Failure{}, errors.New("no next try or no time of failure")
	case f.Node != "" && store.ValidName(f.Node) != nil:
		return Failure{}, fmt.Errorf("node: %w", store.ValidName(f.Node))
	}
	f.Err = printable(f.Err, maxFailureErr)
	return f, nil
}

// printable is s as valid UTF-8 without control characters, at most n
// bytes long.
func printable(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "?"))
	if len(s) > n {
		s = strings.ToValidUTF8(s[:n], "") + "…"
	}
	return s
}
