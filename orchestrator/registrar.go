package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/internal/retry"
	"github.com/upstreamd/upstreamd/internal/wake"
	"github.com/upstreamd/upstreamd/store"
)

// registry is what the Registrar writes to etcd.
type registry interface {
	Grant(ctx context.Context, ttl time.Duration) (*store.Lease, error)
	Revoke(ctx context.Context, l *store.Lease) error
	Put(ctx context.Context, key, value string, lease int64) (revision int64, err error)
	Delete(ctx context.Context, key string) (revision int64, err error)
}

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

var _ healthView = (*health)(nil)

// registrarConfig configures a Registrar.
type registrarConfig struct {
	// Store is etcd, written to.
	Store registry
	// Registrations is what etcd holds under Prefix, read from.
	Registrations registrations
	// Health supplies the healthy and pending backends.
	Health healthView
	// Prefix is the registrations prefix, e.g. /services.
	Prefix string
	// Node is written into every registration; keys of other nodes are
	// never deleted.
	Node string
	// Services are the services this node registers; keys of other
	// services are never touched.
	Services []string
	// TTL is the lease TTL: how long keys outlive a daemon that vanished.
	TTL time.Duration
	// Resync is how often etcd is compared with the healthy set even when
	// nothing changed. Zero means 30 s.
	Resync time.Duration
	Logger zerolog.Logger
}

// registrar keeps etcd in step with the healthy backends: one key per
// healthy backend of this node, all under one lease kept alive, and no key
// for anything else of this node. Keys of pending backends (not yet probed
// after a daemon restart) are left as they are. It compares with the
// watched copy of the registrations, so a sync costs etcd nothing unless
// something differs.
type registrar struct {
	cfg   registrarConfig
	log   zerolog.Logger
	wake  wake.Signal
	flush chan chan error
	lease *store.Lease
	// written is the revision of this Registrar's last write: a copy older
	// than that does not show it yet, and the watch brings it shortly.
	written int64
}

// newRegistrar returns a Registrar; Start runs it.
func newRegistrar(cfg registrarConfig) *registrar {
	if cfg.Resync <= 0 {
		cfg.Resync = 30 * time.Second
	}
	return &registrar{cfg: cfg, log: cfg.Logger, wake: wake.New(), flush: make(chan chan error)}
}

// Wake asks for a sync as soon as possible.
func (r *registrar) Wake() { r.wake.Wake() }

