//go:build integration

package integration

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/upstreamd/upstreamd/integration/internal/daemon"
	"github.com/upstreamd/upstreamd/store"
)

// TestProjectsShareEtcd: two projects on one etcd, with the default prefix,
// the same service name and even the same node name, are kept apart: each
// nginx routes only to its own backends, neither daemon touches the
// other's keys (an idle etcd stays idle), and a pool shared across
// projects is an explicit choice (etcd.include_projects) that `render`
// shows.
func TestProjectsShareEtcd(t *testing.T) {
	a := newStack(t, withReplicas(2))
	b := newStack(t, withReplicas(2), withEtcdOf(a))
	b.writeConfigAs(b.configFile, "node-"+a.project) // the same node name as a's daemon
	a.startDaemon()
	b.startDaemon()
	a.waitConverged(2, 90*time.Second) // served: only a's backends answer through a's nginx
	b.waitConverged(2, 90*time.Second)

	addrs := func(s *stack) []string {
		var out []string
		for _, e := range s.keys() {
			out = append(out, e.Addr)
		}
		slices.Sort(out)
		return out
	}
	for _, s := range []*stack{a, b} {
		pool, err := s.nginxPool("apache")
		require.NoError(t, err)
		require.Equal(t, addrs(s), slices.Sorted(maps.Keys(pool)), "project %s: nginx's apache pool is its own backends", s.project)
	}

	requireEtcdIdle(t, a, "two idle projects") // no fight over keys

	// Sharing on purpose: a's spec takes b's registrations too.
	a.opts.etcdTOML = fmt.Sprintf("include_projects = [%q]\n", b.project)
	a.writeConfig()
	out, err := a.cli("render")
	require.NoError(t, err)
	line := ""
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "#   apache: ") {
			line = l
		}
	}
	for _, addr := range append(addrs(a), addrs(b)...) {
		require.Contains(t, line, addr, "render with include_projects = [%q]:\n%s", b.project, out)
	}
}

// TestFirstStartEtcdUnreachable: a first start while etcd cannot be
// reached creates nothing (no network, no container, nothing published)
// and says so in one line, repeated with backoff, naming the endpoint: no
// other component warns about the same outage. When etcd answers, the
// stack comes up, the proxy starting on a placeholder config that answers
// 503 until the first render.
func TestFirstStartEtcdUnreachable(t *testing.T) {
	s := newStack(t)
	px := etcdBehindProxy(t, s)
	px.Cut()
	d := s.startDaemonFormat("json")
	const waiting = "etcd unreachable; waiting for it: no container is created or changed until etcd and the docker engine both answer"
	eventually(t, 60*time.Second, "the daemon said twice that it waits for etcd", func() error {
		if n := countMsg(d.Logs(), waiting); n < 2 {
			return fmt.Errorf("said %d times", n)
		}
		return nil
	})
	list, err := s.docker.List(t.Context(), s.project)
	require.NoError(t, err)
	require.Empty(t, list, "containers created while etcd was unreachable")
	exists, err := s.docker.NetworkExists(t.Context(), s.project)
	require.NoError(t, err)
	require.False(t, exists, "network created while etcd was unreachable")
	_, _, err = s.get()
	require.Error(t, err, "something answers on %s while etcd is unreachable", s.publish)
	for _, m := range logLines(d.Logs()) {
		if m["message"] == waiting {
			require.Equal(t, "http://"+px.Addr(), fmt.Sprint(m["endpoints"].([]any)[0]), "the line names the endpoint")
		}
	}
	requireOnlyWarning(t, d.Logs(), waiting)

	px.Restore()
	s.waitConverged(3, 90*time.Second)
	require.Equal(t, 1, countMsg(d.Logs(), "placeholder config written: nginx answers 503 until the first render"))
}

