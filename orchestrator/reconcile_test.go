package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/internal/health"
)

func testSpec() Spec {
	return Spec{
		Project: "up",
		Network: "upnet",
		Node:    testNode,
		Prefix:  "/services",
		Proxy:   ProxySpec{Image: "nginx:test", Publish: "127.0.0.1:8080", Port: 80, ConfigDir: "/etc/nginx", ConfigPath: "/etc/nginx/conf.d/upstreamd.conf"},
		Services: []ServiceSpec{{
			Name: "apache", Image: "apache:test", Replicas: 3, Port: 80,
			Env:       []string{"A=1"},
			Health:    HealthSpec{Path: "/", Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 2},
			StopGrace: 5 * time.Second,
		}},
	}
}

// recEnv is a Reconciler over a fake engine, a fake prober and, when pool
// is set, a fake nginx pool, with this node's share of the replicas under
// the test's control; its drainer runs until the test ends or stopDrains.
type recEnv struct {
	docker     *fakeDocker
	prober     *fakeProber
	pool       *fakePool // nil: the Reconciler has no Pool
	ledger     *ledger
	drainer    *drainer
	proxy      *runningProxy
	stopDrains context.CancelFunc
	rec        *reconciler

	mu     sync.Mutex
	share  map[string]int
	unread bool // the share is not known (never placed)
	wakes  int
}

// newRecEnv returns a recEnv for spec; call it inside the synctest bubble
// when the test waits on drains.
func newRecEnv(t *testing.T, spec Spec) *recEnv { return newEnv(t, spec, nil, 0) }

// newPoolEnv is newRecEnv with a fake pool; drainTimeout zero means the
// drainer's default. Call it inside the synctest bubble.
func newPoolEnv(t *testing.T, spec Spec, drainTimeout time.Duration) *recEnv {
	return newEnv(t, spec, newFakePool(), drainTimeout)
}

func newEnv(t *testing.T, spec Spec, p *fakePool, drainTimeout time.Duration) *recEnv {
	e := &recEnv{docker: newFakeDocker(), prober: newFakeProber(), pool: p, ledger: newLedger(), proxy: newRunningProxy()}
	var pl pool
	if p != nil { // not a typed nil in the interface
		pl = p
	}
	e.drainer = newDrainer(drainerConfig{
		Docker:  e.docker,
		Health:  e.prober,
		Ledger:  e.ledger,
		Pool:    pl,
		Spec:    spec,
		Timeout: drainTimeout,
		Done: func() {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.wakes++
		},
		Logger: zerolog.Nop(),
	})
	ctx, cancel := context.WithCancel(t.Context())
	e.stopDrains = cancel
	go func() { _ = e.drainer.Start(ctx) }()
	e.setSpec(spec)
	return e
}

// setSpec replaces the Reconciler with one for spec, as a daemon restarted
// with an edited spec file would be; the engine, the pool and the drains
// in progress stay.
func (e *recEnv) setSpec(spec Spec) {
	var p pool
	if e.pool != nil { // not a typed nil in the interface
		p = e.pool
	}
	e.rec = newReconciler(reconcilerConfig{
		Spec:   spec,
		Docker: e.docker,
		Health: e.prober,
		Drains: e.drainer,
		Ledger: e.ledger,
		Pool:   p,
		Proxy:  e.proxy,
		Share: func() (map[string]int, bool) {
			e.mu.Lock()
			defer e.mu.Unlock()
			return e.share, !e.unread
		},
		Logger: zerolog.Nop(),
	})
}

// setShare sets this node's share the Reconciler reads; unread means it
// is not known (the overrides, nodes or slots never read from etcd).
func (e *recEnv) setShare(share map[string]int, unread bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.share, e.unread = share, unread
}

// changes counts the proxy's published (re)starts.
func (e *recEnv) changes() int {
	p := e.proxy.get()
	return int(p.Generation)
}

// wakeCount counts the drains that ended.
func (e *recEnv) wakeCount() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.wakes
}

// waitDrains waits until no drain runs.
func (e *recEnv) waitDrains() { e.drainer.tasks.idle() }

func (e *recEnv) reconcile(t *testing.T) Result {
	t.Helper()
	res, err := e.rec.Reconcile(t.Context())
	if err != nil {
		t.Fatalf("Reconcile: %v", err)
	}
	return res
}

func (e *recEnv) resetCalls() {
	e.docker.resetCalls()
	e.prober.resetCalls()
}

func running(cs []containers.Container) []containers.Container {
	var out []containers.Container
	for _, c := range cs {
		if c.State == containers.StateRunning {
			out = append(out, c)
		}
	}
	return out
}

func ids(cs []containers.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.ID)
	}
	return out
}

