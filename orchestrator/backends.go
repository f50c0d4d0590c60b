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

	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/internal/events"
	"github.com/upstreamd/upstreamd/internal/health"
	"github.com/upstreamd/upstreamd/store"
)

// backend is one listed backend container and what a plan needs to know
// of it.
type backend struct {
	c     containers.Container
	state health.State // health.Pending when not probed
	// ready: healthy and, when nginx's pools are known, served by nginx.
	ready bool
}

// classified is the backends of one service, sorted by what a pass does
// with them.
type classified struct {
	upToDate, outdated []backend // running, paused or restarting, by spec hash
	// unstarted were created but never started (a pass was interrupted):
	// they are started, and counted above, or a spare would be created
	// beside them.
	unstarted []containers.Container
	dead      []containers.Container // exited or dead: removed and replaced
	// busy: some are draining, being removed or just started; look again
	// soon.
	busy bool
}

// classify sorts the listed backends of svc; hash is the spec hash of its
// current CreateSpec.
func (r *reconciler) classify(svc ServiceSpec, have []containers.Container, hash string) classified {
	var g classified
	for _, c := range have {
		if r.cfg.Ledger.of(c.ID) == fateDraining {
			g.busy = true // the drain wakes the loop when done
			continue
		}
		switch c.State {
		case containers.StateRunning, containers.StatePaused, containers.StateRestarting:
		case containers.StateCreated:
			g.unstarted = append(g.unstarted, c)
			g.busy = true // its address is known on the next pass, once started
		case containers.StateRemoving:
			g.busy = true
			continue
		default: // exited, dead
			g.dead = append(g.dead, c)
			continue
		}
		b := backend{c: c, state: health.Pending}
		if s, ok := r.cfg.Health.State(c.ID); ok {
			b.state = s
		}
		b.ready = b.state == health.Healthy && r.served(svc, c)
		if c.SpecHash == hash {
			g.upToDate = append(g.upToDate, b)
		} else {
			g.outdated = append(g.outdated, b)
		}
	}
	return g
}

// served reports whether nginx serves backend c of svc, or true when no
// pool is known.
func (r *reconciler) served(svc ServiceSpec, c containers.Container) bool {
	if r.cfg.Pool == nil {
		return true
	}
	ip, port, ok := r.cfg.Spec.backendAddr(c, svc.Port)
	return ok && r.cfg.Pool.Serves(svc.Name, net.JoinHostPort(ip, strconv.Itoa(port)))
}

// unknownReplicas is the count of a service whose override could not be
// read: planService keeps the backends it has, dead ones aside.
const unknownReplicas = -1

// servicePlan is what a pass does to one service.
type servicePlan struct {
	create int
	drain  []containers.Container
	reason string // why they are drained
	// rolling says what a rolling update does in this pass, for the log:
	// "start" a new backend, or "wait" for one to be ready.
	rolling  string
	requeue  bool
	alive    []containers.Container // the backends that stay (before create)
	waitedOn string                 // the new backend a rolling update waits for
}

// planService decides how n backends of the current spec come to run (n
// may be unknownReplicas: then as many as run now). It is pure. Without outdated backends it scales: the extras are drained
// (unhealthy first, then the newest), the missing ones created. With
// outdated ones it rolls, one backend at a time: start a new one, wait
// until it is ready, then drain an old one; the pool never has fewer than
// n serving backends, and backends that died meanwhile are replaced at
// once.
func planService(n int, g classified) servicePlan {
	p := servicePlan{requeue: g.busy}
	up, out := g.upToDate, g.outdated
	if n == unknownReplicas {
		n = len(up) + len(out)
	}
	switch total := len(up) + len(out); {
	case len(out) == 0 && len(up) > n:
		rankForRemoval(up)
		p.drain, p.reason = containersOf(up[:len(up)-n]), fmt.Sprintf("scaling down to %d", n)
		up = up[len(up)-n:]
	case len(out) == 0:
		p.create = n - len(up)
	case total < n:
		p.requeue, p.create = true, n-total
	case waitingOn(up) != "":
		p.requeue, p.rolling, p.waitedOn = true, "wait", waitingOn(up)
	case total == n && len(up) < n:
		p.requeue, p.rolling, p.create = true, "start", 1
	default: // a new one is serving: an old one can go, all once n are new
		rankForRemoval(out)
		k := 1
		if len(up) >= n {
			k = len(out)
		}
		p.requeue, p.drain, p.reason = true, containersOf(out[:k]), "rolling update: replaced by a backend of the new spec"
		out = out[k:]
	}
	p.alive = append(containersOf(up), containersOf(out)...)
	return p
}

// waitingOn names a backend of the new spec that is not ready yet.
func waitingOn(up []backend) string {
	for _, b := range up {
		if !b.ready {
			return b.c.Name
		}
	}
	return ""
}

// rankForRemoval sorts backends so that the first are the ones to remove:
// unhealthy, then pending, then healthy; the newest first among equals.
func rankForRemoval(bs []backend) {
	rank := map[health.State]int{health.Unhealthy: 0, health.Pending: 1, health.Healthy: 2}
	sort.SliceStable(bs, func(i, j int) bool {
		if ri, rj := rank[bs[i].state], rank[bs[j].state]; ri != rj {
			return ri < rj
		}
		return bs[i].c.Created.After(bs[j].c.Created)
	})
}

func containersOf(bs []backend) []containers.Container {
	out := make([]containers.Container, 0, len(bs))
	for _, b := range bs {
		out = append(out, b.c)
	}
	return out
}

