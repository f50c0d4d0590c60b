package spec

import (
	"fmt"
	"math"
	"net"
	"path"
	"strconv"
	"strings"
	"time"

	units "github.com/docker/go-units"

	"github.com/upstreamd/upstreamd/admin"
	"github.com/upstreamd/upstreamd/cluster"
	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/orchestrator"
	"github.com/upstreamd/upstreamd/store"
)

// validate checks every value against the text and host, and reads no
// file: each error names the file, the line, the key and why. Every error
// is reported, not only the first.
func (c *Spec) validate(host Host) []error {
	var errs []error
	bad := c.reporter(&errs)
	c.validateGlobal(bad)
	c.validateProxy(bad)
	c.validateNetwork(bad, host.Addrs)
	if len(c.Project.Service) == 0 {
		bad("service", "no service: give at least one [[service]]")
	}
	seen := map[string]bool{}
	for i, s := range c.Project.Service {
		s.validate(fmt.Sprintf("service[%d]", i), seen, bad)
	}
	if c.Project.Proxy.Service != "" && !seen[c.Project.Proxy.Service] && len(c.Project.Service) > 0 {
		bad("proxy.service", "%q is not a configured service", c.Project.Proxy.Service)
	}
	c.validateRoutes(bad)
	c.validateTLS(bad)
	return errs
}

// badFunc records one invalid value: the key's path (proxy.port,
// service[1].health.rise) and why.
type badFunc func(path, format string, args ...any)

// reporter returns the badFunc that adds to errs: the message names the
// file, where path is in it and the key, "(not set)" when the file leaves
// it out; a key dropped for its type is not reported again.
func (c *Spec) reporter(errs *[]error) badFunc {
	return func(path, format string, args ...any) {
		if c.dropped(path) {
			return // its type was wrong: said already
		}
		key := c.display(path)
		if !c.written(path) && c.file != noFile {
			key += " (not set)"
		}
		*errs = append(*errs, c.errorAt(path, key+": "+fmt.Sprintf(format, args...)))
	}
}

// dropped reports whether path, or a table it is in, was dropped for
// having the wrong type.
func (c *Spec) dropped(path string) bool {
	for p := range c.droppedKeys {
		if path == p || strings.HasPrefix(path, p+".") || strings.HasPrefix(path, p+"[") {
			return true
		}
	}
	return false
}

// display names path for a message: a service's index gets its name.
func (c *Spec) display(path string) string {
	rest, ok := strings.CutPrefix(path, "service[")
	if !ok {
		return path
	}
	idx, tail, _ := strings.Cut(rest, "]")
	if i, err := strconv.Atoi(idx); err == nil && i < len(c.Project.Service) && c.Project.Service[i].Name != "" {
		return fmt.Sprintf("service[%d] (%s)%s", i, c.Project.Service[i].Name, tail)
	}
	return path
}

// validateGlobal checks the keys outside [proxy] and [[service]].
func (c *Spec) validateGlobal(bad badFunc) {
	if err := store.ValidName(c.Project.Name); err != nil {
		bad("project", "%v", err)
	}
	if err := store.ValidName(c.Node.Name); err != nil {
		bad("node", "%v", err)
	}
	if err := store.ValidName(c.Project.Network.Name); err != nil && (c.written("network.name") || store.ValidName(c.Project.Name) == nil) {
		bad("network.name", "%v", err)
	}
	for i, e := range c.Node.Etcd.Endpoints {
		if !strings.HasPrefix(e, "http://") && !strings.HasPrefix(e, "https://") {
			bad(fmt.Sprintf("etcd.endpoints[%d]", i), "%q must start with http:// or https://", e)
		}
	}
	for i, p := range c.Project.Etcd.IncludeProjects {
		if p == store.AnyProject {
			continue
		}
		if err := store.ValidName(p); err != nil {
			bad(fmt.Sprintf("etcd.include_projects[%d]", i), "%v (or \"*\" for every project)", err)
		}
	}
	if !strings.HasPrefix(c.Project.Etcd.Prefix, "/") || strings.HasSuffix(c.Project.Etcd.Prefix, "/") && c.Project.Etcd.Prefix != "/" {
		bad("etcd.prefix", "%q must start with / and not end with /", c.Project.Etcd.Prefix)
	}
	if c.Project.Etcd.LeaseTTL.D() < 2*time.Second || c.Project.Etcd.LeaseTTL.D() > time.Hour {
		bad("etcd.lease_ttl", "%s out of range 2s-1h", c.Project.Etcd.LeaseTTL.D())
	}
	if c.Node.Etcd.Password != "" && c.Node.Etcd.PasswordFile != "" {
		bad("etcd.password_file", "give password or password_file, not both")
	}
	if (c.Node.Etcd.Password != "" || c.Node.Etcd.PasswordFile != "") && c.Node.Etcd.Username == "" {
		bad("etcd.username", "required when a password is set")
	}
	if (c.Node.Etcd.CertFile == "") != (c.Node.Etcd.KeyFile == "") {
		bad("etcd.cert_file", "cert_file and key_file must be given together")
	}
	if c.Node.Metrics.Listen != "" {
		if _, port, err := net.SplitHostPort(c.Node.Metrics.Listen); err != nil || port == "" {
			bad("metrics.listen", "%q is not host:port (such as 127.0.0.1:9180)", c.Node.Metrics.Listen)
		}
		if c.written("admin.listen") {
			bad("metrics.listen", "replaced by admin.listen, which serves /metrics too: remove [metrics]")
		}
	}
	if c.Node.Admin.Listen != "" {
		if _, port, err := net.SplitHostPort(c.Node.Admin.Listen); err != nil || port == "" {
			bad("admin.listen", "%q is not host:port (such as 127.0.0.1:9180); \"\" turns the admin listener off", c.Node.Admin.Listen)
		} else if !admin.IsLoopback(c.Node.Admin.Listen) && c.Node.Admin.TokenFile == "" {
			bad("admin.listen", "%q is reachable from other hosts: set admin.token_file to a file holding the token every request must carry (or listen on 127.0.0.1)", c.Node.Admin.Listen)
		}
	}
	if d := c.Node.Etcd.DialTimeout.D(); d < 100*time.Millisecond || d > 5*time.Minute {
		bad("etcd.dial_timeout", "%s out of range 100ms-5m", d)
	}
	if c.Node.Docker.Timeout.D() <= 0 {
		bad("docker.timeout", "must be positive")
	}
}

