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
	Logger        zerolog.Logger
}

// Reconciler makes the containers match the spec. Reconcile is idempotent:
// it reads everything afresh and acts only on differences.
type Reconciler struct {
	cfg ReconcilerConfig
	log zerolog.Logger

	mu            sync.Mutex
	proxyID       string
	lastOverrides map[string]int
	overridesErr  bool
}

// NewReconciler returns a Reconciler.
func NewReconciler(cfg ReconcilerConfig) *Reconciler {
	if cfg.OnProxyChange == nil {
		cfg.OnProxyChange = func() {}
	}
	return &Reconciler{cfg: cfg, log: cfg.Logger}
}

// ProxyID returns the running proxy container seen by the last pass.
func (r *Reconciler) ProxyID() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.proxyID
}

func (r *Reconciler) setProxyID(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.proxyID = id
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
			r.log.Info().Str("service", name).Str("container", c.Name).Msg("removing backend of a service no longer in the spec")
			r.cfg.Health.Dead(c.ID)
			if err := r.cfg.Docker.Remove(ctx, c.ID); err != nil {
				errs = append(errs, err)
			}
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
		},
		Network:     spec.Network,
		Aliases:     []string{svc.Name},
		ExposedPort: svc.Port,
		Restart:     "no", // upstreamd replaces dead backends itself
		MemoryBytes: svc.Limits.MemoryBytes,
		NanoCPUs:    svc.Limits.NanoCPUs,
		StopTimeout: svc.StopGrace,
	}
	cs.Labels[containers.LabelSpec] = specHash(cs)
	return cs
}

// reconcileService brings one service to n running, up-to-date backends and
// returns the probe targets of its running ones.
func (r *Reconciler) reconcileService(ctx context.Context, svc ServiceSpec, n int, have []containers.Container) (targets []Target, requeue bool, err error) {
	want := r.backendSpec(svc)
	hash := want.Labels[containers.LabelSpec]
	log := r.log.With().Str("service", svc.Name).Logger()
	var errs []error
	var alive []containers.Container
	for _, c := range have {
		if r.cfg.Health.IsDead(c.ID) && c.State != containers.StateExited && c.State != containers.StateDead {
			// Its "die" event came before the listing caught up: ask the
			// engine directly (inspect waits for the exit to be recorded).
			fresh, err := r.cfg.Docker.Inspect(ctx, c.ID)
			switch {
			case containers.IsNotFound(err):
				continue
			case err != nil:
				errs = append(errs, err)
				continue
			}
			c.State = fresh.State
			if c.State == containers.StateRunning {
				r.cfg.Health.Revive(c.ID) // restarted since: probe it again
			}
		}
		switch c.State {
		case containers.StateRunning, containers.StatePaused, containers.StateRestarting:
			if c.SpecHash != hash {
				log.Info().Str("container", c.Name).Msg("backend was created from an older spec; replacing")
				r.cfg.Health.Dead(c.ID)
				if err := r.cfg.Docker.Stop(ctx, c.ID, svc.StopGrace); err != nil {
					errs = append(errs, err)
				}
				if err := r.cfg.Docker.Remove(ctx, c.ID); err != nil {
					errs = append(errs, err)
				}
				continue
			}
			alive = append(alive, c)
		case containers.StateCreated:
			// Created but never started (a pass was interrupted): start it,
			// and count it, or a spare would be created beside it.
			if err := r.cfg.Docker.Start(ctx, c.ID); err != nil {
				errs = append(errs, err)
				requeue = true
				continue
			}
			alive = append(alive, c) // still "created" here: no probe target yet
			requeue = true           // its IP is known on the next pass
		case containers.StateRemoving:
			requeue = true
		default: // exited, dead
			log.Warn().Str("container", c.Name).Str("state", c.State).Msg("backend is not running; replacing it")
			r.cfg.Health.Dead(c.ID)
			if err := r.cfg.Docker.Remove(ctx, c.ID); err != nil {
				errs = append(errs, err)
			}
		}
	}

	if len(alive) > n {
		// Remove the extras: unhealthy first, then the newest.
		sort.SliceStable(alive, func(i, j int) bool {
			hi, hj := r.healthRank(alive[i].ID), r.healthRank(alive[j].ID)
			if hi != hj {
				return hi < hj
			}
			return alive[i].Created.After(alive[j].Created)
		})
		extras := alive[:len(alive)-n]
		alive = alive[len(alive)-n:]
		for _, c := range extras {
			log.Info().Str("container", c.Name).Int("replicas", n).Msg("scaling down: removing backend")
			r.cfg.Health.Dead(c.ID)
			if err := r.cfg.Docker.Stop(ctx, c.ID, svc.StopGrace); err != nil {
				errs = append(errs, err)
			}
			if err := r.cfg.Docker.Remove(ctx, c.ID); err != nil {
				errs = append(errs, err)
			}
		}
	}

	if missing := n - len(alive); missing > 0 {
		if err := r.cfg.Docker.EnsureImage(ctx, svc.Image); err != nil {
			return targetsOf(svc, r.cfg.Spec.Network, alive), false, errors.Join(append(errs, err)...)
		}
		for i := 0; i < missing; i++ {
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
		r.setProxyID("")
		return fmt.Errorf("proxy: %w", err)
	}
	created := false
	if current.ID == "" {
		if err := r.cfg.Docker.EnsureImage(ctx, want.Image); err != nil {
			r.setProxyID("")
			return fmt.Errorf("proxy: %w", err)
		}
		c, err := r.cfg.Docker.Create(ctx, want)
		if err != nil {
			r.setProxyID("")
			return fmt.Errorf("proxy: %w", err)
		}
		current, created = c, true
	}
	if current.State != containers.StateRunning && current.State != containers.StateRestarting {
		if err := r.cfg.Docker.Start(ctx, current.ID); err != nil {
			r.setProxyID("")
			return fmt.Errorf("proxy: %w", err)
		}
		r.log.Info().Str("container", current.Name).Str("publish", r.cfg.Spec.Proxy.Publish).Msg("proxy started")
		created = true
	}
	prev := r.ProxyID()
	r.setProxyID(current.ID)
	if created || prev != current.ID {
		r.cfg.OnProxyChange()
	}
	return nil
}