// reconcileService brings one service to n running, up-to-date backends
// (classify, plan, apply) and returns the probe targets of its running
// ones.
func (r *reconciler) reconcileService(ctx context.Context, svc ServiceSpec, n int, have []containers.Container) (targets []Target, requeue bool, err error) {
	want := r.backendSpec(svc)
	g := r.classify(svc, have, want.Labels[containers.LabelSpec])
	p := planService(n, g)
	log := r.log.With().Str("service", svc.Name).Logger()
	var errs []error
	for _, c := range g.dead {
		log.Warn().Str("container", c.Name).Str("state", c.State).Msg("backend is not running; replacing it")
		r.cfg.Health.Drop(c.ID, "backend died; deregistering")
		if err := r.cfg.Docker.Remove(ctx, c.ID); err != nil {
			errs = append(errs, err)
		}
	}
	for _, c := range g.unstarted {
		if err := r.cfg.Docker.Start(ctx, c.ID); err != nil {
			errs = append(errs, err)
		}
	}
	for _, c := range p.drain {
		r.cfg.Drains.Drain(c, svc, p.reason)
	}
	switch p.rolling {
	case "wait":
		log.Debug().Str("container", p.waitedOn).Msg("rolling update: waiting for the new backend to be healthy and served")
	case "start":
		log.Info().Int("outdated", len(g.outdated)).Msg("rolling update: starting a new backend")
	}
	alive := p.alive
	if p.create > 0 {
		why := fmt.Sprintf("%d replicas wanted, %d running", n, len(p.alive))
		switch {
		case len(g.dead) > 0:
			why = "replacing a backend that died"
		case p.rolling == "start":
			why = "rolling update to a new spec"
		}
		created, err := r.createBackends(ctx, want, svc, p.create, n, why)
		alive = append(alive, created...)
		errs = append(errs, err)
	}
	return targetsOf(svc, r.cfg.Spec, alive), p.requeue, errors.Join(errs...)
}

// backendSpec is the CreateSpec of a backend of svc, without its name.
func (r *reconciler) backendSpec(svc ServiceSpec) containers.CreateSpec {
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
		PublishIP:   publishIP(spec),
		Restart:     containers.RestartPolicy(svc.Restart),
		MemoryBytes: svc.Limits.MemoryBytes,
		NanoCPUs:    svc.Limits.NanoCPUs,
		StopTimeout: svc.StopGrace,
		// A backend shares the proxy's network with its neighbours: no raw
		// sockets to spoof them with (a web server needs none).
		CapDrop: []string{"NET_RAW"},
	}
	cs.Labels[containers.LabelSpec] = specHash(cs)
	return cs
}

// maxParallelCreates bounds the backends one scale-up creates and starts
// at once: the engine serializes much of the work, and beyond a few the
// calls only wait on each other.
const maxParallelCreates = 8

// createBackends creates and starts count backends of svc, up to
// maxParallelCreates at a time, and returns them as the engine sees them
// once started.
func (r *reconciler) createBackends(ctx context.Context, want containers.CreateSpec, svc ServiceSpec, count, replicas int, why string) ([]containers.Container, error) {
	if err := r.cfg.Docker.EnsureImage(ctx, svc.Image); err != nil {
		return nil, err
	}
	created := make([]containers.Container, count)
	errs := make([]error, count)
	slots := make(chan struct{}, maxParallelCreates)
	var wg sync.WaitGroup
	for i := range count {
		wg.Go(func() {
			slots <- struct{}{}
			defer func() { <-slots }()
			created[i], errs[i] = r.createBackend(ctx, want, svc)
			if errs[i] == nil {
				r.log.Info().Str("service", svc.Name).Str("container", created[i].Name).Int("replicas", replicas).Str("reason", why).Msg("backend started")
				r.cfg.Events.Record(events.Event{Kind: events.Started, Service: svc.Name, Container: created[i].Name, ID: containers.ShortID(created[i].ID), Reason: why,
					Message: fmt.Sprintf("%s of %s started (%s)", created[i].Name, svc.Name, why)})
				for _, t := range targetsOf(svc, r.cfg.Spec, created[i:i+1]) {
					r.cfg.Health.Add(t) // probed now, not after the slowest start
				}
			}
		})
	}
	wg.Wait()
	out := make([]containers.Container, 0, count)
	for i, c := range created {
		if errs[i] == nil {
			out = append(out, c)
		}
	}
	return out, errors.Join(errs...)
}

func (r *reconciler) createBackend(ctx context.Context, want containers.CreateSpec, svc ServiceSpec) (containers.Container, error) {
	cs := want
	cs.Name = fmt.Sprintf("%s-%s-%s", r.cfg.Spec.Project, svc.Name, randomSuffix())
	cs.Hostname = store.HostLabel(cs.Name) // names may have "_" or exceed a DNS label
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
func targetsOf(svc ServiceSpec, spec Spec, cs []containers.Container) []Target {
	var out []Target
	for _, c := range cs {
		ip, port, ok := spec.backendAddr(c, svc.Port)
		if c.State != containers.StateRunning && c.State != containers.StatePaused || !ok {
			continue
		}
		out = append(out, Target{
			ID:      c.ID,
			Name:    c.Name,
			Service: svc.Name,
			Addr:    net.JoinHostPort(ip, strconv.Itoa(port)),
			IP:      ip,
			Port:    port,
			Health:  svc.Health,
			Created: c.Created,
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

// publishIP is where backends are published: the node's address when
// they are advertised there, else nowhere.
func publishIP(spec Spec) string {
	if spec.Advertise == AdvertiseHost {
		return spec.NodeAddress
	}
	return ""
}