func sortedEqual(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// checkConverged checks the end state: replicas running backends of
// apache, one data-volume container never started, and one running proxy
// mounting it.
func checkConverged(t *testing.T, e *recEnv, replicas int) {
	t.Helper()
	if got := len(running(e.docker.withRole(containers.RoleBackend, "apache"))); got != replicas {
		t.Errorf("%d running apache backends, want %d", got, replicas)
	}
	if got := e.docker.withRole(containers.RoleBackend, ""); len(got) != len(e.docker.withRole(containers.RoleBackend, "apache")) {
		t.Errorf("backends of other services left: %v", got)
	}
	data := e.docker.withRole(containers.RoleData, "")
	if len(data) != 1 {
		t.Fatalf("%d data-volume containers, want 1", len(data))
	}
	if n := e.docker.startsOf(data[0].ID); n != 0 {
		t.Errorf("data-volume container started %d times, want never", n)
	}
	proxies := e.docker.withRole(containers.RoleProxy, "")
	if len(proxies) != 1 || proxies[0].State != containers.StateRunning {
		t.Fatalf("proxies %v, want one running", proxies)
	}
	if got := e.docker.specOf(proxies[0].ID).VolumesFrom; !slices.Equal(got, []string{data[0].ID}) {
		t.Errorf("proxy VolumesFrom %v, want [%s] (the data-volume container)", got, data[0].ID)
	}
	if got := e.proxy.get(); got.ID != proxies[0].ID {
		t.Errorf("ProxyID %q, want %q", got.ID, proxies[0].ID)
	}
}

func TestReconcileFromNothing(t *testing.T) {
	spec := testSpec()
	e := newRecEnv(t, spec)
	e.reconcile(t)

	if got := e.docker.networks; !slices.Equal(got, []string{"upnet/up"}) {
		t.Errorf("EnsureNetwork calls %v, want [upnet/up]", got)
	}
	byRole := map[string][]containers.CreateSpec{}
	for _, cs := range e.docker.creates {
		byRole[cs.Labels[containers.LabelRole]] = append(byRole[cs.Labels[containers.LabelRole]], cs)
	}

	backends := byRole["backend"]
	if len(backends) != 3 {
		t.Fatalf("%d backends created, want 3", len(backends))
	}
	for _, cs := range backends {
		for k, want := range map[string]string{
			containers.LabelProject: "up", containers.LabelService: "apache", containers.LabelRole: "backend",
		} {
			if got := cs.Labels[k]; got != want {
				t.Errorf("backend %s label %s=%q, want %q", cs.Name, k, got, want)
			}
		}
		if cs.Labels[containers.LabelSpec] == "" || cs.Labels[containers.LabelSpec] != backends[0].Labels[containers.LabelSpec] {
			t.Errorf("backend %s spec label %q, want one non-empty hash shared by all", cs.Name, cs.Labels[containers.LabelSpec])
		}
		if !strings.HasPrefix(cs.Name, "up-apache-") || cs.Image != "apache:test" || cs.Network != "upnet" || cs.ExposedPort != 80 {
			t.Errorf("backend spec %+v: want name up-apache-*, image apache:test, network upnet, port 80", cs)
		}
	}

	data := byRole["data"]
	if len(data) != 1 {
		t.Fatalf("%d data-volume containers created, want 1", len(data))
	}
	if got := data[0].Volumes; !slices.Equal(got, []string{"/etc/nginx"}) {
		t.Errorf("data-volume container Volumes %v, want [/etc/nginx]", got)
	}
	if data[0].Labels[containers.LabelProject] != "up" || data[0].Image != "nginx:test" {
		t.Errorf("data-volume container spec %+v: want project up, image nginx:test", data[0])
	}

	proxies := byRole["proxy"]
	if len(proxies) != 1 {
		t.Fatalf("%d proxies created, want 1", len(proxies))
	}
	dataC := e.docker.withRole(containers.RoleData, "")
	if len(dataC) != 1 {
		t.Fatalf("%d data-volume containers on the engine, want 1", len(dataC))
	}
	if got := proxies[0].VolumesFrom; !slices.Equal(got, []string{dataC[0].ID}) {
		t.Errorf("proxy VolumesFrom %v, want the data container's ID [%s]", got, dataC[0].ID)
	}
	if got := proxies[0].PublishAddr; got != "127.0.0.1:8080" {
		t.Errorf("proxy PublishAddr %q, want 127.0.0.1:8080", got)
	}

	wantStarted := append(ids(e.docker.withRole(containers.RoleBackend, "apache")), ids(e.docker.withRole(containers.RoleProxy, ""))...)
	if !sortedEqual(e.docker.starts, wantStarted) {
		t.Errorf("started %v, want the 3 backends and the proxy %v (never the data container)", e.docker.starts, wantStarted)
	}
	if got := e.changes(); got != 1 {
		t.Errorf("OnProxyChange called %d times, want 1", got)
	}
	checkConverged(t, e, 3)

	// Probe targets: every backend at its address on the spec network.
	var wantAddrs []string
	for _, c := range e.docker.withRole(containers.RoleBackend, "apache") {
		wantAddrs = append(wantAddrs, net.JoinHostPort(c.IPs["upnet"], "80"))
	}
	var gotAddrs []string
	for _, tg := range e.prober.lastSync() {
		gotAddrs = append(gotAddrs, tg.Addr)
		if tg.Service != "apache" || tg.Port != 80 || tg.Health != spec.Services[0].Health || tg.Addr != net.JoinHostPort(tg.IP, "80") {
			t.Errorf("target %+v: want service apache, port 80, the spec's health and Addr = IP:80", tg)
		}
	}
	if !sortedEqual(gotAddrs, wantAddrs) {
		t.Errorf("Health.Sync addresses %v, want %v (on network upnet, not bridge)", gotAddrs, wantAddrs)
	}
}

// gone lists the containers a pass must take away, and how: dead ones are
// reported Dead and removed at once, drained ones Retired, then stopped and
// removed in the background.
type gone struct {
	dead, retired, stopped, removed []string
}

// TestReconcileChanges starts each case from a converged project, changes
// something, runs one pass, waits for the drains it started (there is no
// Pool here, so they do not wait for nginx) and checks exactly which calls
// it made; a further pass must then do nothing. Spec changes are rolling
// updates over several passes: TestReconcileRollingUpdate.
func TestReconcileChanges(t *testing.T) {
	backends := func(e *recEnv) []containers.Container { return e.docker.withRole(containers.RoleBackend, "apache") }
	proxyID := func(e *recEnv) string { return e.docker.withRole(containers.RoleProxy, "")[0].ID }

	tests := []struct {
		name         string
		mutate       func(t *testing.T, e *recEnv) gone
		wantCreated  map[containers.Role]int
		wantStarts   int
		wantChanges  int // OnProxyChange calls
		wantReplicas int // 0 means 3
		wantRequeue  bool
	}{
		{
			name:   "nothing changed: no calls at all",
			mutate: func(*testing.T, *recEnv) gone { return gone{} },
		},
		{
			name: "exited backend is deregistered, removed and replaced",
			mutate: func(_ *testing.T, e *recEnv) gone {
				id := backends(e)[1].ID
				e.docker.edit(id, func(c *containers.Container) { c.State = containers.StateExited })
				return gone{dead: []string{id}, removed: []string{id}}
			},
			wantCreated: map[containers.Role]int{containers.RoleBackend: 1},
			wantStarts:  1,
		},
		{
			name: "backend reported dead while the listing still says running is inspected and replaced",
			mutate: func(_ *testing.T, e *recEnv) gone {
				id := backends(e)[2].ID
				e.docker.edit(id, func(c *containers.Container) { c.State = containers.StateExited })
				e.docker.mu.Lock()
				e.docker.staleList[id] = containers.StateRunning
				e.docker.mu.Unlock()
				e.ledger.mark(id, fateDied) // the "die" event
				return gone{dead: []string{id}, removed: []string{id}}
			},
			wantCreated: map[containers.Role]int{containers.RoleBackend: 1},
			wantStarts:  1,
		},
		{
			name: "dead backend is replaced too",
			mutate: func(_ *testing.T, e *recEnv) gone {
				id := backends(e)[0].ID
				e.docker.edit(id, func(c *containers.Container) { c.State = containers.StateDead })
				return gone{dead: []string{id}, removed: []string{id}}
			},
			wantCreated: map[containers.Role]int{containers.RoleBackend: 1},
			wantStarts:  1,
		},
		{
			name: "replicas override 3 to 5 creates 2",
			mutate: func(_ *testing.T, e *recEnv) gone {
				e.setShare(map[string]int{"apache": 5}, false)
				return gone{}
			},
			wantCreated:  map[containers.Role]int{containers.RoleBackend: 2},
			wantStarts:   2,
			wantReplicas: 5,
		},
		{
			name: "replicas 5 to 2 removes the unhealthy first, then the pending",
			mutate: func(t *testing.T, e *recEnv) gone {
				e.setShare(map[string]int{"apache": 5}, false)
				e.reconcile(t)
				e.resetCalls()
				b := backends(e)
				for i, s := range []string{"healthy", "unhealthy", "healthy", "unhealthy", "pending"} {
					e.prober.setState(b[i].ID, s)
				}
				e.setShare(map[string]int{"apache": 2}, false)
				g := []string{b[1].ID, b[3].ID, b[4].ID}
				return gone{retired: g, stopped: g, removed: g}
			},
			wantReplicas: 2,
		},
		{
			name: "replicas 5 to 2 among equally healthy removes the newest",
			mutate: func(t *testing.T, e *recEnv) gone {
				e.setShare(map[string]int{"apache": 5}, false)
				e.reconcile(t)
				e.resetCalls()
				b := backends(e)
				for _, c := range b {
					e.prober.setState(c.ID, "healthy")
				}
				e.setShare(map[string]int{"apache": 2}, false)
				g := []string{b[2].ID, b[3].ID, b[4].ID}
				return gone{retired: g, stopped: g, removed: g}
			},
			wantReplicas: 2,
		},
		{
			name: "created but never started backend is started and counted",
			mutate: func(_ *testing.T, e *recEnv) gone {
				// A pass interrupted between Create and Start.
				b := backends(e)
				want := e.docker.specOf(b[0].ID)
				e.docker.drop(b[0].ID)
				want.Name = "up-apache-interrupted"
				e.docker.add(want, containers.StateCreated)
				return gone{}
			},
			wantStarts:  1,
			wantRequeue: true,
		},
		{
			name: "proxy spec change replaces the proxy but keeps the data container",
			mutate: func(_ *testing.T, e *recEnv) gone {
				spec := testSpec()
				spec.Proxy.Publish = "0.0.0.0:9090"
				e.setSpec(spec)
				return gone{removed: []string{proxyID(e)}}
			},
			wantCreated: map[containers.Role]int{containers.RoleProxy: 1},
			wantStarts:  1,
			wantChanges: 1,
		},
		{
			name: "removed data container is recreated and the proxy with it",
			mutate: func(_ *testing.T, e *recEnv) gone {
				e.docker.drop(e.docker.withRole(containers.RoleData, "")[0].ID)
				return gone{removed: []string{proxyID(e)}}
			},
			wantCreated: map[containers.Role]int{containers.RoleData: 1, containers.RoleProxy: 1},
			wantStarts:  1,
			wantChanges: 1,
		},
		{
			name: "exited proxy is replaced",
			mutate: func(_ *testing.T, e *recEnv) gone {
				id := proxyID(e)
				e.docker.edit(id, func(c *containers.Container) { c.State = containers.StateExited })
				return gone{removed: []string{id}}
			},
			wantCreated: map[containers.Role]int{containers.RoleProxy: 1},
			wantStarts:  1,
			wantChanges: 1,
		},
		{
			name: "proxy that died while the listing still says running is replaced in the same pass",
			mutate: func(_ *testing.T, e *recEnv) gone {
				id := proxyID(e)
				e.docker.edit(id, func(c *containers.Container) { c.State = containers.StateExited })
				e.docker.mu.Lock()
				e.docker.staleList[id] = containers.StateRunning
				e.docker.mu.Unlock()
				e.ledger.mark(id, fateDied)
				return gone{removed: []string{id}}
			},
			wantCreated: map[containers.Role]int{containers.RoleProxy: 1},
			wantStarts:  1,
			wantChanges: 1,
		},
		{
			name: "created proxy of the current spec is started, not replaced",
			mutate: func(_ *testing.T, e *recEnv) gone {
				id := proxyID(e)
				e.docker.edit(id, func(c *containers.Container) { c.State = containers.StateCreated })
				return gone{}
			},
			wantStarts:  1,
			wantChanges: 1,
		},
		{
			name: "backends of a service no longer in the spec are drained, exited ones removed at once",
			mutate: func(_ *testing.T, e *recEnv) gone {
				var g []string
				for i := range 2 {
					g = append(g, addOldBackend(e, i, containers.StateRunning))
				}
				exited := addOldBackend(e, 2, containers.StateExited)
				return gone{dead: []string{exited}, retired: g, stopped: g, removed: append(g, exited)}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newRecEnv(t, testSpec())
			e.reconcile(t)
			e.resetCalls()
			changes := e.changes()

			want := tt.mutate(t, e)
			res := e.reconcile(t)
			e.waitDrains()

			if got := res.RequeueAfter > 0; got != tt.wantRequeue {
				t.Errorf("requeue %v (%s), want %v", got, res.RequeueAfter, tt.wantRequeue)
			}
			created := map[containers.Role]int{}
			for _, cs := range e.docker.creates {
				created[containers.Role(cs.Labels[containers.LabelRole])]++
			}
			for _, role := range []containers.Role{containers.RoleBackend, containers.RoleData, containers.RoleProxy} {
				if created[role] != tt.wantCreated[role] {
					t.Errorf("created %d %s containers, want %d", created[role], role, tt.wantCreated[role])
				}
			}
			if got := len(e.docker.starts); got != tt.wantStarts {
				t.Errorf("%d Start calls, want %d", got, tt.wantStarts)
			}
			if !sortedEqual(e.docker.removes, want.removed) {
				t.Errorf("removed %v, want %v", e.docker.removes, want.removed)
			}
			if !sortedEqual(e.docker.stops, want.stopped) {
				t.Errorf("stopped %v, want %v", e.docker.stops, want.stopped)
			}
			if got := e.prober.deadIDs(); !sortedEqual(got, want.dead) {
				t.Errorf("Health.Dead for %v, want %v", got, want.dead)
			}
			if got := e.prober.retiredIDs(); !sortedEqual(got, want.retired) {
				t.Errorf("Health.Retire for %v, want %v", got, want.retired)
			}
			if got := e.wakeCount(); got != len(want.retired) {
				t.Errorf("Wake called %d times, want %d (once per finished drain)", got, len(want.retired))
			}
			if got := e.changes() - changes; got != tt.wantChanges {
				t.Errorf("OnProxyChange called %d times, want %d", got, tt.wantChanges)
			}
			replicas := tt.wantReplicas
			if replicas == 0 {
				replicas = 3
			}
			checkConverged(t, e, replicas)

			// Level-triggered: once the drains ended, the next pass finds
			// nothing to do.
			e.resetCalls()
			changes = e.changes()
			res = e.reconcile(t)
			e.waitDrains()
			if c, s, st, r := e.docker.calls(); c+s+st+r != 0 || e.changes() != changes ||
				len(e.prober.deadIDs()) != 0 || len(e.prober.retiredIDs()) != 0 || res.RequeueAfter != 0 {
				t.Errorf("second pass made calls: %d creates, %d starts, %d stops, %d removes, %d proxy changes, dead %v, retired %v, requeue %s; want none",
					c, s, st, r, e.changes()-changes, e.prober.deadIDs(), e.prober.retiredIDs(), res.RequeueAfter)
			}
		})
	}
}

// addOldBackend puts a backend of "old", a service not in testSpec, on the
// engine: port 8080 (its io.upstreamd.port label) on upnet.
func addOldBackend(e *recEnv, i int, state string) string {
	return e.docker.add(containers.CreateSpec{
		Name:  fmt.Sprintf("up-old-%d", i),
		Image: "old:test",
		Labels: map[string]string{
			containers.LabelProject: "up", containers.LabelService: "old",
			containers.LabelRole: string(containers.RoleBackend), containers.LabelSpec: "0123456789ab",
			containers.LabelPort: "8080",
		},
		Network: "upnet",
	}, state)
}

func TestReconcileShare(t *testing.T) {
	type read struct {
		ov     map[string]int
		unread bool
	}
	tests := []struct {
		name  string
		reads []read // one per pass
		want  []int  // running backends after each pass
	}{
		{name: "no share said: the spec's count", reads: []read{{}}, want: []int{3}},
		{name: "share unknown: nothing is scaled, not to the spec's count either", reads: []read{{ov: map[string]int{"apache": 5}}, {unread: true}}, want: []int{5, 5}},
		{name: "share unknown from the start: nothing is created", reads: []read{{unread: true}}, want: []int{0}},
		{name: "a share applies", reads: []read{{ov: map[string]int{"apache": 5}}}, want: []int{5}},
		{name: "a changed share applies", reads: []read{{ov: map[string]int{"apache": 5}}, {ov: map[string]int{"apache": 2}}}, want: []int{5, 2}},
		{name: "no share said any more: the spec's count again", reads: []read{{ov: map[string]int{"apache": 5}}, {ov: map[string]int{}}}, want: []int{5, 3}},
		{name: "share of a service not in the spec is ignored", reads: []read{{ov: map[string]int{"nosuch": 7}}}, want: []int{3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newRecEnv(t, testSpec())
			for i, r := range tt.reads {
				e.setShare(r.ov, r.unread)
				e.reconcile(t)
				e.waitDrains()
				if got := len(running(e.docker.withRole(containers.RoleBackend, "apache"))); got != tt.want[i] {
					t.Errorf("pass %d: %d running backends, want %d", i, got, tt.want[i])
				}
			}
		})
	}
}

func TestReconcileImageMissing(t *testing.T) {
	tests := []struct {
		name         string
		image        string
		wantBackends int
		wantProxy    bool
	}{
		{name: "backend image", image: "apache:test", wantBackends: 0, wantProxy: true},
		{name: "proxy image", image: "nginx:test", wantBackends: 3, wantProxy: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newRecEnv(t, testSpec())
			// As containers.Client.EnsureImage words it.
			e.docker.imageErr[tt.image] = fmt.Errorf("image %s is not present and cannot be pulled (pull access denied): %w; build it with `make images`",
				tt.image, containers.ErrImageMissing)
			_, err := e.rec.Reconcile(t.Context())
			if !errors.Is(err, containers.ErrImageMissing) {
				t.Fatalf("Reconcile: got %v, want an error matching containers.ErrImageMissing", err)
			}
			if !strings.Contains(err.Error(), tt.image) {
				t.Errorf("error %q does not name the image %s", err, tt.image)
			}
			if got := len(e.docker.withRole(containers.RoleBackend, "")); got != tt.wantBackends {
				t.Errorf("%d backends, want %d (one missing image must not stop the rest)", got, tt.wantBackends)
			}
			if got := len(e.docker.withRole(containers.RoleProxy, "")) == 1; got != tt.wantProxy {
				t.Errorf("proxy created %v, want %v", got, tt.wantProxy)
			}
		})
	}
}

