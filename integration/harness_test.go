//go:build integration

package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"github.com/testcontainers/testcontainers-go"

	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/integration/internal/cluster"
	"github.com/upstreamd/upstreamd/integration/internal/daemon"
	"github.com/upstreamd/upstreamd/integration/internal/engine"
	"github.com/upstreamd/upstreamd/integration/internal/etcd"
	"github.com/upstreamd/upstreamd/store"
)

// binPath is the daemon binary built once by TestMain.
var binPath string

// images the suite needs; `make images` builds them.
var requiredImages = []string{"upstreamd/nginx:latest", "upstreamd/apache:latest", etcd.DefaultImage, cluster.HostImage}

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	for _, v := range []string{"TESTCONTAINERS_RYUK_DISABLED", "TESTCONTAINERS_HOST_OVERRIDE"} {
		if os.Getenv(v) == "" {
			fmt.Fprintf(os.Stderr, "integration: %s is not set; run the suite with `make integration` (see README)\n", v)
			return 1
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dc, err := containers.New(containers.Config{Logger: zerolog.Nop()})
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	defer dc.Close()
	// An unreachable engine is a failure, never a skip.
	if _, err := dc.Ping(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "integration: docker engine unreachable:", err)
		return 1
	}
	for _, img := range requiredImages {
		if err := dc.EnsureImage(ctx, img); err != nil {
			fmt.Fprintf(os.Stderr, "integration: %v\n", err)
			return 1
		}
	}
	dir, err := os.MkdirTemp("", "upstreamd-it-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	defer func() { _ = os.RemoveAll(dir) }() // a temp dir left behind is harmless
	if binPath, err = daemon.Build(ctx, "..", dir); err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	return m.Run()
}

// stackOptions shape the spec a test runs.
type stackOptions struct {
	replicas    int
	template    string // template text; empty = built-in
	healthPath  string
	interval    string
	timeout     string
	rise, fall  int
	extra       string // more TOML appended verbatim
	proxyTOML   string // more keys inside [proxy]
	dockerHost  string // [docker] host; empty: the default socket
	etcdPort    int    // publish etcd on this fixed 127.0.0.1 port (survives a restart)
	serviceTOML string // more keys inside [[service]]
	project     string // the project; empty: "it" and random hex
	service     string // the service; empty: apache
	etcdTOML    string // more keys inside [etcd]
	sharedEtcd  *stack // use this stack's etcd instead of starting one
	image       string // the service's image; empty: upstreamd/apache:latest
	stopGrace   string // the service's stop_grace; empty: 2s
}

type option func(*stackOptions)

func withReplicas(n int) option { return func(o *stackOptions) { o.replicas = n } }
func withImage(image, stopGrace string) option {
	return func(o *stackOptions) { o.image, o.stopGrace = image, stopGrace }
}
func withTemplate(text string) option { return func(o *stackOptions) { o.template = text } }
func withHealth(path, interval string, rise, fall int) option {
	return func(o *stackOptions) { o.healthPath, o.interval, o.rise, o.fall = path, interval, rise, fall }
}
func withServiceTOML(s string) option { return func(o *stackOptions) { o.serviceTOML += s + "\n" } }
func withExtraTOML(s string) option   { return func(o *stackOptions) { o.extra += s + "\n" } }
func withProxyTOML(s string) option   { return func(o *stackOptions) { o.proxyTOML += s + "\n" } }
func withDockerHost(h string) option  { return func(o *stackOptions) { o.dockerHost = h } }
func withEtcdPort(p int) option       { return func(o *stackOptions) { o.etcdPort = p } }
func withProject(p string) option     { return func(o *stackOptions) { o.project = p } }
func withService(name string) option  { return func(o *stackOptions) { o.service = name } }

// withEtcdOf makes the stack use other's etcd: two projects sharing one.
func withEtcdOf(other *stack) option { return func(o *stackOptions) { o.sharedEtcd = other } }

// stack is one test's world: its own etcd, project, network and port.
type stack struct {
	t          *testing.T
	project    string
	publish    string // 127.0.0.1:port nginx is published on
	etcdURL    string
	daemonEtcd string // the endpoint the daemon is given, when not etcdURL
	etcd       *store.Client
	docker     *engine.Client
	configFile string
	opts       stackOptions
	etcdC      *etcd.Container
	admin      string // 127.0.0.1:port of the daemon's admin listener
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// freePort returns a port on 127.0.0.1 nobody listens on right now.
func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func newStack(t *testing.T, opts ...option) *stack {
	t.Helper()
	o := stackOptions{replicas: 3, healthPath: "/healthz", interval: "500ms", timeout: "400ms", rise: 2, fall: 2,
		project: "it" + randomHex(4), service: "apache"}
	for _, opt := range opts {
		opt(&o)
	}
	ctx := t.Context()
	s := &stack{t: t, project: o.project, opts: o}
	s.publish = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	s.admin = fmt.Sprintf("127.0.0.1:%d", freePort(t))

	var err error
	if o.sharedEtcd != nil {
		s.etcdURL, s.etcdC = o.sharedEtcd.etcdURL, o.sharedEtcd.etcdC
	} else {
		ec, err := runEtcd(t, o.etcdPort)
		require.NoError(t, err)
		s.etcdURL, err = ec.Endpoint(ctx)
		require.NoError(t, err)
		s.etcdC = ec
	}

	s.docker, err = engine.New()
	require.NoError(t, err)
	t.Cleanup(func() { s.removeAll() })

	s.etcd, err = store.New(store.Config{Endpoints: []string{s.etcdURL}, Logger: zerolog.Nop()})
	require.NoError(t, err)
	t.Cleanup(func() { s.etcd.Close() })

	s.configFile = filepath.Join(t.TempDir(), "upstreamd.toml")
	s.writeConfig()
	return s
}

// runEtcd starts an etcd container, published on the fixed 127.0.0.1 port
// when port is not 0; it is removed when the test ends.
func runEtcd(t *testing.T, port int) (*etcd.Container, error) {
	var opts []testcontainers.ContainerCustomizer
	if port != 0 {
		opts = append(opts, testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) {
			hc.PortBindings = network.PortMap{network.MustParsePort("2379/tcp"): {
				{HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: strconv.Itoa(port)}}}
		}))
	}
	ec, err := etcd.Run(t.Context(), etcd.DefaultImage, opts...)
	if ec != nil {
		testcontainers.CleanupContainer(t, ec.EtcdContainer)
	}
	return ec, err
}

