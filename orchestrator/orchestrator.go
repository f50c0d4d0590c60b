package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/store"
)

// dockerAPI is the engine as the Orchestrator uses it.
type dockerAPI interface {
	containerAPI
	Events(ctx context.Context, project string) (<-chan containers.Event, <-chan error)
}

var _ dockerAPI = (*containers.Client)(nil)

// etcdAPI is etcd as the Orchestrator uses it.
type etcdAPI interface {
	registry
	WatchPrefix(ctx context.Context, prefix string, changed func()) error
}

var _ etcdAPI = (*store.Client)(nil)

// Config configures an Orchestrator.
type Config struct {
	// Spec is the desired state.
	Spec Spec
	// Docker is the engine.
	Docker dockerAPI
	// Store is etcd.
	Store etcdAPI
	// LeaseTTL is the TTL of this node's registrations.
	LeaseTTL time.Duration
	// Resync is the period of the full pass run even without events (a
	// safety net; events do the real work). Zero means 30 s.
	Resync time.Duration
	// OnProxyChange is called after the proxy was (re)created.
	OnProxyChange func()
	// Pool tells which backends nginx serves (the renderer): drains wait for
	// nginx to stop sending to a backend, rolling updates for it to serve
	// the new one. Nil: not waited for.
	Pool pool
	// DrainTimeout bounds a drain's wait for nginx; zero means 10 s.
	DrainTimeout time.Duration
	// ReadyTimeout bounds how long Ready waits for the first probes of the
	// backends found at start; zero means 5 s.
	ReadyTimeout time.Duration
	// NewProber overrides the HTTP prober (tests).
	NewProber func(HealthSpec) Prober
	Logger    zerolog.Logger
}

// Orchestrator runs the reconcile loop, the Docker event watch, the health
// probes and the registrar.
type Orchestrator struct {
	cfg        Config
	log        zerolog.Logger
	reconciler *Reconciler
	health     *Health
	registrar  *Registrar
	wake       chan struct{}
	healthy    chan struct{} // a backend's health changed
	ready      chan struct{} // closed once etcd reflects this node's backends

	mu              sync.Mutex
	overrides       map[string]int // replica overrides last read from etcd
	overridesLoaded bool
}

// New wires an Orchestrator.
func New(cfg Config) *Orchestrator {
	if cfg.Resync <= 0 {
		cfg.Resync = 30 * time.Second
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = 5 * time.Second
	}
	o := &Orchestrator{cfg: cfg, log: cfg.Logger, wake: make(chan struct{}, 1),
		healthy: make(chan struct{}, 1), ready: make(chan struct{})}
	services := make([]string, 0, len(cfg.Spec.Services))
	for _, s := range cfg.Spec.Services {
		services = append(services, s.Name)
	}
	o.registrar = NewRegistrar(RegistrarConfig{
		Store:    cfg.Store,
		Prefix:   cfg.Spec.Prefix,
		Node:     cfg.Spec.Node,
		Services: services,
		TTL:      cfg.LeaseTTL,
		Logger:   cfg.Logger.With().Str("component", "registrar").Logger(),
	})
	o.health = NewHealth(HealthConfig{
		NewProber: cfg.NewProber,
		OnChange: func() {
			o.registrar.Trigger()
			select {
			case o.healthy <- struct{}{}:
			default:
			}
		},
		Logger: cfg.Logger.With().Str("component", "health").Logger(),
	})
	o.registrar.cfg.Health = o.health
	o.reconciler = NewReconciler(ReconcilerConfig{
		Spec:          cfg.Spec,
		Docker:        cfg.Docker,
		Health:        o.health,
		Replicas:      o.cachedOverrides,
		OnProxyChange: cfg.OnProxyChange,
		Pool:          cfg.Pool,
		DrainTimeout:  cfg.DrainTimeout,
		Wake:          o.Wake,
		Logger:        cfg.Logger.With().Str("component", "reconcile").Logger(),
	})
	return o
}

// Wake asks for a reconcile pass.
func (o *Orchestrator) Wake() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// Ready is closed once etcd reflects this node's backends: the first pass
// ran, the backends it found had their first probe (or ReadyTimeout
// passed), and the registrar synced. Until then the registrations in etcd
// may be those of a previous daemon, or none after it revoked its lease:
// rendering them could empty nginx's pools.
func (o *Orchestrator) Ready() <-chan struct{} { return o.ready }

