package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/upstreamd/upstreamd/cluster"
	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/internal/events"
	"github.com/upstreamd/upstreamd/internal/health"
	"github.com/upstreamd/upstreamd/internal/loop"
	"github.com/upstreamd/upstreamd/internal/retry"
	"github.com/upstreamd/upstreamd/internal/wake"
	"github.com/upstreamd/upstreamd/nginx"
	"github.com/upstreamd/upstreamd/store"
)

// dockerAPI is the engine as the Orchestrator uses it.
type dockerAPI interface {
	containerAPI
	stopAPI
	Events(ctx context.Context, project string) (<-chan containers.Event, <-chan error)
	EngineID(ctx context.Context) (string, error)
}

var _ dockerAPI = (*containers.Client)(nil)

// etcdAPI is etcd as the Orchestrator uses it: the registrar's writes,
// and the cluster's.
type etcdAPI interface {
	registry
	cluster.Store
}

var _ etcdAPI = (*store.Client)(nil)

// servedSet is the local nginx's pools (a render.Served): with
// ProxyPlacement "leader", the leader publishes them.
type servedSet interface {
	pool
	Set() map[string][]string
}

// servedMirror is the leader's nginx, as it published its pools (a
// render.Served fed by Mirror).
type servedMirror interface {
	pool
	Mirror(set map[string][]string)
}

// Config configures an Orchestrator.
type Config struct {
	// Spec is the desired state.
	Spec Spec
	// Docker is the engine.
	Docker dockerAPI
	// Store is etcd.
	Store etcdAPI
	// Registrations is the watched copy of the registrations (the
	// renderer's too).
	Registrations registrations
	// LeaseTTL is the TTL of this node's lease: how long its keys outlive
	// it when it vanishes.
	LeaseTTL time.Duration
	// Version is announced with the node.
	Version string
	// Resync is the period of the full pass run even without events (a
	// safety net; events do the real work). Zero means 30 s.
	Resync time.Duration
	// StreamIdle is how long the Docker event stream may stay quiet before
	// it is reopened (a stalled stream cannot be told from a quiet one).
	// Zero means 10 s.
	StreamIdle time.Duration
	// Pool tells which backends nginx serves (a render.Served): drains
	// wait for nginx to stop sending to a backend, rolling updates for it
	// to serve the new one. Nil: not waited for.
	Pool pool
	// DrainTimeout bounds a drain's wait for nginx; zero means 10 s.
	DrainTimeout time.Duration
	// ReadyTimeout bounds how long Ready waits for the first probes of the
	// backends found at start; zero means 5 s.
	ReadyTimeout time.Duration
	// Mirror, with ProxyPlacement "leader", is where the leader's nginx
	// pools are mirrored from etcd (a render.Served): drains and rolling
	// updates wait on it, and Pool (this node's nginx, a render.Served
	// too) is what this node publishes while it leads.
	Mirror servedMirror
	// ProxyPlacement is "every" (a proxy on each node; also the one node
	// of a single host) or "leader" (one proxy in the project, on the node
	// etcd elects). Empty means "every".
	ProxyPlacement string
	// ProxyAddress is the proxy's public address (host:port), announced
	// when this node leads.
	ProxyAddress string
	// Events records what happens (containers dying, health flips,
	// registrations, drains, the proxy, the election); nil: nothing is.
	Events *events.Journal
	// newProber overrides the HTTP prober (tests).
	newProber func(HealthSpec) prober
	Logger    zerolog.Logger
}

// Orchestrator runs the reconcile loop, the Docker event watch, the health
// probes, the drains, the replica overrides and the registrar: each a
// runnable of its own, joined in Start.
type Orchestrator struct {
	cfg        Config
	log        zerolog.Logger
	cluster    *cluster.Member
	ledger     *ledger
	proxy      *runningProxy
	pool       pool // what drains wait on: Pool, or Mirror when a leader runs the proxy
	health     *healthMonitor
	drainer    *drainer
	reconciler *reconciler
	registrar  *registrar
	wake       wake.Signal
	ready      chan struct{} // closed once etcd reflects this node's backends
	troubles   troubles      // failures in progress, for Problems
	// streamWorked: the Docker event stream was open for a while once.
	streamWorked atomic.Bool
}

