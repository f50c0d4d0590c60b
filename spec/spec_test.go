package spec

import (
	"encoding"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/upstreamd/upstreamd/orchestrator"
	"github.com/upstreamd/upstreamd/store"
)

const exampleFile = "upstreamd.example.toml"

// writeConfig writes body to a spec file in a fresh directory and returns
// its path.
func writeConfig(t *testing.T, body string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "upstreamd.toml")
	if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
		t.Fatalf("write %s: %v", f, err)
	}
	return f
}

// TestLoadDefaults checks that no file at all gives the seed: one
// nginx in front of 3 Apache containers of service "apache".
func TestLoadDefaults(t *testing.T) {
	cfg, _, err := Load("", testHost)
	if err != nil {
		t.Fatalf("Load(\"\"): %v", err)
	}
	if len(cfg.Project.Service) != 1 {
		t.Fatalf("%d services, want 1", len(cfg.Project.Service))
	}
	s := cfg.Project.Service[0]
	tests := []struct {
		name      string
		got, want any
	}{
		{"project", cfg.Project.Name, "upstreamd"},
		{"service name", s.Name, "apache"},
		{"replicas", *s.Replicas, 3},
		{"image", s.Image, "upstreamd/apache:latest"},
		{"port", s.Port, 80},
		{"publish", cfg.Project.Proxy.Publish, "127.0.0.1:8080"},
		{"prefix", cfg.Project.Etcd.Prefix, "/services"},
		{"health path", s.Health.Path, "/"},
		{"health interval", s.Health.Interval.D(), 2 * time.Second},
		{"health timeout", s.Health.Timeout.D(), time.Second},
		{"rise", *s.Health.Rise, 2},
		{"fall", *s.Health.Fall, 2},
		{"proxy service", cfg.Project.Proxy.Service, "apache"},
		{"network name", cfg.Project.Network.Name, cfg.Project.Name},
		{"proxy port", cfg.Project.Proxy.Port, 80},
		{"etcd endpoints", cfg.Node.Etcd.Endpoints, []string{"http://127.0.0.1:2379"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !reflect.DeepEqual(tt.got, tt.want) {
				t.Errorf("got %v, want %v", tt.got, tt.want)
			}
		})
	}
	t.Run("node is a valid name", func(t *testing.T) {
		if err := store.ValidName(cfg.Node.Name); err != nil {
			t.Errorf("default node %q: %v", cfg.Node.Name, err)
		}
	})
	t.Run("spec", func(t *testing.T) {
		spec := cfg.OrchestratorSpec()
		want := orchestrator.HealthSpec{Path: "/", Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 2, StartPeriod: time.Minute}
		if len(spec.Services) != 1 || spec.Services[0].Replicas != 3 || spec.Services[0].Health != want {
			t.Errorf("OrchestratorSpec().Services %+v, want one service of 3 replicas with health %+v", spec.Services, want)
		}
		if spec.Network != "upstreamd" || spec.Prefix != "/services" || spec.Proxy.Publish != "127.0.0.1:8080" {
			t.Errorf("OrchestratorSpec() network %q prefix %q publish %q, want upstreamd, /services, 127.0.0.1:8080", spec.Network, spec.Prefix, spec.Proxy.Publish)
		}
	})
}

// TestExampleConfig keeps the example file honest: it loads, its values are
// the defaults (it says so), and it documents every key of Config.
func TestExampleConfig(t *testing.T) {
	cfg, _, err := Load(exampleFile, testHost)
	if err != nil {
		t.Fatalf("Load(%s): %v", exampleFile, err)
	}
	def, _, err := Load("", testHost)
	if err != nil {
		t.Fatalf("Load(\"\"): %v", err)
	}
	if got, want := cfg.OrchestratorSpec(), def.OrchestratorSpec(); !specEqual(got, want) {
		t.Errorf("the example's values are not the defaults:\n got %+v\nwant %+v", got, want)
	}

	data, err := os.ReadFile(exampleFile)
	if err != nil {
		t.Fatalf("read %s: %v", exampleFile, err)
	}
	var doc map[string]any
	if err := toml.Unmarshal(data, &doc); err != nil {
		t.Fatalf("parse %s: %v", exampleFile, err)
	}
	keys := append(tomlKeys(reflect.TypeFor[Node](), ""), tomlKeys(reflect.TypeFor[Project](), "")...)
	if len(keys) < 40 {
		t.Fatalf("found only %d keys in Config; the walk is broken", len(keys))
	}
	for _, key := range keys {
		t.Run(key, func(t *testing.T) {
			// [[tls.certificate]] needs files: the example shows one in
			// comments and leaves the list empty.
			// [acme] is on when the table is there: the example shows it in
			// comments too.
			leaf, cert := strings.CutPrefix(key, "tls.certificate.")
			if acmeLeaf, acme := strings.CutPrefix(key, "acme."); cert || acme {
				if acme {
					leaf = acmeLeaf
				}
				if !strings.Contains(string(data), "# "+leaf+" = ") {
					t.Errorf("key %s is not shown (commented) in %s", key, exampleFile)
				}
				return
			}
			if !hasKey(doc, strings.Split(key, ".")) {
				t.Errorf("key %s is not documented in %s", key, exampleFile)
			}
		})
	}
}