// writeConfig writes the spec file from the options.
func (s *stack) writeConfig() { s.writeConfigAs(s.configFile, "node-"+s.project) }

// writeConfigAs writes the spec file of the options to file, for node.
func (s *stack) writeConfigAs(file, node string) {
	o := s.opts
	var b strings.Builder
	fmt.Fprintf(&b, "project = %q\nnode = %q\n", s.project, node)
	if o.dockerHost != "" {
		fmt.Fprintf(&b, "[docker]\nhost = %q\n", o.dockerHost)
	}
	endpoint := s.etcdURL
	if s.daemonEtcd != "" {
		endpoint = s.daemonEtcd
	}
	fmt.Fprintf(&b, "[etcd]\nendpoints = [%q]\nlease_ttl = \"5s\"\n%s", endpoint, o.etcdTOML)
	fmt.Fprintf(&b, "[proxy]\npublish = %q\n", s.publish)
	b.WriteString(o.proxyTOML)
	if o.template != "" {
		f := filepath.Join(filepath.Dir(s.configFile), "nginx.conf.tmpl")
		require.NoError(s.t, os.WriteFile(f, []byte(o.template), 0o644))
		fmt.Fprintf(&b, "template = %q\n", f)
	}
	if !strings.Contains(o.extra, "[metrics]") && !strings.Contains(o.extra, "[admin]") {
		fmt.Fprintf(&b, "[admin]\nlisten = %q\n", s.admin)
	}
	image, grace := o.image, o.stopGrace
	if image == "" {
		image = "upstreamd/apache:latest"
	}
	if grace == "" {
		grace = "2s"
	}
	fmt.Fprintf(&b, "[[service]]\nname = %q\nimage = %q\nreplicas = %d\nstop_grace = %q\n%s", o.service, image, o.replicas, grace, o.serviceTOML)
	fmt.Fprintf(&b, "[service.health]\npath = %q\ninterval = %q\ntimeout = %q\nrise = %d\nfall = %d\n",
		o.healthPath, o.interval, o.timeout, o.rise, o.fall)
	b.WriteString(o.extra)
	require.NoError(s.t, os.WriteFile(file, []byte(b.String()), 0o644))
}

