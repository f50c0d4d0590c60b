package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/cluster"
	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/internal/events"
	"github.com/upstreamd/upstreamd/internal/loop"
	"github.com/upstreamd/upstreamd/store"
)

// registry is what the registrar writes to etcd.
type registry interface {
	Put(ctx context.Context, key, value string, lease int64) (revision int64, err error)
	Delete(ctx context.Context, key string) (revision int64, err error)
}

// leases hands out the lease the registrations live under (the node's, a
// *cluster.Node).
type leases interface {
	// Lease returns the current lease; nil while there is none.
	Lease() *store.Lease
	// Subscribe receives after each new lease.
	Subscribe() <-chan struct{}
	// Lost reports a lease etcd no longer knows.
	Lost(l *store.Lease)
}

var _ leases = (*cluster.Node)(nil)

var _ registry = (*store.Client)(nil)

// registrations is the copy of the registrations the Registrar compares
// with what it wants (a store.Cache: the one watch of that prefix).
type registrations interface {
	Subscribe() <-chan struct{}
	Snapshot() (store.Snapshot, bool)
}

var _ registrations = (*store.Cache)(nil)

// healthView is what the Registrar reads from the Health manager.
type healthView interface {
	Subscribe() <-chan struct{}
	Snapshot() (healthy, pending []Target)
}

var _ healthView = (*healthMonitor)(nil)

// registrarConfig configures a Registrar.
type registrarConfig struct {
	// Store is etcd, written to.
	Store registry
	// Leases is the lease every key is written under.
	Leases leases
	// Registrations is what etcd holds under Prefix, read from.
	Registrations registrations
	// Health supplies the healthy and pending backends.
	Health healthView
	// Prefix is the registrations prefix, e.g. /services.
	Prefix string
	// Node and Project are written into every registration; keys of
	// other nodes or of other projects are never deleted or rewritten.
	Node    string
	Project string
	// Services are the services this node registers; keys of other
	// services are never touched.
	Services []string
	// Resync is how often etcd is compared with the healthy set even when
	// nothing changed. Zero means 30 s.
	Resync time.Duration
	Events *events.Journal
	Logger zerolog.Logger
}

// registrar keeps etcd in step with the healthy backends: one key per
// healthy backend of this node, all under one lease kept alive, and no key
// for anything else of this node. Keys of pending backends (not yet probed
// after a daemon restart) are left as they are. It compares with the
// watched copy of the registrations, so a sync costs etcd nothing unless
// something differs.
type registrar struct {
	cfg  registrarConfig
	log  zerolog.Logger
	loop *loop.Loop
	// written is the revision of this registrar's last write: a copy older
	// than that does not show it yet, and the watch brings it shortly. A
	// deletion of a key already gone (its lease expired meanwhile) wrote
	// nothing and counts for nothing: the watch would never reach the
	// revision etcd answered it with, and no sync would write again.
	written int64
	// noted holds, by key, why a wanted key was not written (held by
	// another node, or failing validation), so each is logged once.
	noted map[string]string
}

// newRegistrar returns a Registrar; Start runs it.
func newRegistrar(cfg registrarConfig) *registrar {
	if cfg.Resync <= 0 {
		cfg.Resync = 30 * time.Second
	}
	r := &registrar{cfg: cfg, log: cfg.Logger, noted: map[string]string{}}
	r.loop = loop.New(loop.Config{
		Triggers: []<-chan struct{}{cfg.Health.Subscribe(), cfg.Registrations.Subscribe(), cfg.Leases.Subscribe()},
		Resync:   cfg.Resync,
		Initial:  100 * time.Millisecond, Max: 5 * time.Second,
		Log: r.log, Failed: "etcd registration sync failed; retrying with backoff", Level: zerolog.ErrorLevel,
		Recovered: "etcd registration sync recovered",
	})
	return r
}

// Wake asks for a sync as soon as possible.
func (r *registrar) Wake() { r.loop.Wake() }

// Flush asks for a sync now and returns its result; Start must be running.
func (r *registrar) Flush(ctx context.Context) error { return r.loop.Flush(ctx) }

// Start syncs at once, then on every health change, change of the
// registrations, new lease, Wake and every Resync, until ctx ends. (The
// node revokes the lease when the daemon stops, and every key with it.)
func (r *registrar) Start(ctx context.Context) error {
	return r.loop.Run(ctx, func(ctx context.Context) (loop.Result, error) { return loop.Result{}, r.sync(ctx) })
}

