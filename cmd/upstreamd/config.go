package main

import (
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"math"
	"net"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	units "github.com/docker/go-units"
	"github.com/pelletier/go-toml/v2"

	"github.com/upstreamd/upstreamd/admin"
	"github.com/upstreamd/upstreamd/cluster"
	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/orchestrator"
	"github.com/upstreamd/upstreamd/render"
	"github.com/upstreamd/upstreamd/store"
)

// Config is the TOML spec file. Every key is documented in
// cmd/upstreamd/upstreamd.example.toml and the README; unknown keys are errors.
type Config struct {
	Project string          `toml:"project"`
	Node    string          `toml:"node"`
	Docker  DockerConfig    `toml:"docker"`
	Etcd    EtcdConfig      `toml:"etcd"`
	Network NetworkConfig   `toml:"network"`
	Proxy   ProxyConfig     `toml:"proxy"`
	Admin   AdminConfig     `toml:"admin"`
	TLS     TLSConfig       `toml:"tls"`
	ACME    ACMEConfig      `toml:"acme"`
	Metrics MetricsConfig   `toml:"metrics"`
	Service []ServiceConfig `toml:"service"`

	file        string          // where it was read from, for messages
	pos         positions       // where each key was written in it
	droppedKeys map[string]bool // keys of the wrong type, reported and left out
	tls         *render.TLS     // the certificates, read and checked by validateTLS
	fileCerts   []servedCert    // the same certificates' names and expiry, for the metrics
	acmeRoots   *x509.CertPool  // acme.ca_file's roots (nil: the system's), read by validateACME
}

// DockerConfig says how to reach the engine.
type DockerConfig struct {
	Host    string   `toml:"host"`
	Timeout Duration `toml:"timeout"`
}

// EtcdConfig says how to reach etcd and how registrations live there.
type EtcdConfig struct {
	Endpoints []string `toml:"endpoints"`
	Prefix    string   `toml:"prefix"`
	// IncludeProjects names other projects whose registrations join this
	// project's pools ("*": every registration under the prefix). By
	// default a project's pools take only its own.
	IncludeProjects []string `toml:"include_projects"`
	LeaseTTL        Duration `toml:"lease_ttl"`
	DialTimeout     Duration `toml:"dial_timeout"`
	Username        string   `toml:"username"`
	Password        string   `toml:"password"`
	PasswordFile    string   `toml:"password_file"`
	CAFile          string   `toml:"ca_file"`
	CertFile        string   `toml:"cert_file"`
	KeyFile         string   `toml:"key_file"`
}

// AdminConfig says where the admin listener answers: the status page, the
// JSON API, /metrics, /healthz and /readyz.
type AdminConfig struct {
	// Listen is host:port; "" turns the listener off. Default
	// 127.0.0.1:9180.
	Listen string `toml:"listen"`
	// TokenFile holds the token every request must carry (all but
	// /healthz and /readyz); required when Listen is not loopback.
	TokenFile string `toml:"token_file"`
}

// MetricsConfig is the older [metrics] table: its listen is now
// admin.listen, which serves /metrics as before.
type MetricsConfig struct {
	Listen string `toml:"listen"`
}

// NetworkConfig names the bridge network and says which address of a
// backend is advertised.
type NetworkConfig struct {
	Name string `toml:"name"`
	// Advertise: "container" (the backend's address on the network; one
	// host) or "host" (its port published on NodeAddress; a cluster).
	Advertise string `toml:"advertise"`
	// NodeAddress is this host's address the other hosts reach it at.
	NodeAddress string `toml:"node_address"`
}