// TestFirstStartDockerUnreachable: with an engine endpoint nobody answers
// on, the daemon says so (one line per retry, with backoff, naming the
// endpoint), never claims to be ready, and no other component warns
// about the same outage.
func TestFirstStartDockerUnreachable(t *testing.T) {
	s := newStack(t, withDockerHost("unix://"+t.TempDir()+"/nobody.sock"))
	d := s.startDaemonFormat("json")
	const waiting = "docker engine unreachable; waiting for it: no container is created or changed until etcd and the docker engine both answer"
	eventually(t, 60*time.Second, "the daemon said thrice that it waits for the engine", func() error {
		if n := countMsg(d.Logs(), waiting); n < 3 {
			return fmt.Errorf("said %d times", n)
		}
		return nil
	})
	logs := d.Logs()
	require.Contains(t, logs, "etcd reachable")
	require.NotContains(t, logs, "ready:")
	requireOnlyWarning(t, logs, waiting)
}

// requireOnlyWarning fails for each warning or error logged but msg: one
// line speaks for an outage, not one per component.
func requireOnlyWarning(t *testing.T, logs, msg string) {
	t.Helper()
	for _, m := range logLines(logs) {
		if lvl := m["level"]; (lvl == "warn" || lvl == "error") && m["message"] != msg {
			t.Errorf("another %s line about the same outage: %v", lvl, m)
		}
	}
}

// seedTemplate is the seed's confd template taken literally: getvs gives
// the registration JSON, not addresses, so nginx rejects the servers.
const seedTemplate = `upstream apache_pool {
{{- range getvs "/services/apache/*"}}
    server {{.}};
{{- end}}
}
server {
    listen 80;
    location / { proxy_pass http://apache_pool; }
}
`

// TestTemplateRejectedBeforeAnything: a template whose output nginx -t
// rejects stops `run` before it creates anything, with nginx's reason;
// `render --check` says the same of what it prints; a template that
// cannot render at all stops `run` before it even asks Docker. No
// throwaway container is left behind.
func TestTemplateRejectedBeforeAnything(t *testing.T) {
	s := newStack(t, withTemplate(seedTemplate))
	for _, tc := range []struct {
		name, template, want string
	}{
		{"nginx rejects it", seedTemplate, "proxy.template renders a config nginx rejects"},
		{"it cannot render", "server { listen 80; {{.Nope}} }\n", "proxy.template fails with no backend registered"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s.opts.template = tc.template
			s.writeConfig()
			p, err := daemon.Start(binPath, []string{"run", "--config", s.configFile, "--log-format", "console"}, nil)
			require.NoError(t, err)
			select {
			case <-p.Done():
			case <-time.After(60 * time.Second):
				p.Kill()
				t.Fatalf("the daemon is still running:\n%s", p.Logs())
			}
			require.Error(t, p.Err())
			require.Contains(t, p.Logs(), tc.want)
			list, err := s.docker.List(t.Context(), s.project)
			require.NoError(t, err)
			require.Empty(t, list, "containers created for a template that cannot serve")
			exists, err := s.docker.NetworkExists(t.Context(), s.project)
			require.NoError(t, err)
			require.False(t, exists)
		})
	}
	s.opts.template = seedTemplate
	s.writeConfig()
	reg := store.Registration{Host: "b1", IPv4: "10.9.9.9", Port: 80, Project: s.project}
	require.NoError(t, noRev(s.etcd.Put(t.Context(), store.ServiceKey(store.DefaultPrefix, "apache", "10.9.9.9:80"), reg.Encode(), 0)))
	out, err := s.cli("render", "--check")
	require.Error(t, err)
	require.Contains(t, out, "nginx rejected the config")
	require.Contains(t, out, `directive "server" is not terminated by ";"`)
	s.opts.template = "" // the built-in one
	s.writeConfig()
	out, err = s.cli("render", "--check")
	require.NoError(t, err)
	require.Contains(t, out, "nginx -t: the rendered config is valid")

	all, err := s.docker.ListAll(t.Context())
	require.NoError(t, err)
	for _, c := range all {
		require.NotEqual(t, "check", c.Labels["io.upstreamd.role"], "throwaway container %s left behind", c.ID)
	}
}