// validateProxy checks [proxy].
func (c *Spec) validateProxy(bad badFunc) {
	p := c.Project.Proxy
	if p.Image == "" {
		bad("proxy.image", "must not be empty")
	}
	if _, _, err := containers.ParsePublish(p.Publish); err != nil {
		bad("proxy.publish", "%v", err)
	}
	switch p.Placement {
	case orchestrator.PlacementEvery, orchestrator.PlacementLeader:
	default:
		bad("proxy.placement", "%q is not %q or %q", p.Placement, orchestrator.PlacementEvery, orchestrator.PlacementLeader)
	}
	if p.Port < 1 || p.Port > 65535 {
		bad("proxy.port", "%d out of range 1-65535", p.Port)
	}
	if sp := *p.StatusPort; sp < 0 || sp > 65535 || sp == p.Port {
		bad("proxy.status_port", "%d must be 0 (off) or a port in 1-65535 other than proxy.port", sp)
	}
	c.validateTLSPorts(bad)
	if *p.Dynamic && *p.StatusPort == 0 {
		bad("proxy.dynamic", "dynamic pools need the status server: set proxy.status_port")
	}
	for key, v := range map[string]string{"proxy.config_path": p.ConfigPath, "proxy.main_config": p.MainConfig, "proxy.config_dir": p.ConfigDir} {
		// The paths reach nginx's config and its command line as they are.
		if !path.IsAbs(v) || path.Clean(v) != v || strings.ContainsFunc(v, func(r rune) bool { return !isAlnum(r) && !strings.ContainsRune("._-/", r) }) {
			bad(key, "%q must be a clean absolute path of letters, digits and . _ - /", v)
		}
	}
	for key, v := range map[string]string{"proxy.config_path": p.ConfigPath, "proxy.main_config": p.MainConfig} {
		if !strings.HasPrefix(v, p.ConfigDir+"/") {
			bad(key, "%q is not inside proxy.config_dir (%q): both files must live in the data volume", v, p.ConfigDir)
		}
	}
	if p.DebounceMin.D() <= 0 || p.DebounceMax.D() < p.DebounceMin.D() || p.DebounceMax.D() > time.Minute {
		bad("proxy.debounce_max", "need 0 < debounce_min (%s) <= debounce_max (%s) <= 1m", p.DebounceMin.D(), p.DebounceMax.D())
	}
	validateLimits("proxy", p.Memory, p.CPUs, bad)
}