// ProxyConfig describes nginx.
type ProxyConfig struct {
	Image   string `toml:"image"`
	Publish string `toml:"publish"`
	// PublishTLS is where nginx's TLS port is published; "": no TLS.
	PublishTLS  string   `toml:"publish_tls"`
	Port        int      `toml:"port"`
	Service     string   `toml:"service"`
	Template    string   `toml:"template"`
	ConfigPath  string   `toml:"config_path"`
	MainConfig  string   `toml:"main_config"`
	ConfigDir   string   `toml:"config_dir"`
	DebounceMin Duration `toml:"debounce_min"`
	DebounceMax Duration `toml:"debounce_max"`
	// Placement: "every" (a proxy on each node) or "leader" (one proxy in
	// the project, on the node etcd elects).
	Placement  string  `toml:"placement"`
	StatusPort *int    `toml:"status_port"`
	Dynamic    *bool   `toml:"dynamic"`
	Memory     string  `toml:"memory"`
	CPUs       float64 `toml:"cpus"`
}

// ServiceConfig describes one backend service.
type ServiceConfig struct {
	Name     string `toml:"name"`
	Image    string `toml:"image"`
	Replicas *int   `toml:"replicas"`
	// MaxPerNode bounds the replicas one node runs; nil: unlimited.
	MaxPerNode *int     `toml:"max_per_node"`
	Port       int      `toml:"port"`
	Env        []string `toml:"env"`
	Command    []string `toml:"command"`
	StopGrace  Duration `toml:"stop_grace"`
	// ConnectTimeout: nginx's connect timeout to a backend of the service.
	ConnectTimeout Duration `toml:"connect_timeout"`
	// Hosts, PathPrefix and StripPrefix route requests to the service
	// (the built-in template); none: the default service takes them.
	Hosts       []string `toml:"hosts"`
	PathPrefix  string   `toml:"path_prefix"`
	StripPrefix bool     `toml:"strip_prefix"`
	// ReadTimeout and SendTimeout are nginx's proxy timeouts (zero:
	// nginx's 60 s); ClientMaxBodySize its client_max_body_size ("":
	// nginx's 1m); ResponseHeaders are added to every response.
	ReadTimeout       Duration          `toml:"read_timeout"`
	SendTimeout       Duration          `toml:"send_timeout"`
	ClientMaxBodySize string            `toml:"client_max_body_size"`
	ResponseHeaders   map[string]string `toml:"response_headers"`
	// HTTPSRedirect sends plain-HTTP requests to HTTPS (with TLS).
	HTTPSRedirect bool         `toml:"https_redirect"`
	Restart       string       `toml:"restart"`
	Memory        string       `toml:"memory"`
	CPUs          float64      `toml:"cpus"`
	Health        HealthConfig `toml:"health"`
}

// HealthConfig is a service's probe.
type HealthConfig struct {
	Path     string   `toml:"path"`
	Interval Duration `toml:"interval"`
	Timeout  Duration `toml:"timeout"`
	// Rise and Fall are pointers so that an explicit 0 is an error, not
	// the default.
	Rise *int `toml:"rise"`
	Fall *int `toml:"fall"`
	// StartPeriod: a new backend's failures do not count for this long.
	StartPeriod Duration `toml:"start_period"`
}

// Duration is a time.Duration written as a Go duration string ("250ms").
// It is a struct, not an integer type, so that a bare TOML integer
// (timeout = 5) is refused instead of silently meaning 5ns.
type Duration struct{ d time.Duration }

// UnmarshalText parses a duration such as "2s" or "250ms".
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration such as \"2s\" or \"250ms\"", b)
	}
	d.d = v
	return nil
}

// MarshalText writes the duration back as a string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.d.String()), nil }

// D returns the time.Duration.
func (d Duration) D() time.Duration { return d.d }

// Defaults reproduce the seed: one nginx in front of 3 Apache containers of
// service "apache", registered under /services/apache/.
const (
	defaultProject    = "upstreamd"
	defaultEtcd       = "http://127.0.0.1:2379"
	defaultProxyImage = "upstreamd/nginx:latest"
	defaultPublish    = "127.0.0.1:8080"
	defaultConfigPath = "/etc/nginx/conf.d/upstreamd.conf"
	defaultMainConfig = "/etc/nginx/nginx.conf"
	defaultConfigDir  = "/etc/nginx"
	defaultService    = "apache"
	defaultImage      = "upstreamd/apache:latest"
	defaultReplicas   = 3
	defaultStatusPort = 8099
	// defaultStartPeriod is long enough for a slow Apache or a JVM.
	defaultStartPeriod = 60 * time.Second
)