// specEqual compares specs, taking nil and empty slices as equal (the
// example writes env = [], the defaults leave it unset).
func specEqual(a, b orchestrator.Spec) bool {
	norm := func(s orchestrator.Spec) orchestrator.Spec {
		s.Services = append([]orchestrator.ServiceSpec(nil), s.Services...)
		for i := range s.Services {
			if len(s.Services[i].Env) == 0 {
				s.Services[i].Env = nil
			}
			if len(s.Services[i].Cmd) == 0 {
				s.Services[i].Cmd = nil
			}
		}
		return s
	}
	return reflect.DeepEqual(norm(a), norm(b))
}

var textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()

// tomlKeys returns the dotted key paths of every leaf `toml` tag under t.
// Arrays of tables ([[service]]) contribute their element's keys.
func tomlKeys(t reflect.Type, prefix string) []string {
	var out []string
	for f := range t.Fields() {
		tag, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if tag == "" || tag == "-" {
			continue
		}
		key := prefix + tag
		ft := f.Type
		for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct && !reflect.PointerTo(ft).Implements(textUnmarshaler) {
			out = append(out, tomlKeys(ft, key+".")...)
			continue
		}
		out = append(out, key)
	}
	return out
}

// hasKey reports whether the parsed document has the key path; inside an
// array of tables the first table is looked at.
func hasKey(doc any, path []string) bool {
	if len(path) == 0 {
		return true
	}
	switch v := doc.(type) {
	case map[string]any:
		next, ok := v[path[0]]
		return ok && hasKey(next, path[1:])
	case []any:
		return len(v) > 0 && hasKey(v[0], path)
	case []map[string]any:
		return len(v) > 0 && hasKey(v[0], path)
	}
	return false
}