// addrOf is where nginx reaches a backend: its address on upnet.
func addrOf(c containers.Container, port int) string {
	return net.JoinHostPort(c.IPs["upnet"], strconv.Itoa(port))
}

// byAddr sorts pool waits by address, as fakePool.waiting does.
func byAddr(ws []poolWait) []poolWait {
	slices.SortFunc(ws, func(a, b poolWait) int { return strings.Compare(a.addr, b.addr) })
	return ws
}

// convergeServing runs a pass, then marks every apache backend healthy
// and, when there is a pool, served by nginx, as a running daemon would
// find them; it forgets the calls made so far and returns the backends,
// oldest first.
func (e *recEnv) convergeServing(t *testing.T) []containers.Container {
	t.Helper()
	e.reconcile(t)
	b := e.docker.withRole(containers.RoleBackend, "apache")
	for _, c := range b {
		e.prober.setState(c.ID, "healthy")
		if e.pool != nil {
			e.pool.set("apache", addrOf(c, 80), true)
		}
	}
	e.resetCalls()
	return b
}

// checkIdle runs one more pass and checks it found nothing to do.
func (e *recEnv) checkIdle(t *testing.T, step string) {
	t.Helper()
	e.resetCalls()
	res := e.reconcile(t)
	synctest.Wait()
	if c, s, st, r := e.docker.calls(); c+s+st+r != 0 || len(e.prober.deadIDs()) != 0 || len(e.prober.retiredIDs()) != 0 || res.RequeueAfter != 0 {
		t.Errorf("%s: pass made %d creates, %d starts, %d stops, %d removes, dead %v, retired %v, requeue %s; want nothing",
			step, c, s, st, r, e.prober.deadIDs(), e.prober.retiredIDs(), res.RequeueAfter)
	}
}

