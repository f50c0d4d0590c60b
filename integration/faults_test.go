//go:build integration

package integration

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/integration/internal/load"
	"github.com/upstreamd/upstreamd/integration/internal/sockproxy"
)

// Fault injection: every test breaks one part of the running stack and
// checks that the daemon puts it right, with load running where the fault
// promises no failed requests.

// liveConfig reads the rendered config from the running proxy.
func (s *stack) liveConfig() string {
	s.t.Helper()
	b, err := s.docker.ReadFile(s.t.Context(), s.proxy().ID, "/etc/nginx/conf.d/upstreamd.conf")
	require.NoError(s.t, err)
	return string(b)
}

// byRole returns the project's containers of one role, in any state.
func (s *stack) byRole(role containers.Role) []containers.Container {
	s.t.Helper()
	list, err := s.docker.List(s.t.Context(), s.project)
	require.NoError(s.t, err)
	var out []containers.Container
	for _, c := range list {
		if c.Role == role {
			out = append(out, c)
		}
	}
	return out
}

// waitPoolMatchesKeys waits until nginx's pool of apache is exactly the
// registered addresses.
func (s *stack) waitPoolMatchesKeys(timeout time.Duration) {
	s.t.Helper()
	eventually(s.t, timeout, "nginx's pool equals the registrations", func() error {
		pool, err := s.nginxPool("apache")
		if err != nil {
			return err
		}
		var got, want []string
		for a := range pool {
			got = append(got, a)
		}
		keys, err := s.tryKeys()
		if err != nil {
			return err
		}
		for _, e := range keys {
			want = append(want, e.Addr)
		}
		sort.Strings(got)
		sort.Strings(want)
		if !equal(got, want) || len(want) == 0 {
			return fmt.Errorf("pool %v, registered %v", got, want)
		}
		return nil
	})
}

// logLoad reports a load run where the fault itself interrupts service (the
// proxy is down for a moment), so failures are counted, not forbidden.
func logLoad(t *testing.T, r interface{ Stop() load.Result }) {
	t.Helper()
	res := r.Stop()
	t.Logf("load (failures expected while the fault lasts): %s", res)
}

// TestProxyKilled: nginx SIGKILLed (docker kill counts as a manual stop,
// so the restart policy does not apply) is replaced at once by a new proxy
// on the same data volume, with the last good config and the current pool.
func TestProxyKilled(t *testing.T) {
	s := newStack(t)
	s.startDaemon()
	s.waitConverged(3, 90*time.Second)
	proxy := s.proxy()
	cfg := s.liveConfig()
	r := s.startLoad()
	waitRequests(t, r, 500)

	require.NoError(t, s.docker.Signal(t.Context(), proxy.ID, "KILL"))
	eventually(t, 10*time.Second, "nginx serves again", func() error {
		_, err := s.servedHosts(6)
		return err
	})
	s.waitConverged(3, 60*time.Second)
	require.NotEqual(t, proxy.ID, s.proxy().ID, "replaced")
	require.Equal(t, cfg, s.liveConfig(), "the last good config")
	s.waitPoolMatchesKeys(30 * time.Second)
	waitRequests(t, r, 500)
	logLoad(t, r)
}

// TestProxyRemoved: nginx removed by hand is recreated on the same data
// volume, with the last good config and the current pool.
func TestProxyRemoved(t *testing.T) {
	s := newStack(t)
	d := s.startDaemon()
	s.waitConverged(3, 90*time.Second)
	require.Equal(t, 1, strings.Count(d.Logs(), "proxy started"))
	old := s.proxy()
	cfg := s.liveConfig()
	data := s.byRole(containers.RoleData)
	r := s.startLoad()
	waitRequests(t, r, 500)

	require.NoError(t, s.docker.Remove(t.Context(), old.ID))
	s.waitConverged(3, 90*time.Second)
	require.NotEqual(t, old.ID, s.proxy().ID, "a new proxy container")
	require.Equal(t, data[0].ID, s.byRole(containers.RoleData)[0].ID, "the data volume is kept")
	require.Equal(t, cfg, s.liveConfig())
	s.waitPoolMatchesKeys(30 * time.Second)
	require.Equal(t, 2, strings.Count(d.Logs(), "proxy started"), "recreated once")
	waitRequests(t, r, 500)
	logLoad(t, r)
}

