package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/containers"
)

func testSpec() Spec {
	return Spec{
		Project: "up",
		Network: "upnet",
		Node:    testNode,
		Prefix:  "/services",
		Proxy:   ProxySpec{Image: "nginx:test", Publish: "127.0.0.1:8080", Port: 80, ConfigDir: "/etc/nginx"},
		Services: []ServiceSpec{{
			Name: "apache", Image: "apache:test", Replicas: 3, Port: 80,
			Env:       []string{"A=1"},
			Health:    HealthSpec{Path: "/", Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 2},
			StopGrace: 5 * time.Second,
		}},
	}
}

// recEnv is a Reconciler over a fake engine and a fake prober, with replica
// overrides and proxy changes under the test's control.
type recEnv struct {
	docker *fakeDocker
	prober *fakeProber
	rec    *Reconciler

	mu           sync.Mutex
	overrides    map[string]int
	overridesErr error
	proxyChanges int
}

func newRecEnv(spec Spec) *recEnv {
	e := &recEnv{docker: newFakeDocker(), prober: newFakeProber()}
	e.setSpec(spec)
	return e
}

// setSpec replaces the Reconciler with one for spec, as a daemon restarted
// with an edited spec file would be; the engine stays.
func (e *recEnv) setSpec(spec Spec) {
	e.rec = NewReconciler(ReconcilerConfig{
		Spec:   spec,
		Docker: e.docker,
		Health: e.prober,
		Replicas: func(context.Context) (map[string]int, error) {
			e.mu.Lock()
			defer e.mu.Unlock()
			return e.overrides, e.overridesErr
		},
		OnProxyChange: func() {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.proxyChanges++
		},
		Logger: zerolog.Nop(),
	})
}

func (e *recEnv) setOverrides(ov map[string]int, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.overrides, e.overridesErr = ov, err
}

func (e *recEnv) changes() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.proxyChanges
}

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
	if got := e.rec.ProxyID(); got != proxies[0].ID {
		t.Errorf("ProxyID %q, want %q", got, proxies[0].ID)
	}
}