// LoadConfig reads, defaults and validates a spec file. An empty path means
// no file: the defaults alone.
func LoadConfig(file string) (*Config, error) {
	cfg := &Config{file: "(defaults)"}
	var errs []error
	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("read config: %w", err)
		}
		cfg.file = file
		// What could not be read is reported, and what could is still
		// defaulted and validated: every mistake of the file in one run.
		errs = cfg.decodeSpec(data)
	}
	cfg.applyDefaults()
	if errs = append(errs, cfg.validate()...); len(errs) > 0 {
		return nil, joinByLine(errs)
	}
	return cfg, nil
}

// describeTOMLError turns go-toml's syntax errors into file:line:col:
// messages.
func describeTOMLError(file string, err error) error {
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, col := de.Position()
		return specError{row, col, fmt.Sprintf("%s:%d:%d: %s", file, row, col, strings.TrimPrefix(de.Error(), "toml: "))}
	}
	return fmt.Errorf("%s: %w", file, err)
}

func (c *Config) applyDefaults() {
	if c.Project == "" {
		c.Project = defaultProject
	}
	if c.Node == "" {
		// The host name, made a valid name (not a constant: two daemons
		// with one node name refuse to run side by side).
		if h, err := os.Hostname(); err == nil {
			c.Node = store.HostLabel(h)
		}
	}
	if len(c.Etcd.Endpoints) == 0 {
		c.Etcd.Endpoints = []string{defaultEtcd}
	}
	if c.Etcd.Prefix == "" {
		c.Etcd.Prefix = store.DefaultPrefix
	}
	// A number or duration the file sets is taken as it is, zero
	// included: Validate accepts or refuses it, it never becomes the
	// default unseen.
	c.setDur("etcd.lease_ttl", &c.Etcd.LeaseTTL, 10*time.Second)
	c.setDur("etcd.dial_timeout", &c.Etcd.DialTimeout, 5*time.Second)
	c.setDur("docker.timeout", &c.Docker.Timeout, 30*time.Second)
	if c.Network.Name == "" {
		c.Network.Name = c.Project
	}
	setStr(&c.Network.Advertise, orchestrator.AdvertiseContainer)
	if !c.written("admin.listen") {
		// The older [metrics] listen, else the default.
		c.Admin.Listen = c.Metrics.Listen
		setStr(&c.Admin.Listen, admin.DefaultListen)
	}
	p := &c.Proxy
	setStr(&p.Placement, orchestrator.PlacementEvery)
	setStr(&p.Image, defaultProxyImage)
	setStr(&p.Publish, defaultPublish)
	setStr(&p.ConfigPath, defaultConfigPath)
	setStr(&p.MainConfig, defaultMainConfig)
	setStr(&p.ConfigDir, defaultConfigDir)
	c.setInt("proxy.port", &p.Port, 80)
	c.setDur("proxy.debounce_min", &p.DebounceMin, render.DefaultMinDebounce)
	c.setDur("proxy.debounce_max", &p.DebounceMax, render.DefaultMaxDebounce)
	setPtr(&p.StatusPort, defaultStatusPort)
	// The built-in template uses the Lua balancer of upstreamd/nginx; a
	// template of one's own lists its servers unless it says so.
	setPtr(&p.Dynamic, p.Template == "" && *p.StatusPort != 0)
	if len(c.Service) == 0 && !c.written("service") {
		c.Service = []ServiceConfig{{Name: defaultService}}
	}
	for i := range c.Service {
		s := &c.Service[i]
		k := fmt.Sprintf("service[%d].", i)
		if s.Name == defaultService {
			setStr(&s.Image, defaultImage)
		}
		setPtr(&s.Replicas, defaultReplicas)
		setPtr(&s.MaxPerNode, cluster.MaxReplicas)
		c.setInt(k+"port", &s.Port, 80)
		c.setDur(k+"stop_grace", &s.StopGrace, orchestrator.DefaultStopGrace)
		c.setDur(k+"connect_timeout", &s.ConnectTimeout, render.DefaultConnectTimeout)
		setStr(&s.Restart, orchestrator.DefaultRestart)
		setStr(&s.Health.Path, "/")
		c.setDur(k+"health.interval", &s.Health.Interval, 2*time.Second)
		c.setDur(k+"health.timeout", &s.Health.Timeout, time.Second)
		c.setDur(k+"health.start_period", &s.Health.StartPeriod, defaultStartPeriod)
		setPtr(&s.Health.Rise, 2)
		setPtr(&s.Health.Fall, 2)
	}
	if len(c.Service) > 0 && !c.routed() {
		// The seed: one service at "/" of every host. Once a service is
		// routed by host or path, the default is only what the spec says.
		setStr(&p.Service, c.Service[0].Name)
	}
}