// HealthyBackends returns how many backends of service this daemon finds
// healthy.
func (o *Orchestrator) HealthyBackends(service string) int {
	healthy, _ := o.health.Snapshot()
	n := 0
	for _, t := range healthy {
		if t.Service == service {
			n++
		}
	}
	return n
}

// Backends returns the probed backends that are healthy and those pending
// their first probe, for metrics.
func (o *Orchestrator) Backends() (healthy, pending []Target) { return o.health.Snapshot() }

// Proxy returns the running proxy, for the renderer; its ID is empty when
// there is none.
func (o *Orchestrator) Proxy() Proxy { return o.reconciler.Proxy() }

// Start runs every part until ctx ends. The registrar starts after the
// first reconcile pass, so that backends adopted after a restart are
// known (pending) before it may delete anything.
func (o *Orchestrator) Start(ctx context.Context) error {
	// Read the replica overrides before the first pass: a restarted
	// daemon must not scale to the spec's count and back.
	rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	o.refreshOverrides(rctx)
	cancel()
	g, ctx := errgroup.WithContext(ctx)
	firstPass := make(chan struct{})
	g.Go(func() error {
		err := o.reconcileLoop(ctx, firstPass)
		o.reconciler.WaitDrains() // they end with ctx
		return err
	})
	g.Go(func() error { return o.watchEvents(ctx) })
	g.Go(func() error {
		return o.cfg.Store.WatchPrefix(ctx, OverridesPrefix(o.cfg.Spec.Project), func() { o.refreshOverrides(ctx) })
	})
	// Keys changed by someone else (deleted by hand, overwritten by another
	// node) are put right at once, not at the next resync.
	g.Go(func() error {
		return o.cfg.Store.WatchPrefix(ctx, strings.TrimSuffix(o.cfg.Spec.Prefix, "/")+"/", o.registrar.Trigger)
	})
	g.Go(func() error {
		select {
		case <-ctx.Done():
			return nil
		case <-firstPass:
		}
		o.registrar.Trigger()
		return o.registrar.Start(ctx)
	})
	g.Go(func() error { return o.becomeReady(ctx, firstPass) })
	return g.Wait()
}

// becomeReady closes ready once the first pass ran, the backends it found
// were probed once and the registrar synced.
func (o *Orchestrator) becomeReady(ctx context.Context, firstPass <-chan struct{}) error {
	select {
	case <-ctx.Done():
		return nil
	case <-firstPass:
	}
	deadline := time.NewTimer(o.cfg.ReadyTimeout)
	defer deadline.Stop()
wait:
	for {
		if _, pending := o.health.Snapshot(); len(pending) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return nil
		case <-deadline.C:
			o.log.Warn().Dur("after", o.cfg.ReadyTimeout).Msg("some backends still await their first probe; going ahead")
			break wait
		case <-o.healthy:
		}
	}
	bo := newBackOff(200*time.Millisecond, 5*time.Second)
	for {
		if o.registrar.Flush(ctx) == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(bo.NextBackOff()):
		}
	}
	o.log.Info().Msg("ready: etcd holds this node's healthy backends")
	close(o.ready)
	return nil
}

// reconcileLoop runs a pass whenever woken, on Resync, and when a pass asks
// to requeue; failed passes are retried with backoff.
func (o *Orchestrator) reconcileLoop(ctx context.Context, firstPass chan<- struct{}) error {
	bo := newBackOff(200*time.Millisecond, 10*time.Second)
	resync := time.NewTicker(o.cfg.Resync)
	defer resync.Stop()
	var again <-chan time.Time
	first := true
	failing := false
	for pass := 1; ; pass++ {
		res, err := o.reconciler.Reconcile(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if first {
			first = false
			close(firstPass)
		}
		switch {
		case err != nil:
			d := bo.NextBackOff()
			ev := o.log.Error()
			if failing {
				ev = o.log.Debug()
			}
			ev.Err(err).Int("pass", pass).Dur("retry_in", d).Msg("reconcile failed")
			failing = true
			again = time.After(d)
		case res.RequeueAfter > 0:
			again = time.After(res.RequeueAfter)
		default:
			if failing {
				o.log.Info().Int("pass", pass).Msg("reconcile recovered")
			}
			failing = false
			bo.Reset()
			again = nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-o.wake:
		case <-resync.C:
		case <-again:
		}
	}
}

// watchEvents turns Docker events into passes; a backend's death also
// deregisters it at once, before the pass replaces it. A broken stream is
// reopened with backoff, followed by a full pass so nothing is missed.
func (o *Orchestrator) watchEvents(ctx context.Context) error {
	bo := newBackOff(200*time.Millisecond, 10*time.Second)
	for {
		evs, errc := o.cfg.Docker.Events(ctx, o.cfg.Spec.Project)
		opened := time.Now()
		o.Wake() // catch up with whatever happened while not watching
		for ev := range evs {
			o.handleEvent(ev)
		}
		err := <-errc
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(opened) > time.Minute {
			bo.Reset()
		}
		d := bo.NextBackOff()
		o.log.Warn().Err(err).Dur("retry_in", d).Msg("docker event stream broke; reconnecting")
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(d):
		}
	}
}

