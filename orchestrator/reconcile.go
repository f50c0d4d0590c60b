package orchestrator

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/containers"
)

// containerAPI is what the Reconciler needs from the Docker engine.
type containerAPI interface {
	List(ctx context.Context, project string) ([]containers.Container, error)
	EnsureNetwork(ctx context.Context, name, project string) (string, error)
	EnsureImage(ctx context.Context, ref string) error
	Create(ctx context.Context, spec containers.CreateSpec) (containers.Container, error)
	Start(ctx context.Context, id string) error
	Stop(ctx context.Context, id string, grace time.Duration) error
	Remove(ctx context.Context, id string) error
	Inspect(ctx context.Context, id string) (containers.Container, error)
}

var _ containerAPI = (*containers.Client)(nil)

// prober is what the Reconciler needs from the Health manager.
type prober interface {
	Sync(ctx context.Context, targets []Target)
	Dead(id string)
	Retire(id string)
	IsDead(id string) bool
	Revive(id string)
	State(id string) (string, bool)
}

var _ prober = (*Health)(nil)

// Result tells the loop when to look again without an event.
type Result struct {
	// RequeueAfter, when non-zero, asks for another pass after this long.
	RequeueAfter time.Duration
}

// ReconcilerConfig configures a Reconciler.
type ReconcilerConfig struct {
	// Spec is the desired state.
	Spec Spec
	// Docker is the engine.
	Docker containerAPI
	// Health probes the running backends the Reconciler reports.
	Health prober
	// Replicas returns replica overrides by service (from etcd); nil or an
	// error means the spec's counts (after an error, the last overrides read).
	Replicas func(ctx context.Context) (map[string]int, error)
	// OnProxyChange is called after the proxy container was (re)created.
	OnProxyChange func()
	// Pool tells which backends nginx serves (the renderer); nil means
	// unknown: drains do not wait and new backends count as served once
	// healthy.
	Pool pool
	// DrainTimeout bounds the wait for nginx to stop sending to a draining
	// backend; zero means 10 s.
	DrainTimeout time.Duration
	// Wake asks for another pass (after a drain ended).
	Wake   func()
	Logger zerolog.Logger
}

// pool tells which backends nginx serves; render.Controller implements it.
type pool interface {
	Serves(service, addr string) bool
	WaitServes(ctx context.Context, service, addr string, want bool) error
}

// Reconciler makes the containers match the spec. Reconcile is idempotent:
// it reads everything afresh and acts only on differences.
type Reconciler struct {
	cfg ReconcilerConfig
	log zerolog.Logger

	mu            sync.Mutex
	proxy         Proxy
	draining      map[string]bool // container IDs being drained
	died          map[string]bool // "die" events not yet seen in a listing
	stopSlots     chan struct{}   // bounds concurrent stops of drained backends
	drains        sync.WaitGroup
	lastOverrides map[string]int
	overridesErr  bool
}

// NewReconciler returns a Reconciler.
func NewReconciler(cfg ReconcilerConfig) *Reconciler {
	if cfg.OnProxyChange == nil {
		cfg.OnProxyChange = func() {}
	}
	if cfg.Wake == nil {
		cfg.Wake = func() {}
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 10 * time.Second
	}
	return &Reconciler{cfg: cfg, log: cfg.Logger, draining: map[string]bool{}, died: map[string]bool{},
		stopSlots: make(chan struct{}, 4)}
}

// Proxy is the running proxy container as the last pass saw it.
type Proxy struct {
	ID string
	IP string // on the spec's network
}

// Proxy returns the running proxy seen by the last pass; ID is empty when
// there is none.
func (r *Reconciler) Proxy() Proxy {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.proxy
}

func (r *Reconciler) setProxy(p Proxy) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.proxy = p
}

func (r *Reconciler) isDraining(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.draining[id]
}

