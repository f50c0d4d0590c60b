//go:build integration

package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/integration/internal/pki"
	"github.com/upstreamd/upstreamd/nginx"
	"github.com/upstreamd/upstreamd/render"
	"github.com/upstreamd/upstreamd/spec"
)

// This file is the integration half of the spec's validation: every spec
// spec.Load accepts must give configs the real proxy image's nginx takes,
// without a warning. It runs the daemon's own loading and rendering (the
// spec package) against the Docker engine and upstreamd/nginx:latest.

// edgeSpec is a spec of the table: what spec.Load must refuse it with
// (refused, each a part of the error), or nothing when it must accept it.
type edgeSpec struct {
	name, body string
	refused    []string
}

// label returns n characters c: a label of a host name.
func label(c string, n int) string { return strings.Repeat(c, n) }

// tomlStrings writes a TOML array of strings.
func tomlStrings(items []string) string {
	q := make([]string, len(items))
	for i, s := range items {
		q[i] = fmt.Sprintf("%q", s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// edgeSpecs is every field that reaches nginx at its limits, and the values
// validation refuses because nginx would refuse them or serve them broken.
// A spec that serves a certificate file names site.pem and site.key.
func edgeSpecs() []edgeSpec {
	longest := label("a", 63) + "." + label("b", 63) + "." + label("c", 63) + "." + label("d", 61) // 253
	many := make([]string, 600)
	for i := range many {
		many[i] = fmt.Sprintf("host-%03d.customer-sites.example.com", i)
	}
	var services strings.Builder
	for i := range 40 {
		fmt.Fprintf(&services, "[[service]]\nname = \"svc_%02d.v-2\"\nimage = \"x\"\nhosts = [\"s%d.example\", \"*.s%d.example\"]\npath_prefix = \"/p%d\"\n", i, i, i, i)
	}
	var every []string // every variable validation knows, one of each family
	names, prefixes := spec.NginxVariables()
	for _, v := range names {
		every = append(every, "$"+v)
	}
	for _, p := range prefixes {
		every = append(every, "${"+p+"x}")
	}
	deepPrefix := strings.Repeat("/abcdefghijklmnopqrstuvwxyz0123456789._~-", 26)[:1024]
	const tlsFile = "[proxy]\npublish_tls = \"127.0.0.1:8443\"\n[[tls.certificate]]\ncert_file = \"site.pem\"\nkey_file = \"site.key\"\n"
	const acme = "[acme]\ndirectory = \"https://ca.invalid/directory\"\n"
	const acmeProxy = "[proxy]\npublish = \"0.0.0.0:80\"\npublish_tls = \"0.0.0.0:443\"\n"
	const web = "[[service]]\nname = \"web\"\nimage = \"x\"\n"
	return []edgeSpec{
		{name: "the seed's defaults", body: ""},
		{name: "static pools without a status server",
			body: "[proxy]\nstatus_port = 0\n" + web + "read_timeout = \"24h\"\nclient_max_body_size = \"0\"\nresponse_headers = { X-Served-By = \"$upstream_addr\" }\n"},
		{name: "longest host names",
			body: web + "hosts = " + tomlStrings([]string{longest, label("e", 39) + ".example", label("f", 38) + ".example", "*." + label("g", 63) + ".example"}) + "\n"},
		{name: "many hosts", body: web + "hosts = " + tomlStrings(many) + "\n"},
		{name: "many services, names with _ . -", body: services.String() +
			"[[service]]\nname = \"" + label("n", 30) + "_" + label("m", 32) + "\"\nimage = \"x\"\n[proxy]\nservice = \"" + label("n", 30) + "_" + label("m", 32) + "\"\n"},
		{name: "wildcards", body: web + "hosts = [\"example.com\", \"*.example.com\", \"*.a.example.com\", \"x.a.example.com\"]\n"},
		{name: "deep and odd path prefixes", body: web + "path_prefix = \"" + deepPrefix + "\"\nstrip_prefix = true\n" +
			"[[service]]\nname = \"b\"\nimage = \"x\"\npath_prefix = \"/~user/a.b_c-d~e/.../..x/x..\"\n" +
			"[[service]]\nname = \"c\"\nimage = \"x\"\nhosts = [\"c.example\"]\npath_prefix = \"/~user/a.b_c-d~e/.../..x/x..\"\nstrip_prefix = true\n" +
			"[[service]]\nname = \"d\"\nimage = \"x\"\nhosts = [\"c.example\"]\npath_prefix = \"/.well-known\"\n"},
		{name: "every header form", body: web + "[service.response_headers]\n" +
			"X-Frame-Options = \"DENY\"\n" +
			"Strict-Transport-Security = \"max-age=63072000; includeSubDomains; preload\"\n" +
			"Content-Security-Policy = \"default-src 'self'; script-src 'self' https://cdn.example {x} #y\"\n" +
			"x-lower-case-1 = \"caf\u00e9 \u2713\"\n" +
			"X-Request = \"$scheme://$host$request_uri ${request_id}x $HOST\"\n" +
			"X-Families = \"$http_x_forwarded_proto $sent_http_content_type $cookie_session $arg_q $upstream_http_x_backend $upstream_cookie_id $sent_trailer_x\"\n" +
			"X-Upstream = \"${upstream_addr}/${upstream_status} $upstream_response_time\"\n" +
			"X-Longest = \"" + strings.Repeat("v", 4000) + "\"\n" +
			label("X", 256) + " = \"longest name\"\n"},
		{name: "every variable validation knows", body: web + "response_headers = { X-Vars = \"" + strings.Join(every, " ") + "\" }\n"},
		{name: "timeouts and sizes at their bounds", body: web + "connect_timeout = \"1ms\"\nread_timeout = \"1s\"\nsend_timeout = \"24h\"\nclient_max_body_size = \"999999999g\"\n" +
			"[[service]]\nname = \"b\"\nimage = \"x\"\npath_prefix = \"/b\"\nconnect_timeout = \"1m\"\nread_timeout = \"24h\"\nsend_timeout = \"1s\"\nclient_max_body_size = \"1k\"\n"},
		{name: "ports at their bounds", body: "[proxy]\nport = 1\nstatus_port = 65535\n"},
		{name: "ports at their other bounds", body: "[proxy]\nport = 65535\nstatus_port = 1\n"},
		{name: "status port 443 without TLS", body: "[proxy]\nstatus_port = 443\n"},
		{name: "TLS from a file, redirect to a port of its own", body: tlsFile + web + "hosts = [\"site.example\", \"other.example\"]\nhttps_redirect = true\n" +
			"[[service]]\nname = \"b\"\nimage = \"x\"\npath_prefix = \"/b\"\nhttps_redirect = true\n"},
		{name: "ACME, certificates arriving at run time", body: acmeProxy + acme + web + "hosts = [\"site.example\", \"" + longest + "\", \"*.wild.example\"]\nhttps_redirect = true\n" +
			"[[service]]\nname = \"b\"\nimage = \"x\"\npath_prefix = \"/.well-known\"\n"},
		{name: "TLS from etcd only", body: "[proxy]\npublish_tls = \"127.0.0.1:8443\"\n" + web + "hosts = " + tomlStrings(many[:100]) + "\n"},

		// Refused: nginx would reject the config, or serve it broken.
		{name: "literal $ in a header", body: web + "response_headers = { X-Price = \"costs 5$\" }\n",
			refused: []string{`service[0] (web).response_headers.X-Price: "costs 5$": `}},
		{name: "unknown variable in a header", body: web + "response_headers = { X-A = \"$nosuchvar\" }\n",
			refused: []string{`service[0] (web).response_headers.X-A: "$nosuchvar": $nosuchvar is not a variable`}},
		{name: "header names differing in case", body: web + "response_headers = { X-A = \"1\", x-a = \"2\" }\n",
			refused: []string{`service[0] (web).response_headers.x-a: the same header as X-A`}},
		{name: "path_prefix of the ACME answers", body: acmeProxy + acme + web + "hosts = [\"site.example\"]\npath_prefix = \"/.well-known/acme-challenge\"\n",
			refused: []string{`service[0] (web).path_prefix: "/.well-known/acme-challenge" is where [acme] answers`}},
		{name: "path_prefix under the ACME answers", body: acmeProxy + acme + web + "hosts = [\"site.example\"]\npath_prefix = \"/.well-known/acme-challenge/x\"\n",
			refused: []string{`service[0] (web).path_prefix: "/.well-known/acme-challenge/x" is where [acme] answers`}},
		{name: "status port on the TLS port", body: strings.Replace(tlsFile, "[proxy]\n", "[proxy]\nstatus_port = 443\n", 1),
			refused: []string{"proxy.status_port: 443 is nginx's TLS port"}},
		{name: "plain port on the TLS port, ACME", body: strings.Replace(acmeProxy, "[proxy]\n", "[proxy]\nport = 443\n", 1) + acme + web + "hosts = [\"site.example\"]\n",
			refused: []string{"proxy.port: 443 is nginx's TLS port"}},
		{name: "plain port on the TLS port, a certificate file", body: strings.Replace(tlsFile, "[proxy]\n", "[proxy]\nport = 443\n", 1),
			refused: []string{"proxy.port: 443 is nginx's TLS port"}},
		{name: "header value too long", body: web + "response_headers = { X-A = \"" + strings.Repeat("v", 4096) + "\" }\n",
			refused: []string{"service[0] (web).response_headers.X-A: a value of 4096 bytes"}},
		{name: "path_prefix too long", body: web + "path_prefix = \"" + strings.Repeat(deepPrefix, 4) + "\"\n",
			refused: []string{"service[0] (web).path_prefix: 4096 characters"}},
		{name: "config_dir nginx would split", body: strings.Replace(tlsFile, "[proxy]\n",
			"[proxy]\nconfig_dir = \"/etc/my nginx\"\nconfig_path = \"/etc/my nginx/conf.d/u.conf\"\nmain_config = \"/etc/my nginx/nginx.conf\"\n", 1),
			refused: []string{`proxy.config_dir: "/etc/my nginx"`}},
	}
}

// TestNginxAcceptsWhatValidationAccepts loads each edge-case spec as the
// daemon does: a spec spec.Load refuses must be refused for the reason
// the table says (and goes no further); one it accepts is rendered with
// the built-in template as `run` renders it (no backend; a backend per
// service; with TLS possible, a certificate for every host arriving at run
// time as ACME or `certs import` bring one) and each rendering must pass
// the daemon's own check (nginx.Session.Check) in upstreamd/nginx:latest,
// and `nginx -t` without a warning. One throwaway proxy serves every case.
func TestNginxAcceptsWhatValidationAccepts(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	docker, err := containers.New(containers.Config{Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer docker.Close()
	def, _, err := spec.Load("", spec.ThisHost()) // the default proxy: its image and paths
	if err != nil {
		t.Fatal(err)
	}
	ncfg := def.NginxConfig()
	ncfg.Logger = zerolog.Nop()
	s, remove, err := nginx.Throwaway(ctx, docker, def.Project.Proxy.Image, ncfg)
	if err != nil {
		t.Fatal(err)
	}
	defer remove()
	tmpl := render.Default()
	dir := t.TempDir()
	ca, err := pki.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.IssueServer(dir, "site", "site.example", "*.site.example"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range edgeSpecs() {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "upstreamd.toml")
			for _, f := range []string{"site.pem", "site.key"} {
				b, err := os.ReadFile(filepath.Join(dir, f))
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(filepath.Dir(file), f), b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.WriteFile(file, []byte(tc.body), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, files, err := spec.Load(file, spec.ThisHost())
			switch {
			case len(tc.refused) > 0 && err != nil:
				for _, w := range tc.refused {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error lacks %q:\n%v", w, err)
					}
				}
				return
			case len(tc.refused) > 0:
				// Said, and checked with nginx below to show why it must not be.
				t.Errorf("spec.Load accepted the spec; want it refused with %q", tc.refused)
			case err != nil:
				t.Fatalf("spec.Load: %v", err)
			}
			for _, r := range renderings(t, cfg, files, tmpl, ca, dir) {
				if err := s.WriteFiles(ctx, r.files); err != nil {
					t.Fatal(err)
				}
				if err := s.Check(ctx, r.config); err != nil {
					t.Errorf("%s: the daemon's check: %v", r.name, err)
					continue
				}
				if warn := nginxWarnings(ctx, t, docker, s.Proxy().ID, def.Project.Proxy.ConfigPath, r.config); warn != "" {
					t.Errorf("%s: nginx -t warns:\n%s", r.name, warn)
				}
			}
		})
	}
}

// rendering is one config the daemon may deliver for a spec, and the
// files it names.
type rendering struct {
	name   string
	config []byte
	files  map[string][]byte
}

// renderings are what the daemon renders for cfg: at start (no backend,
// then one made-up backend per service: RenderChecks, as run checks them)
// and, when TLS may appear at run time, with a certificate for every host
// of the spec from etcd (signed by ca), as the render controller adds it.
func renderings(t *testing.T, cfg *spec.Spec, files spec.Files, tmpl *render.Template, ca *pki.CA, dir string) []rendering {
	t.Helper()
	tc, err := cfg.RenderChecks(tmpl, files)
	if err != nil {
		t.Fatal(err)
	}
	out := []rendering{{"no backend", tc.Empty, tc.Files}, {"a backend per service", tc.Sample, tc.Files}}
	in := cfg.ViewInput(files)
	if in.TLS == nil {
		return out
	}
	names := []string{"default.example"}
	for _, s := range cfg.Project.Service {
		names = append(names, s.Hosts...)
	}
	if err := ca.IssueServer(dir, "etcd", names...); err != nil {
		t.Fatal(err)
	}
	certPEM, err := os.ReadFile(filepath.Join(dir, "etcd.pem"))
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "etcd.key"))
	if err != nil {
		t.Fatal(err)
	}
	in.Snapshot = cfg.SampleSnapshot()
	withCert := *in.TLS
	withCert.Certs = append(slices.Clip(withCert.Certs), render.NewTLSCert(cfg.Project.Proxy.ConfigDir, names, certPEM, keyPEM))
	in.TLS = &withCert
	v := render.NewView(in)
	rendered, err := render.Render(tmpl, v)
	if err != nil {
		t.Fatal(err)
	}
	return append(out, rendering{"a certificate from etcd", render.Finish(rendered, v), v.Files()})
}

// nginxWarnings runs `nginx -t` on config as the live file of the
// throwaway proxy (where no nginx runs) and returns its warnings and
// errors; the daemon's check is quiet (-q) about warnings.
func nginxWarnings(ctx context.Context, t *testing.T, docker *containers.Client, id, configPath string, config []byte) string {
	t.Helper()
	res, err := docker.ExecWithStdin(ctx, id, []string{"sh", "-c",
		`cat > "$1" && nginx -t; rc=$?; rm -f "$1"; exit $rc`, "nginx-warnings", configPath}, config)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for l := range strings.SplitSeq(res.Output(), "\n") {
		if strings.Contains(l, "[warn]") || strings.Contains(l, "[emerg]") || strings.Contains(l, "[alert]") {
			lines = append(lines, l)
		}
	}
	if res.ExitCode != 0 && len(lines) == 0 {
		lines = append(lines, res.Output())
	}
	return strings.Join(lines, "\n")
}