// TestReconcileScaleDownDrains scales 5 to 2 with nginx in the loop: the
// extras are deregistered at once, and each is stopped, with its service's
// grace, and removed only once nginx no longer sends to it.
func TestReconcileScaleDownDrains(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newPoolEnv(t, testSpec(), 0)
		e.setShare(map[string]int{"apache": 5}, false)
		b := e.convergeServing(t)
		if len(b) != 5 {
			t.Fatalf("setup: %d backends, want 5", len(b))
		}
		extras := b[2:] // all healthy: the newest go
		e.setShare(map[string]int{"apache": 2}, false)

		e.reconcile(t)
		// Before the drains get to run: deregistered, nothing stopped.
		if got := e.prober.retiredIDs(); !sortedEqual(got, ids(extras)) {
			t.Errorf("Health.Retire for %v when Reconcile returns, want %v", got, ids(extras))
		}
		if got := e.docker.recorded().stops; len(got) != 0 {
			t.Errorf("stopped %v when Reconcile returns, want nothing before nginx drops them", got)
		}
		synctest.Wait()
		var want []poolWait
		for _, c := range extras {
			want = append(want, poolWait{service: "apache", addr: addrOf(c, 80), want: false})
		}
		if got := e.pool.waiting(); !slices.Equal(got, byAddr(want)) {
			t.Errorf("waiting on the pool for %v, want %v", got, want)
		}
		if got := e.docker.recorded(); len(got.stops)+len(got.removes) != 0 {
			t.Errorf("while nginx still serves them: stopped %v, removed %v; want nothing", got.stops, got.removes)
		}
		if got := e.wakeCount(); got != 0 {
			t.Errorf("Wake called %d times before any drain ended, want 0", got)
		}

		// A pass meanwhile leaves the draining backends alone.
		e.resetCalls()
		res := e.reconcile(t)
		synctest.Wait()
		if c, s, st, r := e.docker.calls(); c+s+st+r != 0 || len(e.prober.retiredIDs()) != 0 {
			t.Errorf("pass during the drains made %d creates, %d starts, %d stops, %d removes, retired %v; want nothing",
				c, s, st, r, e.prober.retiredIDs())
		}
		if res.RequeueAfter == 0 {
			t.Errorf("pass during the drains: no requeue, want one")
		}

		for i, c := range extras {
			e.pool.set("apache", addrOf(c, 80), false)
			synctest.Wait()
			got := e.docker.recorded()
			if want := ids(extras[:i+1]); !slices.Equal(got.stops, want) || !slices.Equal(got.removes, want) {
				t.Errorf("after nginx dropped %d: stopped %v, removed %v; want both %v", i+1, got.stops, got.removes, want)
			}
			for _, g := range got.graces {
				if g != 5*time.Second {
					t.Errorf("stopped with grace %s, want the service's StopGrace 5s", g)
				}
			}
			if got := e.wakeCount(); got != i+1 {
				t.Errorf("after %d drains: Wake called %d times, want %d", i+1, got, i+1)
			}
		}
		if got := ids(e.docker.withRole(containers.RoleBackend, "apache")); !slices.Equal(got, ids(b[:2])) {
			t.Errorf("backends left %v, want the two oldest %v", got, ids(b[:2]))
		}
		e.checkIdle(t, "after the drains")
	})
}

