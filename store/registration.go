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
	"crypto/sha256"
	"encoding/hex"
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

// MaxValueSize bounds a registration value; anything larger is skipped.
const MaxValueSize = 4096

// ErrInvalid marks a key or value that is not a valid registration.
var ErrInvalid = errors.New("invalid registration")

// Registration is the JSON value of a service key: the seed secretary's
// fields (host, ipv4_addr, port) plus the container, the node that owns it
// and the project it belongs to. Projects sharing an etcd are kept apart by
// Project: a daemon's pools take only its own project's registrations
// unless it is told to share (see InProjects). A registration without a
// project was written by another tool (or an older upstreamd).
type Registration struct {
	Host      string `json:"host"`
	IPv4      string `json:"ipv4_addr"`
	Port      int    `json:"port"`
	Container string `json:"container"`
	Node      string `json:"node"`
	Project   string `json:"project,omitempty"`
}

// AnyProject in a list of projects takes every registration, those
// without a project included.
const AnyProject = "*"

// InProjects says whether a registration of project belongs to the pools
// of a daemon that takes the given projects: AnyProject takes all; a
// registration without a project belongs to no project but AnyProject's.
func InProjects(project string, projects []string) bool {
	for _, p := range projects {
		if p == AnyProject || p == project && project != "" {
			return true
		}
	}
	return false
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

// ParseEntry validates a key and value read from etcd. The key must be
// <prefix>/<service>/<ip:port>, with a service name ValidName accepts and
// an address ParseAddr accepts; the value must be a JSON object of at most
// MaxValueSize bytes with only the Registration's fields, each at most once
// and spelled exactly, well formed. The Entry carries the value in its
// canonical form (Registration.Encode), never the bytes read: templates
// see only what passed. The error says which part is wrong.
func ParseEntry(prefix, key string, value []byte) (Entry, error) {
	p := strings.TrimSuffix(prefix, "/") + "/"
	rest, ok := strings.CutPrefix(key, p)
	if !ok {
		return Entry{}, fmt.Errorf("%w: key %q is not under %s", ErrInvalid, clip(key), p)
	}
	service, addr, ok := strings.Cut(rest, "/")
	if !ok || strings.Contains(addr, "/") {
		return Entry{}, fmt.Errorf("%w: key %q is not %s<service>/<ip:port>", ErrInvalid, clip(key), p)
	}
	if err := ValidName(service); err != nil {
		return Entry{}, fmt.Errorf("%w: key %q: service %w", ErrInvalid, clip(key), err)
	}
	if _, _, err := ParseAddr(addr); err != nil {
		return Entry{}, fmt.Errorf("%w: key %q: %w", ErrInvalid, clip(key), err)
	}
	reg, err := decodeRegistration(value)
	if err != nil {
		return Entry{}, fmt.Errorf("%w: key %q: %w", ErrInvalid, clip(key), err)
	}
	return Entry{Key: key, Service: service, Addr: addr, Reg: reg, Value: reg.Encode()}, nil
}

// registrationFields are the JSON names of Registration's fields.
var registrationFields = map[string]bool{"host": true, "ipv4_addr": true, "port": true, "container": true, "node": true, "project": true}

// decodeRegistration parses a registration value strictly: encoding/json
// alone matches names case-insensitively and keeps the last of duplicate
// names, so {"ipv4_addr":"<payload>","IPV4_ADDR":"1.2.3.4"} would pass.
func decodeRegistration(value []byte) (Registration, error) {
	if len(value) > MaxValueSize {
		return Registration{}, fmt.Errorf("value of %d bytes exceeds %d", len(value), MaxValueSize)
	}
	dec := json.NewDecoder(bytes.NewReader(value))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return Registration{}, errors.New("value is not registration JSON: not an object")
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return Registration{}, fmt.Errorf("value is not registration JSON: %w", err)
		}
		name, _ := tok.(string)
		switch {
		case !registrationFields[name]:
			return Registration{}, fmt.Errorf("value is not registration JSON: unknown field %q", clip(name))
		case seen[name]:
			return Registration{}, fmt.Errorf("value is not registration JSON: field %q twice", name)
		}
		seen[name] = true
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return Registration{}, fmt.Errorf("value is not registration JSON: %w", err)
		}
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return Registration{}, fmt.Errorf("value is not registration JSON: %w", err)
	}
	// Only JSON whitespace may follow. (Decoder.More is not enough: it
	// reports false before a stray '}' or ']'.)
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Registration{}, errors.New("value has trailing data")
	}
	// The names are exact and unique: the usual decoder is safe now.
	var reg Registration
	strict := json.NewDecoder(bytes.NewReader(value))
	strict.DisallowUnknownFields()
	if err := strict.Decode(&reg); err != nil {
		return Registration{}, fmt.Errorf("value is not registration JSON: %w", err)
	}
	return reg, reg.validate()
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
	if r.Project != "" && !isToken(r.Project) {
		return fmt.Errorf("project %q has characters outside [A-Za-z0-9_.-]", clip(r.Project))
	}
	return nil
}