// TestLoadErrors checks that each bad input is refused with the file,
// the key path and why. FILE in want and body stands for the spec file's path.
func TestLoadErrors(t *testing.T) {
	const apache = "[[service]]\nname = \"apache\"\n"
	tests := []struct {
		name    string
		body    string
		extra   map[string]string // more files beside the spec file
		want    []string
		notWant []string
	}{
		{
			name: "unknown key",
			body: "[proxy]\nimagez = \"x\"\n",
			want: []string{"FILE:2:1: proxy.imagez: unknown key"},
		},
		{
			name: "several unknown keys are all reported",
			body: "[proxy]\nimagez = \"x\"\n[etcd]\nprefx = \"/x\"\n",
			want: []string{"FILE:2:1: proxy.imagez: unknown key", "FILE:4:1: etcd.prefx: unknown key"},
		},
		{
			name:    "wrong type",
			body:    "[proxy]\nport = \"eighty\"\n",
			want:    []string{`FILE:2:1: proxy.port: want an integer, got string "eighty"`},
			notWant: []string{"spec.", "Proxy", "struct field"},
		},
		{
			name:    "value where a table belongs",
			body:    "proxy = 5\n",
			want:    []string{"FILE:1:1: proxy: want a table, got integer 5"},
			notWant: []string{"spec.", "Proxy"},
		},
		{
			name:    "value where an array of tables belongs",
			body:    "service = 3\n",
			want:    []string{"FILE:1:1: service: want an array of tables ([[service]]), got integer 3"},
			notWant: []string{"spec.", "Service"},
		},
		{
			name: "TOML syntax error",
			body: "project = \n",
			want: []string{"FILE:1:11: "},
		},
		{
			name: "replicas 0",
			body: apache + "replicas = 0\n",
			want: []string{"FILE:3:1: service[0] (apache).replicas: 0 out of range 1-1000"},
		},
		{
			name: "replicas -1",
			body: apache + "replicas = -1\n",
			want: []string{"FILE:3:1: service[0] (apache).replicas: -1 out of range 1-1000"},
		},
		{
			name: "replicas 1001",
			body: apache + "replicas = 1001\n",
			want: []string{"FILE:3:1: service[0] (apache).replicas: 1001 out of range 1-1000"},
		},
		{
			name: "duplicate service names",
			body: apache + apache,
			want: []string{`FILE:4:1: service[1] (apache).name: duplicate service "apache"`},
		},
		{
			name: "service without image",
			body: "[[service]]\nname = \"web\"\n",
			want: []string{"FILE:1:3: service[0] (web).image (not set): must not be empty"},
		},
		{
			name: "proxy.service names a missing service",
			body: "[proxy]\nservice = \"nosuch\"\n",
			want: []string{`FILE:2:1: proxy.service: "nosuch" is not a configured service`},
		},
		{
			name: "bad publish address",
			body: "[proxy]\npublish = \"127.0.0.1\"\n",
			want: []string{`FILE:2:1: proxy.publish: "127.0.0.1" is not IP:PORT`},
		},
		{
			name: "health timeout above the interval",
			body: apache + "[service.health]\ninterval = \"2s\"\ntimeout = \"3s\"\n",
			want: []string{"FILE:5:1: service[0] (apache).health.timeout: 3s must be positive and at most the interval (2s)"},
		},
		{
			name: "rise 0",
			body: apache + "[service.health]\nrise = 0\n",
			want: []string{"FILE:4:1: service[0] (apache).health.rise: 0 out of range 1-100"},
		},
		{
			name: "fall 0",
			body: apache + "[service.health]\nfall = 0\n",
			want: []string{"FILE:4:1: service[0] (apache).health.fall: 0 out of range 1-100"},
		},
		{
			name: "bad duration",
			body: apache + "[service.health]\ninterval = \"2x\"\n",
			want: []string{`FILE:4:1: service[0] (apache).health.interval: "2x" is not a duration such as "2s" or "250ms"`},
		},
		{
			// A bare integer must not mean nanoseconds, nor seconds unsaid.
			name: "integer duration",
			body: "[docker]\ntimeout = 5\n",
			want: []string{`FILE:2:1: docker.timeout: 5 is a bare number; write a duration with its unit, such as "5s"`},
		},
		{
			name: "missing template file",
			body: "[proxy]\ntemplate = \"nope.tmpl\"\n",
			want: []string{"FILE:2:1: proxy.template: ", "nope.tmpl", "no such file"},
		},
		{
			name:  "password and password_file both set",
			body:  "[etcd]\nusername = \"u\"\npassword = \"p\"\npassword_file = \"secret\"\n",
			extra: map[string]string{"secret": "p\n"},
			want:  []string{"FILE:4:1: etcd.password_file: give password or password_file, not both"},
		},
		{
			name:  "cert_file without key_file",
			body:  "[etcd]\ncert_file = \"client.pem\"\n",
			extra: map[string]string{"client.pem": "x"},
			want:  []string{"FILE:2:1: etcd.cert_file: cert_file and key_file must be given together"},
		},
		{
			name: "config_path outside config_dir",
			body: "[proxy]\nconfig_path = \"/tmp/upstreamd.conf\"\n",
			want: []string{`FILE:2:1: proxy.config_path: "/tmp/upstreamd.conf" is not inside proxy.config_dir ("/etc/nginx")`},
		},
		{
			name: "unknown restart policy",
			body: apache + "restart = \"sometimes\"\n",
			want: []string{`FILE:3:1: service[0] (apache).restart: "sometimes" is not a restart policy`},
		},
		{
			name: "metrics.listen without a port",
			body: "[metrics]\nlisten = \"nope\"\n",
			want: []string{`FILE:2:1: metrics.listen: "nope" is not host:port`},
		},
		{
			name: "metrics.listen with an empty port",
			body: "[metrics]\nlisten = \"127.0.0.1:\"\n",
			want: []string{`FILE:2:1: metrics.listen: "127.0.0.1:" is not host:port`},
		},
		{
			name: "routes: bad host, path and settings",
			body: apache + "hosts = [\"Www.Example\", \"a..b\"]\npath_prefix = \"/api/\"\nread_timeout = \"10ms\"\nclient_max_body_size = \"10 MB\"\n[service.response_headers]\n\"X Bad\" = \"1\"\nX-Quote = \"a\\\"b\"\n",
			want: []string{
				`FILE:3:1: service[0] (apache).hosts[0]: "Www.Example" is not a host name in lower case`,
				`FILE:3:1: service[0] (apache).hosts[1]: "a..b" is not a host name`,
				`FILE:4:1: service[0] (apache).path_prefix: "/api/" is not a path prefix`,
				`FILE:5:1: service[0] (apache).read_timeout: 10ms out of range 1s-24h`,
				`FILE:6:1: service[0] (apache).client_max_body_size: "10 MB" is not a size`,
				`service[0] (apache).response_headers.X Bad: "X Bad" is not a header name`,
				`service[0] (apache).response_headers.X-Quote: "a\"b": a value must be non-empty, without quotes`,
			},
		},
		{
			name: "a host given twice",
			body: apache + "hosts = [\"a.example\", \"b.example\", \"a.example\"]\n",
			want: []string{`FILE:3:1: service[0] (apache).hosts[2]: "a.example" is given twice`},
		},
		{
			name: "strip_prefix without path_prefix",
			body: apache + "strip_prefix = true\n",
			want: []string{`FILE:3:1: service[0] (apache).strip_prefix: strips path_prefix, which is not set`},
		},
		{
			name: "two services route the same host and path",
			body: apache + "hosts = [\"a.example\"]\n[[service]]\nname = \"web\"\nimage = \"x\"\nhosts = [\"b.example\", \"a.example\"]\n",
			want: []string{`service[1] (web): apache and web both route / of host a.example: give one of them another host or path_prefix`},
		},
		{
			name: "admin.listen on every address without a token",
			body: "[admin]\nlisten = \"0.0.0.0:9180\"\n",
			want: []string{`FILE:2:1: admin.listen: "0.0.0.0:9180" is reachable from other hosts: set admin.token_file`},
		},
		{
			name:  "admin.token_file too short",
			body:  "[admin]\nlisten = \"0.0.0.0:9180\"\ntoken_file = \"token\"\n",
			extra: map[string]string{"token": "secret\n"},
			want:  []string{`FILE:3:1: admin.token_file: the token in token has 6 characters: use at least 16`},
		},
		{
			name: "admin.token_file missing",
			body: "[admin]\ntoken_file = \"nowhere\"\n",
			want: []string{`FILE:2:1: admin.token_file: open `},
		},
		{
			name: "metrics.listen beside admin.listen",
			body: "[admin]\nlisten = \"127.0.0.1:9181\"\n[metrics]\nlisten = \"127.0.0.1:9180\"\n",
			want: []string{`FILE:4:1: metrics.listen: replaced by admin.listen, which serves /metrics too: remove [metrics]`},
		},
		{
			// Unknown keys and wrong types do not hide the range checks of
			// the other keys: every mistake of the file in one run.
			name: "every kind of mistake in one file, each with its line",
			body: "projet = \"x\"\n[etcd]\nlease_ttl = 10\n[proxy]\nport = \"80\"\npublish = \"nowhere\"\n" + apache + "replicas = 0\n",
			want: []string{
				"FILE:1:1: projet: unknown key",
				`FILE:3:1: etcd.lease_ttl: 10 is a bare number; write a duration with its unit, such as "10s"`,
				`FILE:5:1: proxy.port: want an integer, got string "80"`,
				`FILE:6:1: proxy.publish: "nowhere" is not IP:PORT`,
				"FILE:9:1: service[0] (apache).replicas: 0 out of range 1-1000",
			},
			notWant: []string{"etcd.lease_ttl: 0s", "proxy.port: 0"}, // dropped keys are not range-checked as zero
		},
		{
			name: "advertise host without node_address",
			body: "[network]\nadvertise = \"host\"\n",
			want: []string{`network.node_address (not set): required with advertise = "host"`},
		},
		{
			name: "node_address not of this host",
			body: "[network]\nadvertise = \"host\"\nnode_address = \"192.0.2.77\"\n",
			want: []string{"FILE:3:1: network.node_address: 192.0.2.77 is not an address of this host (it has "},
		},
		{
			name: "node_address not an address",
			body: "[network]\nnode_address = \"hosta\"\n",
			want: []string{`FILE:2:1: network.node_address: "hosta" is not an IPv4 address of this host`},
		},
		{
			name: "unknown advertise and placement",
			body: "[network]\nadvertise = \"public\"\n[proxy]\nplacement = \"one\"\n",
			want: []string{`FILE:2:1: network.advertise: "public" is not "container" or "host"`, `FILE:4:1: proxy.placement: "one" is not "every" or "leader"`},
		},
		{
			name: "max_per_node below 1",
			body: apache + "max_per_node = 0\n",
			want: []string{"service[0] (apache).max_per_node: 0 out of range 1-1000 (1000, the default, is no bound)"},
		},
		{
			name:    "an invalid project is said once, not again for what defaults from it",
			body:    "project = \"Bad Name\"\n",
			want:    []string{`FILE:1:1: project: name "Bad Name"`},
			notWant: []string{"network.name"},
		},
		{
			name:    "a value of the wrong type does not also count as missing",
			body:    "[[service]]\nname = \"web\"\nimage = 5\n",
			want:    []string{"FILE:3:1: service[0] (web).image: want a string, got integer 5"},
			notWant: []string{"must not be empty"},
		},
		{
			name: "a written zero is not the default: health.timeout 0s",
			body: apache + "[service.health]\ntimeout = \"0s\"\n",
			want: []string{"FILE:4:1: service[0] (apache).health.timeout: 0s must be positive"},
		},
		{
			name: "a written zero is not the default: proxy.port 0",
			body: "[proxy]\nport = 0\n",
			want: []string{"FILE:2:1: proxy.port: 0 out of range 1-65535"},
		},
		{
			name: "a written zero is not the default: service port 0",
			body: apache + "port = 0\n",
			want: []string{"FILE:3:1: service[0] (apache).port: 0 out of range 1-65535"},
		},
		{
			name: "a written zero is not the default: etcd.dial_timeout 0s",
			body: "[etcd]\ndial_timeout = \"0s\"\n",
			want: []string{"FILE:2:1: etcd.dial_timeout: 0s out of range 100ms-5m"},
		},
		{
			name: "no service at all",
			body: "service = []\n",
			want: []string{"FILE:1:1: service: no service: give at least one [[service]]"},
		},
		{
			name: "include_projects with a bad name",
			body: "[etcd]\ninclude_projects = [\"ok\", \"Not OK\"]\n",
			want: []string{"FILE:2:1: etcd.include_projects[1]: name \"Not OK\""},
		},
		{
			// 443 is nginx's TLS port in the proxy: a certificate (a file,
			// etcd or ACME) adds a TLS listener on it at any time.
			name: "status_port on the TLS port",
			body: "[proxy]\npublish_tls = \"127.0.0.1:8443\"\nstatus_port = 443\n",
			want: []string{"FILE:3:1: proxy.status_port: 443 is nginx's TLS port in the proxy (proxy.publish_tls is set: a certificate from a file, etcd or ACME turns TLS on): choose another port"},
		},
		{
			name: "port on the TLS port",
			body: "[proxy]\npublish_tls = \":443\"\nport = 443\n",
			want: []string{"FILE:3:1: proxy.port: 443 is nginx's TLS port in the proxy"},
		},
		{
			name: "publish and publish_tls on one host port",
			body: "[proxy]\npublish = \"0.0.0.0:8443\"\npublish_tls = \"127.0.0.1:8443\"\n",
			want: []string{`FILE:3:1: proxy.publish_tls: "127.0.0.1:8443" takes the host port of proxy.publish ("0.0.0.0:8443")`},
		},
		{
			name: "response header values nginx refuses",
			body: apache + "[service.response_headers]\nX-Price = \"costs 5$\"\nX-A = \"$nosuchvar\"\nX-B = \"${host\"\nX-C = \"${1}\"\nX-D = \"$host$\"\nX-E = \"" + strings.Repeat("v", 4001) + "\"\n",
			want: []string{
				`FILE:4:1: service[0] (apache).response_headers.X-Price: "costs 5$": a $ must start an nginx variable ($host or ${host}); nginx has no way to write a literal $`,
				`FILE:5:1: service[0] (apache).response_headers.X-A: "$nosuchvar": $nosuchvar is not a variable nginx knows`,
				`FILE:6:1: service[0] (apache).response_headers.X-B: "${host": ${ without its }`,
				`FILE:7:1: service[0] (apache).response_headers.X-C: "${1}": $1 is not a variable nginx knows`,
				`FILE:8:1: service[0] (apache).response_headers.X-D: "$host$": a $ must start`,
				`FILE:9:1: service[0] (apache).response_headers.X-E: a value of 4001 bytes: at most 4000`,
			},
		},
		{
			name: "response header names differing in case",
			body: apache + "[service.response_headers]\nX-A = \"1\"\nx-a = \"2\"\n" + strings.Repeat("N", 257) + " = \"1\"\n",
			want: []string{
				`FILE:5:1: service[0] (apache).response_headers.x-a: the same header as X-A (header names are case-insensitive): keep one`,
				`FILE:6:1: service[0] (apache).response_headers.` + strings.Repeat("N", 257) + `: a name of 257 characters: at most 256`,
			},
		},
		{
			name: "path_prefix too long",
			body: apache + "path_prefix = \"/" + strings.Repeat("p", 1024) + "\"\n",
			want: []string{`FILE:3:1: service[0] (apache).path_prefix: 1025 characters: at most 1024`},
		},
		{
			name: "proxy paths with characters nginx reads as syntax",
			body: "[proxy]\nconfig_dir = \"/etc/my nginx\"\nconfig_path = \"/etc/my nginx/conf.d/u;x.conf\"\nmain_config = \"/etc/my nginx/n$.conf\"\n",
			want: []string{
				`FILE:2:1: proxy.config_dir: "/etc/my nginx" must be a clean absolute path of letters, digits and . _ - /`,
				`FILE:3:1: proxy.config_path: "/etc/my nginx/conf.d/u;x.conf" must be a clean absolute path of letters, digits and . _ - /`,
				`FILE:4:1: proxy.main_config: "/etc/my nginx/n$.conf" must be a clean absolute path of letters, digits and . _ - /`,
			},
		},
		{
			name: "several problems are all reported",
			body: "[proxy]\npublish = \"nowhere\"\n" + apache + "replicas = 0\n[service.health]\nrise = 0\n",
			want: []string{
				"FILE:2:1: proxy.publish: ",
				"FILE:5:1: service[0] (apache).replicas: 0 out of range",
				"FILE:7:1: service[0] (apache).health.rise: 0 out of range",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := writeConfig(t, tt.body)
			for name, content := range tt.extra {
				if err := os.WriteFile(filepath.Join(filepath.Dir(file), name), []byte(content), 0o600); err != nil {
					t.Fatalf("write %s: %v", name, err)
				}
			}
			cfg, _, err := Load(file, testHost)
			if err == nil {
				t.Fatalf("Load succeeded (%+v), want an error", cfg)
			}
			msg := err.Error()
			last := -1
			for _, w := range tt.want {
				w := strings.ReplaceAll(w, "FILE", file)
				i := strings.Index(msg, w)
				switch {
				case i < 0:
					t.Errorf("error does not contain %q:\n%s", w, msg)
				case i < last:
					t.Errorf("%q is reported before the line above it:\n%s", w, msg)
				}
				last = i
			}
			for _, nw := range tt.notWant {
				if strings.Contains(msg, nw) {
					t.Errorf("error contains %q:\n%s", nw, msg)
				}
			}
		})
	}
}