// troubles holds, by loop, the error it is failing with; none when it works.
type troubles struct {
	mu   sync.Mutex
	errs map[string]error
}

func (t *troubles) set(loop string, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.errs == nil {
		t.errs = map[string]error{}
	}
	t.errs[loop] = err
}

func (t *troubles) get(loop string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.errs[loop]
}

// New wires an Orchestrator.
func New(cfg Config) *Orchestrator {
	cfg = cfg.withDefaults()
	o := &Orchestrator{cfg: cfg, log: cfg.Logger.With().Str("component", "orchestrator").Logger(), ledger: newLedger(), proxy: newRunningProxy(),
		wake: wake.New(), ready: make(chan struct{}), pool: cfg.Pool}
	if cfg.ProxyPlacement == PlacementLeader && cfg.Mirror != nil {
		o.pool = cfg.Mirror
	}
	o.cluster = cluster.NewMember(o.memberConfig())
	o.health = newHealth(healthConfig{
		NewProber: cfg.newProber,
		Gone:      o.ledger.gone,
		Events:    cfg.Events,
		Logger:    cfg.Logger.With().Str("component", "health").Logger(),
	})
	o.drainer = newDrainer(drainerConfig{
		Docker:  cfg.Docker,
		Health:  o.health,
		Ledger:  o.ledger,
		Pool:    o.pool,
		Spec:    cfg.Spec,
		Timeout: cfg.DrainTimeout,
		Done:    o.Wake,
		Events:  cfg.Events,
		Logger:  cfg.Logger.With().Str("component", "drain").Logger(),
	})
	o.reconciler = newReconciler(reconcilerConfig{
		Spec:     cfg.Spec,
		Docker:   cfg.Docker,
		Health:   o.health,
		Drains:   o.drainer,
		Ledger:   o.ledger,
		Share:    o.cluster.Placement().Share,
		Pool:     o.pool,
		Proxy:    o.proxy,
		RunProxy: o.cluster.RunsProxy,
		Events:   cfg.Events,
		Logger:   cfg.Logger.With().Str("component", "reconcile").Logger(),
	})
	o.registrar = newRegistrar(registrarConfig{
		Store:         cfg.Store,
		Leases:        o.cluster.Node(),
		Registrations: cfg.Registrations,
		Health:        o.health,
		Prefix:        cfg.Spec.Prefix,
		Node:          cfg.Spec.Node,
		Project:       cfg.Spec.Project,
		Services:      cfg.Spec.serviceNames(),
		Events:        cfg.Events,
		Logger:        cfg.Logger.With().Str("component", "registrar").Logger(),
	})
	return o
}

// withDefaults fills in what cfg leaves at zero.
func (cfg Config) withDefaults() Config {
	if cfg.Resync <= 0 {
		cfg.Resync = 30 * time.Second
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = 5 * time.Second
	}
	if cfg.StreamIdle <= 0 {
		cfg.StreamIdle = 10 * time.Second
	}
	return cfg
}

// memberConfig is this daemon's place in its project's cluster: its node
// (one per Docker engine), the spec's services to place, and with
// ProxyPlacement "leader" the election, and this node's nginx's pools to
// publish while it leads.
func (o *Orchestrator) memberConfig() cluster.MemberConfig {
	cfg := o.cfg
	mc := cluster.MemberConfig{
		Store: cfg.Store, Project: cfg.Spec.Project, Self: announce(cfg.Spec, cfg.Version), Engine: cfg.Docker.EngineID,
		Unreachable: unreachable, TTL: cfg.LeaseTTL,
		Services: cfg.Spec.clusterServices(), HostAddresses: cfg.Spec.Advertise == AdvertiseHost,
		ElectProxy: cfg.ProxyPlacement == PlacementLeader, ProxyAddress: cfg.ProxyAddress,
		Changed: o.Wake, Events: cfg.Events, Logger: cfg.Logger,
	}
	if local, ok := cfg.Pool.(servedSet); ok && cfg.Mirror != nil {
		mc.Served, mc.Mirror = local, cfg.Mirror
	}
	return mc
}

