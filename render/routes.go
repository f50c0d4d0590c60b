package render

import (
	"slices"
	"sort"
	"strings"
	"time"
)

// Route says where a service is reached and how nginx proxies to it: the
// spec's routing and proxy settings of one service.
type Route struct {
	// Hosts are the host names the service answers (exact, or "*.suffix");
	// empty: any host.
	Hosts []string
	// PathPrefix is the path the service answers under ("/api", no
	// trailing slash); empty: every path. StripPrefix removes it before
	// the request goes to the backend.
	PathPrefix  string
	StripPrefix bool
	// ConnectTimeout is nginx's connect timeout to a backend (zero:
	// DefaultConnectTimeout); ReadTimeout and SendTimeout its proxy read
	// and send timeouts (zero: nginx's, 60 s).
	ConnectTimeout, ReadTimeout, SendTimeout time.Duration
	// MaxBodySize is client_max_body_size ("10m"; empty: nginx's, 1m).
	MaxBodySize string
	// Headers are added to every response of the service.
	Headers []Header
	// HTTPSRedirect sends plain-HTTP requests to HTTPS (with TLS).
	HTTPSRedirect bool
}

// Header is a response header.
type Header struct{ Name, Value string }

// Server is one nginx server block of the built-in template: the
// requests for its host names (none: the default server, for every other
// host), and where each path goes.
type Server struct {
	// Names are the server_name values; empty for the default server.
	Names []string
	// Locations route by path prefix, longest first; a request no
	// location matches gets a 404 (Fallback empty) or goes to Fallback.
	Locations []Location
	// Fallback is the service for the paths no location matches
	// ("" for a 404).
	Fallback string
	// Cert is the certificate the server presents over TLS (nil: no TLS).
	Cert *TLSCert
}

// Default reports whether s is the default server.
func (s Server) Default() bool { return len(s.Names) == 0 }

// Location is one path prefix of a server, routed to a service.
type Location struct {
	// Prefix is "/api" (the location is "/api/" and "= /api").
	Prefix  string
	Service string
	Strip   bool
}

// servers computes the server blocks: one per set of host names that
// route alike, then the default server. Only configured services route. A
// request goes to the service of its host and the longest prefix of its
// path; then to a service of any host with that prefix; then to the
// host's service without a prefix; then to fallback ("" for a 404). A
// service with neither hosts nor a prefix has no route of its own.
func servers(services []Service, fallback string) []Server {
	type route struct {
		prefix, service string
		strip           bool
	}
	byHost := map[string][]route{} // host ("" for any) → its routes
	for _, s := range services {
		if !s.Configured || len(s.Hosts) == 0 && s.PathPrefix == "" {
			continue // no route of its own: reached as fallback, or by a template of one's own
		}
		hosts := s.Hosts
		if len(hosts) == 0 {
			hosts = []string{""}
		}
		for _, h := range hosts {
			byHost[h] = append(byHost[h], route{prefix: s.PathPrefix, service: s.Name, strip: s.StripPrefix})
		}
	}
	build := func(rs []route, otherwise string) Server {
		var srv Server
		for _, r := range rs {
			if r.prefix == "" {
				srv.Fallback = r.service
				continue
			}
			srv.Locations = append(srv.Locations, Location{Prefix: r.prefix, Service: r.service, Strip: r.strip})
		}
		if srv.Fallback == "" {
			srv.Fallback = otherwise
		}
		sort.Slice(srv.Locations, func(i, j int) bool {
			a, b := srv.Locations[i].Prefix, srv.Locations[j].Prefix
			if len(a) != len(b) {
				return len(a) > len(b)
			}
			return a < b
		})
		return srv
	}
	// Hosts whose servers come out alike share one block.
	var out []Server
	hosts := make([]string, 0, len(byHost))
	for h := range byHost {
		if h != "" {
			hosts = append(hosts, h)
		}
	}
	sort.Strings(hosts)
	for _, h := range hosts {
		// What answers any host answers this one too, where this host
		// routes nothing of its own.
		rs := slices.Clone(byHost[h])
		for _, r := range byHost[""] {
			if !slices.ContainsFunc(byHost[h], func(o route) bool { return o.prefix == r.prefix }) {
				rs = append(rs, r)
			}
		}
		srv := build(rs, fallback)
		i := slices.IndexFunc(out, func(o Server) bool {
			return o.Fallback == srv.Fallback && slices.Equal(o.Locations, srv.Locations)
		})
		if i >= 0 {
			out[i].Names = append(out[i].Names, h)
			continue
		}
		srv.Names = []string{h}
		out = append(out, srv)
	}
	return append(out, build(byHost[""], fallback))
}

// RouteText describes the routes in a line each, for `upstreamd render`.
func RouteText(v View) []string {
	var lines []string
	for _, srv := range v.Servers {
		host := "any other host"
		if !srv.Default() {
			host = strings.Join(srv.Names, " ")
		}
		for _, l := range srv.Locations {
			strip := ""
			if l.Strip {
				strip = " (prefix stripped)"
			}
			lines = append(lines, host+" "+l.Prefix+"/… → "+l.Service+strip)
		}
		to := "404"
		if srv.Fallback != "" {
			to = srv.Fallback
		}
		lines = append(lines, host+" /… → "+to)
	}
	return lines
}

// Proxying is what a location of the built-in template needs of a
// service: the service, whether pools are dynamic, and whether the
// location's prefix is stripped (proxy_pass with a URI replaces it).
type Proxying struct {
	Service
	Dynamic bool
	Strip   bool
	// Redirect, when set, is where a plain request goes instead
	// ("https://$host"; the request URI is appended).
	Redirect string
}

// Proxying returns the service named name, as a location proxies to it.
func (v View) Proxying(name string, strip bool) Proxying {
	p := Proxying{Service: v.Service(name), Dynamic: v.Dynamic, Strip: strip}
	if p.HTTPSRedirect && v.TLS != nil {
		p.Redirect = v.TLS.Redirect()
	}
	return p
}
