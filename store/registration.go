// Package store is upstreamd's only speaker of the etcd v3 API.
//
// It owns the key layout (/services/<service>/<host:port> → JSON), the
// validation of everything read back (etcd is shared, so every key and value
// is untrusted: ParseEntry is the one parser), leases, and Watch: the one
// list-then-watch of a prefix, which survives outages and compactions by
// listing again. Cache keeps a validated copy of the registrations on top
// of Watch; the renderer and the registrar share one. Every request carries
// its own deadline.
package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"unicode/utf8"
)

// DefaultPrefix is where registrations live, as in the seed (/services/apache/…).
const DefaultPrefix = "/services"

// MaxValueSize bounds a registration value; anything larger is skipped.
const MaxValueSize = 4096

// ErrInvalid marks a key or value that is not a valid registration.
var ErrInvalid = errors.New("invalid registration")

// Registration is the JSON value of a service key: the seed secretary's
// fields (host, ipv4_addr, port) plus the container and the node that owns it.
type Registration struct {
	Host      string `json:"host"`
	IPv4      string `json:"ipv4_addr"`
	Port      int    `json:"port"`
	Container string `json:"container"`
	Node      string `json:"node"`
}

// Encode returns the JSON value written to etcd.
func (r Registration) Encode() string {
	b, err := json.Marshal(r)
	if err != nil { // a struct of strings and an int always marshals
		panic(err)
	}
	return string(b)
}

// Entry is one validated registration read from etcd.
type Entry struct {
	Key     string // full key, e.g. /services/apache/172.18.0.3:80
	Service string // e.g. apache
	Addr    string // host:port, the key's last element: what nginx dials
	Reg     Registration
	Value   string // the raw value, already validated
	Lease   int64
}

// ServiceKey returns the key of addr in service under prefix.
func ServiceKey(prefix, service, addr string) string {
	return strings.TrimSuffix(prefix, "/") + "/" + service + "/" + addr
}

// ServicePrefix returns the prefix of all keys of service.
func ServicePrefix(prefix, service string) string {
	return strings.TrimSuffix(prefix, "/") + "/" + service + "/"
}

// KeysPrefix returns what every registration key under prefix starts
// with: prefix and a slash. Read and watch this range, not prefix alone:
// that would also cover unrelated keys (/servicesx…), which an etcd role
// granted only "/services/" may not read.
func KeysPrefix(prefix string) string {
	return strings.TrimSuffix(prefix, "/") + "/"
}

// ParseEntry validates a key and value read from etcd. The key must be
// <prefix>/<service>/<host:port>, with a service name of [a-z0-9_.-] and an
// address that ParseAddr accepts; the value must be a Registration in JSON
// of at most MaxValueSize bytes whose fields are well formed. The error says
// which part is wrong.
func ParseEntry(prefix, key string, value []byte) (Entry, error) {
	p := strings.TrimSuffix(prefix, "/") + "/"
	rest, ok := strings.CutPrefix(key, p)
	if !ok {
		return Entry{}, fmt.Errorf("%w: key %q is not under %s", ErrInvalid, clip(key), p)
	}
	service, addr, ok := strings.Cut(rest, "/")
	if !ok || strings.Contains(addr, "/") {
		return Entry{}, fmt.Errorf("%w: key %q is not %s<service>/<host:port>", ErrInvalid, clip(key), p)
	}
	if err := ValidName(service); err != nil {
		return Entry{}, fmt.Errorf("%w: key %q: service %w", ErrInvalid, clip(key), err)
	}
	if _, _, err := ParseAddr(addr); err != nil {
		return Entry{}, fmt.Errorf("%w: key %q: %w", ErrInvalid, clip(key), err)
	}
	if len(value) > MaxValueSize {
		return Entry{}, fmt.Errorf("%w: key %q: value of %d bytes exceeds %d", ErrInvalid, clip(key), len(value), MaxValueSize)
	}
	var reg Registration
	dec := json.NewDecoder(bytes.NewReader(value))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&reg); err != nil {
		return Entry{}, fmt.Errorf("%w: key %q: value is not registration JSON: %w", ErrInvalid, clip(key), err)
	}
	// Only JSON whitespace may follow. (Decoder.More is not enough: it
	// reports false before a stray '}' or ']'.)
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Entry{}, fmt.Errorf("%w: key %q: value has trailing data", ErrInvalid, clip(key))
	}
	if err := reg.validate(); err != nil {
		return Entry{}, fmt.Errorf("%w: key %q: %w", ErrInvalid, clip(key), err)
	}
	return Entry{Key: key, Service: service, Addr: addr, Reg: reg, Value: string(value)}, nil
}