// routed reports whether a service is routed by host or path.
func (c *Config) routed() bool {
	for _, s := range c.Service {
		if len(s.Hosts) > 0 || s.PathPrefix != "" {
			return true
		}
	}
	return false
}

// route is the service's render.Route.
func (s ServiceConfig) route() render.Route {
	r := render.Route{Hosts: s.Hosts, PathPrefix: s.PathPrefix, StripPrefix: s.StripPrefix,
		ConnectTimeout: s.ConnectTimeout.D(), ReadTimeout: s.ReadTimeout.D(), SendTimeout: s.SendTimeout.D(),
		MaxBodySize: s.ClientMaxBodySize, HTTPSRedirect: s.HTTPSRedirect}
	for _, name := range slices.Sorted(maps.Keys(s.ResponseHeaders)) {
		r.Headers = append(r.Headers, render.Header{Name: name, Value: s.ResponseHeaders[name]})
	}
	return r
}

// setStr defaults an empty string: in the spec, "" means the default.
func setStr(p *string, def string) {
	if *p == "" {
		*p = def
	}
}

// setDur defaults a duration the file does not set.
func (c *Config) setDur(path string, p *Duration, def time.Duration) {
	if !c.written(path) && p.d == 0 {
		p.d = def
	}
}

// setInt defaults an integer the file does not set.
func (c *Config) setInt(path string, p *int, def int) {
	if !c.written(path) && *p == 0 {
		*p = def
	}
}

func setPtr[T any](p **T, def T) {
	if *p == nil {
		*p = &def
	}
}

// Validate checks every value; the error names the file, the line, the
// key and why. Every error of the file is reported, not only the first.
func (c *Config) Validate() error { return joinByLine(c.validate()) }

func (c *Config) validate() []error {
	var errs []error
	bad := func(path, format string, args ...any) {
		if c.dropped(path) {
			return // its type was wrong: said already
		}
		key := c.display(path)
		if !c.written(path) && c.file != "(defaults)" {
			key += " (not set)"
		}
		errs = append(errs, c.errorAt(path, key+": "+fmt.Sprintf(format, args...)))
	}
	c.validateGlobal(bad)
	c.validateProxy(bad)
	c.validateNetwork(bad, localAddrs)
	if len(c.Service) == 0 {
		bad("service", "no service: give at least one [[service]]")
	}
	seen := map[string]bool{}
	for i, s := range c.Service {
		s.validate(fmt.Sprintf("service[%d]", i), seen, bad)
	}
	if c.Proxy.Service != "" && !seen[c.Proxy.Service] && len(c.Service) > 0 {
		bad("proxy.service", "%q is not a configured service", c.Proxy.Service)
	}
	c.validateRoutes(bad)
	c.validateTLS(bad)
	return errs
}