// TestResponseHeaderVariables: a $ in a response header's value must start
// a variable nginx knows, as nginx reads it ($name, ${name}, any case, the
// families by prefix); anything else is refused, naming the variable.
func TestResponseHeaderVariables(t *testing.T) {
	for _, tt := range []struct {
		value, want string // want: part of the error; "": accepted
	}{
		{"DENY", ""},
		{"$host", ""},
		{"$HOST", ""},
		{"${request_id}x", ""},
		{"$scheme://$host$request_uri", ""},
		{"$host-$remote_addr.$server_port/", ""},
		{"$http_x_forwarded_proto $sent_http_content_type $cookie_s $arg_q", ""},
		{"$upstream_http_x_backend $upstream_cookie_id $upstream_trailer_x $sent_trailer_x", ""},
		{"costs 5$", "a $ must start an nginx variable"},
		{"$ 5", "a $ must start an nginx variable"},
		{"$-", "a $ must start an nginx variable"},
		{"$nosuchvar", "$nosuchvar is not a variable nginx knows"},
		{"$hostx", "$hostx is not a variable nginx knows"},
		{"$http_", "$http_ is not a variable nginx knows"},
		{"$1", "$1 is not a variable nginx knows"},
		{"${host", "${ without its }"},
		{"${ho-st}", "${ho-st} is not a variable: a name is letters, digits and _"},
		{"${}", "${} is not a variable"},
	} {
		t.Run(tt.value, func(t *testing.T) {
			_, _, err := Load(writeConfig(t, "[[service]]\nname = \"apache\"\nresponse_headers = { X-A = "+strconv.Quote(tt.value)+" }\n"), testHost)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("error %v, want one with %q", err, tt.want)
			}
		})
	}
}

