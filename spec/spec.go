// Package spec is the project's contract with its users: the TOML spec
// file, its defaults, its validation and its conversion into each
// component's config. Every command loads a spec the same way, with
// Load: the text is decoded and defaulted, every value is checked against
// the text and the Host (pure: no file is read; Parse does these two from
// bytes), and ReadFiles reads what the spec's files hold (certificates,
// the admin token, the etcd password) into Files. Every mistake of all
// three steps is reported at once, each with the file, line and key. A
// loaded Spec is not changed afterwards; what was read from files, or
// derived from what was, is in Files, never in the Spec.
//
// A spec has two parts: the Node's (this host's name and connections) and
// the Project's (what every node of the project shares), which encodes
// canonically (Project.Encode) and has a Hash.
package spec

import (
	"fmt"
	"net"
	"os"
	"time"
)

// Spec is a spec file, read, defaulted and checked: the node's part and
// the project's. Every key is documented in spec/upstreamd.example.toml
// and the README; unknown keys are errors. The file's tables are one
// namespace: [etcd] and [network] hold keys of both parts.
type Spec struct {
	// Node is this host's part: who it is and how it reaches Docker, etcd
	// and its operator.
	Node Node
	// Project is the part every node of the project shares.
	Project Project

	file        string          // where it was read from, for messages
	pos         positions       // where each key was written in it
	droppedKeys map[string]bool // keys of the wrong type, reported and left out
	hostname    string          // the host's name (Host.Name), for ProxyAddress
}

// Node is the part of a spec that belongs to the host that runs it: its
// name, and how it reaches Docker, etcd and its operator. Each host of a
// project has its own.
type Node struct {
	Name    string      `toml:"node"`
	Docker  Docker      `toml:"docker"`
	Etcd    EtcdClient  `toml:"etcd"`
	Network NodeNetwork `toml:"network"`
	Admin   Admin       `toml:"admin"`
	Metrics Metrics     `toml:"metrics"`
}

// Project is the part of a spec every node of the project shares: what
// runs, how its backends register in etcd, and how requests reach them.
// Encode writes it in canonical form, and Hash identifies it.
type Project struct {
	Name    string    `toml:"project"`
	Etcd    EtcdKeys  `toml:"etcd"`
	Network Network   `toml:"network"`
	Proxy   Proxy     `toml:"proxy"`
	TLS     TLS       `toml:"tls"`
	ACME    *ACME     `toml:"acme"` // nil: no [acme]
	Service []Service `toml:"service"`
}

// Docker says how to reach the engine.
type Docker struct {
	Host    string   `toml:"host"`
	Timeout Duration `toml:"timeout"`
}

// EtcdClient says how this host reaches etcd: [etcd]'s node keys.
type EtcdClient struct {
	Endpoints    []string `toml:"endpoints"`
	DialTimeout  Duration `toml:"dial_timeout"`
	Username     string   `toml:"username"`
	Password     string   `toml:"password"`
	PasswordFile string   `toml:"password_file"`
	CAFile       string   `toml:"ca_file"`
	CertFile     string   `toml:"cert_file"`
	KeyFile      string   `toml:"key_file"`
}

// EtcdKeys says how the project's registrations live in etcd: [etcd]'s
// project keys.
type EtcdKeys struct {
	Prefix string `toml:"prefix"`
	// IncludeProjects names other projects whose registrations join this
	// project's pools ("*": every registration under the prefix). By
	// default a project's pools take only its own.
	IncludeProjects []string `toml:"include_projects"`
	LeaseTTL        Duration `toml:"lease_ttl"`
}

// Admin says where the admin listener answers: the status page, the
// JSON API, /metrics, /healthz and /readyz.
type Admin struct {
	// Listen is host:port; "" turns the listener off. Default
	// 127.0.0.1:9180.
	Listen string `toml:"listen"`
	// TokenFile holds the token every request must carry (all but
	// /healthz and /readyz); required when Listen is not loopback.
	TokenFile string `toml:"token_file"`
}

// Metrics is the older [metrics] table: its listen is now
// admin.listen, which serves /metrics as before.
type Metrics struct {
	Listen string `toml:"listen"`
}

// Network names the bridge network and says which address of a backend
// is advertised: [network]'s project keys.
type Network struct {
	Name string `toml:"name"`
	// Advertise: "container" (the backend's address on the network; one
	// host) or "host" (its port published on the node's address; a
	// cluster).
	Advertise string `toml:"advertise"`
}

// NodeNetwork is [network]'s node key.
type NodeNetwork struct {
	// NodeAddress is this host's address the other hosts reach it at.
	NodeAddress string `toml:"node_address"`
}

// Proxy describes nginx.
type Proxy struct {
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

// Service describes one backend service.
type Service struct {
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
	HTTPSRedirect bool    `toml:"https_redirect"`
	Restart       string  `toml:"restart"`
	Memory        string  `toml:"memory"`
	CPUs          float64 `toml:"cpus"`
	Health        Health  `toml:"health"`
}

// Health is a service's probe.
type Health struct {
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

// Host is what a spec is checked against on the host that loads it:
// injected, so that validation is a function of the spec and the host
// alone, and tests say what the host has.
type Host struct {
	// Name is the host's name: the default node name (made a valid name),
	// and the proxy's announced host when it publishes on every address
	// and network.node_address is not set.
	Name string
	// Addrs lists the host's interface addresses: network.node_address
	// must be one of them.
	Addrs func() ([]net.Addr, error)
	// Now is the clock certificates are checked against.
	Now func() time.Time
}

// ThisHost is the host the process runs on.
func ThisHost() Host {
	name, _ := os.Hostname() // none: the node must be named in the spec
	return Host{Name: name, Addrs: net.InterfaceAddrs, Now: time.Now}
}

// noFile names the spec of no file: the defaults alone.
const noFile = "(defaults)"

// Load reads the spec file at path, defaults and validates it for host,
// and reads the files it names. An empty path means no file: the
// defaults alone. The error holds every mistake, in line order.
func Load(path string, host Host) (*Spec, Files, error) {
	name, data := noFile, []byte(nil)
	if path != "" {
		var err error
		if data, err = os.ReadFile(path); err != nil {
			return nil, Files{}, fmt.Errorf("read config: %w", err)
		}
		name = path
	}
	s, errs := parse(name, data, host)
	errs = append(errs, s.validate(host)...)
	files, ferrs := s.readFiles(host.Now())
	if errs = append(errs, ferrs...); len(errs) > 0 {
		return nil, Files{}, joinByLine(errs)
	}
	return s, files, nil
}

// Parse decodes a spec from data, read from the file name (for messages
// and to resolve the relative paths in it), applies the defaults and
// validates it for host; it reads no file. The error holds every mistake,
// in line order.
func Parse(name string, data []byte, host Host) (*Spec, error) {
	s, errs := parse(name, data, host)
	if errs = append(errs, s.validate(host)...); len(errs) > 0 {
		return nil, joinByLine(errs)
	}
	return s, nil
}

// parse decodes and defaults data. What could not be read is reported,
// and what could is still defaulted, so that validation reports the rest:
// every mistake of the file in one run.
func parse(name string, data []byte, host Host) (*Spec, []error) {
	s := &Spec{file: name, hostname: host.Name}
	var errs []error
	if name != noFile {
		errs = s.decodeSpec(data)
	}
	s.applyDefaults(host.Name)
	return s, errs
}

// File is where the spec was read from ("(defaults)": no file), for
// messages.
func (c *Spec) File() string { return c.file }