// drain takes a backend out of service gracefully, in the background:
// deregister it at once, wait until nginx no longer sends to it (the
// renderer confirms the pool without it is live), then stop it with its
// grace period, so its in-flight requests finish, and remove it. A daemon
// stopping meanwhile leaves it running; the next daemon adopts it.
func (r *Reconciler) drain(ctx context.Context, c containers.Container, svc ServiceSpec, reason string) {
	r.mu.Lock()
	if r.draining[c.ID] {
		r.mu.Unlock()
		return
	}
	r.draining[c.ID] = true
	r.mu.Unlock()
	log := r.log.With().Str("service", svc.Name).Str("container", c.Name).Logger()
	log.Info().Str("reason", reason).Msg("draining backend")
	r.cfg.Health.Retire(c.ID)
	addr := ""
	if ip := c.IPs[r.cfg.Spec.Network]; ip != "" {
		addr = net.JoinHostPort(ip, strconv.Itoa(svc.Port))
	}
	r.drains.Add(1)
	go func() {
		defer r.drains.Done()
		defer func() {
			r.mu.Lock()
			delete(r.draining, c.ID)
			r.mu.Unlock()
			r.cfg.Wake()
		}()
		start := time.Now()
		if addr != "" && r.cfg.Pool != nil {
			wctx, cancel := context.WithTimeout(ctx, r.cfg.DrainTimeout)
			err := r.cfg.Pool.WaitServes(wctx, svc.Name, addr, false)
			cancel()
			if err != nil && ctx.Err() == nil {
				log.Warn().Err(err).Msg("nginx did not confirm it stopped sending to the backend; stopping it anyway")
			}
		}
		if ctx.Err() != nil { // the daemon is stopping: leave the backend running
			return
		}
		// A few stops at a time: a scale-down of a hundred backends must not
		// send the engine a hundred concurrent stops.
		select {
		case r.stopSlots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		err := errors.Join(r.cfg.Docker.Stop(ctx, c.ID, svc.StopGrace), r.cfg.Docker.Remove(ctx, c.ID))
		<-r.stopSlots
		if err != nil {
			log.Error().Err(err).Msg("drained backend not removed; the next pass retries")
			return
		}
		log.Info().Dur("took", time.Since(start)).Msg("backend drained and removed")
	}()
}

// WaitDrains waits for the drains in progress to end (tests, shutdown).
func (r *Reconciler) WaitDrains() { r.drains.Wait() }

// NoteDied records a "die" event. The engine sends it before its listing
// shows the exit, so a pass woken by it could still see the container
// running; freshen asks the engine directly about such containers.
func (r *Reconciler) NoteDied(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.died[id] = true
}

// freshen replaces the listed state of containers that died (NoteDied) but
// are still listed as running by what the engine's inspect says (inspect
// waits for the exit to be recorded).
func (r *Reconciler) freshen(ctx context.Context, list []containers.Container) []containers.Container {
	r.mu.Lock()
	died := r.died
	r.died = map[string]bool{}
	r.mu.Unlock()
	if len(died) == 0 {
		return list
	}
	out := list[:0]
	for _, c := range list {
		if died[c.ID] && (c.State == containers.StateRunning || c.State == containers.StateRestarting) {
			fresh, err := r.cfg.Docker.Inspect(ctx, c.ID)
			if containers.IsNotFound(err) {
				continue // removed meanwhile
			}
			if err == nil {
				c.State = fresh.State
			} else {
				r.NoteDied(c.ID) // ask again next pass
			}
		}
		out = append(out, c)
	}
	return out
}

// Names of the singleton containers.
func dataName(project string) string  { return project + "-data" }
func proxyName(project string) string { return project + "-proxy" }

// Reconcile runs one pass. Probers started for new backends live until ctx
// ends, so ctx is the loop's context, not a per-pass one.
func (r *Reconciler) Reconcile(ctx context.Context) (Result, error) {
	spec := r.cfg.Spec
	replicas := r.replicas(ctx)
	if _, err := r.cfg.Docker.EnsureNetwork(ctx, spec.Network, spec.Project); err != nil {
		return Result{}, err
	}
	all, err := r.cfg.Docker.List(ctx, spec.Project)
	if err != nil {
		return Result{}, err
	}
	all = r.freshen(ctx, all)
	var data, proxies []containers.Container
	backends := map[string][]containers.Container{}
	for _, c := range all {
		switch c.Role {
		case containers.RoleData:
			data = append(data, c)
		case containers.RoleProxy:
			proxies = append(proxies, c)
		case containers.RoleBackend:
			backends[c.Service] = append(backends[c.Service], c)
		}
	}

	var errs []error
	var targets []Target
	var res Result
	for _, svc := range spec.Services {
		ts, requeue, err := r.reconcileService(ctx, svc, replicas[svc.Name], backends[svc.Name])
		targets = append(targets, ts...)
		if err != nil {
			errs = append(errs, fmt.Errorf("service %s: %w", svc.Name, err))
		}
		if requeue {
			res.RequeueAfter = time.Second
		}
		delete(backends, svc.Name)
	}
	for name, cs := range backends { // services no longer in the spec
		for _, c := range cs {
			if r.isDraining(c.ID) {
				continue
			}
			if c.State != containers.StateRunning && c.State != containers.StatePaused {
				r.cfg.Health.Dead(c.ID)
				if err := r.cfg.Docker.Remove(ctx, c.ID); err != nil {
					errs = append(errs, err)
				}
				continue
			}
			port, _ := strconv.Atoi(c.Labels[containers.LabelPort])
			r.drain(ctx, c, ServiceSpec{Name: name, Port: port, StopGrace: 10 * time.Second}, "service no longer in the spec")
		}
	}
	r.cfg.Health.Sync(ctx, targets)

	if err := r.reconcileProxy(ctx, data, proxies); err != nil {
		errs = append(errs, err)
	}
	return res, errors.Join(errs...)
}

// replicas returns the replica count per service: the spec's, overridden
// from etcd. When etcd cannot be read the last overrides read stand.
func (r *Reconciler) replicas(ctx context.Context) map[string]int {
	out := map[string]int{}
	for _, s := range r.cfg.Spec.Services {
		out[s.Name] = s.Replicas
	}
	if r.cfg.Replicas == nil {
		return out
	}
	ov, err := r.cfg.Replicas(ctx)
	r.mu.Lock()
	if err != nil {
		if !r.overridesErr {
			r.log.Warn().Err(err).Msg("cannot read replica overrides from etcd; using the last known")
		}
		r.overridesErr = true
		ov = r.lastOverrides
	} else {
		r.overridesErr = false
		r.lastOverrides = ov
	}
	r.mu.Unlock()
	for name, n := range ov {
		if _, ok := out[name]; ok {
			out[name] = n
		}
	}
	return out
}

// backendSpec is the CreateSpec of a backend of svc, without its name.
func (r *Reconciler) backendSpec(svc ServiceSpec) containers.CreateSpec {
	spec := r.cfg.Spec
	cs := containers.CreateSpec{
		Image: svc.Image,
		Cmd:   svc.Cmd,
		Env:   svc.Env,
		Labels: map[string]string{
			containers.LabelProject: spec.Project,
			containers.LabelService: svc.Name,
			containers.LabelRole:    string(containers.RoleBackend),
			containers.LabelPort:    strconv.Itoa(svc.Port),
		},
		Network:     spec.Network,
		Aliases:     []string{svc.Name},
		ExposedPort: svc.Port,
		Restart:     containers.RestartPolicy(restartOr(svc.Restart, "no")),
		MemoryBytes: svc.Limits.MemoryBytes,
		NanoCPUs:    svc.Limits.NanoCPUs,
		StopTimeout: svc.StopGrace,
	}
	cs.Labels[containers.LabelSpec] = specHash(cs)
	return cs
}

// reconcileService brings one service to n running, up-to-date backends and
// returns the probe targets of its running ones. Backends leave the pool
// gracefully (drain) when scaled down or replaced by a rolling update;
// dead ones are replaced at once.
func (r *Reconciler) reconcileService(ctx context.Context, svc ServiceSpec, n int, have []containers.Container) (targets []Target, requeue bool, err error) {
	want := r.backendSpec(svc)
	hash := want.Labels[containers.LabelSpec]
	log := r.log.With().Str("service", svc.Name).Logger()
	var errs []error
	var upToDate, outdated []containers.Container
	for _, c := range have {
		if r.isDraining(c.ID) {
			requeue = true // the drain wakes us when done
			continue
		}
		if c.State == containers.StateRunning && r.cfg.Health.IsDead(c.ID) {
			r.cfg.Health.Revive(c.ID) // restarted since it died: probe it again
		}
		switch c.State {
		case containers.StateRunning, containers.StatePaused, containers.StateRestarting:
		case containers.StateCreated:
			// Created but never started (a pass was interrupted): start it,
			// and count it, or a spare would be created beside it.
			if err := r.cfg.Docker.Start(ctx, c.ID); err != nil {
				errs = append(errs, err)
				requeue = true
				continue
			}
			requeue = true // its IP is known on the next pass
		case containers.StateRemoving:
			requeue = true
			continue
		default: // exited, dead
			log.Warn().Str("container", c.Name).Str("state", c.State).Msg("backend is not running; replacing it")
			r.cfg.Health.Dead(c.ID)
			if err := r.cfg.Docker.Remove(ctx, c.ID); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if c.SpecHash == hash {
			upToDate = append(upToDate, c)
		} else {
			outdated = append(outdated, c)
		}
	}

	create := 0
	if len(outdated) == 0 {
		switch {
		case len(upToDate) > n:
			// Scale down: drain the extras, unhealthy first, then the newest.
			r.rankForRemoval(upToDate)
			for _, c := range upToDate[:len(upToDate)-n] {
				r.drain(ctx, c, svc, fmt.Sprintf("scaling down to %d", n))
			}
			upToDate = upToDate[len(upToDate)-n:]
		case len(upToDate) < n:
			create = n - len(upToDate)
		}
	} else {
		// Rolling update, one backend at a time: start a new one, wait until
		// it is healthy and nginx serves it, then drain an old one. The
		// pool never has fewer than n serving backends.
		requeue = true
		total := len(upToDate) + len(outdated)
		waiting := ""
		for _, c := range upToDate {
			if !r.ready(svc, c) {
				waiting = c.Name
			}
		}
		switch {
		case total < n: // some died meanwhile: replace them at once
			create = n - total
		case waiting != "":
			log.Debug().Str("container", waiting).Msg("rolling update: waiting for the new backend to be healthy and served")
		case total <= n && len(upToDate) < n:
			create = 1
			log.Info().Int("outdated", len(outdated)).Msg("rolling update: starting a new backend")
		default: // a new one is serving: one old one can go
			r.rankForRemoval(outdated)
			drainN := 1
			if len(upToDate) >= n {
				drainN = len(outdated) // the old ones are all surplus now
			}
			for _, c := range outdated[:drainN] {
				r.drain(ctx, c, svc, "rolling update: replaced by a backend of the new spec")
			}
			outdated = outdated[drainN:]
		}
	}

	alive := append(upToDate, outdated...)
	if create > 0 {
		if err := r.cfg.Docker.EnsureImage(ctx, svc.Image); err != nil {
			return targetsOf(svc, r.cfg.Spec.Network, alive), requeue, errors.Join(append(errs, err)...)
		}
		for i := 0; i < create; i++ {
			c, err := r.createBackend(ctx, want, svc)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			log.Info().Str("container", c.Name).Int("replicas", n).Msg("backend started")
			alive = append(alive, c)
		}
	}
	return targetsOf(svc, r.cfg.Spec.Network, alive), requeue, errors.Join(errs...)
}

// ready reports whether a backend is healthy and, when a pool is known,
// served by nginx: a rolling update waits for it before draining an old one.
func (r *Reconciler) ready(svc ServiceSpec, c containers.Container) bool {
	if s, _ := r.cfg.Health.State(c.ID); s != "healthy" {
		return false
	}
	if r.cfg.Pool == nil {
		return true
	}
	ip := c.IPs[r.cfg.Spec.Network]
	return ip != "" && r.cfg.Pool.Serves(svc.Name, net.JoinHostPort(ip, strconv.Itoa(svc.Port)))
}

// rankForRemoval sorts backends so that the first are the ones to remove:
// unhealthy, then pending, then healthy; the newest first among equals.
func (r *Reconciler) rankForRemoval(cs []containers.Container) {
	sort.SliceStable(cs, func(i, j int) bool {
		hi, hj := r.healthRank(cs[i].ID), r.healthRank(cs[j].ID)
		if hi != hj {
			return hi < hj
		}
		return cs[i].Created.After(cs[j].Created)
	})
}

func restartOr(policy, def string) string {
	if policy == "" {
		return def
	}
	return policy
}

// healthRank orders backends for removal: unhealthy, pending, then healthy.
func (r *Reconciler) healthRank(id string) int {
	switch s, _ := r.cfg.Health.State(id); s {
	case "healthy":
		return 2
	case "pending":
		return 1
	default:
		return 0
	}
}

func (r *Reconciler) createBackend(ctx context.Context, want containers.CreateSpec, svc ServiceSpec) (containers.Container, error) {
	cs := want
	cs.Name = fmt.Sprintf("%s-%s-%s", r.cfg.Spec.Project, svc.Name, randomSuffix())
	cs.Hostname = cs.Name
	c, err := r.cfg.Docker.Create(ctx, cs)
	if err != nil {
		return containers.Container{}, err
	}
	if err := r.cfg.Docker.Start(ctx, c.ID); err != nil {
		// Leave nothing half-made behind: the next pass creates afresh.
		if rerr := r.cfg.Docker.Remove(ctx, c.ID); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return containers.Container{}, err
	}
	// The IP is assigned at start; Create's inspect does not have it.
	return r.cfg.Docker.Inspect(ctx, c.ID)
}

// targetsOf returns probe targets for the running backends that have an
// address on the network.
func targetsOf(svc ServiceSpec, network string, cs []containers.Container) []Target {
	var out []Target
	for _, c := range cs {
		ip := c.IPs[network]
		if c.State != containers.StateRunning && c.State != containers.StatePaused || ip == "" {
			continue
		}
		out = append(out, Target{
			ID:      c.ID,
			Name:    c.Name,
			Service: svc.Name,
			Addr:    net.JoinHostPort(ip, strconv.Itoa(svc.Port)),
			IP:      ip,
			Port:    svc.Port,
			Health:  svc.Health,
		})
	}
	return out
}

func randomSuffix() string {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b)
}

// dataSpec is the CreateSpec of the data-volume container: the proxy image
// with an anonymous volume at the config directory, never started (the
// seed's `docker run -v /etc/nginx --name conf-data nginx echo`).
func (r *Reconciler) dataSpec() containers.CreateSpec {
	spec := r.cfg.Spec
	cs := containers.CreateSpec{
		Name:  dataName(spec.Project),
		Image: spec.Proxy.Image,
		Cmd:   []string{"true"},
		Labels: map[string]string{
			containers.LabelProject: spec.Project,
			containers.LabelRole:    string(containers.RoleData),
		},
		Volumes: []string{spec.Proxy.ConfigDir},
	}
	cs.Labels[containers.LabelSpec] = specHash(cs)
	return cs
}

// proxySpec is the CreateSpec of the proxy, mounting the volumes of data.
func (r *Reconciler) proxySpec(dataID string) containers.CreateSpec {
	spec := r.cfg.Spec
	cs := containers.CreateSpec{
		Name:  proxyName(spec.Project),
		Image: spec.Proxy.Image,
		Labels: map[string]string{
			containers.LabelProject: spec.Project,
			containers.LabelRole:    string(containers.RoleProxy),
		},
		Network:     spec.Network,
		Aliases:     []string{"proxy"},
		ExposedPort: spec.Proxy.Port,
		PublishAddr: spec.Proxy.Publish,
		VolumesFrom: []string{dataID},
		Restart:     "unless-stopped", // keep serving while the daemon is away
		MemoryBytes: spec.Proxy.Limits.MemoryBytes,
		NanoCPUs:    spec.Proxy.Limits.NanoCPUs,
		StopTimeout: 10 * time.Second,
	}
	cs.Labels[containers.LabelSpec] = specHash(cs)
	return cs
}

// reconcileProxy keeps exactly one data-volume container (created once,
// adopted afterwards, never recreated while it exists) and one running,
// up-to-date proxy mounting it.
func (r *Reconciler) reconcileProxy(ctx context.Context, data, proxies []containers.Container) error {
	sort.Slice(data, func(i, j int) bool { return data[i].Created.Before(data[j].Created) })
	var dataC containers.Container
	if len(data) > 0 {
		dataC = data[0] // the oldest holds the config; any others are left alone
	} else {
		if err := r.cfg.Docker.EnsureImage(ctx, r.cfg.Spec.Proxy.Image); err != nil {
			return fmt.Errorf("proxy: %w", err)
		}
		c, err := r.cfg.Docker.Create(ctx, r.dataSpec())
		if err != nil {
			return fmt.Errorf("proxy data volume: %w", err)
		}
		r.log.Info().Str("container", c.Name).Str("volume", r.cfg.Spec.Proxy.ConfigDir).Msg("data-volume container created")
		dataC = c
	}

	want := r.proxySpec(dataC.ID)
	hash := want.Labels[containers.LabelSpec]
	var current containers.Container
	var errs []error
	for _, p := range proxies {
		ok := p.SpecHash == hash && (p.State == containers.StateRunning || p.State == containers.StateRestarting || p.State == containers.StateCreated)
		if ok && current.ID == "" {
			current = p
			continue
		}
		reason := "not running"
		if p.SpecHash != hash {
			reason = "created from an older spec or data volume"
		}
		r.log.Info().Str("container", p.Name).Str("state", p.State).Str("reason", reason).Msg("replacing proxy")
		if err := r.cfg.Docker.Remove(ctx, p.ID); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		r.setProxy(Proxy{})
		return fmt.Errorf("proxy: %w", err)
	}
	created := false
	if current.ID == "" {
		if err := r.cfg.Docker.EnsureImage(ctx, want.Image); err != nil {
			r.setProxy(Proxy{})
			return fmt.Errorf("proxy: %w", err)
		}
		c, err := r.cfg.Docker.Create(ctx, want)
		if err != nil {
			r.setProxy(Proxy{})
			return fmt.Errorf("proxy: %w", err)
		}
		current, created = c, true
	}
	if current.State != containers.StateRunning && current.State != containers.StateRestarting {
		if err := r.cfg.Docker.Start(ctx, current.ID); err != nil {
			r.setProxy(Proxy{})
			return fmt.Errorf("proxy: %w", err)
		}
		r.log.Info().Str("container", current.Name).Str("publish", r.cfg.Spec.Proxy.Publish).Msg("proxy started")
		created = true
	}
	ip := current.IPs[r.cfg.Spec.Network]
	if ip == "" { // just started: the listing predates its address
		fresh, err := r.cfg.Docker.Inspect(ctx, current.ID)
		if err != nil {
			r.setProxy(Proxy{})
			return fmt.Errorf("proxy: %w", err)
		}
		ip = fresh.IPs[r.cfg.Spec.Network]
	}
	prev := r.Proxy()
	next := Proxy{ID: current.ID, IP: ip}
	r.setProxy(next)
	if created || prev != next {
		r.cfg.OnProxyChange()
	}
	return nil
}