// TestReconcileDrainTimeout: nginx never confirms that it stopped sending
// to a draining backend; after DrainTimeout it is stopped anyway.
func TestReconcileDrainTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const timeout = 2 * time.Second
		e := newPoolEnv(t, testSpec(), timeout)
		b := e.convergeServing(t)
		victim := b[2]
		e.setShare(map[string]int{"apache": 2}, false)
		e.reconcile(t)
		synctest.Wait()
		if got := e.prober.retiredIDs(); !slices.Equal(got, []string{victim.ID}) {
			t.Fatalf("Health.Retire for %v, want [%s]", got, victim.ID)
		}

		advance(timeout - time.Millisecond)
		if got := e.docker.recorded(); len(got.stops)+len(got.removes) != 0 {
			t.Errorf("before DrainTimeout: stopped %v, removed %v; want nothing", got.stops, got.removes)
		}
		if got := e.pool.waiting(); len(got) != 1 {
			t.Errorf("before DrainTimeout: waiting on the pool for %v, want the victim", got)
		}

		advance(2 * time.Millisecond)
		got := e.docker.recorded()
		if want := []string{victim.ID}; !slices.Equal(got.stops, want) || !slices.Equal(got.removes, want) {
			t.Errorf("after DrainTimeout: stopped %v, removed %v; want both %v", got.stops, got.removes, want)
		}
		if w := e.pool.waiting(); len(w) != 0 {
			t.Errorf("after DrainTimeout: still waiting on the pool for %v", w)
		}
		if got := e.wakeCount(); got != 1 {
			t.Errorf("Wake called %d times, want 1", got)
		}
	})
}

// TestReconcileDrainCancelled: the daemon stops while a backend drains. It
// is left running for the next daemon to adopt, not stopped half-drained.
func TestReconcileDrainCancelled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newPoolEnv(t, testSpec(), 0)
		b := e.convergeServing(t)
		victim := b[2]
		e.setShare(map[string]int{"apache": 2}, false)
		e.reconcile(t)
		synctest.Wait()
		if got := e.pool.waiting(); len(got) != 1 {
			t.Fatalf("waiting on the pool for %v, want the victim", got)
		}

		e.stopDrains() // the daemon stops
		e.waitDrains()
		if got := e.docker.recorded(); len(got.stops)+len(got.removes) != 0 {
			t.Errorf("after cancel: stopped %v, removed %v; want nothing", got.stops, got.removes)
		}
		if got, err := e.docker.Inspect(t.Context(), victim.ID); err != nil || got.State != containers.StateRunning {
			t.Errorf("victim after cancel: %+v, %v; want it running", got, err)
		}
		if w := e.pool.waiting(); len(w) != 0 {
			t.Errorf("after cancel: still waiting on the pool for %v", w)
		}
	})
}

// serving counts what a rolling update keeps at the replica count or above:
// the up-to-date backends that are ready (healthy and, with a pool, served)
// plus the outdated ones not retired.
func (e *recEnv) serving(newHash string, retired map[string]bool) int {
	n := 0
	for _, c := range e.docker.withRole(containers.RoleBackend, "apache") {
		if c.SpecHash != newHash {
			if !retired[c.ID] {
				n++
			}
			continue
		}
		if s, _ := e.prober.State(c.ID); s != health.Healthy {
			continue
		}
		if e.pool == nil || e.pool.Serves("apache", addrOf(c, 80)) {
			n++
		}
	}
	return n
}

// newBackendHash is the spec label a backend of the Reconciler's current
// spec gets.
func (e *recEnv) newBackendHash() string {
	return e.rec.backendSpec(e.rec.cfg.Spec.Services[0]).Labels[containers.LabelSpec]
}

// changeBackendSpec restarts the daemon with a changed env: every backend
// is outdated.
func changeBackendSpec(e *recEnv, _ []containers.Container) {
	spec := testSpec()
	spec.Services[0].Env = []string{"A=2"}
	e.setSpec(spec)
}