// ParseAddr validates ip:port as nginx and the Lua balancer will dial it:
// an IPv4 address, or an IPv6 address in brackets, in canonical form (as
// netip prints it: no leading zeros, no IPv4-mapped IPv6, lowercase hex,
// "::" where it belongs), then a decimal port in 1..65535 without leading
// zeros. Host names are refused: nginx resolves them at `nginx -t` time,
// where one name it cannot resolve would fail every config, and the Lua
// balancer cannot dial them. Loopback, unspecified, multicast and
// link-local addresses are refused too: inside the proxy they would reach
// the proxy itself or nothing.
func ParseAddr(addr string) (host string, port int, err error) {
	if len(addr) > 64 || !utf8.ValidString(addr) {
		return "", 0, fmt.Errorf("address %q is too long or not UTF-8", clip(addr))
	}
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("address %q is not ip:port", clip(addr))
	}
	if p == "" || len(p) > 5 || strings.TrimLeft(p, "0123456789") != "" {
		return "", 0, fmt.Errorf("address %q: port %q is not a number", clip(addr), clip(p))
	}
	n, err := strconv.Atoi(p)
	if err != nil || n < 1 || n > 65535 {
		return "", 0, fmt.Errorf("address %q: port %s out of range 1-65535", clip(addr), p)
	}
	a, err := netip.ParseAddr(h)
	switch {
	case err != nil:
		return "", 0, fmt.Errorf("address %q: %q is not an IP address (host names are not accepted)", clip(addr), clip(h))
	case a.Zone() != "":
		return "", 0, fmt.Errorf("address %q: %q has a zone", clip(addr), clip(h))
	case a.Is4In6():
		return "", 0, fmt.Errorf("address %q: IPv4-mapped IPv6; register %s", clip(addr), netip.AddrPortFrom(a.Unmap(), uint16(n)))
	case a.IsLoopback(), a.IsUnspecified(), a.IsMulticast(), a.IsLinkLocalUnicast(), a.IsInterfaceLocalMulticast():
		return "", 0, fmt.Errorf("address %q: %s is not an address a backend can have (loopback, unspecified, multicast or link-local)", clip(addr), a)
	}
	if canon := netip.AddrPortFrom(a, uint16(n)).String(); canon != addr {
		return "", 0, fmt.Errorf("address %q is not in canonical form %s", clip(addr), canon)
	}
	return a.String(), n, nil
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

// HostLabel turns a container name into the host name the container gets
// and its registration's host field carries: one RFC 1123 label. Letters
// are lowercased, anything outside [a-z0-9-] (the "_" and "." names may
// have) becomes "-", and a name longer than 63 bytes keeps its first 54
// and a hash of the whole, so distinct names stay distinct.
func HostLabel(name string) string {
	b := []byte(strings.ToLower(name))
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			b[i] = '-'
		}
	}
	label := strings.Trim(string(b), "-")
	if len(label) > 63 {
		sum := sha256.Sum256([]byte(name))
		label = strings.TrimRight(label[:54], "-") + "-" + hex.EncodeToString(sum[:4])
	}
	if label == "" {
		return "x"
	}
	return label
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
