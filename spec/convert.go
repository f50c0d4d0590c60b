package spec

import (
	"maps"
	"net"
	"path"
	"slices"
	"strconv"

	"github.com/upstreamd/upstreamd/admin"
	"github.com/upstreamd/upstreamd/certs"
	"github.com/upstreamd/upstreamd/cluster"
	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/nginx"
	"github.com/upstreamd/upstreamd/orchestrator"
	"github.com/upstreamd/upstreamd/render"
	"github.com/upstreamd/upstreamd/store"
)

// The spec converts itself into each component's config: each method
// fills in what the spec says, and the daemon's wiring adds the adapters,
// loggers and callbacks. What the spec's files hold comes in as Files.

// OrchestratorSpec converts the spec to the orchestrator's desired state.
func (c *Spec) OrchestratorSpec() orchestrator.Spec {
	proxyLimits, _ := parseLimits(c.Project.Proxy.Memory, c.Project.Proxy.CPUs) // validated
	spec := orchestrator.Spec{
		Project: c.Project.Name,
		Network: c.Project.Network.Name,
		Node:    c.Node.Name,
		Prefix:  c.Project.Etcd.Prefix,
		// Validated: one of the two, with an address of this host.
		Advertise:   c.Project.Network.Advertise,
		NodeAddress: c.Node.Network.NodeAddress,
		Proxy: orchestrator.ProxySpec{
			Image:      c.Project.Proxy.Image,
			Publish:    c.Project.Proxy.Publish,
			PublishTLS: c.Project.Proxy.PublishTLS,
			Port:       c.Project.Proxy.Port,
			ConfigDir:  c.Project.Proxy.ConfigDir,
			ConfigPath: c.Project.Proxy.ConfigPath,
			Limits:     proxyLimits,
		},
	}
	for _, s := range c.Project.Service {
		limits, _ := parseLimits(s.Memory, s.CPUs) // validated
		maxPerNode := *s.MaxPerNode
		if maxPerNode >= cluster.MaxReplicas {
			maxPerNode = 0 // no bound
		}
		spec.Services = append(spec.Services, orchestrator.ServiceSpec{
			Name:       s.Name,
			Image:      s.Image,
			Replicas:   *s.Replicas,
			MaxPerNode: maxPerNode,
			Port:       s.Port,
			Env:        s.Env,
			Cmd:        s.Command,
			StopGrace:  s.StopGrace.D(),
			Restart:    s.Restart,
			Limits:     limits,
			Health: orchestrator.HealthSpec{
				Path:        s.Health.Path,
				Interval:    s.Health.Interval.D(),
				Timeout:     s.Health.Timeout.D(),
				Rise:        *s.Health.Rise,
				Fall:        *s.Health.Fall,
				StartPeriod: s.Health.StartPeriod.D(),
			},
		})
	}
	return spec
}

// OrchestratorConfig is the orchestrator's config, but its adapters.
func (c *Spec) OrchestratorConfig() orchestrator.Config {
	return orchestrator.Config{
		Spec:           c.OrchestratorSpec(),
		LeaseTTL:       c.Project.Etcd.LeaseTTL.D(),
		ProxyPlacement: c.Project.Proxy.Placement,
		ProxyAddress:   c.ProxyAddress(),
	}
}

// ProxyAddress is the proxy's public address as announced when this node
// leads: proxy.publish, with the node's address (or the host's name) where
// it publishes on every address.
func (c *Spec) ProxyAddress() string {
	host, port, err := containers.ParsePublish(c.Project.Proxy.Publish)
	if err != nil {
		return c.Project.Proxy.Publish
	}
	if anyAddress(host) {
		host = c.Node.Network.NodeAddress
		if host == "" {
			host = c.hostname
		}
	}
	return net.JoinHostPort(host, port)
}

// DockerConfig is the Docker client's config, but its logger.
func (c *Spec) DockerConfig() containers.Config {
	return containers.Config{Host: c.Node.Docker.Host, Timeout: c.Node.Docker.Timeout.D()}
}

// NginxConfig is the nginx driver's config, but its engine and logger.
func (c *Spec) NginxConfig() nginx.Config {
	return nginx.Config{
		ConfigPath: c.Project.Proxy.ConfigPath,
		MainPath:   c.Project.Proxy.MainConfig,
		StatusPort: *c.Project.Proxy.StatusPort,
	}
}

// ServesTLS reports whether the proxy serves TLS (proxy.publish_tls):
// the certificate files', and those in etcd.
func (c *Spec) ServesTLS() bool { return c.Project.Proxy.PublishTLS != "" }