// TestReconcileRollingUpdate drives rolling updates pass by pass: one new
// backend at a time, and an old one drained only once the new one is
// healthy and served. At every step, ready up-to-date backends plus old ones
// not drained are at least the replica count (3).
func TestReconcileRollingUpdate(t *testing.T) {
	tests := []struct {
		name      string
		noPool    bool
		states    []string // of the three backends before the update, oldest first
		outdate   func(e *recEnv, b []containers.Container)
		wantOrder []int // the backends drained, in order (indexes into states)
	}{
		{
			name:      "changed spec: all three replaced one by one, the unhealthy first",
			states:    []string{"healthy", "unhealthy", "healthy"},
			outdate:   changeBackendSpec,
			wantOrder: []int{1, 2, 0},
		},
		{
			name:      "changed spec without a pool: healthy is enough, the newest first",
			noPool:    true,
			states:    []string{"healthy", "healthy", "healthy"},
			outdate:   changeBackendSpec,
			wantOrder: []int{2, 1, 0},
		},
		{
			name:   "one backend created from an older spec",
			states: []string{"healthy", "healthy", "healthy"},
			outdate: func(e *recEnv, b []containers.Container) {
				e.docker.edit(b[1].ID, func(c *containers.Container) {
					c.SpecHash = "0123456789ab"
					c.Labels[containers.LabelSpec] = c.SpecHash
				})
			},
			wantOrder: []int{1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newPoolEnv(t, testSpec(), 0)
				if tt.noPool {
					e = newRecEnv(t, testSpec())
				}
				b := e.convergeServing(t)
				for i, s := range tt.states {
					e.prober.setState(b[i].ID, s)
				}
				tt.outdate(e, b)
				newHash := e.newBackendHash()

				// Calls are not reset during the rollout: each pass looks at
				// what was added since the one before.
				retired := map[string]bool{}
				var wantStops []string // drains the pool let finish
				check := func(step string) {
					t.Helper()
					if got := e.serving(newHash, retired); got < 3 {
						t.Errorf("%s: %d serving (ready new + old not drained), want >= 3", step, got)
					}
					if got := e.docker.recorded().stops; !slices.Equal(got, wantStops) {
						t.Errorf("%s: stopped %v, want %v (stopped only once nginx dropped them)", step, got, wantStops)
					}
				}
				check("before the update")
				pass := func(step string) (created []containers.Container, drained []string, requeue bool) {
					t.Helper()
					before, beforeRetired := e.docker.recorded(), len(e.prober.retiredIDs())
					res := e.reconcile(t)
					synctest.Wait()
					for _, cs := range e.docker.recorded().creates[len(before.creates):] {
						for _, c := range e.docker.withRole(containers.RoleBackend, "apache") {
							if c.Name == cs.Name {
								created = append(created, c)
							}
						}
					}
					drained = e.prober.retiredIDs()[beforeRetired:]
					for _, id := range drained {
						retired[id] = true
						if tt.noPool { // nothing to wait for
							wantStops = append(wantStops, id)
						}
					}
					if d := e.prober.deadIDs(); len(d) != 0 {
						t.Errorf("%s: Health.Dead for %v, want none (nothing died)", step, d)
					}
					check(step)
					return created, drained, res.RequeueAfter > 0
				}
				var draining []containers.Container // drained, nginx still serving them
				nginxDrops := func(step string) {
					t.Helper()
					if e.pool == nil {
						return
					}
					for _, c := range draining {
						e.pool.set("apache", addrOf(c, 80), false)
						wantStops = append(wantStops, c.ID)
					}
					draining = nil
					synctest.Wait()
					check(step)
				}

				for round, victim := range tt.wantOrder {
					step := fmt.Sprintf("round %d", round+1)
					created, drained, requeue := pass(step + ", first pass")
					if len(created) != 1 || len(drained) != 0 || !requeue {
						t.Fatalf("%s, first pass: created %d, drained %v, requeue %v; want 1 created, none drained, requeue",
							step, len(created), drained, requeue)
					}
					fresh := created[0]
					if fresh.SpecHash != newHash {
						t.Errorf("%s: created a backend of spec %s, want %s", step, fresh.SpecHash, newHash)
					}
					// The last round's drain ends only now: passes do not wait for it.
					nginxDrops(step + ", nginx drops the old backend")

					stalls := []string{"", "pending", "unhealthy"} // "": not probed yet
					if e.pool != nil {
						stalls = append(stalls, "healthy") // but not served yet
					}
					for _, s := range stalls {
						if s != "" {
							e.prober.setState(fresh.ID, s)
						}
						sstep := fmt.Sprintf("%s, new backend %q", step, s)
						if created, drained, requeue := pass(sstep); len(created)+len(drained) != 0 || !requeue {
							t.Fatalf("%s: created %d, drained %v, requeue %v; want nothing, requeue", sstep, len(created), drained, requeue)
						}
					}

					e.prober.setState(fresh.ID, "healthy")
					if e.pool != nil {
						e.pool.set("apache", addrOf(fresh, 80), true)
					}
					created, drained, requeue = pass(step + ", new backend ready")
					if want := []string{b[victim].ID}; len(created) != 0 || !slices.Equal(drained, want) || !requeue {
						t.Fatalf("%s, new backend ready: created %d, drained %v, requeue %v; want none created, %v drained, requeue",
							step, len(created), drained, requeue, want)
					}
					draining = append(draining, b[victim])
				}
				nginxDrops("end, nginx drops the last old backend")

				got := e.docker.recorded()
				var want []string
				for _, i := range tt.wantOrder {
					want = append(want, b[i].ID)
				}
				if !slices.Equal(got.removes, want) {
					t.Errorf("removed %v, want %v", got.removes, want)
				}
				for _, g := range got.graces {
					if g != 5*time.Second {
						t.Errorf("stopped with grace %s, want the service's StopGrace 5s", g)
					}
				}
				for _, c := range e.docker.withRole(containers.RoleBackend, "apache") {
					if c.SpecHash != newHash {
						t.Errorf("outdated backend %s left after the rollout", c.Name)
					}
				}
				checkConverged(t, e, 3)
				e.checkIdle(t, "after the rollout")
			})
		})
	}
}

