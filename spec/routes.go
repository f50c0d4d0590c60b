package spec

import (
	"fmt"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"
)

// hostName is a host name a service answers: labels of letters, digits
// and hyphens, or a leading "*." for every subdomain (nginx's wildcard
// server_name).
var hostName = regexp.MustCompile(`^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// pathPrefix is "/seg/seg": letters, digits and . _ ~ - (nothing nginx's
// config syntax or a URI would treat specially), no trailing slash.
var pathPrefix = regexp.MustCompile(`^(/[A-Za-z0-9._~-]+)+$`)

// bodySize is nginx's size syntax: a number, optionally k or m (or g).
var bodySize = regexp.MustCompile(`^[0-9]{1,9}[kKmMgG]?$`)

// validateProxying checks the routing and proxy settings of service k.
func (s Service) validateProxying(k string, bad badFunc) {
	for j, h := range s.Hosts {
		switch {
		case len(h) > 253 || !hostName.MatchString(h):
			bad(fmt.Sprintf("%s.hosts[%d]", k, j), "%q is not a host name in lower case (a.example, or *.example for every subdomain)", h)
		case slices.Index(s.Hosts, h) < j:
			bad(fmt.Sprintf("%s.hosts[%d]", k, j), "%q is given twice", h)
		}
	}
	switch p := s.PathPrefix; {
	case len(p) > maxPathPrefix:
		bad(k+".path_prefix", "%d characters: at most %d", len(p), maxPathPrefix)
	case p != "" && (!pathPrefix.MatchString(p) || strings.Contains(p, "/./") || strings.Contains(p, "/../") || strings.HasSuffix(p, "/.") || strings.HasSuffix(p, "/..")):
		bad(k+".path_prefix", "%q is not a path prefix such as \"/api\" (segments of letters, digits and . _ ~ -; no trailing /, no . or .. segment)", p)
	}
	if s.StripPrefix && s.PathPrefix == "" {
		bad(k+".strip_prefix", "strips path_prefix, which is not set")
	}
	for _, t := range []struct {
		key string
		d   time.Duration
	}{{"read_timeout", s.ReadTimeout.D()}, {"send_timeout", s.SendTimeout.D()}} {
		if t.d != 0 && (t.d < time.Second || t.d > 24*time.Hour || t.d%time.Millisecond != 0) {
			bad(k+"."+t.key, "%s out of range 1s-24h (whole milliseconds; \"0s\": nginx's 60s)", t.d)
		}
	}
	if b := s.ClientMaxBodySize; b != "" && !bodySize.MatchString(b) {
		bad(k+".client_max_body_size", "%q is not a size in nginx's syntax such as \"10m\", \"512k\" or \"0\" (no limit)", b)
	}
	s.validateHeaders(k, bad)
}

// Lengths nginx reads: a parameter of its config takes at most about 4
// KB, and a location is the prefix and a slash.
const (
	maxPathPrefix  = 1024
	maxHeaderName  = 256
	maxHeaderValue = 4000
)

// validateHeaders checks the response headers of service k, in name
// order, so that of two names differing in case the second is the one
// said.
func (s Service) validateHeaders(k string, bad badFunc) {
	seen := map[string]string{} // lower-case name → the name as written
	for _, name := range slices.Sorted(maps.Keys(s.ResponseHeaders)) {
		value := s.ResponseHeaders[name]
		key := fmt.Sprintf("%s.response_headers.%s", k, name)
		if first, ok := seen[strings.ToLower(name)]; ok {
			bad(key, "the same header as %s (header names are case-insensitive): keep one", first)
			continue
		}
		seen[strings.ToLower(name)] = name
		switch {
		case name == "" || strings.ContainsFunc(name, func(r rune) bool { return r != '-' && !isAlnum(r) }):
			bad(key, "%q is not a header name (letters, digits and -)", name)
		case len(name) > maxHeaderName:
			bad(key, "a name of %d characters: at most %d", len(name), maxHeaderName)
		case http.CanonicalHeaderKey(name) == "Content-Length" || http.CanonicalHeaderKey(name) == "Transfer-Encoding" || http.CanonicalHeaderKey(name) == "Connection":
			bad(key, "%s is nginx's to set", name)
		case value == "" || strings.ContainsAny(value, "\"\\") || strings.ContainsFunc(value, func(r rune) bool { return r < 0x20 || r == 0x7f }):
			bad(key, "%q: a value must be non-empty, without quotes, backslashes or control characters ($name is an nginx variable)", value)
		case len(value) > maxHeaderValue:
			bad(key, "a value of %d bytes: at most %d", len(value), maxHeaderValue)
		default:
			if err := checkVariables(value); err != nil {
				bad(key, "%q: %v", value, err)
			}
		}
	}
}

func isAlnum(r rune) bool {
	return r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z'
}

// validateRoutes checks that no two services claim one host and path, and
// that the default service is one the routes leave something to.
func (c *Spec) validateRoutes(bad badFunc) {
	owner := map[string]string{} // host + " " + prefix → service
	for i, s := range c.Project.Service {
		hosts := s.Hosts
		if len(hosts) == 0 {
			if s.PathPrefix == "" {
				continue // reached as the default service, or by a template of one's own
			}
			hosts = []string{""}
		}
		for _, h := range hosts {
			route := h + " " + s.PathPrefix
			if other, ok := owner[route]; ok && other != s.Name {
				where := "every host"
				if h != "" {
					where = "host " + h
				}
				path := s.PathPrefix
				if path == "" {
					path = "/"
				}
				bad(fmt.Sprintf("service[%d]", i), "%s and %s both route %s of %s: give one of them another host or path_prefix", other, s.Name, path, where)
				continue
			}
			owner[route] = s.Name
		}
	}
}
