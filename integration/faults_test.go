//go:build integration

package integration

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/integration/internal/daemon"
	"github.com/upstreamd/upstreamd/integration/internal/load"
	"github.com/upstreamd/upstreamd/integration/internal/sockproxy"
	"github.com/upstreamd/upstreamd/store"
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
// etcd), a backend that dies meanwhile is replaced, `status` shows the
// containers and says etcd failed, and once etcd is back
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
	// status shows what Docker knows and says what etcd did not answer.
	out, err := s.cli("status")
	require.Error(t, err, "status with etcd down exited 0")
	require.Contains(t, out, "ROLE")
	require.Contains(t, out, s.project+"-proxy", "the container table is shown:\n%s", out)
	require.Contains(t, out, "(etcd: ", "the etcd failure is said:\n%s", out)
	// The admin listener keeps answering, and says what is wrong: /healthz
	// fails naming etcd, the page shows it at the top, the status API says
	// the nodes could not be read.
	eventually(t, 30*time.Second, "/healthz and the page say etcd is down", func() error {
		code, body, err := s.adminGet("/healthz")
		if err != nil {
			return err
		}
		if code != http.StatusServiceUnavailable || !strings.Contains(string(body), "etcd") {
			return fmt.Errorf("/healthz: %d %s", code, body)
		}
		code, page, err := s.adminGet("/")
		if err != nil {
			return err
		}
		if code != http.StatusOK || !strings.Contains(string(page), `class="problems"`) || !strings.Contains(string(page), "etcd") {
			return fmt.Errorf("the page (%d) shows no etcd problem", code)
		}
		st, err := s.adminStatus()
		if err != nil {
			return err
		}
		if st.NodesError == "" || st.Ready {
			return fmt.Errorf("status: nodes_error %q, ready %v", st.NodesError, st.Ready)
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

// dockerBehindProxy runs a converged stack whose daemon talks to the
// engine through a proxy the test can cut or stall.
func dockerBehindProxy(t *testing.T) (*sockproxy.Proxy, *stack, *daemon.Process) {
	t.Helper()
	px, err := sockproxy.Start("/var/run/docker.sock")
	require.NoError(t, err)
	t.Cleanup(func() { _ = px.Close() }) // the test is over either way
	s := newStack(t, withDockerHost("tcp://"+px.Addr()))
	d := s.startDaemon()
	s.waitConverged(3, 90*time.Second)
	return px, s, d
}

// TestDockerEventStreamBroken: the daemon talks to the engine through a
// proxy that cuts every connection for a while, as an engine restart
// would. A backend killed meanwhile (its "die" event is lost) is noticed
// after the stream reconnects (backoff, then a full pass) and replaced.
func TestDockerEventStreamBroken(t *testing.T) {
	px, s, d := dockerBehindProxy(t)
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
	// It did fall (the flaps were seen) and, healthy for good, comes back.
	fell := false
	for _, l := range strings.Split(d.Logs(), "\n") {
		fell = fell || strings.Contains(l, flappy.Name) && strings.Contains(l, "to=unhealthy")
	}
	require.True(t, fell, "the flapping backend never fell")
	// Healthy for good now: back after rise passes.
	s.waitConverged(3, 30*time.Second)
	back := false
	for _, l := range strings.Split(d.Logs(), "\n") {
		back = back || strings.Contains(l, flappy.Name) && strings.Contains(l, "from=unhealthy") && strings.Contains(l, "to=healthy")
	}
	require.True(t, back, "the flapping backend never came back")
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

// TestBackendHung: a backend that hangs (docker pause: it accepts
// connections and never answers) leaves the pool within
// interval + (fall-1)*max(interval/fall, timeout) + timeout of the hang, is
// not replaced (it still runs), and comes back once it answers again. The
// requests sent to it before it left the pool hang with it (nginx waits
// proxy_read_timeout, the load client gives up after 5 s): at most one per
// load connection; every request sent after it left the pool is served.
func TestBackendHung(t *testing.T) {
	s := newStack(t) // interval 500ms, timeout 400ms, fall 2, rise 2
	s.startDaemon()
	s.waitConverged(3, 90*time.Second)
	victim := s.backends()[0]
	addr := net.JoinHostPort(victim.IPs[s.project], "80")
	r := s.startLoad()
	waitRequests(t, r, 300)

	require.NoError(t, s.docker.Pause(t.Context(), victim.ID))
	paused := time.Now()
	eventually(t, 30*time.Second, "the hung backend leaves the pool", func() error {
		pool, err := s.nginxPool("apache")
		if err != nil {
			return err
		}
		if pool[addr] {
			return fmt.Errorf("%s still in the pool", addr)
		}
		return nil
	})
	out := time.Now()
	t.Logf("hung backend out of the pool %s after the pause (bound: 500ms + 1*500ms + 400ms = 1.4s, plus a probe's timing)", out.Sub(paused).Round(time.Millisecond))
	list, err := s.docker.List(t.Context(), s.project)
	require.NoError(t, err)
	states := map[string]int{}
	for _, c := range list {
		if c.Role == containers.RoleBackend {
			states[c.State]++
		}
	}
	require.Equal(t, map[string]int{"running": 2, "paused": 1}, states, "a hung backend is not replaced: it still runs")
	waitRequests(t, r, 300)

	require.NoError(t, s.docker.Unpause(t.Context(), victim.ID))
	s.waitConverged(3, 30*time.Second)
	pool, err := s.nginxPool("apache")
	require.NoError(t, err)
	require.True(t, pool[addr], "the thawed backend is back in the pool")
	require.Contains(t, names(s.backends()), victim.Name, "the same container, not a replacement")
	res := r.Stop()
	t.Logf("load: %s", res)
	require.LessOrEqual(t, res.Failed(), 8, "more failures than requests in flight on 8 connections when it froze")
	for _, smp := range res.Samples {
		if smp.Err != "" || smp.Status != http.StatusOK {
			require.Equal(t, "read: timeout", smp.Err, "a request failed otherwise than by hanging with the backend")
			require.True(t, smp.At.Before(out), "a request sent %s after the backend left the pool failed", smp.At.Sub(out))
		}
	}
}

// etcdBehindProxy points the daemon at etcd through a proxy the test can
// cut; the test's own client talks to etcd directly.
func etcdBehindProxy(t *testing.T, s *stack) *sockproxy.Proxy {
	t.Helper()
	px, err := sockproxy.StartTCP(strings.TrimPrefix(s.etcdURL, "http://"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = px.Close() }) // the test is over either way
	s.daemonEtcd = "http://" + px.Addr()
	s.writeConfig()
	return px
}

// TestEtcdPartitionLeaseExpires: the daemon loses etcd for longer than its
// lease (etcd itself stays up): etcd drops the lease and every key of the
// node. Meanwhile the replica count changes and etcd compacts its history,
// so the daemon's watches cannot resume where they stopped: they must list
// again, not go silent. Afterwards the node holds its names under a new
// lease, its keys are back, the new count applies; nginx keeps serving.
func TestEtcdPartitionLeaseExpires(t *testing.T) {
	s := newStack(t)
	px := etcdBehindProxy(t, s)
	d := s.startDaemon()
	s.waitConverged(3, 90*time.Second)
	oldLease := s.keys()[0].Lease
	r := s.startLoad()
	waitRequests(t, r, 300)

	px.Cut()
	eventually(t, 30*time.Second, "the lease expired and took the keys", func() error {
		if keys := s.keys(); len(keys) != 0 {
			return fmt.Errorf("%d keys left", len(keys))
		}
		return nil
	})
	admin, err := clientv3.New(clientv3.Config{Endpoints: []string{s.etcdURL}, DialTimeout: 5 * time.Second})
	require.NoError(t, err)
	defer func() { _ = admin.Close() }()
	resp, err := admin.Put(t.Context(), store.OverrideKey(s.project, "apache"), "4")
	require.NoError(t, err)
	_, err = admin.Compact(t.Context(), resp.Header.Revision)
	require.NoError(t, err)
	waitRequests(t, r, 300) // nginx serves on without etcd
	px.Restore()

	s.waitConverged(4, 90*time.Second)
	keys := s.keys()
	require.NotEqual(t, oldLease, keys[0].Lease, "registrations under a new lease")
	node, _, err := s.etcd.List(t.Context(), store.NodesPrefix(s.project))
	require.NoError(t, err)
	require.Len(t, node, 1, "the node announced again")
	requireNoFailures(t, r.Stop())
	require.NotContains(t, d.Logs(), "backends_apache=0", "an empty pool was rendered")
}

// TestEtcdWiped: etcd comes back empty (a new member, the data lost):
// the lease, the node's names and its registrations are gone, and the
// revisions start over. The daemon claims its names again, registers its
// backends again, and nginx keeps serving throughout.
func TestEtcdWiped(t *testing.T) {
	port := freePort(t)
	s := newStack(t, withEtcdPort(port))
	d := s.startDaemon()
	s.waitConverged(3, 90*time.Second)
	r := s.startLoad()
	waitRequests(t, r, 300)

	require.NoError(t, s.etcdC.Terminate(t.Context()))
	fresh, err := runEtcd(t, port)
	require.NoError(t, err)
	s.etcdC = fresh

	s.waitConverged(3, 90*time.Second)
	node, _, err := s.etcd.List(t.Context(), store.NodesPrefix(s.project))
	require.NoError(t, err)
	require.Len(t, node, 1, "the node announced again")
	waitRequests(t, r, 300)
	requireNoFailures(t, r.Stop())
	require.NotContains(t, d.Logs(), "backends_apache=0", "an empty pool was rendered")
}

// TestDockerEventStreamStalled: the engine's event stream stops moving
// without closing (its connection hangs; the others work). The proxy
// is killed meanwhile: nothing but its "die" event would tell the daemon
// (no probe watches nginx), and that event never arrives. The daemon
// reopens the quiet stream (the engine sends no heartbeat, so quiet is all
// it can see), and its full pass replaces the proxy well before the 30 s
// resync would.
func TestDockerEventStreamStalled(t *testing.T) {
	px, s, d := dockerBehindProxy(t)

	px.StallEvents()
	defer px.Resume()
	proxy := s.proxy()
	require.NoError(t, s.docker.Signal(t.Context(), proxy.ID, "KILL"))
	killed := time.Now()
	eventually(t, 60*time.Second, "a new proxy serves", func() error {
		list, err := s.docker.List(t.Context(), s.project)
		if err != nil {
			return err
		}
		for _, c := range list {
			if c.Role == containers.RoleProxy && c.State == containers.StateRunning && c.ID != proxy.ID {
				_, err := s.servedHosts(3)
				return err
			}
		}
		return errors.New("no new proxy running yet")
	})
	took := time.Since(killed)
	t.Logf("killed proxy replaced and serving %s after the kill, its die event stalled", took.Round(time.Millisecond))
	require.Contains(t, d.Logs(), "docker event stream quiet; reopening it")
	require.Less(t, took, 28*time.Second, "replaced only by the 30 s resync, not by reopening the stalled stream")
}

// TestRestartWhileEtcdUnreachable: the daemon restarts while it cannot
// reach etcd, with an override of 5 replicas (the spec says 3). It says
// what it waits for and touches nothing: no backend is stopped, nothing
// scales to the spec's count, nginx keeps serving all 5. Once etcd answers
// it adopts them and the override stands.
func TestRestartWhileEtcdUnreachable(t *testing.T) {
	s := newStack(t)
	px := etcdBehindProxy(t, s)
	d := s.startDaemon()
	s.waitConverged(3, 90*time.Second)
	out, err := s.cli("scale", "apache", "5")
	require.NoError(t, err, out)
	before := s.waitConverged(5, 90*time.Second)
	r := s.startLoad()
	waitRequests(t, r, 300)

	d.Kill()
	px.Cut()
	d2 := s.startDaemon()
	require.NoError(t, d2.WaitLog(t.Context(), "etcd unreachable; waiting for it", 30*time.Second))
	waitRequests(t, r, 5000) // a few seconds without etcd
	require.Equal(t, before, hostsOf(s.backends()), "backends changed while etcd was unreachable")
	pool, err := s.nginxPool("apache")
	require.NoError(t, err)
	require.Len(t, pool, 5, "nginx stopped serving some backends")

	px.Restore()
	after := s.waitConverged(5, 90*time.Second)
	require.Equal(t, before, after, "the restarted daemon replaced backends instead of adopting them")
	requireNoFailures(t, r.Stop())
	require.NotContains(t, d2.Logs(), "draining backend")
}