// TestLoadRelativePaths checks that relative paths are resolved
// against the spec file's directory, not the working directory.
func TestLoadRelativePaths(t *testing.T) {
	file := writeConfig(t, "[proxy]\ntemplate = \"tmpl/proxy.tmpl\"\n[etcd]\nusername = \"u\"\npassword_file = \"secret\"\n")
	dir := filepath.Dir(file)
	if wd, err := os.Getwd(); err != nil || wd == dir {
		t.Fatalf("working directory %q (%v) must differ from the spec's %q for this test", wd, err, dir)
	}
	if err := os.Mkdir(filepath.Join(dir, "tmpl"), 0o700); err != nil {
		t.Fatalf("mkdir: %v", err)
	}
	for name, content := range map[string]string{
		"tmpl/proxy.tmpl": "# rendered for {{len .Services}} services\n",
		"secret":          "hunter2\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatalf("write %s: %v", name, err)
		}
	}
	cfg, files, err := Load(file, testHost)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	tmpl, err := cfg.LoadTemplate()
	if err != nil {
		t.Fatalf("LoadTemplate: %v", err)
	}
	if got, want := tmpl.Name(), filepath.Join(dir, "tmpl/proxy.tmpl"); got != want {
		t.Errorf("template %q, want %q", got, want)
	}
	if scfg := cfg.StoreConfig(files); scfg.Password != "hunter2" {
		t.Errorf("password %q read from the password file, want hunter2 (trailing newline dropped)", scfg.Password)
	}
}

