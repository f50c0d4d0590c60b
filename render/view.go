// Package render turns the registrations in etcd into what nginx must
// serve, and makes it serve it.
//
// Everything that decides is pure: NewView groups a validated snapshot by
// service; Render executes a template (confd's functions, so the seed's
// templates work) on that View; Finish appends upstreamd's status server;
// PoolsBody is what the Lua balancer takes; plan says, from what is known
// of the proxy (proxyState), which steps a pass takes. The Controller is
// the one part that acts: it waits for a change of the registrations or
// of the proxy, debounces, and applies the plan through an nginx Session,
// then records in Served what nginx is known to serve. To change what a
// pass does, change plan and its table test; to change how it is done,
// change the nginx package.
package render

import (
	"fmt"
	"sort"
	"time"

	"github.com/upstreamd/upstreamd/store"
)

// Backend is one healthy backend, as the template sees it.
type Backend struct {
	Service   string
	Addr      string // host:port: what nginx dials (the key's last element)
	Host      string // the registration's host field (the backend's hostname)
	IPv4      string
	Port      int
	Container string
	Node      string
	Key       string
}

// Service is a named pool of backends.
type Service struct {
	Name     string
	Backends []Backend // sorted by Addr
	// Configured is true for the services of the spec, false for those
	// only found in etcd (another deployment's, in a shared etcd).
	Configured bool
	// ConnectTimeout is how long nginx waits for a connection to one of
	// its backends before it tries the next, in nginx's syntax ("100ms").
	ConnectTimeout string
	// Hosts, PathPrefix and StripPrefix are where the service is reached
	// (see Route); the built-in template routes by them (View.Servers).
	Hosts       []string
	PathPrefix  string
	StripPrefix bool
	// ReadTimeout and SendTimeout are nginx's proxy timeouts in its
	// syntax; empty: nginx's default. MaxBodySize is client_max_body_size
	// (empty: nginx's default). Headers are added to every response.
	ReadTimeout, SendTimeout string
	MaxBodySize              string
	Headers                  []Header
	// HTTPSRedirect: with TLS, plain requests get a redirect to HTTPS.
	HTTPSRedirect bool
}

// DefaultConnectTimeout is a service's connect timeout unless its spec
// says otherwise: a connection on a bridge or a LAN takes well under a
// millisecond, and a vanished container's address does not refuse, it
// hangs until this runs out.
const DefaultConnectTimeout = 100 * time.Millisecond

// nginxTime writes d in nginx's time syntax, in whole milliseconds.
func nginxTime(d time.Duration) string { return fmt.Sprintf("%dms", max(d.Milliseconds(), 1)) }

// View is the data a template renders from. It is built from one validated
// etcd snapshot, so every address in it has been checked.
type View struct {
	// Services lists every configured service in spec order, each possibly
	// without backends, then services found in etcd but not configured.
	Services []Service
	// Default is the service for the requests no route takes ("" for a
	// 404); with the seed's one service, everything.
	Default string
	// Servers are the server blocks of the built-in template, computed
	// from the services' routes: each host's, then the default server.
	Servers []Server
	// ServerNamesHash sizes nginx's server names hash for the Servers'
	// names; nil when nginx's defaults hold them.
	ServerNamesHash *NamesHash
	// TLS is what the proxy serves over TLS; nil: plain HTTP only.
	TLS *TLS
	// ACME is the directory (in the proxy) that HTTP-01 answers are
	// served from, under /.well-known/acme-challenge/; "": none.
	ACME string
	// Listen is the port nginx listens on inside the proxy container.
	Listen int
	// Dynamic says pools are pushed to nginx's Lua balancer at run time
	// instead of being rendered as server lines (no reload per change).
	Dynamic bool
	// StatusPort is the port of upstreamd's status server inside the proxy
	// (the pools API and the config hash); 0 when there is none.
	StatusPort int
	// Admin is the address the daemon reaches the proxy from: the only one
	// the pools API accepts. Empty when unknown (then the token alone
	// guards it).
	Admin string
	// KVs holds the validated keys and values for confd's functions.
	KVs map[string]string
}