// badFunc records one invalid value: the key's path (proxy.port,
// service[1].health.rise) and why.
type badFunc func(path, format string, args ...any)

// localAddrs lists this host's addresses (tests replace it).
var localAddrs = net.InterfaceAddrs

// dropped reports whether path, or a table it is in, was dropped for
// having the wrong type.
func (c *Config) dropped(path string) bool {
	for p := range c.droppedKeys {
		if path == p || strings.HasPrefix(path, p+".") || strings.HasPrefix(path, p+"[") {
			return true
		}
	}
	return false
}

// display names path for a message: a service's index gets its name.
func (c *Config) display(path string) string {
	rest, ok := strings.CutPrefix(path, "service[")
	if !ok {
		return path
	}
	idx, tail, _ := strings.Cut(rest, "]")
	if i, err := strconv.Atoi(idx); err == nil && i < len(c.Service) && c.Service[i].Name != "" {
		return fmt.Sprintf("service[%d] (%s)%s", i, c.Service[i].Name, tail)
	}
	return path
}

// validateGlobal checks the keys outside [proxy] and [[service]].
func (c *Config) validateGlobal(bad badFunc) {
	if err := store.ValidName(c.Project); err != nil {
		bad("project", "%v", err)
	}
	if err := store.ValidName(c.Node); err != nil {
		bad("node", "%v", err)
	}
	if err := store.ValidName(c.Network.Name); err != nil && (c.written("network.name") || store.ValidName(c.Project) == nil) {
		bad("network.name", "%v", err)
	}
	for i, e := range c.Etcd.Endpoints {
		if !strings.HasPrefix(e, "http://") && !strings.HasPrefix(e, "https://") {
			bad(fmt.Sprintf("etcd.endpoints[%d]", i), "%q must start with http:// or https://", e)
		}
	}
	for i, p := range c.Etcd.IncludeProjects {
		if p == store.AnyProject {
			continue
		}
		if err := store.ValidName(p); err != nil {
			bad(fmt.Sprintf("etcd.include_projects[%d]", i), "%v (or \"*\" for every project)", err)
		}
	}
	if !strings.HasPrefix(c.Etcd.Prefix, "/") || strings.HasSuffix(c.Etcd.Prefix, "/") && c.Etcd.Prefix != "/" {
		bad("etcd.prefix", "%q must start with / and not end with /", c.Etcd.Prefix)
	}
	if c.Etcd.LeaseTTL.D() < 2*time.Second || c.Etcd.LeaseTTL.D() > time.Hour {
		bad("etcd.lease_ttl", "%s out of range 2s-1h", c.Etcd.LeaseTTL.D())
	}
	if c.Etcd.Password != "" && c.Etcd.PasswordFile != "" {
		bad("etcd.password_file", "give password or password_file, not both")
	}
	if (c.Etcd.Password != "" || c.Etcd.PasswordFile != "") && c.Etcd.Username == "" {
		bad("etcd.username", "required when a password is set")
	}
	if (c.Etcd.CertFile == "") != (c.Etcd.KeyFile == "") {
		bad("etcd.cert_file", "cert_file and key_file must be given together")
	}
	for key, f := range map[string]string{"etcd.ca_file": c.Etcd.CAFile, "etcd.cert_file": c.Etcd.CertFile, "etcd.key_file": c.Etcd.KeyFile, "etcd.password_file": c.Etcd.PasswordFile} {
		if f != "" {
			if _, err := os.Stat(c.resolve(f)); err != nil {
				bad(key, "%v", err)
			}
		}
	}
	if c.Metrics.Listen != "" {
		if _, port, err := net.SplitHostPort(c.Metrics.Listen); err != nil || port == "" {
			bad("metrics.listen", "%q is not host:port (such as 127.0.0.1:9180)", c.Metrics.Listen)
		}
		if c.written("admin.listen") {
			bad("metrics.listen", "replaced by admin.listen, which serves /metrics too: remove [metrics]")
		}
	}
	if c.Admin.Listen != "" {
		if _, port, err := net.SplitHostPort(c.Admin.Listen); err != nil || port == "" {
			bad("admin.listen", "%q is not host:port (such as 127.0.0.1:9180); \"\" turns the admin listener off", c.Admin.Listen)
		} else if !admin.IsLoopback(c.Admin.Listen) && c.Admin.TokenFile == "" {
			bad("admin.listen", "%q is reachable from other hosts: set admin.token_file to a file holding the token every request must carry (or listen on 127.0.0.1)", c.Admin.Listen)
		}
	}
	if f := c.Admin.TokenFile; f != "" {
		if _, err := c.AdminToken(); err != nil {
			bad("admin.token_file", "%v", err)
		}
	}
	if d := c.Etcd.DialTimeout.D(); d < 100*time.Millisecond || d > 5*time.Minute {
		bad("etcd.dial_timeout", "%s out of range 100ms-5m", d)
	}
	if c.Docker.Timeout.D() <= 0 {
		bad("docker.timeout", "must be positive")
	}

}