// TestLoadTemplate checks that proxy.template is parsed when loaded, and
// that a template error names the spec file, the key, the template file and
// the line. TMPL in want stands for the template file's path.
func TestLoadTemplate(t *testing.T) {
	tests := []struct {
		name string
		text string
		want []string // substrings of the error; empty: it parses
	}{
		{
			name: "fine",
			text: "# {{len .Services}} services\n{{range .Services}}upstream {{.Name}}_pool {\n{{range .Backends}}    server {{.Addr}};\n{{end}}}\n{{end}}",
		},
		{
			name: "confd functions",
			text: "{{range gets \"/services/apache/*\"}}server {{base .Key}};\n{{end}}",
		},
		{
			name: "unclosed action",
			text: "# upstreams\n\n{{ range .Services }\nupstream {{.Name}}_pool {}\n{{end}}\n",
			want: []string{"TMPL:3: ", `unexpected "}" in operand`},
		},
		{
			name: "range without end",
			text: "# upstreams\n{{range .Services}}\nupstream {{.Name}}_pool {}\n",
			want: []string{"TMPL:4: ", "unexpected EOF"},
		},
		{
			name: "unknown function",
			text: "# upstreams\n{{ nosuch .Services }}\n",
			want: []string{"TMPL:2: ", `function "nosuch" not defined`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := writeConfig(t, "[proxy]\ntemplate = \"proxy.tmpl\"\n")
			tmplFile := filepath.Join(filepath.Dir(file), "proxy.tmpl")
			if err := os.WriteFile(tmplFile, []byte(tt.text), 0o600); err != nil {
				t.Fatalf("write %s: %v", tmplFile, err)
			}
			cfg, _, err := Load(file, testHost)
			if err != nil {
				t.Fatalf("Load: %v; want the template checked by LoadTemplate", err)
			}
			tmpl, err := cfg.LoadTemplate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("LoadTemplate: %v; want it parsed", err)
				}
				if tmpl.Name() != tmplFile {
					t.Errorf("template %q, want %q", tmpl.Name(), tmplFile)
				}
				return
			}
			if err == nil {
				t.Fatalf("LoadTemplate succeeded; want an error")
			}
			want := append([]string{file + ": proxy.template: "}, tt.want...)
			for _, w := range want {
				if w := strings.ReplaceAll(w, "TMPL", tmplFile); !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q:\n%s", w, err)
				}
			}
		})
	}
}