func (r Registration) validate() error {
	if r.Host != "" {
		if err := validHostname(r.Host); err != nil {
			return fmt.Errorf("host: %w", err)
		}
	}
	if r.IPv4 != "" {
		a, err := netip.ParseAddr(r.IPv4)
		if err != nil || !a.Is4() {
			return fmt.Errorf("ipv4_addr %q is not an IPv4 address", clip(r.IPv4))
		}
	}
	if r.Port < 0 || r.Port > 65535 {
		return fmt.Errorf("port %d out of range", r.Port)
	}
	if r.Container != "" && !isToken(r.Container) {
		return fmt.Errorf("container %q has characters outside [A-Za-z0-9_.-]", clip(r.Container))
	}
	if r.Node != "" && !isToken(r.Node) {
		return fmt.Errorf("node %q has characters outside [A-Za-z0-9_.-]", clip(r.Node))
	}
	return nil
}

// ParseAddr validates host:port as nginx will dial it: an IPv4 address, an
// IPv6 address in brackets, or a DNS name, then a decimal port in 1..65535.
// Anything else (spaces, semicolons, braces, quotes, newlines, signs,
// unbracketed IPv6) is refused.
func ParseAddr(addr string) (host string, port int, err error) {
	if len(addr) > 261 || !utf8.ValidString(addr) {
		return "", 0, fmt.Errorf("address %q is too long or not UTF-8", clip(addr))
	}
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("address %q is not host:port", clip(addr))
	}
	if p == "" || len(p) > 5 || strings.TrimLeft(p, "0123456789") != "" {
		return "", 0, fmt.Errorf("address %q: port %q is not a number", clip(addr), clip(p))
	}
	n, err := strconv.Atoi(p)
	if err != nil || n < 1 || n > 65535 {
		return "", 0, fmt.Errorf("address %q: port %s out of range 1-65535", clip(addr), p)
	}
	if strings.HasPrefix(addr, "[") { // bracketed: must be IPv6
		a, err := netip.ParseAddr(h)
		if err != nil || !a.Is6() || a.Zone() != "" {
			return "", 0, fmt.Errorf("address %q: %q is not an IPv6 address", clip(addr), clip(h))
		}
		return h, n, nil
	}
	if a, err := netip.ParseAddr(h); err == nil {
		if !a.Is4() {
			return "", 0, fmt.Errorf("address %q: IPv6 must be in brackets", clip(addr))
		}
		return h, n, nil
	}
	if err := validHostname(h); err != nil {
		return "", 0, fmt.Errorf("address %q: %w", clip(addr), err)
	}
	return h, n, nil
}

// validHostname accepts RFC 1123 host names: dot-separated labels of
// letters, digits and inner hyphens, each at most 63 bytes, 253 in all.
func validHostname(h string) error {
	if h == "" || len(h) > 253 {
		return fmt.Errorf("host name %q is empty or too long", clip(h))
	}
	for _, label := range strings.Split(strings.TrimSuffix(h, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("host name %q has an invalid label", clip(h))
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("host name %q has a character outside [A-Za-z0-9.-]", clip(h))
			}
		}
	}
	return nil
}

// ValidName checks a service or project name: 1-63 characters of
// [a-z0-9_.-], starting with a letter or digit. Such names are safe in etcd
// keys, Docker names and nginx upstream names.
func ValidName(s string) error {
	if s == "" || len(s) > 63 {
		return fmt.Errorf("name %q must be 1-63 characters", clip(s))
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' {
			continue
		}
		if i > 0 && (c == '_' || c == '-' || c == '.') {
			continue
		}
		return fmt.Errorf("name %q: only lowercase letters, digits and _.- (not first) are allowed", clip(s))
	}
	return nil
}

func isToken(s string) bool {
	if len(s) > 253 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// clip shortens untrusted text for log and error messages.
func clip(s string) string {
	const max = 120
	if len(s) <= max {
		return s
	}
	return s[:max] + "…"
}