// TestDataVolumeRemoved: the data-volume container removed by hand is
// created again; the proxy, whose volumes came from it, is recreated on
// the new volume, and the config is rendered and delivered again.
func TestDataVolumeRemoved(t *testing.T) {
	s := newStack(t)
	s.startDaemon()
	s.waitConverged(3, 90*time.Second)
	oldData := s.byRole(containers.RoleData)[0]
	oldProxy := s.proxy()
	r := s.startLoad()
	waitRequests(t, r, 500)

	require.NoError(t, s.docker.Remove(t.Context(), oldData.ID))
	eventually(t, 90*time.Second, "a new data volume and a new proxy", func() error {
		data := s.byRole(containers.RoleData)
		if len(data) != 1 || data[0].ID == oldData.ID {
			return fmt.Errorf("data containers %v", data)
		}
		p := s.byRole(containers.RoleProxy)
		if len(p) != 1 || p[0].ID == oldProxy.ID || p[0].State != containers.StateRunning {
			return fmt.Errorf("proxies %v", p)
		}
		return nil
	})
	s.waitConverged(3, 90*time.Second)
	require.Contains(t, s.liveConfig(), "apache_pool")
	s.waitPoolMatchesKeys(30 * time.Second)
	waitRequests(t, r, 500)
	logLoad(t, r)
}

// TestEtcdOutage: etcd stopped for 30 s. The daemon keeps running, nginx
// keeps serving (no failed request; no empty pool rendered for lack of
// etcd), a backend that dies meanwhile is replaced, and once etcd is back
// the registrations and nginx's pool match the running backends again.
func TestEtcdOutage(t *testing.T) {
	s := newStack(t, withEtcdPort(freePort(t)))
	d := s.startDaemon()
	s.waitConverged(3, 90*time.Second)
	r := s.startLoad()
	waitRequests(t, r, 500)

	stop := 10 * time.Second
	require.NoError(t, s.etcdC.Stop(t.Context(), &stop))
	down := time.Now()
	victim := s.backends()[0]
	require.NoError(t, s.docker.Signal(t.Context(), victim.ID, "KILL"))
	eventually(t, 60*time.Second, "the dead backend replaced while etcd is down", func() error {
		bs := s.backends()
		if len(bs) != 3 || contains(names(bs), victim.Name) {
			return fmt.Errorf("backends %v", names(bs))
		}
		return nil
	})
	for time.Since(down) < 30*time.Second {
		select {
		case <-d.Done():
			t.Fatalf("the daemon exited while etcd was down:\n%s", d.Logs())
		case <-time.After(time.Until(down.Add(30 * time.Second))):
		}
	}
	require.NoError(t, s.etcdC.Start(t.Context()))

	s.waitConverged(3, 90*time.Second)
	s.waitPoolMatchesKeys(30 * time.Second)
	for _, e := range s.keys() {
		require.NotZero(t, e.Lease)
	}
	requireNoFailures(t, r.Stop())
	require.NotContains(t, d.Logs(), "backends_apache=0", "an empty pool was rendered")
}

// TestDockerEventStreamBroken: the daemon talks to the engine through a
// proxy that cuts every connection for a while, as an engine restart
// would. A backend killed meanwhile (its "die" event is lost) is noticed
// after the stream reconnects (backoff, then a full pass) and replaced.
func TestDockerEventStreamBroken(t *testing.T) {
	px, err := sockproxy.Start("/var/run/docker.sock")
	require.NoError(t, err)
	t.Cleanup(func() { _ = px.Close() }) // the test is over either way
	s := newStack(t, withDockerHost("tcp://"+px.Addr()))
	d := s.startDaemon()
	s.waitConverged(3, 90*time.Second)
	r := s.startLoad()
	waitRequests(t, r, 500)

	px.Cut()
	victim := s.backends()[0]
	require.NoError(t, s.docker.Signal(t.Context(), victim.ID, "KILL"))
	require.NoError(t, d.WaitLog(t.Context(), "docker event stream broke", 30*time.Second))
	// The dead backend leaves nginx through its failing probes meanwhile.
	eventually(t, 30*time.Second, "the dead backend deregistered", func() error {
		if contains(s.registeredHosts(), victim.Name) {
			return fmt.Errorf("%s still registered", victim.Name)
		}
		return nil
	})
	px.Restore()

	after := s.waitConverged(3, 90*time.Second)
	require.NotContains(t, after, victim.Name)
	require.Contains(t, d.Logs(), "backend is not running; replacing it")
	waitRequests(t, r, 500)
	// nginx retried the killed backend's requests on the others.
	requireNoFailures(t, r.Stop())
}