// TestWrittenZeroIsHonoured: a zero the file sets is the value, not the
// default (stop_grace = "0s" kills at once; status_port = 0 turns the
// status server off), and cpus = 0 means no limit, as documented.
func TestWrittenZeroIsHonoured(t *testing.T) {
	cfg, _, err := Load(writeConfig(t, "[proxy]\nstatus_port = 0\ncpus = 0\n[[service]]\nname = \"apache\"\nstop_grace = \"0s\"\n"), testHost)
	if err != nil {
		t.Fatal(err)
	}
	spec := cfg.OrchestratorSpec()
	if g := spec.Services[0].StopGrace; g != 0 {
		t.Errorf("stop_grace = \"0s\" became %s", g)
	}
	if *cfg.Project.Proxy.StatusPort != 0 || *cfg.Project.Proxy.Dynamic {
		t.Errorf("status_port = 0 gave status port %d, dynamic %v", *cfg.Project.Proxy.StatusPort, *cfg.Project.Proxy.Dynamic)
	}
	if spec.Proxy.Limits.NanoCPUs != 0 {
		t.Errorf("cpus = 0 gave a limit of %d nano-CPUs", spec.Proxy.Limits.NanoCPUs)
	}
}

// TestAdminListen: the admin listener is on by default on loopback, an
// empty listen turns it off, and the older [metrics] listen is read as
// admin.listen.
func TestAdminListen(t *testing.T) {
	for _, tt := range []struct{ name, body, want string }{
		{"default", "", "127.0.0.1:9180"},
		{"off", "[admin]\nlisten = \"\"\n", ""},
		{"another port", "[admin]\nlisten = \"127.0.0.1:9999\"\n", "127.0.0.1:9999"},
		{"the older [metrics]", "[metrics]\nlisten = \"127.0.0.1:9100\"\n", "127.0.0.1:9100"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "upstreamd.toml")
			if err := os.WriteFile(file, []byte(tt.body), 0o644); err != nil {
				t.Fatal(err)
			}
			cfg, _, err := Load(file, testHost)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Node.Admin.Listen != tt.want {
				t.Errorf("admin.listen = %q; want %q", cfg.Node.Admin.Listen, tt.want)
			}
		})
	}
}