// validateProxy checks [proxy].
func (c *Config) validateProxy(bad badFunc) {
	p := c.Proxy
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
	if p.Template != "" {
		if _, err := os.Stat(c.resolve(p.Template)); err != nil {
			bad("proxy.template", "%v", err)
		}
	}
	if p.DebounceMin.D() <= 0 || p.DebounceMax.D() < p.DebounceMin.D() || p.DebounceMax.D() > time.Minute {
		bad("proxy.debounce_max", "need 0 < debounce_min (%s) <= debounce_max (%s) <= 1m", p.DebounceMin.D(), p.DebounceMax.D())
	}
	validateLimits("proxy", p.Memory, p.CPUs, bad)

}

// validate checks the service at path k; seen collects the names checked
// so far.
func (s ServiceConfig) validate(k string, seen map[string]bool, bad badFunc) {
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

// resolve makes a path in the config relative to the config file's directory.
// AdminToken reads admin.token_file: the token, its surrounding white
// space trimmed; "" when there is no file. An empty or short token is an
// error.
func (c *Config) AdminToken() (string, error) {
	if c.Admin.TokenFile == "" {
		return "", nil
	}
	b, err := os.ReadFile(c.resolve(c.Admin.TokenFile))
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(b))
	switch {
	case tok == "":
		return "", fmt.Errorf("%s is empty", c.Admin.TokenFile)
	case len(tok) < 16:
		return "", fmt.Errorf("the token in %s has %d characters: use at least 16 (e.g. openssl rand -hex 16)", c.Admin.TokenFile, len(tok))
	case strings.ContainsAny(tok, " \t\r\n"):
		return "", fmt.Errorf("the token in %s holds white space: one token on one line", c.Admin.TokenFile)
	}
	return tok, nil
}

func (c *Config) resolve(p string) string {
	if p == "" || filepath.IsAbs(p) || c.file == "(defaults)" {
		return p
	}
	return filepath.Join(filepath.Dir(c.file), p)
}