// desired returns the registrations this node should have and the keys of
// pending backends, to be left alone. A registration that would not pass
// the daemon's own validation is never wanted: it is noted instead.
func (r *registrar) desired(notes map[string]string) (put map[string]store.Registration, keep map[string]bool) {
	healthy, pending := r.cfg.Health.Snapshot()
	put = make(map[string]store.Registration, len(healthy))
	for _, t := range healthy {
		key := store.ServiceKey(r.cfg.Prefix, t.Service, t.Addr)
		reg := store.Registration{
			Host:      store.HostLabel(t.Name),
			IPv4:      t.IP,
			Port:      t.Port,
			Container: containers.ShortID(t.ID),
			Node:      r.cfg.Node,
			Project:   r.cfg.Project,
		}
		if _, err := store.ParseEntry(r.cfg.Prefix, key, []byte(reg.Encode())); err != nil {
			notes[key] = fmt.Sprintf("not registering %s of %s: %v", t.Name, t.Service, err)
			continue
		}
		put[key] = reg
	}
	keep = make(map[string]bool, len(pending))
	for _, t := range pending {
		keep[store.ServiceKey(r.cfg.Prefix, t.Service, t.Addr)] = true
	}
	return put, keep
}

// Why a sync cannot run yet.
var (
	errNotLoaded = errors.New("registrations not read from etcd yet")
	errNoLease   = errors.New("no etcd lease yet")
)

// sync makes etcd match the desired registrations. It writes only keys
// that differ, never a key another node holds, and never a value that
// would fail validation.
func (r *registrar) sync(ctx context.Context) error {
	snap, ok := r.cfg.Registrations.Snapshot()
	switch {
	case !ok:
		return errNotLoaded
	case snap.Revision < r.written:
		return nil // our last write is on its way; its arrival wakes us
	}
	lease := r.cfg.Leases.Lease()
	if lease == nil {
		return errNoLease
	}
	notes := map[string]string{}
	put, keep := r.desired(notes)
	var errs []error
	for _, e := range snap.Entries {
		switch {
		case !r.registers(e.Service):
			continue // another service's
		case !r.owns(e.Reg):
			if _, ok := put[e.Key]; ok { // the same address, held by another node or project
				notes[e.Key] = fmt.Sprintf("not registering %s: node %q of project %q holds that key", e.Key, e.Reg.Node, e.Reg.Project)
				delete(put, e.Key)
			}
			continue
		}
		want, ok := put[e.Key]
		switch {
		case ok && e.Value == want.Encode() && e.Lease == lease.ID:
			delete(put, e.Key) // already right
		case ok, keep[e.Key]:
			// rewritten below, under our lease; or pending its first probe
		default:
			errs = append(errs, r.write(ctx, lease, e.Key, e.Service, e.Reg, false))
		}
	}
	r.note(notes)
	for key, reg := range put {
		err := r.write(ctx, lease, key, "", reg, true)
		if errors.Is(err, store.ErrLeaseLost) {
			r.cfg.Leases.Lost(lease) // gone on the server: the node claims anew
			return err
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// note logs each new reason a wanted key is not written, once; a reason
// that went away can be logged again when it comes back.
func (r *registrar) note(notes map[string]string) {
	for key, msg := range notes {
		if r.noted[key] != msg {
			r.log.Warn().Str("key", key).Msg(msg)
		}
	}
	r.noted = notes
}

// owns reports whether a registration is this daemon's: its node, and its
// project or none (as an upstreamd older than projects wrote them).
func (r *registrar) owns(reg store.Registration) bool {
	return reg.Node == r.cfg.Node && (reg.Project == r.cfg.Project || reg.Project == "")
}

// registers reports whether this node registers service.
func (r *registrar) registers(service string) bool { return slices.Contains(r.cfg.Services, service) }

// write puts reg at key under the lease, or deletes key, and logs it
// naming the container the same way both times.
func (r *registrar) write(ctx context.Context, lease *store.Lease, key, service string, reg store.Registration, put bool) error {
	var rev int64
	var err error
	if put {
		rev, err = r.cfg.Store.Put(ctx, key, reg.Encode(), lease.ID)
	} else {
		rev, err = r.cfg.Store.Delete(ctx, key)
	}
	if err != nil {
		return err
	}
	r.written = max(r.written, rev)
	ev := r.log.Info().Str("key", key).Str("container", reg.Host).Str("id", reg.Container)
	if service != "" {
		ev = ev.Str("service", service)
	}
	svc, addr, _ := strings.Cut(strings.TrimPrefix(key, store.KeysPrefix(r.cfg.Prefix)), "/")
	e := events.Event{Kind: events.Deregistered, Service: svc, Container: reg.Host, ID: reg.Container, Addr: addr,
		Message: fmt.Sprintf("%s of %s deregistered (%s)", reg.Host, svc, addr)}
	if put {
		ev.Msg("registered")
		e.Kind, e.Message = events.Registered, fmt.Sprintf("%s of %s registered at %s", reg.Host, svc, addr)
	} else {
		ev.Msg("deregistered")
	}
	r.cfg.Events.Record(e)
	return nil
}