// Proxy placements.
const (
	PlacementEvery  = "every"
	PlacementLeader = "leader"
)

// Wake asks for a reconcile pass.
func (o *Orchestrator) Wake() { o.wake.Wake() }

// Ready is closed once etcd reflects this node's backends: the first pass
// ran, the backends it found had their first probe (or ReadyTimeout
// passed), and the registrar synced.
func (o *Orchestrator) Ready() <-chan struct{} { return o.ready }

// Proxy returns the running proxy (its ID is empty when there is none).
func (o *Orchestrator) Proxy() nginx.Proxy { return o.proxy.get() }

// SubscribeProxy returns a channel that receives after each change of the
// running proxy: subscribe, then read Proxy.
func (o *Orchestrator) SubscribeProxy() <-chan struct{} { return o.proxy.changed.Subscribe() }

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

// Backends returns every backend this node probes, with its health.
func (o *Orchestrator) Backends() []BackendHealth {
	out := o.health.Backends()
	for i := range out {
		out[i].Node = o.cfg.Spec.Node
	}
	return out
}

// Local returns how many backends of each service this node is to run
// (its placed share), and false before the first placement.
func (o *Orchestrator) Local() (map[string]int, bool) { return o.cluster.Placement().Share() }

// BackendStates returns, by service, how many backends this daemon probes
// are healthy, pending and unhealthy.
func (o *Orchestrator) BackendStates() map[string]map[health.State]int { return o.health.Counts() }

// Problems says what keeps the orchestrator from doing its job right now,
// one line each: the Docker engine failing reconcile passes or the event
// stream, etcd holding no lease for this node. Empty when all is well.
func (o *Orchestrator) Problems() []string {
	var out []string
	if err := o.troubles.get("reconcile"); err != nil {
		out = append(out, "docker: reconcile failing: "+err.Error())
	}
	if err := o.troubles.get("placement"); err != nil {
		out = append(out, "etcd: placing replicas failing: "+err.Error())
	}
	for svc, n := range o.cluster.Placement().Short() {
		out = append(out, fmt.Sprintf("placement: %d replica(s) of %s cannot be placed (max_per_node × live nodes is too small)", n, svc))
	}
	if err := o.troubles.get("events"); err != nil {
		out = append(out, "docker: event stream broken: "+err.Error())
	}
	select {
	case <-o.cluster.Node().Claimed():
		if o.cluster.Node().Lease() == nil {
			out = append(out, "etcd: this node holds no lease (etcd unreachable?); claiming it again")
		}
	default:
		out = append(out, "etcd: node not claimed yet (etcd or the docker engine unreachable?)")
	}
	return out
}

// Start runs every part until ctx ends. Nothing touches a container before
// the node holds its names in etcd; Start returns an error matching
// cluster.ErrTaken when another live daemon holds them. The registrar
// starts after the first reconcile pass, so that backends adopted after a
// restart are known (pending) before it may delete anything.
func (o *Orchestrator) Start(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	firstPass := make(chan struct{})
	g.Go(func() error { return o.cluster.Start(ctx) })
	g.Go(func() error { return o.health.Start(ctx) })
	g.Go(func() error { return o.drainer.Start(ctx) })
	g.Go(func() error { return o.reconcileLoop(ctx, firstPass) })
	g.Go(func() error { return o.watchEvents(ctx) })
	g.Go(func() error {
		select {
		case <-ctx.Done():
			return nil
		case <-firstPass:
		}
		return o.registrar.Start(ctx)
	})
	g.Go(func() error { return o.becomeReady(ctx, firstPass) })
	return g.Wait()
}

