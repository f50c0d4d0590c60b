//go:build integration

package integration

import (
	"fmt"
	"net"
	"sort"

	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/internal/events"
)

// TestSeedStack: the seed's stack comes up from nothing; nginx serves pages
// from all 3 Apache containers, and the 3 keys are in etcd under a lease
// with the seed's fields plus container and node.
func TestSeedStack(t *testing.T) {
	s := newStack(t)
	s.startDaemon()
	hosts := s.waitConverged(3, 90*time.Second)

	byName := map[string]containers.Container{}
	for _, c := range s.backends() {
		byName[c.Name] = c
	}
	keys := s.keys()
	require.Len(t, keys, 3)
	for _, e := range keys {
		c, ok := byName[e.Reg.Host]
		require.Truef(t, ok, "registration %s names %q, not a running backend (%v)", e.Key, e.Reg.Host, hosts)
		ip := c.IPs[s.project]
		require.Equal(t, net.JoinHostPort(ip, "80"), e.Addr, "key address is the container's IP:port")
		require.Equal(t, ip, e.Reg.IPv4)
		require.Equal(t, 80, e.Reg.Port)
		require.Equal(t, c.Short(), e.Reg.Container)
		require.Equal(t, "node-"+s.project, e.Reg.Node)
		require.NotZero(t, e.Lease, "key %s has no lease", e.Key)
	}
	require.Equal(t, keys[0].Lease, keys[2].Lease, "one lease per daemon")

	// The proxy mounts the data-volume container's volume.
	list, err := s.docker.List(t.Context(), s.project)
	require.NoError(t, err)
	roles := map[containers.Role]int{}
	for _, c := range list {
		roles[c.Role]++
	}
	require.Equal(t, map[containers.Role]int{containers.RoleBackend: 3, containers.RoleProxy: 1, containers.RoleData: 1}, roles)

	// `upstreamd render` prints what is live, touching nothing.
	out, err := s.cli("render")
	require.NoError(t, err)
	for _, e := range keys {
		require.Contains(t, out, e.Addr)
	}
}

// TestBackendKilled: docker kill of a backend removes its key, nginx stops
// sending to it, and the daemon replaces it with a new container that
// nginx then serves.
func TestBackendKilled(t *testing.T) {
	s := newStack(t)
	s.startDaemon()
	before := s.waitConverged(3, 90*time.Second)
	victim := s.backends()[0]

	require.NoError(t, s.docker.Signal(t.Context(), victim.ID, "KILL"))
	eventually(t, 10*time.Second, "the killed backend's key is deleted", func() error {
		if contains(s.registeredHosts(), victim.Name) {
			return fmt.Errorf("%s still registered", victim.Name)
		}
		return nil
	})
	after := s.waitConverged(3, 60*time.Second)
	require.NotContains(t, after, victim.Name, "nginx still sends to the killed backend")
	fresh := 0
	for _, h := range after {
		if !contains(before, h) {
			fresh++
		}
	}
	require.Equal(t, 1, fresh, "exactly one new backend replaces the killed one: before %v after %v", before, after)
}

// TestScale: replicas 3 → 5 → 2 through `upstreamd scale` (an etcd
// override) show in containers, etcd and nginx; the override shows in
// `status` and in the log of a daemon started while it is in force; after
// --reset the spec's count applies again.
func TestScale(t *testing.T) {
	s := newStack(t)
	d := s.startDaemon()
	s.waitConverged(3, 90*time.Second)

	out, err := s.cli("scale", "apache", "5")
	require.NoError(t, err, out)
	require.Contains(t, out, "replicas set to 5")
	s.waitConverged(5, 90*time.Second)
	// Each new backend became healthy once: the next pass, which sees it
	// listed rather than inspected, did not start its probing over.
	s.waitPoolMatchesKeys(30 * time.Second)
	require.Equal(t, 5, strings.Count(d.Logs(), "from=pending"), "health changes:\n%s", d.Logs())

	out, err = s.cli("scale", "apache", "2")
	require.NoError(t, err, out)
	s.waitConverged(2, 60*time.Second)

	out, err = s.cli("status")
	require.NoError(t, err, out)
	require.Equal(t, 2, strings.Count(out, "/services/apache/")/2, "status lists 2 registrations twice (container and key tables):\n%s", out)
	require.Regexp(t, `apache\s+2\s+2\s+override in etcd \(spec: 3;`, out)

	// A daemon started while the override is in force says so.
	require.NoError(t, d.Stop(20*time.Second))
	d = s.startDaemon()
	require.NoError(t, d.WaitLog(t.Context(), "replica override in force: apache runs 2 replicas, not the spec's 3", 30*time.Second))
	s.waitConverged(2, 60*time.Second)

	out, err = s.cli("scale", "apache", "--reset")
	require.NoError(t, err, out)
	s.waitConverged(3, 60*time.Second)
	out, err = s.cli("status")
	require.NoError(t, err, out)
	require.Regexp(t, `apache\s+3\s+3\s+spec`, out)
}

// TestUnhealthyBackend: a running backend whose health path answers 500 is
// deregistered and nginx stops using it; it comes back after `rise` passes.
func TestUnhealthyBackend(t *testing.T) {
	s := newStack(t)
	s.startDaemon()
	all := s.waitConverged(3, 90*time.Second)
	sick := s.backends()[1]

	res, err := s.docker.Exec(t.Context(), sick.ID, []string{"touch", "/tmp/unhealthy"})
	require.NoError(t, err)
	require.Zero(t, res.ExitCode, res.Output())
	eventually(t, 15*time.Second, "the unhealthy backend is deregistered and not served", func() error {
		if contains(s.registeredHosts(), sick.Name) {
			return fmt.Errorf("%s still registered", sick.Name)
		}
		served, err := s.servedHosts(12)
		if err != nil {
			return err
		}
		if contains(served, sick.Name) || len(served) != 2 {
			return fmt.Errorf("nginx served %v", served)
		}
		return nil
	})
	// It is not replaced: it still runs, it is only out of the pool.
	require.Equal(t, all, names(s.backends()))

	res, err = s.docker.Exec(t.Context(), sick.ID, []string{"rm", "/tmp/unhealthy"})
	require.NoError(t, err)
	require.Zero(t, res.ExitCode, res.Output())
	got := s.waitConverged(3, 30*time.Second)
	require.Equal(t, all, got)
}