// adminGet GETs path of the daemon's admin listener and returns the
// status code and body.
func (s *stack) adminGet(path string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(s.t.Context(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.admin+path, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// removeAll removes every container and the network of the project.
func (s *stack) removeAll() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	list, err := s.docker.List(ctx, s.project)
	if err != nil {
		s.t.Logf("cleanup: %v", err)
	}
	for _, c := range list {
		if err := s.docker.Remove(ctx, c.ID); err != nil {
			s.t.Logf("cleanup: %v", err)
		}
	}
	// A container the daemon was still removing may hold the network for a
	// moment: retry a few times.
	var err2 error
	for i := 0; i < 20; i++ {
		if err2 = s.docker.RemoveNetwork(ctx, s.project); err2 == nil {
			break
		}
		if list, _ := s.docker.List(ctx, s.project); len(list) > 0 {
			for _, c := range list {
				_ = s.docker.Remove(ctx, c.ID)
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err2 != nil {
		s.t.Errorf("cleanup: network %s left behind: %v", s.project, err2)
	}
	if err := s.docker.Close(); err != nil {
		s.t.Logf("cleanup: %v", err)
	}
}

// startDaemon runs `upstreamd run` on the stack's spec; it is stopped with
// SIGTERM at cleanup, and its logs are shown when the test failed.
func (s *stack) startDaemon() *daemon.Process { return s.startDaemonFormat("console") }

// startDaemonFormat is startDaemon with the given log format (json for
// tests that read log fields exactly).
func (s *stack) startDaemonFormat(format string) *daemon.Process {
	s.t.Helper()
	p, err := daemon.Start(binPath, []string{"run", "--config", s.configFile, "--log-format", format, "--log-level", "debug"}, nil)
	require.NoError(s.t, err)
	s.t.Cleanup(func() {
		if err := p.Stop(20 * time.Second); err != nil {
			s.t.Logf("daemon stop: %v", err)
		}
		if s.t.Failed() || testing.Verbose() && os.Getenv("UPSTREAMD_IT_LOGS") != "" {
			s.t.Logf("daemon logs:\n%s", p.Logs())
		}
	})
	return p
}

// cli runs a one-shot upstreamd command against the stack's spec.
func (s *stack) cli(args ...string) (string, error) {
	p, err := daemon.Start(binPath, append(args, "--config", s.configFile), nil)
	if err != nil {
		return "", err
	}
	select {
	case <-p.Done():
	case <-time.After(30 * time.Second):
		p.Kill()
		return p.Logs(), fmt.Errorf("upstreamd %v did not finish", args)
	}
	if err := p.Err(); err != nil {
		return p.Logs(), fmt.Errorf("upstreamd %v: %w:\n%s", args, err, p.Logs())
	}
	return p.Logs(), nil
}

// eventually polls cond until it returns nil or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var err error
	for {
		if err = cond(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %s: %v", what, timeout, err)
		}
		<-tick.C
	}
}

// backends returns the running backends of the stack's service (apache
// unless set), by name.
func (s *stack) backends() []containers.Container {
	s.t.Helper()
	var out []containers.Container
	for _, c := range s.allBackends() {
		if c.Service == s.opts.service {
			out = append(out, c)
		}
	}
	return out
}

// allBackends returns the project's running backends, of every service,
// by name.
func (s *stack) allBackends() []containers.Container {
	s.t.Helper()
	list, err := s.docker.List(s.t.Context(), s.project)
	require.NoError(s.t, err)
	var out []containers.Container
	for _, c := range list {
		if c.Role == containers.RoleBackend && c.State == containers.StateRunning {
			out = append(out, c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// hostsOf returns the host names of containers (their names as DNS
// labels), sorted: what they register and what Apache answers.
func hostsOf(cs []containers.Container) []string {
	out := make([]string, 0, len(cs))
	for _, c := range cs {
		out = append(out, store.HostLabel(c.Name))
	}
	sort.Strings(out)
	return out
}

func names(cs []containers.Container) []string {
	out := make([]string, 0, len(cs))
	for _, c := range cs {
		out = append(out, c.Name)
	}
	sort.Strings(out)
	return out
}

// keys returns the validated registrations of the stack's service and
// project.
func (s *stack) keys() []store.Entry {
	s.t.Helper()
	out, err := s.tryKeys()
	require.NoError(s.t, err)
	return out
}

// tryKeys is keys for polling: an etcd error is returned, not fatal.
func (s *stack) tryKeys() ([]store.Entry, error) {
	kvs, _, err := s.etcd.List(s.t.Context(), store.ServicePrefix(store.DefaultPrefix, s.opts.service))
	if err != nil {
		return nil, err
	}
	var out []store.Entry
	for _, kv := range kvs {
		e, err := store.ParseEntry(store.DefaultPrefix, kv.Key, kv.Value)
		if err != nil {
			s.t.Fatalf("the daemon wrote an invalid registration: %v", err)
		}
		if e.Reg.Project != s.project {
			continue // another project's, sharing this etcd
		}
		e.Lease = kv.Lease
		out = append(out, e)
	}
	return out, nil
}

// registeredHosts returns the host field of every registration, sorted.
func (s *stack) registeredHosts() []string {
	s.t.Helper()
	hosts, err := s.tryRegisteredHosts()
	require.NoError(s.t, err)
	return hosts
}

func (s *stack) tryRegisteredHosts() ([]string, error) {
	keys, err := s.tryKeys()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range keys {
		out = append(out, e.Reg.Host)
	}
	sort.Strings(out)
	return out, nil
}

var hostRE = regexp.MustCompile(`hostname: (\S+)`)

// get sends one GET / through nginx on a new connection (getVia, with the
// Host header of the address).
func (s *stack) get() (status int, host string, err error) {
	status, host, _, err = s.getVia("", "/")
	return status, host, err
}

// getVia sends GET path with a Host header ("": the address's) through
// nginx on a new connection, following no redirect, and returns the
// status, the backend that answered ("" when none said) and the body.
func (s *stack) getVia(host, path string) (int, string, string, error) {
	req, err := http.NewRequestWithContext(s.t.Context(), http.MethodGet, "http://"+s.publish+path, nil)
	if err != nil {
		return 0, "", "", err
	}
	req.Host = host
	c := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	var backend string
	if m := hostRE.FindSubmatch(body); m != nil {
		backend = string(m[1])
	}
	return resp.StatusCode, backend, string(body), err
}

// servedHosts sends n requests through nginx and returns the set of
// backends that answered; any failed request is an error.
func (s *stack) servedHosts(n int) ([]string, error) {
	set := map[string]bool{}
	for i := 0; i < n; i++ {
		status, host, err := s.get()
		if err != nil {
			return nil, err
		}
		if status != http.StatusOK {
			return nil, fmt.Errorf("GET / answered %d", status)
		}
		set[host] = true
	}
	out := make([]string, 0, len(set))
	for h := range set {
		out = append(out, h)
	}
	sort.Strings(out)
	return out, nil
}

// waitConverged waits until the running backends, the registrations and
// the hosts nginx serves are the same set of n containers.
func (s *stack) waitConverged(n int, timeout time.Duration) []string {
	s.t.Helper()
	var want []string
	eventually(s.t, timeout, fmt.Sprintf("%d backends running, registered and served", n), func() error {
		want = hostsOf(s.backends())
		if len(want) != n {
			return fmt.Errorf("%d backends running, want %d: %v", len(want), n, want)
		}
		got, err := s.tryRegisteredHosts()
		if err != nil {
			return err
		}
		if !equal(got, want) {
			return fmt.Errorf("registered %v, running %v", got, want)
		}
		// Round robin over n backends: 3n requests reach each at least once.
		got, err = s.servedHosts(3 * n)
		if err != nil {
			return err
		}
		if !equal(got, want) {
			return fmt.Errorf("nginx served %v, want %v", got, want)
		}
		return nil
	})
	return want
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// statusURL is a URL of the status server inside the stack's proxy (the
// host reaches container addresses on the bridge network).
func (s *stack) statusURL(path string) string {
	return "http://" + net.JoinHostPort(s.proxy().IPs[s.project], "8099") + path
}

// nginxPool returns the addresses nginx's Lua balancer holds for service,
// as nginx answers them.
func (s *stack) nginxPool(service string) (map[string]bool, error) {
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(s.statusURL("/upstreamd/pools"))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, l := range strings.Split(string(body), "\n")[1:] {
		f := strings.Fields(l)
		if len(f) > 0 && f[0] == service {
			for _, a := range f[1:] {
				out[a] = true
			}
		}
	}
	return out, nil
}

// noRev drops the revision an etcd write returns, for require.NoError.
func noRev(_ int64, err error) error { return err }

// requireEtcdIdle watches etcd's revision for a few seconds: idle daemons
// write nothing (lease keep-alives write no revision).
func requireEtcdIdle(t *testing.T, s *stack, what string) {
	t.Helper()
	_, before, err := s.etcd.List(t.Context(), "/")
	require.NoError(t, err)
	time.Sleep(3 * time.Second) // a span of idleness is what is measured
	_, after, err := s.etcd.List(t.Context(), "/")
	require.NoError(t, err)
	require.Equal(t, before, after, "%s wrote %d etcd revisions in 3 s", what, after-before)
}

// staticTemplate lists the servers of every service: each change of a pool
// is a new config, checked and reloaded.
const staticTemplate = `
{{- range .Services}}{{if .Backends}}
upstream {{.Name}}_pool {
{{- range .Backends}}
    server {{.Addr}};
{{- end}}
    keepalive 32;
}
{{- end}}{{end}}
server {
    listen {{.Listen}} default_server;
    location / {
        proxy_pass http://{{.Default}}_pool;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_connect_timeout 500ms;
    }
}
`
