package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/cluster"
	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/internal/events"
	"github.com/upstreamd/upstreamd/internal/health"
)

// containerAPI is what the Reconciler needs from the Docker engine.
type containerAPI interface {
	List(ctx context.Context, project string) ([]containers.Container, error)
	EnsureNetwork(ctx context.Context, name, project string) (string, error)
	EnsureImage(ctx context.Context, ref string) error
	Create(ctx context.Context, spec containers.CreateSpec) (containers.Container, error)
	Start(ctx context.Context, id string) error
	Remove(ctx context.Context, id string) error
	Inspect(ctx context.Context, id string) (containers.Container, error)
	ReadFile(ctx context.Context, id, file string) ([]byte, error)
	CopyFiles(ctx context.Context, id, dir string, files []containers.File) error
}

var _ containerAPI = (*containers.Client)(nil)

// probes is what the Reconciler needs from the Health manager.
type probes interface {
	Sync(targets []Target)
	Add(t Target)
	Drop(id, why string)
	State(id string) (health.State, bool)
}

var _ probes = (*healthMonitor)(nil)

// drains is what the Reconciler needs from the drainer.
type drains interface {
	Drain(c containers.Container, svc ServiceSpec, reason string)
}

var _ drains = (*drainer)(nil)

// Result tells the loop when to look again without an event.
type Result struct {
	// RequeueAfter, when non-zero, asks for another pass after this long.
	RequeueAfter time.Duration
	// Running counts, by service, the backends found running (draining
	// ones included) at the start of the pass.
	Running map[string]int
}

// reconcilerConfig configures a Reconciler.
type reconcilerConfig struct {
	// Spec is the desired state.
	Spec Spec
	// Docker is the engine.
	Docker containerAPI
	// Health probes the running backends the Reconciler reports.
	Health probes
	// Drains takes backends out of service gracefully.
	Drains drains
	// Ledger records the backends that died or are draining.
	Ledger *ledger
	// Share returns the backends this node runs by service (its share of
	// the cluster's replicas, as placed), and false while it is unknown; a
	// service it leaves out runs the spec's count. Nil: the spec's counts.
	Share func() (map[string]int, bool)
	// Pool tells which backends nginx serves: a rolling update retires an
	// old backend only once nginx serves the new one. Nil: healthy is
	// enough.
	Pool pool
	// Proxy is where the running proxy is published for the renderer.
	Proxy *runningProxy
	// RunProxy says whether this node is to run the proxy (it leads), to
	// keep one it runs, or to run none; nil: always run one.
	RunProxy func() cluster.ProxyDuty
	Events   *events.Journal
	Logger   zerolog.Logger
}

// reconciler makes the containers match the spec. Reconcile is idempotent:
// it reads everything afresh and acts only on differences.
type reconciler struct {
	cfg            reconcilerConfig
	log            zerolog.Logger
	saidNoOverride bool // logged once that the overrides are not read yet
}

// newReconciler returns a Reconciler.
func newReconciler(cfg reconcilerConfig) *reconciler {
	if cfg.Share == nil {
		cfg.Share = func() (map[string]int, bool) { return nil, true }
	}
	if cfg.Proxy == nil {
		cfg.Proxy = newRunningProxy()
	}
	return &reconciler{cfg: cfg, log: cfg.Logger}
}

// Reconcile runs one pass: every service's backends, then the proxy.
func (r *reconciler) Reconcile(ctx context.Context) (Result, error) {
	spec := r.cfg.Spec
	if _, err := r.cfg.Docker.EnsureNetwork(ctx, spec.Network, spec.Project); err != nil {
		return Result{}, err
	}
	all, err := r.cfg.Docker.List(ctx, spec.Project)
	if err != nil {
		return Result{}, err
	}
	listed := make(map[string]bool, len(all))
	for _, c := range all {
		listed[c.ID] = true
	}
	r.cfg.Ledger.forgetAbsent(listed)
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
	res := Result{Running: map[string]int{}}
	replicas := r.replicas()
	for _, svc := range spec.Services {
		for _, c := range backends[svc.Name] {
			if c.State == containers.StateRunning || c.State == containers.StatePaused || c.State == containers.StateRestarting {
				res.Running[svc.Name]++
			}
		}
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
	errs = append(errs, r.retireRemoved(ctx, backends))
	r.cfg.Health.Sync(targets)
	if err := r.reconcileProxy(ctx, data, proxies); err != nil {
		errs = append(errs, err)
	}
	return res, errors.Join(errs...)
}

// freshen replaces the listed state of backends that died by what the
// engine's inspect says: the engine sends "die" before its listing shows
// the exit, while inspect waits for it. The ledger forgets a death once a
// listing shows it, or when the container runs again (restarted).
func (r *reconciler) freshen(ctx context.Context, list []containers.Container) []containers.Container {
	out := list[:0]
	for _, c := range list {
		running := c.State == containers.StateRunning || c.State == containers.StateRestarting
		switch {
		case r.cfg.Ledger.of(c.ID) != fateDied:
		case !running:
			r.cfg.Ledger.clear(c.ID) // the listing caught up
		default:
			fresh, err := r.cfg.Docker.Inspect(ctx, c.ID)
			switch {
			case containers.IsNotFound(err):
				r.cfg.Ledger.clear(c.ID)
				continue // removed meanwhile
			case err != nil:
				// Ask again next pass; meanwhile it is not probed.
			case fresh.State == containers.StateRunning:
				r.cfg.Ledger.clear(c.ID) // restarted since it died
			default:
				c.State = fresh.State
			}
		}
		out = append(out, c)
	}
	return out
}

// replicas returns the replica count per service this node runs (the
// placement's; the spec's where it says nothing). While they are unknown
// (the overrides, nodes or slots not read from etcd yet, or no lease), a
// count is unknown (-1): an override or a placement must never be replaced
// by the spec's count.
func (r *reconciler) replicas() map[string]int {
	share, ok := r.cfg.Share()
	if !ok && !r.saidNoOverride {
		r.log.Warn().Msg("replicas not placed yet (replica overrides, nodes or slots not read from etcd, or no lease); no service is scaled until they are")
	}
	r.saidNoOverride = !ok
	out := map[string]int{}
	for _, s := range r.cfg.Spec.Services {
		n, placed := share[s.Name]
		switch {
		case ok && placed:
			out[s.Name] = n
		case ok:
			out[s.Name] = s.Replicas
		default:
			out[s.Name] = unknownReplicas
		}
	}
	return out
}

// retireRemoved drains the backends of services no longer in the spec;
// those not running are removed at once.
func (r *reconciler) retireRemoved(ctx context.Context, backends map[string][]containers.Container) error {
	var errs []error
	for name, cs := range backends {
		for _, c := range cs {
			if r.cfg.Ledger.of(c.ID) == fateDraining {
				continue
			}
			if c.State != containers.StateRunning && c.State != containers.StatePaused {
				r.cfg.Health.Drop(c.ID, "backend died; deregistering")
				if err := r.cfg.Docker.Remove(ctx, c.ID); err != nil {
					errs = append(errs, err)
				}
				continue
			}
			// Its spec is gone: the default grace.
			port, _ := strconv.Atoi(c.Labels[containers.LabelPort])
			svc := ServiceSpec{Name: name, Port: port, StopGrace: DefaultStopGrace}
			r.cfg.Drains.Drain(c, svc, "service no longer in the spec")
		}
	}
	return errors.Join(errs...)
}