func TestReconcileFromNothing(t *testing.T) {
	spec := testSpec()
	e := newRecEnv(spec)
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

// gone lists the containers a pass must take away, and how.
type gone struct {
	dead, stopped, removed []string
}

// TestReconcileChanges starts each case from a converged project, changes
// something, runs one pass and checks exactly which calls it made; a
// further pass must then do nothing.
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
				e.prober.mu.Lock()
				e.prober.tombstones[id] = true
				e.prober.mu.Unlock()
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
				e.setOverrides(map[string]int{"apache": 5}, nil)
				return gone{}
			},
			wantCreated:  map[containers.Role]int{containers.RoleBackend: 2},
			wantStarts:   2,
			wantReplicas: 5,
		},
		{
			name: "replicas 5 to 2 removes the unhealthy first, then the pending",
			mutate: func(t *testing.T, e *recEnv) gone {
				e.setOverrides(map[string]int{"apache": 5}, nil)
				e.reconcile(t)
				e.resetCalls()
				b := backends(e)
				for i, s := range []string{"healthy", "unhealthy", "healthy", "unhealthy", "pending"} {
					e.prober.setState(b[i].ID, s)
				}
				e.setOverrides(map[string]int{"apache": 2}, nil)
				g := []string{b[1].ID, b[3].ID, b[4].ID}
				return gone{dead: g, stopped: g, removed: g}
			},
			wantReplicas: 2,
		},
		{
			name: "replicas 5 to 2 among equally healthy removes the newest",
			mutate: func(t *testing.T, e *recEnv) gone {
				e.setOverrides(map[string]int{"apache": 5}, nil)
				e.reconcile(t)
				e.resetCalls()
				b := backends(e)
				for _, c := range b {
					e.prober.setState(c.ID, "healthy")
				}
				e.setOverrides(map[string]int{"apache": 2}, nil)
				g := []string{b[2].ID, b[3].ID, b[4].ID}
				return gone{dead: g, stopped: g, removed: g}
			},
			wantReplicas: 2,
		},
		{
			name: "backend created from an older spec is replaced",
			mutate: func(_ *testing.T, e *recEnv) gone {
				id := backends(e)[2].ID
				e.docker.edit(id, func(c *containers.Container) {
					c.SpecHash = "0123456789ab"
					c.Labels[containers.LabelSpec] = c.SpecHash
				})
				return gone{dead: []string{id}, stopped: []string{id}, removed: []string{id}}
			},
			wantCreated: map[containers.Role]int{containers.RoleBackend: 1},
			wantStarts:  1,
		},
		{
			name: "changed backend spec replaces every backend",
			mutate: func(_ *testing.T, e *recEnv) gone {
				spec := testSpec()
				spec.Services[0].Env = []string{"A=2"}
				e.setSpec(spec)
				g := ids(backends(e))
				return gone{dead: g, stopped: g, removed: g}
			},
			wantCreated: map[containers.Role]int{containers.RoleBackend: 3},
			wantStarts:  3,
			wantChanges: 1, // a new Reconciler has not seen the proxy yet
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
			name: "backends of a service no longer in the spec are removed",
			mutate: func(_ *testing.T, e *recEnv) gone {
				var g []string
				for i := range 2 {
					g = append(g, e.docker.add(containers.CreateSpec{
						Name:  fmt.Sprintf("up-old-%d", i),
						Image: "old:test",
						Labels: map[string]string{
							containers.LabelProject: "up", containers.LabelService: "old",
							containers.LabelRole: string(containers.RoleBackend), containers.LabelSpec: "0123456789ab",
						},
						Network: "upnet",
					}, containers.StateRunning))
				}
				return gone{dead: g, removed: g}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newRecEnv(testSpec())
			e.reconcile(t)
			e.resetCalls()
			changes := e.changes()

			want := tt.mutate(t, e)
			res := e.reconcile(t)

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
			if got := e.changes() - changes; got != tt.wantChanges {
				t.Errorf("OnProxyChange called %d times, want %d", got, tt.wantChanges)
			}
			replicas := tt.wantReplicas
			if replicas == 0 {
				replicas = 3
			}
			checkConverged(t, e, replicas)

			// Level-triggered: the next pass finds nothing to do.
			e.resetCalls()
			changes = e.changes()
			e.reconcile(t)
			if c, s, st, r := e.docker.calls(); c+s+st+r != 0 || e.changes() != changes || len(e.prober.deadIDs()) != 0 {
				t.Errorf("second pass made calls: %d creates, %d starts, %d stops, %d removes, %d proxy changes, dead %v; want none",
					c, s, st, r, e.changes()-changes, e.prober.deadIDs())
			}
		})
	}
}

func TestReconcileReplicaOverrides(t *testing.T) {
	type read struct {
		ov  map[string]int
		err error
	}
	errEtcd := errors.New("etcd unavailable")
	tests := []struct {
		name  string
		reads []read // one per pass
		want  []int  // running backends after each pass
	}{
		{name: "no overrides: the spec's count", reads: []read{{}}, want: []int{3}},
		{name: "an error before any read: the spec's count", reads: []read{{err: errEtcd}}, want: []int{3}},
		{name: "an error keeps the last overrides read", reads: []read{{ov: map[string]int{"apache": 5}}, {err: errEtcd}, {err: errEtcd}}, want: []int{5, 5, 5}},
		{name: "a read after errors applies", reads: []read{{ov: map[string]int{"apache": 5}}, {err: errEtcd}, {ov: map[string]int{"apache": 2}}}, want: []int{5, 5, 2}},
		{name: "removed override: the spec's count again", reads: []read{{ov: map[string]int{"apache": 5}}, {ov: map[string]int{}}}, want: []int{5, 3}},
		{name: "override of a service not in the spec is ignored", reads: []read{{ov: map[string]int{"nosuch": 7}}}, want: []int{3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newRecEnv(testSpec())
			for i, r := range tt.reads {
				e.setOverrides(r.ov, r.err)
				e.reconcile(t)
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
			e := newRecEnv(testSpec())
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