// Service returns the named service; a service with no backends is returned
// empty, never nil.
func (v View) Service(name string) Service {
	for _, s := range v.Services {
		if s.Name == name {
			return s
		}
	}
	return Service{Name: name, Backends: []Backend{}, ConnectTimeout: nginxTime(DefaultConnectTimeout)}
}

// Backends returns the backends of the default service.
func (v View) Backends() []Backend { return v.Service(v.Default).Backends }

// ViewInput is what NewView builds a View from.
type ViewInput struct {
	// Snapshot is the validated content of the registrations prefix.
	Snapshot store.Snapshot
	// Projects are the projects whose registrations the View takes (see
	// store.InProjects); the others, in a shared etcd, are not seen at
	// all, not even by a template's confd functions.
	Projects []string
	// Services are the configured service names, in spec order.
	Services []string
	// Default is the service for the requests no route takes ("": 404).
	Default string
	// Listen is nginx's listen port.
	Listen int
	// Routes are the configured services' routes and proxy settings; a
	// service not in it answers every host and path (when Default) with
	// DefaultConnectTimeout.
	Routes map[string]Route
	// TLS, when it has certificates, adds a TLS listener to every server
	// block.
	TLS *TLS
	// ACME is copied to the View.
	ACME string
	// Dynamic, StatusPort and Admin are copied to the View.
	Dynamic    bool
	StatusPort int
	Admin      string
}

// NewView groups a snapshot's entries by service.
func NewView(in ViewInput) View {
	byService := map[string][]Backend{}
	kvs := make(map[string]string, len(in.Snapshot.Entries))
	for _, e := range in.Snapshot.Entries {
		if !store.InProjects(e.Reg.Project, in.Projects) {
			continue
		}
		kvs[e.Key] = e.Value
		byService[e.Service] = append(byService[e.Service], Backend{
			Service:   e.Service,
			Addr:      e.Addr,
			Host:      e.Reg.Host,
			IPv4:      e.Reg.IPv4,
			Port:      e.Reg.Port,
			Container: e.Reg.Container,
			Node:      e.Reg.Node,
			Key:       e.Key,
		})
	}
	if in.TLS != nil && len(in.TLS.Certs) == 0 {
		in.TLS = nil // none yet (ACME is ordering them): plain HTTP until then
	}
	v := View{Default: in.Default, Listen: in.Listen, Dynamic: in.Dynamic, StatusPort: in.StatusPort, Admin: in.Admin, KVs: kvs, ACME: in.ACME}
	seen := map[string]bool{}
	add := func(name string, configured bool) {
		if seen[name] {
			return
		}
		seen[name] = true
		bs := byService[name]
		if bs == nil {
			bs = []Backend{}
		}
		sort.Slice(bs, func(i, j int) bool { return bs[i].Addr < bs[j].Addr })
		r := in.Routes[name]
		if r.ConnectTimeout <= 0 {
			r.ConnectTimeout = DefaultConnectTimeout
		}
		v.Services = append(v.Services, Service{Name: name, Backends: bs, Configured: configured,
			ConnectTimeout: nginxTime(r.ConnectTimeout), ReadTimeout: optTime(r.ReadTimeout), SendTimeout: optTime(r.SendTimeout),
			Hosts: r.Hosts, PathPrefix: r.PathPrefix, StripPrefix: r.StripPrefix, MaxBodySize: r.MaxBodySize, Headers: r.Headers,
			HTTPSRedirect: r.HTTPSRedirect && in.TLS != nil})
	}
	for _, name := range in.Services {
		add(name, true)
	}
	extra := make([]string, 0, len(byService))
	for name := range byService {
		if !seen[name] {
			extra = append(extra, name)
		}
	}
	sort.Strings(extra)
	for _, name := range extra {
		add(name, false)
	}
	v.Servers = servers(v.Services, in.Default)
	v.ServerNamesHash = namesHash(v.Servers)
	if in.TLS != nil {
		v.TLS = in.TLS
		v.Servers = splitByCert(v.Servers, in.TLS)
	}
	return v
}

// optTime is d in nginx's syntax, or "" for zero.
func optTime(d time.Duration) string {
	if d <= 0 {
		return ""
	}
	return nginxTime(d)
}