// Flush asks for a sync now and returns its result; Start must be running.
func (r *registrar) Flush(ctx context.Context) error {
	reply := make(chan error, 1)
	select {
	case r.flush <- reply:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Start syncs on every health change, change of the registrations, Wake,
// lease loss and every Resync, until ctx ends; then it revokes the lease
// so this node's keys go at once.
func (r *registrar) Start(ctx context.Context) error {
	health, regs := r.cfg.Health.Subscribe(), r.cfg.Registrations.Subscribe()
	bo := retry.New(100*time.Millisecond, 5*time.Second)
	resync := time.NewTicker(r.cfg.Resync)
	defer resync.Stop()
	var again <-chan time.Time
	for {
		var leaseDone <-chan struct{}
		if r.lease != nil {
			leaseDone = r.lease.Done
		}
		var reply chan error
		select {
		case <-ctx.Done():
			r.shutdown(ctx)
			return nil
		case <-health:
		case <-regs:
		case <-r.wake.C():
		case reply = <-r.flush:
		case <-again:
		case <-resync.C:
		case <-leaseDone:
			r.log.Warn().Str("lease", fmt.Sprintf("%x", r.lease.ID)).Msg("etcd lease lost; registering again under a new lease")
			r.lease.Release()
			r.lease = nil
		}
		again = nil
		err := r.sync(ctx)
		if reply != nil {
			reply <- err
		}
		switch {
		case err == nil:
			if bo.Succeeded() {
				r.log.Info().Msg("etcd registration sync recovered")
			}
		case ctx.Err() == nil:
			d, first := bo.Failed()
			if first {
				r.log.Error().Err(err).Dur("retry_in", d).Msg("etcd registration sync failed; retrying with backoff")
			}
			again = time.After(d)
		}
	}
}

func (r *registrar) shutdown(ctx context.Context) {
	if r.lease == nil {
		return
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
	defer cancel()
	if err := r.cfg.Store.Revoke(rctx, r.lease); err != nil {
		r.log.Warn().Err(err).Msg("revoke lease at shutdown; keys expire with its TTL instead")
		return
	}
	r.log.Info().Str("lease", fmt.Sprintf("%x", r.lease.ID)).Msg("lease revoked; this node's registrations are gone")
	r.lease = nil
}

// desired returns the registrations this node should have and the keys of
// pending backends, to be left alone.
func (r *registrar) desired() (put map[string]store.Registration, keep map[string]bool) {
	healthy, pending := r.cfg.Health.Snapshot()
	put = make(map[string]store.Registration, len(healthy))
	for _, t := range healthy {
		put[store.ServiceKey(r.cfg.Prefix, t.Service, t.Addr)] = store.Registration{
			Host:      t.Name,
			IPv4:      t.IP,
			Port:      t.Port,
			Container: containers.ShortID(t.ID),
			Node:      r.cfg.Node,
		}
	}
	keep = make(map[string]bool, len(pending))
	for _, t := range pending {
		keep[store.ServiceKey(r.cfg.Prefix, t.Service, t.Addr)] = true
	}
	return put, keep
}

// errNotLoaded: the registrations were never read from etcd yet.
var errNotLoaded = errors.New("registrations not read from etcd yet")

// sync makes etcd match the desired registrations.
func (r *registrar) sync(ctx context.Context) error {
	snap, ok := r.cfg.Registrations.Snapshot()
	switch {
	case !ok:
		return errNotLoaded
	case snap.Revision < r.written:
		return nil // our last write is on its way; its arrival wakes us
	}
	if r.lease == nil {
		l, err := r.cfg.Store.Grant(ctx, r.cfg.TTL)
		if err != nil {
			return err
		}
		r.lease = l
	}
	put, keep := r.desired()
	var errs []error
	for _, e := range snap.Entries {
		if e.Reg.Node != r.cfg.Node || !r.registers(e.Service) {
			continue // not ours: another node's or another service's
		}
		want, ok := put[e.Key]
		switch {
		case ok && e.Value == want.Encode() && e.Lease == r.lease.ID:
			delete(put, e.Key) // already right
		case ok, keep[e.Key]:
			// rewritten below, under our lease; or pending its first probe
		default:
			errs = append(errs, r.write(ctx, e.Key, "", e.Service, e.Reg.Container))
		}
	}
	for key, reg := range put {
		err := r.write(ctx, key, reg.Encode(), "", reg.Host)
		if errors.Is(err, store.ErrLeaseLost) {
			r.lease.Release() // gone on the server; stop its keep-alive
			r.lease = nil
			return err
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// registers reports whether this node registers service.
func (r *registrar) registers(service string) bool { return slices.Contains(r.cfg.Services, service) }

// write puts value at key under the lease, or deletes key when value is
// empty, and logs it.
func (r *registrar) write(ctx context.Context, key, value, service, container string) error {
	var rev int64
	var err error
	if value == "" {
		rev, err = r.cfg.Store.Delete(ctx, key)
	} else {
		rev, err = r.cfg.Store.Put(ctx, key, value, r.lease.ID)
	}
	if err != nil {
		return err
	}
	r.written = max(r.written, rev)
	if value == "" {
		r.log.Info().Str("service", service).Str("key", key).Str("container", container).Msg("deregistered")
	} else {
		r.log.Info().Str("key", key).Str("container", container).Msg("registered")
	}
	return nil
}