// validate checks the service at path k; seen collects the names checked
// so far.
func (s Service) validate(k string, seen map[string]bool, bad badFunc) {
	if err := store.ValidName(s.Name); err != nil {
		bad(k+".name", "%v", err)
	}
	if seen[s.Name] {
		bad(k+".name", "duplicate service %q", s.Name)
	}
	seen[s.Name] = true
	if s.Image == "" {
		bad(k+".image", "must not be empty")
	}
	if n := *s.Replicas; n < 1 || n > cluster.MaxReplicas {
		bad(k+".replicas", "%d out of range 1-%d", n, cluster.MaxReplicas)
	}
	if n := *s.MaxPerNode; n < 1 || n > cluster.MaxReplicas {
		bad(k+".max_per_node", "%d out of range 1-%d (%d, the default, is no bound)", n, cluster.MaxReplicas, cluster.MaxReplicas)
	}
	if s.Port < 1 || s.Port > 65535 {
		bad(k+".port", "%d out of range 1-65535", s.Port)
	}
	for j, e := range s.Env {
		if !strings.Contains(e, "=") {
			bad(fmt.Sprintf("%s.env[%d]", k, j), "%q is not KEY=VALUE", e)
		}
	}
	switch s.Restart {
	case "no", "on-failure", "unless-stopped", "always":
	default:
		bad(k+".restart", "%q is not a restart policy: no, on-failure, unless-stopped or always", s.Restart)
	}
	if d := s.ConnectTimeout.D(); d < time.Millisecond || d > time.Minute || d%time.Millisecond != 0 {
		bad(k+".connect_timeout", "%s must be whole milliseconds in 1ms-1m", d)
	}
	s.validateProxying(k, bad)
	if s.StopGrace.D() < 0 || s.StopGrace.D() > 10*time.Minute {
		bad(k+".stop_grace", "%s out of range 0-10m", s.StopGrace.D())
	}
	h := s.Health
	if !strings.HasPrefix(h.Path, "/") || strings.ContainsAny(h.Path, " \t\r\n") {
		bad(k+".health.path", "%q must start with / and contain no spaces", h.Path)
	}
	if h.Interval.D() < 100*time.Millisecond || h.Interval.D() > 10*time.Minute {
		bad(k+".health.interval", "%s out of range 100ms-10m", h.Interval.D())
	}
	if h.Timeout.D() <= 0 || h.Timeout.D() > h.Interval.D() {
		bad(k+".health.timeout", "%s must be positive and at most the interval (%s)", h.Timeout.D(), h.Interval.D())
	}
	if h.StartPeriod.D() < 0 || h.StartPeriod.D() > time.Hour {
		bad(k+".health.start_period", "%s out of range 0-1h", h.StartPeriod.D())
	}
	if *h.Rise < 1 || *h.Rise > 100 {
		bad(k+".health.rise", "%d out of range 1-100", *h.Rise)
	}
	if *h.Fall < 1 || *h.Fall > 100 {
		bad(k+".health.fall", "%d out of range 1-100", *h.Fall)
	}
	validateLimits(k, s.Memory, s.CPUs, bad)
}

// validateLimits checks the memory and cpus keys of the table at path.
func validateLimits(path, memory string, cpus float64, bad badFunc) {
	if _, err := parseLimits(memory, 0); err != nil {
		bad(path+".memory", "%v", err)
	}
	if _, err := parseLimits("", cpus); err != nil {
		bad(path+".cpus", "%v", err)
	}
}

func parseLimits(memory string, cpus float64) (orchestrator.Limits, error) {
	var l orchestrator.Limits
	if memory != "" {
		b, err := units.RAMInBytes(memory)
		if err != nil || b < 4<<20 {
			return l, fmt.Errorf("memory %q must be a size of at least 4m, such as \"256m\"", memory)
		}
		l.MemoryBytes = b
	}
	if cpus < 0 || cpus > 1024 || math.IsNaN(cpus) {
		return l, fmt.Errorf("cpus %v out of range 0-1024", cpus)
	}
	l.NanoCPUs = int64(cpus * 1e9)
	return l, nil
}

// validateNetwork checks the advertise mode and the node's address: an
// address other hosts are to dial must be one this host has.
func (c *Spec) validateNetwork(bad badFunc, localAddrs func() ([]net.Addr, error)) {
	advertise, addr := c.Project.Network.Advertise, c.Node.Network.NodeAddress
	switch advertise {
	case orchestrator.AdvertiseContainer:
	case orchestrator.AdvertiseHost:
		if addr == "" {
			bad("network.node_address", "required with advertise = %q: the address other hosts reach this one at", orchestrator.AdvertiseHost)
		}
	default:
		bad("network.advertise", "%q is not %q or %q", advertise, orchestrator.AdvertiseContainer, orchestrator.AdvertiseHost)
	}
	if addr == "" {
		return
	}
	ip := net.ParseIP(addr)
	if ip == nil || ip.To4() == nil || ip.IsUnspecified() {
		bad("network.node_address", "%q is not an IPv4 address of this host", addr)
		return
	}
	addrs, err := localAddrs()
	if err != nil {
		bad("network.node_address", "cannot list this host's addresses to check %s: %v", addr, err)
		return
	}
	var have []string
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok {
			if ipn.IP.Equal(ip) {
				return
			}
			if ipn.IP.To4() != nil && !ipn.IP.IsLoopback() {
				have = append(have, ipn.IP.String())
			}
		}
	}
	bad("network.node_address", "%s is not an address of this host (it has %s)", addr, strings.Join(have, ", "))
}