// TestDaemonSIGKILLUnderLoad: the daemon killed and restarted under load
// adopts every container, recreates nothing, and no request fails.
func TestDaemonSIGKILLUnderLoad(t *testing.T) {
	s := newStack(t)
	d := s.startDaemon()
	s.waitConverged(3, 90*time.Second)
	before := s.allIDs()
	r := s.startLoad()
	waitRequests(t, r, 500)

	d.Kill()
	require.Len(t, s.keys(), 3, "keys outlive a killed daemon until their lease runs out")
	d2 := s.startDaemon()
	require.NoError(t, d2.WaitLog(t.Context(), "ready: etcd holds", 60*time.Second))
	s.waitConverged(3, 60*time.Second)
	waitRequests(t, r, 500)

	requireNoFailures(t, r.Stop())
	require.Equal(t, before, s.allIDs(), "containers were recreated")
	require.NotContains(t, d2.Logs(), "container created")
}

// TestSIGTERMLeavesServing: SIGTERM stops the daemon cleanly (exit 0): its
// leases are revoked, and the proxy and backends keep serving.
func TestSIGTERMLeavesServing(t *testing.T) {
	s := newStack(t)
	d := s.startDaemon()
	s.waitConverged(3, 90*time.Second)
	ids := s.allIDs()
	r := s.startLoad()
	waitRequests(t, r, 500)

	require.NoError(t, d.Stop(20*time.Second), "exit status after SIGTERM")
	require.Empty(t, s.keys(), "leases revoked")
	require.Contains(t, d.Logs(), "lease revoked")
	waitRequests(t, r, 1000)

	requireNoFailures(t, r.Stop())
	require.Equal(t, ids, s.allIDs(), "containers left running")
	require.Len(t, s.backends(), 3)
}

// TestFlappingBackend: a backend that fails every other second. With
// rise × interval longer than a healthy phase, hysteresis keeps it out of
// the pool after its first fall: a couple of pool changes, not one per
// flap, and never a reload.
func TestFlappingBackend(t *testing.T) {
	s := newStack(t, withHealth("/healthz", "500ms", 4, 2))
	d := s.startDaemon()
	s.waitConverged(3, 90*time.Second)
	flappy := s.backends()[1]
	pushes := func() int { return strings.Count(d.Logs(), "pools updated without reload") }
	reloads0, pushes0 := reloads(d.Logs()), pushes()
	r := s.startLoad()

	// Six cycles of 1 s failing, 1 s healthy.
	res, err := s.docker.Exec(t.Context(), flappy.ID, []string{"sh", "-c",
		"for i in 1 2 3 4 5 6; do touch /tmp/unhealthy; sleep 1; rm -f /tmp/unhealthy; sleep 1; done"})
	require.NoError(t, err)
	require.Zero(t, res.ExitCode, res.Output())

	flips := strings.Count(d.Logs(), "to=unhealthy") + strings.Count(d.Logs(), "from=unhealthy")
	t.Logf("during 12 s of flapping: %d health flips, %d pool pushes, %d reloads", flips, pushes()-pushes0, reloads(d.Logs())-reloads0)
	require.LessOrEqual(t, pushes()-pushes0, 2, "hysteresis bounds the pool changes")
	require.Equal(t, reloads0, reloads(d.Logs()), "pool changes never reload nginx")
	// Healthy for good now: back after rise passes.
	s.waitConverged(3, 30*time.Second)
	// Requests that reached the backend in a failing second, before its
	// fall, got its 500 (nginx retries only errors, timeouts, 502-504).
	logLoad(t, r)
}

// TestKeysDeletedByHand: someone deletes every registration of the service
// behind the daemon's back. The renderer refuses to empty a pool this node
// still finds healthy, the registrar puts the keys back at once (it
// watches them), and no request fails.
func TestKeysDeletedByHand(t *testing.T) {
	s := newStack(t)
	d := s.startDaemon()
	s.waitConverged(3, 90*time.Second)
	r := s.startLoad()
	waitRequests(t, r, 500)

	for _, e := range s.keys() {
		require.NoError(t, noRev(s.etcd.Delete(t.Context(), e.Key)))
	}
	eventually(t, 10*time.Second, "the registrations put back", func() error {
		keys, err := s.tryKeys()
		if err != nil {
			return err
		}
		if len(keys) != 3 {
			return fmt.Errorf("%d keys", len(keys))
		}
		return nil
	})
	s.waitConverged(3, 30*time.Second)
	waitRequests(t, r, 500)

	requireNoFailures(t, r.Stop())
	require.NotContains(t, d.Logs(), "backends_apache=0", "an empty pool was pushed")
}