// TestShippedSpecs: the specs the demos mount are valid (their token
// files are made by make, and the cluster's node addresses are the nested
// hosts': only these may be said here).
func TestShippedSpecs(t *testing.T) {
	files, err := filepath.Glob("../images/host/demo/*.toml")
	if err != nil || len(files) != 3 {
		t.Fatalf("the cluster demo's specs: %v %v", files, err)
	}
	for _, f := range append(files, "../images/upstreamd/compose.toml") {
		t.Run(filepath.Base(f), func(t *testing.T) {
			_, _, err := Load(f, testHost)
			if err == nil {
				return
			}
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.Contains(line, "admin.token_file: open ") && !strings.Contains(line, "is not an address of this host") {
					t.Errorf("%s: %s", f, line)
				}
			}
		})
	}
}

// testHost is the host the tests load specs on: its name, two addresses
// and the real clock.
var testHost = Host{
	Name: "Test_Host.local",
	Addrs: func() ([]net.Addr, error) {
		return []net.Addr{
			&net.IPNet{IP: net.IPv4(127, 0, 0, 1), Mask: net.CIDRMask(8, 32)},
			&net.IPNet{IP: net.IPv4(10, 1, 2, 3), Mask: net.CIDRMask(24, 32)},
		}, nil
	},
	Now: time.Now,
}