// becomeReady closes ready once the first pass ran, the backends it found
// were probed once and the registrar synced.
func (o *Orchestrator) becomeReady(ctx context.Context, firstPass <-chan struct{}) error {
	changed := o.health.Subscribe()
	select {
	case <-ctx.Done():
		return nil
	case <-firstPass:
	}
	if !o.awaitFirstProbes(ctx, changed) {
		return nil
	}
	if retry.Until(ctx, retry.New(200*time.Millisecond, 5*time.Second), o.registrar.Flush, nil) != nil {
		return nil // ctx ended
	}
	o.log.Info().Msg("ready: etcd holds this node's healthy backends")
	close(o.ready)
	return nil
}

// awaitFirstProbes waits until no backend awaits its first probe, or
// ReadyTimeout passed; it reports false when ctx ended.
func (o *Orchestrator) awaitFirstProbes(ctx context.Context, changed <-chan struct{}) bool {
	deadline := time.NewTimer(o.cfg.ReadyTimeout)
	defer deadline.Stop()
	for {
		if _, pending := o.health.Snapshot(); len(pending) == 0 {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-deadline.C:
			o.log.Warn().Stringer("after", o.cfg.ReadyTimeout).Msg("some backends still await their first probe; going ahead")
			return true
		case <-changed:
		}
	}
}

// unreachable reports whether err says only that etcd or the engine could
// not be reached.
func unreachable(err error) bool {
	return containers.IsUnreachable(err) || store.IsUnreachable(err)
}

// announce returns this daemon's announcement as node.
func announce(spec Spec, version string) cluster.Announcement {
	host, _ := os.Hostname() // only said, never relied on
	return cluster.Announcement{Node: spec.Node, Host: host, Address: spec.NodeAddress, PID: os.Getpid(), Version: version,
		Started: time.Now().UTC(), Spec: spec.Digest()}
}

// reconcileLoop runs a pass whenever woken, when what nginx serves
// changed, on Resync, and when a pass asks to requeue; failed passes are retried with backoff. The first pass waits
// for the node's claim and for the replica overrides, nodes and slots: a
// restarted daemon must not scale to the spec's count and back.
func (o *Orchestrator) reconcileLoop(ctx context.Context, firstPass chan<- struct{}) error {
	for _, ready := range []<-chan struct{}{o.cluster.Node().Claimed(), o.cluster.Loaded()} {
		select { // once claimed, etcd answers: the copies are one List away
		case <-ctx.Done():
			return nil
		case <-ready:
		}
	}
	triggers := []<-chan struct{}{o.wake.C()}
	if o.pool != nil { // drains and rolling updates wait for what nginx serves
		triggers = append(triggers, o.pool.Subscribe())
	}
	l := loop.New(loop.Config{
		Triggers: triggers,
		Resync:   o.cfg.Resync,
		Initial:  200 * time.Millisecond, Max: 10 * time.Second,
		Log: o.log, Failed: "reconcile failed", Level: zerolog.ErrorLevel, Recovered: "reconcile recovered",
	})
	var once sync.Once
	return l.Run(ctx, func(ctx context.Context) (loop.Result, error) {
		res, err := o.pass(ctx)
		once.Do(func() { close(firstPass) })
		return res, err
	})
}

// pass places this node's share of the replicas, reconciles, and gives up
// the slots whose backends are drained. A placement that failed (etcd out
// of reach) fails the pass, to be retried like one: no watch event may
// come to ask for it again.
func (o *Orchestrator) pass(ctx context.Context) (loop.Result, error) {
	perr := o.cluster.Placement().Step(ctx)
	res, err := o.reconciler.Reconcile(ctx)
	if ctx.Err() != nil {
		return loop.Result{}, nil
	}
	if err == nil {
		perr = errors.Join(perr, o.cluster.Placement().Settle(ctx, res.Running))
	}
	o.troubles.set("reconcile", err)
	o.troubles.set("placement", perr)
	return loop.Result{After: res.RequeueAfter}, errors.Join(err, perr)
}