// badWhenFour renders the built-in config, plus a directive nginx rejects
// whenever the pool has exactly 4 backends.
const badWhenFour = `
{{- with .Service .Default}}{{if .Backends}}
upstream {{.Name}}_pool {
{{- range .Backends}}
    server {{.Addr}};
{{- end}}
}{{end}}{{end}}
server {
    listen {{.Listen}} default_server;
    {{- if eq (len .Backends) 4}}
    this_is_not_an_nginx_directive on;
    {{- end}}
    location / { proxy_pass http://{{.Default}}_pool; }
}
`

// TestRejectedConfigNeverGoesLive: a rendered config that nginx -t rejects
// never reaches the running nginx, which keeps serving the last good one;
// the next good config goes live again.
func TestRejectedConfigNeverGoesLive(t *testing.T) {
	s := newStack(t, withTemplate(badWhenFour))
	d := s.startDaemon()
	three := s.waitConverged(3, 90*time.Second)
	proxy := s.proxy()
	live, err := s.docker.ReadFile(t.Context(), proxy.ID, "/etc/nginx/conf.d/upstreamd.conf")
	require.NoError(t, err)

	out, err := s.cli("scale", "apache", "4")
	require.NoError(t, err, out)
	require.NoError(t, d.WaitLog(t.Context(), "nginx -t rejected the rendered config", 60*time.Second))
	require.Contains(t, d.Logs(), "this_is_not_an_nginx_directive", "nginx's message is logged")
	require.Len(t, s.keys(), 4, "the fourth backend is registered")

	now, err := s.docker.ReadFile(t.Context(), proxy.ID, "/etc/nginx/conf.d/upstreamd.conf")
	require.NoError(t, err)
	require.Equal(t, string(live), string(now), "the live config must not change")
	served, err := s.servedHosts(20)
	require.NoError(t, err, "nginx keeps serving")
	require.Equal(t, three, served, "nginx keeps the last good pool")
	// The operator sees it: the status names the refused config with
	// nginx's words, and the event feed says so.
	st, err := s.adminStatus()
	require.NoError(t, err)
	require.NotNil(t, st.Proxy.Rejected, "the status shows the rejected config")
	require.Contains(t, st.Proxy.Rejected.Message, "this_is_not_an_nginx_directive")
	evs, err := s.adminEvents(0)
	require.NoError(t, err)
	require.True(t, slices.ContainsFunc(evs, func(e events.Event) bool {
		return e.Kind == events.ConfigRejected && strings.Contains(e.Message, "this_is_not_an_nginx_directive")
	}), "no config-rejected event naming nginx's reason: %v", evs)

	out, err = s.cli("scale", "apache", "5")
	require.NoError(t, err, out)
	s.waitConverged(5, 90*time.Second)
	// A good config went live: the rejection is over, and the status shows
	// what changed from the config before.
	eventually(t, 10*time.Second, "the status shows the new config live", func() error {
		st, err := s.adminStatus()
		switch {
		case err != nil:
			return err
		case st.Proxy.Rejected != nil:
			return fmt.Errorf("still rejected: %+v", st.Proxy.Rejected)
		case !strings.Contains(st.Proxy.Diff, "+") || !strings.Contains(st.Proxy.Diff, "server "):
			return fmt.Errorf("diff %q", st.Proxy.Diff)
		}
		return nil
	})
}

// TestRestartAdopts: a restarted daemon adopts the running containers (same
// IDs, nothing recreated) and registers them under its new lease.
func TestRestartAdopts(t *testing.T) {
	s := newStack(t)
	d := s.startDaemon()
	s.waitConverged(3, 90*time.Second)
	before := s.allIDs()
	oldLease := s.keys()[0].Lease

	require.NoError(t, d.Stop(20*time.Second))
	require.Empty(t, s.keys(), "a clean stop revokes the lease")
	served, err := s.servedHosts(6)
	require.NoError(t, err, "nginx keeps serving while the daemon is down")
	require.Len(t, served, 3)

	d2 := s.startDaemon()
	require.NoError(t, d2.WaitLog(t.Context(), "registered", 60*time.Second))
	s.waitConverged(3, 60*time.Second)
	require.Equal(t, before, s.allIDs(), "containers were recreated")
	for _, e := range s.keys() {
		require.NotEqual(t, oldLease, e.Lease)
	}
	require.NotContains(t, d2.Logs(), "container created")
}

// proxy returns the running proxy container.
func (s *stack) proxy() containers.Container {
	s.t.Helper()
	list, err := s.docker.List(s.t.Context(), s.project)
	require.NoError(s.t, err)
	for _, c := range list {
		if c.Role == containers.RoleProxy && c.State == containers.StateRunning {
			return c
		}
	}
	s.t.Fatal("no running proxy")
	return containers.Container{}
}

// allIDs lists every container of the project as role:name:id.
func (s *stack) allIDs() []string {
	list, err := s.docker.List(s.t.Context(), s.project)
	require.NoError(s.t, err)
	var out []string
	for _, c := range list {
		out = append(out, string(c.Role)+":"+c.Name+":"+c.ID)
	}
	sort.Strings(out)
	return out
}
