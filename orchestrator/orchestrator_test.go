package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/store"
	"github.com/upstreamd/upstreamd/store/storetest"
)

// startCluster runs o's cluster member until ctx ends and waits until
// the node holds its names and every copy was read. Call it inside the
// synctest bubble.
func startCluster(ctx context.Context, o *Orchestrator) {
	go func() { _ = o.cluster.Start(ctx) }()
	synctest.Wait()
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
		reg := storetest.New(nil)
		o := New(Config{
			Spec:          testSpec(),
			Docker:        docker,
			Store:         reg,
			Registrations: reg,
			newProber:     func(HealthSpec) prober { return func(context.Context, string) error { return nil } },
			Logger:        zerolog.Nop(),
		})
		startCluster(ctx, o) // a cluster of one, no override, nothing placed
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

// TestPlacementFailureRetried: slot claims that fail (etcd out of reach
// for a moment) are retried with backoff like a failed pass, since no
// watch event comes to ask for them again; the backends start once a
// claim goes through.
func TestPlacementFailureRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		docker := newFakeDocker()
		reg := storetest.New(nil)
		o := New(Config{Spec: testSpec(), Docker: docker, Store: reg, Registrations: reg,
			newProber: func(HealthSpec) prober { return func(context.Context, string) error { return nil } },
			Logger:    zerolog.Nop()})
		startCluster(ctx, o)
		reg.Lock()
		reg.ClaimErrs = 2 // the node holds its names: the slots' claims fail
		reg.Unlock()
		done := make(chan error, 1)
		go func() { done <- o.reconcileLoop(ctx, make(chan struct{})) }()
		synctest.Wait()
		if got := len(running(docker.withRole(containers.RoleBackend, "apache"))); got != 0 {
			t.Fatalf("%d backends while no slot could be claimed, want 0", got)
		}
		if len(o.Problems()) == 0 {
			t.Errorf("no problem reported while placing fails")
		}
		advance(5 * time.Second) // well before the 30 s resync
		if got := len(running(docker.withRole(containers.RoleBackend, "apache"))); got != 3 {
			t.Fatalf("%d backends after the claims went through, want 3", got)
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
		etcd := storetest.New(nil)
		o := New(Config{
			Spec:          testSpec(),
			Docker:        docker,
			Store:         etcd,
			Registrations: etcd,
			LeaseTTL:      10 * time.Second,
			newProber:     func(HealthSpec) prober { return func(context.Context, string) error { return nil } },
			Logger:        zerolog.Nop(),
		})
		done := make(chan error, 1)
		go func() { done <- o.Start(ctx) }()
		synctest.Wait()

		backendKeys := func() map[string]string { // key → container short ID
			out := map[string]string{}
			for k, v := range etcd.Keys() {
				if !strings.HasPrefix(k, "/services/") {
					continue // the node's announcement
				}
				e, err := store.ParseEntry("/services", k, []byte(v.Value))
				if err != nil {
					t.Errorf("registered %s = %q does not parse: %v", k, v.Value, err)
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
		if p := o.Proxy(); p.ID == "" {
			t.Errorf("Proxy().ID empty after the first pass")
		}

		// A backend dies: deregistered and replaced.
		victim := b[0]
		docker.edit(victim.ID, func(c *containers.Container) { c.State = containers.StateExited })
		docker.events <- containers.Event{Action: "die", ID: victim.ID, Name: victim.Name, Role: containers.RoleBackend}
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
		if got := etcd.Counts().Revoked; len(got) != 1 {
			t.Errorf("revoked %v, want the one lease", got)
		}
		if got := etcd.Keys(); len(got) != 0 {
			t.Errorf("keys left after shutdown: %v", got)
		}
	})
}

// TestHandleEvent: a "die" of any role is recorded, so that the next pass
// asks the engine about a container its listing may still show running,
// and every event that changes a container wakes a pass.
func TestHandleEvent(t *testing.T) {
	tests := []struct {
		name     string
		ev       containers.Event
		wantFate fate
		wantWake bool
	}{
		{name: "backend died", ev: containers.Event{Action: "die", ID: "b1", Role: containers.RoleBackend}, wantFate: fateDied, wantWake: true},
		{name: "proxy died", ev: containers.Event{Action: "die", ID: "p1", Role: containers.RoleProxy}, wantFate: fateDied, wantWake: true},
		{name: "data container died", ev: containers.Event{Action: "die", ID: "d1", Role: containers.RoleData}, wantFate: fateDied, wantWake: true},
		{name: "started", ev: containers.Event{Action: "start", ID: "b1", Role: containers.RoleBackend}, wantWake: true},
		{name: "our own exec", ev: containers.Event{Action: "exec_start: sh", ID: "p1", Role: containers.RoleProxy}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := storetest.New(nil)
			o := New(Config{Spec: testSpec(), Docker: newFakeDocker(), Store: reg, Registrations: reg, Logger: zerolog.Nop()})
			o.handleEvent(tt.ev)
			if got := o.ledger.of(tt.ev.ID); got != tt.wantFate {
				t.Errorf("fate = %d; want %d", got, tt.wantFate)
			}
			woken := false
			select {
			case <-o.wake.C():
				woken = true
			default:
			}
			if woken != tt.wantWake {
				t.Errorf("woken = %v; want %v", woken, tt.wantWake)
			}
		})
	}
}

// TestEventStreamReopenedWhenQuiet: the engine sends no heartbeat, so a
// stream quiet for StreamIdle is reopened, each time with a full pass; a
// stream that carries events stays open.
func TestEventStreamReopenedWhenQuiet(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		docker := newFakeDocker()
		reg := storetest.New(nil)
		o := New(Config{Spec: testSpec(), Docker: docker, Store: reg, Registrations: reg,
			StreamIdle: 10 * time.Second, Logger: zerolog.Nop()})
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- o.watchEvents(ctx) }()
		streams := func() int {
			docker.mu.Lock()
			defer docker.mu.Unlock()
			return docker.streams
		}
		advance(25 * time.Second)
		if got := streams(); got != 3 {
			t.Errorf("%d streams opened in 25 s of quiet; want 3 (at 0, 10 and 20 s)", got)
		}
		for range 3 { // events every 5 s keep the stream
			docker.events <- containers.Event{Action: "create", ID: "x", Role: containers.RoleBackend}
			advance(5 * time.Second)
		}
		if got := streams(); got != 3 {
			t.Errorf("%d streams after 15 s with events; want still 3", got)
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("watchEvents = %v; want nil", err)
		}
	})
}