func (o *Orchestrator) handleEvent(ev containers.Event) {
	switch ev.Action {
	case "die", "destroy":
		if ev.Role == containers.RoleBackend {
			o.health.Dead(ev.ID)
		}
		if ev.Action == "die" {
			o.reconciler.NoteDied(ev.ID)
		}
		o.Wake()
	case "start":
		switch ev.Role {
		case containers.RoleBackend:
			o.health.Revive(ev.ID) // restarted by the engine or by hand
		case containers.RoleProxy:
			// Restarted in place (restart policy): its dynamic pools start
			// from the file it keeps; make the renderer verify everything.
			if o.cfg.OnProxyChange != nil {
				o.cfg.OnProxyChange()
			}
		}
		o.Wake()
	case "create", "pause", "unpause", "oom", "rename", "update":
		o.Wake()
	default:
		// exec_*, archive-path, extract-to-dir, kill, stop, attach, …:
		// our own deliveries cause most of these; the state change that
		// matters follows as die or start.
		return
	}
	o.log.Debug().Str("action", ev.Action).Str("container", ev.Name).Str("role", string(ev.Role)).Msg("docker event")
}

// newBackOff returns an endless exponential backoff. Options, not field
// assignments: the constructor computes the first interval, so a field set
// afterwards only counts after a Reset.
func newBackOff(initial, maxInterval time.Duration) *backoff.ExponentialBackOff {
	return backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(initial),
		backoff.WithMaxInterval(maxInterval),
		backoff.WithMaxElapsedTime(0),
	)
}

// OverridesPrefix is where runtime replica overrides live:
// /upstreamd/<project>/replicas/<service> = "<n>".
func OverridesPrefix(project string) string {
	return "/upstreamd/" + project + "/replicas/"
}

// MaxReplicas bounds replicas in the spec and in overrides.
const MaxReplicas = 1000

// ParseReplicas validates a replica count from etcd or the command line.
func ParseReplicas(s string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("replicas %q is not a number", s)
	}
	if n < 1 || n > MaxReplicas {
		return 0, fmt.Errorf("replicas %d out of range 1-%d", n, MaxReplicas)
	}
	return n, nil
}

// errNoOverrides: the overrides were never read (etcd unreachable so far).
var errNoOverrides = errors.New("replica overrides not read from etcd yet")

// refreshOverrides reads the overrides into memory and wakes the
// reconciler; the overrides watch calls it on every change and after every
// (re)connection. Passes read the memory copy, so an etcd outage never
// slows them down.
func (o *Orchestrator) refreshOverrides(ctx context.Context) {
	ov, err := o.replicaOverrides(ctx)
	o.mu.Lock()
	if err == nil {
		o.overrides, o.overridesLoaded = ov, true
	}
	o.mu.Unlock()
	if err != nil {
		o.log.Debug().Err(err).Msg("read replica overrides")
		return
	}
	o.Wake()
}

// cachedOverrides returns the overrides last read.
func (o *Orchestrator) cachedOverrides(context.Context) (map[string]int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.overridesLoaded {
		return nil, errNoOverrides
	}
	return o.overrides, nil
}

// replicaOverrides reads the overrides; invalid ones are logged and skipped.
func (o *Orchestrator) replicaOverrides(ctx context.Context) (map[string]int, error) {
	prefix := OverridesPrefix(o.cfg.Spec.Project)
	kvs, _, err := o.cfg.Store.List(ctx, prefix)
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for _, kv := range kvs {
		svc := strings.TrimPrefix(kv.Key, prefix)
		n, err := ParseReplicas(string(kv.Value))
		if err != nil {
			o.log.Warn().Str("key", kv.Key).Err(err).Msg("ignoring replica override")
			continue
		}
		if _, ok := o.cfg.Spec.service(svc); !ok {
			o.log.Warn().Str("key", kv.Key).Msg("ignoring replica override of a service not in the spec")
			continue
		}
		out[svc] = n
	}
	return out, nil
}