// ViewInput is what the template's View is built from, but the snapshot.
func (c *Spec) ViewInput(f Files) render.ViewInput {
	routes := make(map[string]render.Route, len(c.Project.Service))
	for _, s := range c.Project.Service {
		routes[s.Name] = s.route()
	}
	in := render.ViewInput{
		Projects:   c.Projects(),
		Services:   c.ServiceNames(),
		Default:    c.Project.Proxy.Service,
		Listen:     c.Project.Proxy.Port,
		Routes:     routes,
		Dynamic:    *c.Project.Proxy.Dynamic,
		StatusPort: *c.Project.Proxy.StatusPort,
	}
	if c.ServesTLS() {
		in.TLS = c.tls(f)
		if c.acmeOn() {
			in.ACME = path.Join(c.Project.Proxy.ConfigDir, ACMEDir)
		}
	}
	return in
}

// tls is what the proxy serves over TLS from the certificate files.
func (c *Spec) tls(f Files) *render.TLS {
	t := &render.TLS{Port: orchestrator.TLSPort, PublicPort: 443}
	if _, port, err := containers.ParsePublish(c.Project.Proxy.PublishTLS); err == nil && port != "" {
		t.PublicPort, _ = strconv.Atoi(port)
	}
	for _, cert := range f.Certs {
		t.Certs = append(t.Certs, cert.TLSCert)
	}
	return t
}

// ControllerConfig is the render controller's config, but its template,
// adapters and callbacks.
func (c *Spec) ControllerConfig(f Files) render.ControllerConfig {
	return render.ControllerConfig{
		View:        c.ViewInput(f),
		ConfigDir:   c.Project.Proxy.ConfigDir,
		MinDebounce: c.Project.Proxy.DebounceMin.D(),
		MaxDebounce: c.Project.Proxy.DebounceMax.D(),
	}
}

// ACMEConfig is the ACME orderer's config, but its adapters and
// callbacks; ok is false without [acme].
func (c *Spec) ACMEConfig(f Files) (cfg certs.ManagerConfig, ok bool) {
	if !c.acmeOn() {
		return cfg, false
	}
	return certs.ManagerConfig{
		Project: c.Project.Name, Node: c.Node.Name,
		Directory: c.Project.ACME.Directory, Email: c.Project.ACME.Email,
		Roots: f.ACMERoots, Hosts: f.ACMEHosts,
	}, true
}

// AdminConfig is the admin listener's config, but its handlers' sources.
func (c *Spec) AdminConfig(f Files) admin.Config {
	return admin.Config{Token: f.AdminToken, Listen: c.Node.Admin.Listen}
}

// AdminListen is where the admin listener answers ("": off), and whether
// the spec says so (admin.listen, or the older metrics.listen): an address
// in use is then an error, not a line in the log.
func (c *Spec) AdminListen() (addr string, explicit bool) {
	return c.Node.Admin.Listen, c.written("admin.listen") || c.Node.Metrics.Listen != ""
}

// Projects lists the projects whose registrations fill the pools: this
// one and those it includes.
func (c *Spec) Projects() []string {
	return append([]string{c.Project.Name}, c.Project.Etcd.IncludeProjects...)
}

// ServiceNames lists the configured services in order.
func (c *Spec) ServiceNames() []string {
	out := make([]string, 0, len(c.Project.Service))
	for _, s := range c.Project.Service {
		out = append(out, s.Name)
	}
	return out
}

// StoreConfig is the etcd client's config.
func (c *Spec) StoreConfig(f Files) store.Config {
	e := c.Node.Etcd
	password := e.Password
	if e.PasswordFile != "" {
		password = f.EtcdPassword
	}
	return store.Config{
		Endpoints:   e.Endpoints,
		DialTimeout: e.DialTimeout.D(),
		Username:    e.Username,
		Password:    password,
		CAFile:      c.resolve(e.CAFile),
		CertFile:    c.resolve(e.CertFile),
		KeyFile:     c.resolve(e.KeyFile),
	}
}

// route is the service's render.Route.
func (s Service) route() render.Route {
	r := render.Route{Hosts: s.Hosts, PathPrefix: s.PathPrefix, StripPrefix: s.StripPrefix,
		ConnectTimeout: s.ConnectTimeout.D(), ReadTimeout: s.ReadTimeout.D(), SendTimeout: s.SendTimeout.D(),
		MaxBodySize: s.ClientMaxBodySize, HTTPSRedirect: s.HTTPSRedirect}
	for _, name := range slices.Sorted(maps.Keys(s.ResponseHeaders)) {
		r.Headers = append(r.Headers, render.Header{Name: name, Value: s.ResponseHeaders[name]})
	}
	return r
}