// syncBuffer is a log sink the goroutines of a test may share.
type syncBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// messages returns "level message" of each line logged whose message
// contains about.
func (b *syncBuffer) messages(t *testing.T, about string) []string {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, line := range strings.Split(strings.TrimSpace(b.buf.String()), "\n") {
		var m struct{ Level, Message string }
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if strings.Contains(m.Message, about) {
			out = append(out, m.Level+" "+m.Message)
		}
	}
	return out
}

// TestEventStreamBroken: a broken event stream is reopened with backoff;
// each outage is said once, loud, and its end once (a stream open for a
// second works). Before the stream ever worked, an unreachable engine is
// the daemon's to say: quiet.
func TestEventStreamBroken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		docker := newFakeDocker()
		reg := storetest.New(nil)
		var logs syncBuffer
		o := New(Config{Spec: testSpec(), Docker: docker, Store: reg, Registrations: reg, Logger: zerolog.New(&logs)})
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- o.watchEvents(ctx) }()
		synctest.Wait()
		brokenProblem := func() bool {
			return slices.ContainsFunc(o.Problems(), func(p string) bool { return strings.Contains(p, "event stream broken") })
		}
		docker.breaks <- fmt.Errorf("connect: %w", context.DeadlineExceeded) // unreachable, never worked
		advance(2 * time.Second)
		docker.breaks <- errors.New("engine restarting")
		synctest.Wait()
		if !brokenProblem() {
			t.Errorf("problems %q; want the broken stream", o.Problems())
		}
		advance(2 * time.Second)
		if brokenProblem() {
			t.Errorf("problems %q once the stream works again; want none of it", o.Problems())
		}
		docker.breaks <- errors.New("engine restarting")
		docker.breaks <- errors.New("engine restarting") // at once, before it works
		advance(2 * time.Second)
		want := []string{
			"debug docker event stream broke; reconnecting",
			"warn docker event stream broke; reconnecting", "info docker event stream reconnected",
			"warn docker event stream broke; reconnecting", "debug docker event stream broke; reconnecting",
			"info docker event stream reconnected",
		}
		if got := logs.messages(t, "docker event stream"); !slices.Equal(got, want) {
			t.Errorf("logged\n%q\nwant\n%q", got, want)
		}
		if got := docker.streams; got != 5 {
			t.Errorf("%d streams opened; want 5", got)
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("watchEvents = %v; want nil", err)
		}
	})
}