// Spec converts the config to the orchestrator's desired state.
func (c *Config) Spec() orchestrator.Spec {
	proxyLimits, _ := parseLimits(c.Proxy.Memory, c.Proxy.CPUs) // validated
	spec := orchestrator.Spec{
		Project: c.Project,
		Network: c.Network.Name,
		Node:    c.Node,
		Prefix:  c.Etcd.Prefix,
		// Validated: one of the two, with an address of this host.
		Advertise:   c.Network.Advertise,
		NodeAddress: c.Network.NodeAddress,
		Proxy: orchestrator.ProxySpec{
			Image:      c.Proxy.Image,
			Publish:    c.Proxy.Publish,
			PublishTLS: c.Proxy.PublishTLS,
			Port:       c.Proxy.Port,
			ConfigDir:  c.Proxy.ConfigDir,
			ConfigPath: c.Proxy.ConfigPath,
			Limits:     proxyLimits,
		},
	}
	for _, s := range c.Service {
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

// Projects lists the projects whose registrations fill the pools: this
// one and those it includes.
func (c *Config) Projects() []string {
	return append([]string{c.Project}, c.Etcd.IncludeProjects...)
}

// ServiceNames lists the configured services in order.
func (c *Config) ServiceNames() []string {
	out := make([]string, 0, len(c.Service))
	for _, s := range c.Service {
		out = append(out, s.Name)
	}
	return out
}

// LoadTemplate parses proxy.template, or returns the built-in template.
func (c *Config) LoadTemplate() (*render.Template, error) {
	if c.Proxy.Template == "" {
		return render.Default(), nil
	}
	f := c.resolve(c.Proxy.Template)
	text, err := os.ReadFile(f)
	if err != nil {
		return nil, fmt.Errorf("%s: proxy.template: %w", c.file, err)
	}
	t, err := render.Parse(f, string(text))
	if err != nil {
		return nil, fmt.Errorf("%s: proxy.template: %w", c.file, err)
	}
	return t, nil
}

// StoreConfig returns the etcd client settings.
func (c *Config) StoreConfig() (store.Config, error) {
	e := c.Etcd
	password := e.Password
	if e.PasswordFile != "" {
		b, err := os.ReadFile(c.resolve(e.PasswordFile))
		if err != nil {
			return store.Config{}, fmt.Errorf("%s: etcd.password_file: %w", c.file, err)
		}
		password = strings.TrimRight(string(b), "\r\n")
	}
	return store.Config{
		Endpoints:   e.Endpoints,
		DialTimeout: e.DialTimeout.D(),
		Username:    e.Username,
		Password:    password,
		CAFile:      c.resolve(e.CAFile),
		CertFile:    c.resolve(e.CertFile),
		KeyFile:     c.resolve(e.KeyFile),
	}, nil
}

// validateNetwork checks the advertise mode and the node's address: an
// address other hosts are to dial must be one this host has.
func (c *Config) validateNetwork(bad badFunc, localAddrs func() ([]net.Addr, error)) {
	n := c.Network
	switch n.Advertise {
	case orchestrator.AdvertiseContainer:
	case orchestrator.AdvertiseHost:
		if n.NodeAddress == "" {
			bad("network.node_address", "required with advertise = %q: the address other hosts reach this one at", orchestrator.AdvertiseHost)
		}
	default:
		bad("network.advertise", "%q is not %q or %q", n.Advertise, orchestrator.AdvertiseContainer, orchestrator.AdvertiseHost)
	}
	if n.NodeAddress == "" {
		return
	}
	ip := net.ParseIP(n.NodeAddress)
	if ip == nil || ip.To4() == nil || ip.IsUnspecified() {
		bad("network.node_address", "%q is not an IPv4 address of this host", n.NodeAddress)
		return
	}
	addrs, err := localAddrs()
	if err != nil {
		bad("network.node_address", "cannot list this host's addresses to check %s: %v", n.NodeAddress, err)
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
	bad("network.node_address", "%s is not an address of this host (it has %s)", n.NodeAddress, strings.Join(have, ", "))
}

// ProxyAddress is the proxy's public address as announced when this node
// leads: proxy.publish, with the node's address (or host name) where it
// publishes on every address.
func (c *Config) ProxyAddress() string {
	host, port, err := containers.ParsePublish(c.Proxy.Publish)
	if err != nil {
		return c.Proxy.Publish
	}
	if anyAddress(host) {
		host = c.Network.NodeAddress
		if host == "" {
			host, _ = os.Hostname()
		}
	}
	return net.JoinHostPort(host, port)
}