// TestReconcileRollingUpdateStalls: a new backend that never becomes
// ready stalls the rollout safely: no old backend is drained, no more new
// ones are started, and the pass keeps asking to be requeued.
func TestReconcileRollingUpdateStalls(t *testing.T) {
	tests := []struct {
		name  string
		state string // of the new backend
	}{
		{name: "new backend stays pending", state: "pending"},
		{name: "new backend is unhealthy", state: "unhealthy"},
		{name: "new backend is healthy but nginx never serves it", state: "healthy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newPoolEnv(t, testSpec(), 0)
				e.convergeServing(t)
				changeBackendSpec(e, nil)
				e.reconcile(t)
				created := e.docker.recorded().creates
				if len(created) != 1 {
					t.Fatalf("first pass created %d backends, want 1", len(created))
				}
				for _, c := range e.docker.withRole(containers.RoleBackend, "apache") {
					if c.Name == created[0].Name {
						e.prober.setState(c.ID, tt.state)
					}
				}
				for i := range 10 {
					e.resetCalls()
					res := e.reconcile(t)
					synctest.Wait()
					if c, s, st, r := e.docker.calls(); c+s+st+r != 0 || len(e.prober.retiredIDs()) != 0 {
						t.Errorf("pass %d: %d creates, %d starts, %d stops, %d removes, retired %v; want nothing",
							i, c, s, st, r, e.prober.retiredIDs())
					}
					if res.RequeueAfter == 0 {
						t.Errorf("pass %d: no requeue, want one while the rollout waits", i)
					}
					advance(res.RequeueAfter)
				}
				if got := len(running(e.docker.withRole(containers.RoleBackend, "apache"))); got != 4 {
					t.Errorf("%d backends running, want 4 (3 old, 1 new)", got)
				}
			})
		})
	}
}

// TestReconcileRollingUpdateDeath: old backends die while the first new
// one is starting. They are removed at once, without a drain; the new
// backend counts as the replacement of one, and any further ones are
// replaced at once, without waiting for it. The rollout then completes.
func TestReconcileRollingUpdateDeath(t *testing.T) {
	tests := []struct {
		name        string
		die         []int // old backends that exit, oldest first
		wantCreated int
	}{
		{name: "one dies: the new one makes up the count", die: []int{0}, wantCreated: 0},
		{name: "two die: one more is started at once", die: []int{0, 2}, wantCreated: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newPoolEnv(t, testSpec(), 0)
				b := e.convergeServing(t)
				changeBackendSpec(e, b)
				newHash := e.newBackendHash()
				e.reconcile(t)
				if got := len(e.docker.recorded().creates); got != 1 {
					t.Fatalf("first pass created %d backends, want 1", got)
				}
				e.resetCalls()

				var died []string
				for _, i := range tt.die {
					e.docker.edit(b[i].ID, func(c *containers.Container) { c.State = containers.StateExited })
					died = append(died, b[i].ID)
				}
				res := e.reconcile(t)
				synctest.Wait()
				got := e.docker.recorded()
				if !sortedEqual(e.prober.deadIDs(), died) || !sortedEqual(got.removes, died) {
					t.Errorf("Health.Dead for %v, removed %v; want both %v", e.prober.deadIDs(), got.removes, died)
				}
				if len(got.stops) != 0 || len(e.prober.retiredIDs()) != 0 {
					t.Errorf("stopped %v, retired %v; want nothing (dead backends are not drained)", got.stops, e.prober.retiredIDs())
				}
				if len(got.creates) != tt.wantCreated {
					t.Errorf("created %d backends, want %d", len(got.creates), tt.wantCreated)
				}
				if res.RequeueAfter == 0 {
					t.Errorf("no requeue, want one while old backends remain")
				}

				// The rollout goes on: new backends become ready, nginx drops
				// the drained ones.
				for i := 0; ; i++ {
					if i == 20 {
						t.Fatalf("rollout not done after %d passes", i)
					}
					for _, c := range e.docker.withRole(containers.RoleBackend, "apache") {
						if c.SpecHash == newHash {
							e.prober.setState(c.ID, "healthy")
							e.pool.set("apache", addrOf(c, 80), true)
						} else if slices.Contains(e.prober.retiredIDs(), c.ID) {
							e.pool.set("apache", addrOf(c, 80), false)
						}
					}
					synctest.Wait()
					if res := e.reconcile(t); res.RequeueAfter == 0 {
						break
					}
					synctest.Wait()
				}
				for _, c := range e.docker.withRole(containers.RoleBackend, "apache") {
					if c.SpecHash != newHash {
						t.Errorf("outdated backend %s left after the rollout", c.Name)
					}
				}
				if got := e.docker.recorded().stops; slices.ContainsFunc(died, func(id string) bool { return slices.Contains(got, id) }) {
					t.Errorf("stopped %v, which includes a dead backend %v", got, died)
				}
				checkConverged(t, e, 3)
			})
		})
	}
}

// TestReconcileRemovedServiceDrains: a service is gone from the spec. Its
// exited backends are removed at once; its running ones are deregistered,
// then stopped and removed once nginx no longer sends to them (at the
// address of their io.upstreamd.port label).
func TestReconcileRemovedServiceDrains(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newPoolEnv(t, testSpec(), 0)
		e.convergeServing(t)
		var old []containers.Container
		var wantWaits []poolWait
		for i := range 2 {
			c, err := e.docker.Inspect(t.Context(), addOldBackend(e, i, containers.StateRunning))
			if err != nil {
				t.Fatal(err)
			}
			old = append(old, c)
			e.pool.set("old", addrOf(c, 8080), true)
			wantWaits = append(wantWaits, poolWait{service: "old", addr: addrOf(c, 8080), want: false})
		}
		exited := addOldBackend(e, 2, containers.StateExited)

		e.reconcile(t)
		synctest.Wait()
		got := e.docker.recorded()
		if d := e.prober.deadIDs(); !slices.Equal(d, []string{exited}) || !slices.Equal(got.removes, []string{exited}) {
			t.Errorf("Health.Dead for %v, removed %v; want only the exited one %s, at once", d, got.removes, exited)
		}
		if r := e.prober.retiredIDs(); !sortedEqual(r, ids(old)) {
			t.Errorf("Health.Retire for %v, want the running ones %v", r, ids(old))
		}
		if len(got.stops) != 0 {
			t.Errorf("stopped %v while nginx still serves them, want nothing", got.stops)
		}
		if w := e.pool.waiting(); !slices.Equal(w, byAddr(wantWaits)) {
			t.Errorf("waiting on the pool for %v, want %v", w, wantWaits)
		}

		// A pass meanwhile does not drain them again.
		e.resetCalls()
		e.reconcile(t)
		synctest.Wait()
		if c, s, st, r := e.docker.calls(); c+s+st+r != 0 || len(e.prober.retiredIDs()) != 0 {
			t.Errorf("pass during the drains made %d creates, %d starts, %d stops, %d removes, retired %v; want nothing",
				c, s, st, r, e.prober.retiredIDs())
		}
		if n := len(e.pool.allWaits()); n != 2 {
			t.Errorf("%d WaitServes calls, want 2 (one per drain)", n)
		}

		for i, c := range old {
			e.pool.set("old", addrOf(c, 8080), false)
			synctest.Wait()
			got := e.docker.recorded()
			if want := ids(old[:i+1]); !slices.Equal(got.stops, want) || !slices.Equal(got.removes, want) {
				t.Errorf("after nginx dropped %d: stopped %v, removed %v; want both %v", i+1, got.stops, got.removes, want)
			}
			for _, g := range got.graces {
				if g != 10*time.Second {
					t.Errorf("stopped with grace %s, want the default 10s (the spec no longer has the service)", g)
				}
			}
		}
		checkConverged(t, e, 3)
		e.checkIdle(t, "after the drains")
	})
}