// watchEvents turns Docker events into passes; a backend's death also
// deregisters it at once, before the pass replaces it. A broken stream is
// reopened with backoff, followed by a full pass so nothing is missed. A
// stream quiet for StreamIdle is reopened too (with a full pass): the
// engine sends no heartbeat, so a stream that stalled without closing
// looks just like a quiet one.
//
// A stream that stays open for a second works: its outage, said once, is
// over. Before the stream ever worked, an unreachable engine is the
// daemon's to say.
func (o *Orchestrator) watchEvents(ctx context.Context) error {
	l := loop.New(loop.Config{
		Initial: 200 * time.Millisecond, Max: 10 * time.Second,
		Log: o.log, Failed: "docker event stream broke; reconnecting", Level: zerolog.WarnLevel,
		Recovered: "docker event stream reconnected",
		Said:      func(err error) bool { return !o.streamWorked.Load() && unreachable(err) },
	})
	return l.Run(ctx, func(ctx context.Context) (loop.Result, error) {
		for {
			idle, err := o.followEvents(ctx, l.Working)
			switch {
			case ctx.Err() != nil:
				return loop.Result{}, nil
			case !idle:
				o.troubles.set("events", err)
				return loop.Result{}, err
			}
			o.log.Debug().Stringer("idle", o.cfg.StreamIdle).Msg("docker event stream quiet; reopening it")
		}
	})
}

// followEvents handles one event stream until it ends: with its error, or
// idle=true when no event came for StreamIdle. It calls working once the
// stream was open for a second without breaking.
func (o *Orchestrator) followEvents(ctx context.Context, working func()) (idle bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	evs, errc := o.cfg.Docker.Events(sctx, o.cfg.Spec.Project)
	works := time.AfterFunc(time.Second, func() {
		o.troubles.set("events", nil)
		working()
		o.streamWorked.Store(true)
	})
	defer works.Stop()
	quiet := time.NewTimer(o.cfg.StreamIdle)
	defer quiet.Stop()
	o.Wake() // catch up with whatever happened while not watching
	for {
		select {
		case ev, ok := <-evs:
			if !ok {
				return false, <-errc
			}
			o.handleEvent(ev)
			quiet.Reset(o.cfg.StreamIdle)
		case <-quiet.C:
			cancel()
			for ev := range evs { // what came meanwhile
				o.handleEvent(ev)
			}
			if err := <-errc; !errors.Is(err, context.Canceled) {
				return false, err // it broke just as it went quiet
			}
			return true, nil
		}
	}
}

func (o *Orchestrator) handleEvent(ev containers.Event) {
	switch ev.Action {
	case "die":
		// Any role: the next pass asks the engine about it, since its
		// listing may still show it running.
		if o.ledger.mark(ev.ID, fateDied) {
			if ev.Role == containers.RoleBackend {
				o.health.Drop(ev.ID, "backend died; deregistering")
			}
			if ev.Role == containers.RoleBackend || ev.Role == containers.RoleProxy {
				o.cfg.Events.Record(events.Event{Kind: events.Died, Container: ev.Name, ID: containers.ShortID(ev.ID),
					Message: fmt.Sprintf("%s %s died", ev.Role, ev.Name)})
			}
		}
	case "destroy": // the next listing forgets its fate
		if ev.Role == containers.RoleBackend {
			o.health.Drop(ev.ID, "backend died; deregistering")
		}
	case "start":
		switch ev.Role {
		case containers.RoleBackend:
			if o.ledger.of(ev.ID) == fateDied {
				o.ledger.clear(ev.ID) // restarted by the engine or by hand
			}
		case containers.RoleProxy:
			// Restarted in place (restart policy): its dynamic pools start
			// from the file it keeps; the renderer verifies everything.
			o.proxy.restarted(ev.ID)
		}
	case "create", "pause", "unpause", "oom", "rename", "update":
	default:
		// exec_*, archive-path, extract-to-dir, kill, stop, attach, …:
		// our own deliveries cause most of these; the state change that
		// matters follows as die or start.
		return
	}
	o.Wake()
	o.log.Debug().Str("action", ev.Action).Str("container", ev.Name).Str("role", string(ev.Role)).Msg("docker event")
}
