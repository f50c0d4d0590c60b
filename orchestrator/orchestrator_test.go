package orchestrator

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/store"
)

func TestParseReplicas(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    int
		wantErr string
	}{
		{name: "one", in: "1", want: 1},
		{name: "max", in: "1000", want: 1000},
		{name: "surrounding spaces", in: " 5 ", want: 5},
		{name: "trailing newline from etcdctl", in: "5\n", want: 5},
		{name: "zero", in: "0", wantErr: "replicas 0 out of range 1-1000"},
		{name: "negative", in: "-1", wantErr: "replicas -1 out of range 1-1000"},
		{name: "above max", in: "1001", wantErr: "replicas 1001 out of range 1-1000"},
		{name: "not a number", in: "x", wantErr: `replicas "x" is not a number`},
		{name: "empty", in: "", wantErr: `replicas "" is not a number`},
		{name: "float", in: "2.5", wantErr: `replicas "2.5" is not a number`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseReplicas(tt.in)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("ParseReplicas(%q) = %d, %v; want error %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseReplicas(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestReplicaOverrides(t *testing.T) {
	p := OverridesPrefix("up")
	tests := []struct {
		name    string
		kv      map[string]fakeKV
		listErr error
		want    map[string]int
		wantErr bool
	}{
		{name: "none", want: map[string]int{}},
		{name: "valid override", kv: map[string]fakeKV{p + "apache": {value: "5"}}, want: map[string]int{"apache": 5}},
		{name: "invalid count is skipped", kv: map[string]fakeKV{p + "apache": {value: "0"}}, want: map[string]int{}},
		{name: "garbage is skipped", kv: map[string]fakeKV{p + "apache": {value: "lots"}}, want: map[string]int{}},
		{name: "service not in the spec is skipped", kv: map[string]fakeKV{p + "nosuch": {value: "3"}}, want: map[string]int{}},
		{name: "other projects are not read", kv: map[string]fakeKV{OverridesPrefix("other") + "apache": {value: "9"}}, want: map[string]int{}},
		{name: "etcd error is returned", listErr: errFakeEtcd, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := newFakeRegistry(tt.kv)
			reg.listErrs = []error{tt.listErr}
			o := New(Config{Spec: testSpec(), Docker: newFakeDocker(), Store: reg, Logger: zerolog.Nop()})
			got, err := o.replicaOverrides(t.Context())
			if (err != nil) != tt.wantErr {
				t.Fatalf("error %v, want error %v", err, tt.wantErr)
			}
			if !tt.wantErr && !maps.Equal(got, tt.want) {
				t.Errorf("overrides %v, want %v", got, tt.want)
			}
		})
	}
}

// TestReconcileLoopBackoff makes the first passes fail (EnsureNetwork) and
// checks that they are retried with growing delays, and that a pass that
// works ends the retries until the resync.
func TestReconcileLoopBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		docker := newFakeDocker()
		errEngine := errors.New("engine unavailable")
		docker.netErrs = []error{errEngine, errEngine, errEngine}
		o := New(Config{
			Spec:      testSpec(),
			Docker:    docker,
			Store:     newFakeRegistry(nil),
			NewProber: func(HealthSpec) Prober { return func(context.Context, string) error { return nil } },
			Logger:    zerolog.Nop(),
		})
		firstPass := make(chan struct{})
		done := make(chan error, 1)
		go func() { done <- o.reconcileLoop(ctx, firstPass) }()
		synctest.Wait()
		select {
		case <-firstPass:
		default:
			t.Errorf("firstPass not closed after a failed first pass; the registrar would never start")
		}

		advance(5 * time.Second)
		calls := docker.passes()
		if len(calls) != 4 {
			t.Fatalf("%d passes in 5s, want 4 (3 failures, then success)", len(calls))
		}
		// 200 ms, 300 ms, 450 ms, each ±50 % jitter.
		for i, want := range []time.Duration{200 * time.Millisecond, 300 * time.Millisecond, 450 * time.Millisecond} {
			gap := calls[i+1].Sub(calls[i])
			if gap < want/2 || gap > want*3/2 {
				t.Errorf("retry %d after %s, want %s ±50%%", i+1, gap, want)
			}
		}
		if got := len(running(docker.withRole(containers.RoleBackend, "apache"))); got != 3 {
			t.Errorf("%d backends running after recovery, want 3", got)
		}

		advance(20 * time.Second) // 25 s in all: before the 30 s resync
		if got := len(docker.passes()); got != 4 {
			t.Errorf("%d passes before the resync, want 4 (no retries after success)", got)
		}
		advance(10 * time.Second)
		if got := len(docker.passes()); got != 5 {
			t.Errorf("%d passes after the resync, want 5", got)
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("reconcileLoop returned %v, want nil", err)
		}
	})
}

// TestOrchestratorStart runs every part over fakes: the backends come up,
// pass their probes and get registered; a backend's death deregisters it
// and replaces it; cancelling revokes the lease.
func TestOrchestratorStart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		docker := newFakeDocker()
		etcd := newFakeRegistry(nil)
		o := New(Config{
			Spec:      testSpec(),
			Docker:    docker,
			Store:     etcd,
			LeaseTTL:  10 * time.Second,
			NewProber: func(HealthSpec) Prober { return func(context.Context, string) error { return nil } },
			Logger:    zerolog.Nop(),
		})
		done := make(chan error, 1)
		go func() { done <- o.Start(ctx) }()
		synctest.Wait()

		backendKeys := func() map[string]string { // key → container short ID
			out := map[string]string{}
			for k, v := range etcd.snapshot() {
				e, err := store.ParseEntry("/services", k, []byte(v.value))
				if err != nil {
					t.Errorf("registered %s = %q does not parse: %v", k, v.value, err)
					continue
				}
				out[k] = e.Reg.Container
			}
			return out
		}
		b := docker.withRole(containers.RoleBackend, "apache")
		if len(b) != 3 {
			t.Fatalf("%d backends, want 3", len(b))
		}
		keys := backendKeys()
		if len(keys) != 3 {
			t.Fatalf("registered %v, want the 3 backends", keys)
		}
		if o.Proxy().ID == "" {
			t.Errorf("Proxy().ID empty after the first pass")
		}

		// A backend dies: deregistered and replaced.
		victim := b[0]
		docker.edit(victim.ID, func(c *containers.Container) { c.State = containers.StateExited })
		docker.events <- containers.Event{Action: "die", ID: victim.ID, Name: victim.Name, Service: "apache", Role: containers.RoleBackend}
		synctest.Wait()
		keys = backendKeys()
		if slices.Contains(slices.Collect(maps.Values(keys)), victim.Short()) {
			t.Errorf("dead backend %s still registered: %v", victim.Short(), keys)
		}
		if len(keys) != 3 {
			t.Errorf("registered %v, want 3 backends again (the replacement)", keys)
		}
		if got := len(running(docker.withRole(containers.RoleBackend, "apache"))); got != 3 {
			t.Errorf("%d backends running, want 3", got)
		}
		for k := range keys {
			if !strings.HasPrefix(k, "/services/apache/172.18.0.") {
				t.Errorf("key %s is not at an address on the project network", k)
			}
		}

		cancel()
		if err := <-done; err != nil {
			t.Errorf("Start returned %v, want nil", err)
		}
		if got := etcd.counts().revoked; len(got) != 1 {
			t.Errorf("revoked %v, want the one lease", got)
		}
		if got := etcd.snapshot(); len(got) != 0 {
			t.Errorf("keys left after shutdown: %v", got)
		}
	})
}