// TestReconcileDrainWaitsWhileUnknown: after a restart, until the renderer
// has said what nginx serves, a drained backend is not stopped, however
// long that takes (nginx may still send to it from the pools it keeps);
// the drain timeout counts only once it is known.
func TestReconcileDrainWaitsWhileUnknown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newPoolEnv(t, testSpec(), 0)
		b := e.convergeServing(t)
		e.pool.mu.Lock()
		e.pool.known = make(chan struct{}) // as for a daemon just restarted
		e.pool.mu.Unlock()
		e.setShare(map[string]int{"apache": 2}, false)
		e.reconcile(t)
		advance(time.Minute) // far past the drain timeout
		if got := e.docker.recorded(); len(got.stops) != 0 {
			t.Fatalf("stopped %v while what nginx serves is unknown; want nothing", got.stops)
		}
		// Known now, and the victim is not served: the drain ends.
		e.pool.learn()
		for _, c := range b {
			e.pool.set("apache", addrOf(c, 80), !slices.Contains(e.prober.retiredIDs(), c.ID))
		}
		e.waitDrains()
		if got := e.docker.recorded(); len(got.stops) != 1 {
			t.Errorf("stopped %v once known; want the one drained backend", got.stops)
		}
	})
}

// TestReconcileDrainsOnce: a pass that acts on a listing taken just before
// a drain removed its backend sees the backend still running; it must not
// drain it a second time (a second "drained and removed" for the same
// container). The mark is forgotten once a listing no longer shows it.
func TestReconcileDrainsOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newRecEnv(t, testSpec())
		e.reconcile(t)
		b := running(e.docker.withRole(containers.RoleBackend, "apache"))
		for _, c := range b {
			e.prober.setState(c.ID, "healthy")
		}
		e.setShare(map[string]int{"apache": 2}, false)
		e.reconcile(t)
		e.waitDrains()
		retired := e.prober.retiredIDs()
		if len(retired) != 1 {
			t.Fatalf("retired %v; want one", retired)
		}
		victim := retired[0]
		var ghost containers.Container
		for _, c := range b {
			if c.ID == victim {
				ghost = c
			}
		}
		e.docker.mu.Lock()
		e.docker.ghosts[victim] = ghost // still listed, as running
		e.docker.mu.Unlock()
		e.reconcile(t)
		e.waitDrains()
		if got := e.prober.retiredIDs(); len(got) != 1 {
			t.Errorf("retired %v; want the victim once", got)
		}
		if got := e.docker.recorded(); len(got.stops) != 1 {
			t.Errorf("stopped %v; want one stop", got.stops)
		}
		e.docker.mu.Lock()
		delete(e.docker.ghosts, victim)
		e.docker.mu.Unlock()
		e.reconcile(t)
		if f := e.ledger.of(victim); f != 0 {
			t.Errorf("fate of the drained backend %d; want it forgotten once no listing shows it", f)
		}
	})
}

// TestReconcilePlaceholderConfig: a new proxy on a new data volume starts
// with a placeholder that answers 503 (nginx would otherwise listen on
// nothing, and its published port reset every connection); a data volume
// that holds a config keeps it, and a replaced proxy writes nothing.
func TestReconcilePlaceholderConfig(t *testing.T) {
	spec := testSpec()
	e := newRecEnv(t, spec)
	e.reconcile(t)
	data := e.docker.withRole(containers.RoleData, "")[0].ID
	if want := []string{data + " /etc/nginx/conf.d/upstreamd.conf"}; !slices.Equal(e.docker.writes, want) {
		t.Fatalf("writes %v, want %v", e.docker.writes, want)
	}
	conf := string(e.docker.files[data]["/etc/nginx/conf.d/upstreamd.conf"])
	for _, want := range []string{"listen 80 default_server;", "return 503"} {
		if !strings.Contains(conf, want) {
			t.Errorf("placeholder lacks %q:\n%s", want, conf)
		}
	}

	// The proxy dies and is replaced: the volume holds a config (the
	// placeholder here, a rendered one in life), which stays as it is.
	e.docker.files[data]["/etc/nginx/conf.d/upstreamd.conf"] = []byte("rendered")
	e.docker.edit(e.docker.withRole(containers.RoleProxy, "")[0].ID, func(c *containers.Container) { c.State = containers.StateExited })
	e.reconcile(t)
	if len(e.docker.writes) != 1 || string(e.docker.files[data]["/etc/nginx/conf.d/upstreamd.conf"]) != "rendered" {
		t.Errorf("a replaced proxy rewrote the config: writes %v", e.docker.writes)
	}
	if n := len(e.docker.withRole(containers.RoleProxy, "")); n != 1 {
		t.Errorf("%d proxies after the replacement, want 1", n)
	}
}

// TestReconcileScaleUpInParallel: the backends of one scale-up are created
// and started at the same time, at most maxParallelCreates at once: 20
// creates of 100 ms each take 300 ms, not 2 s.
func TestReconcileScaleUpInParallel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		spec := testSpec()
		spec.Services[0].Replicas = 20
		e := newRecEnv(t, spec)
		e.docker.createDelay = 100 * time.Millisecond
		start := time.Now()
		e.reconcile(t)
		took := time.Since(start)
		if n := len(e.docker.withRole(containers.RoleBackend, "apache")); n != 20 {
			t.Fatalf("%d backends, want 20", n)
		}
		if got := e.docker.maxInflight; got != maxParallelCreates {
			t.Errorf("at most %d creates at once, want %d", got, maxParallelCreates)
		}
		// Each was handed to the prober as it started, before the pass's Sync.
		e.prober.mu.Lock()
		added := len(e.prober.added)
		e.prober.mu.Unlock()
		if added != 20 {
			t.Errorf("%d backends probed as they started, want 20", added)
		}
		// 3 waves of backends (8, 8, 4), plus the data volume and proxy.
		if want := 5 * 100 * time.Millisecond; took != want {
			t.Errorf("the pass took %s of engine time, want %s", took, want)
		}
	})
}
