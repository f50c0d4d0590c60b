package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/store"
)

// registry is what the Registrar needs from etcd.
type registry interface {
	Grant(ctx context.Context, ttl time.Duration) (*store.Lease, error)
	Revoke(ctx context.Context, l *store.Lease) error
	List(ctx context.Context, prefix string) ([]store.KV, int64, error)
	Put(ctx context.Context, key, value string, lease int64) error
	Delete(ctx context.Context, key string) error
}

var _ registry = (*store.Client)(nil)

// healthView is what the Registrar reads from the Health manager.
type healthView interface {
	Snapshot() (healthy, pending []Target)
}

var _ healthView = (*Health)(nil)

// RegistrarConfig configures a Registrar.
type RegistrarConfig struct {
	// Store is etcd.
	Store registry
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
	// nothing changed, to repair keys deleted by hand. Zero means 30 s.
	Resync time.Duration
	Logger zerolog.Logger
}

// Registrar keeps etcd in step with the healthy backends: one key per
// healthy backend of this node, all under one lease kept alive, and no key
// for anything else of this node. Keys of pending backends (not yet probed
// after a daemon restart) are left as they are.
type Registrar struct {
	cfg     RegistrarConfig
	log     zerolog.Logger
	trigger chan struct{}
	flush   chan chan error
	lease   *store.Lease
}

// NewRegistrar returns a Registrar; Start runs it.
func NewRegistrar(cfg RegistrarConfig) *Registrar {
	if cfg.Resync <= 0 {
		cfg.Resync = 30 * time.Second
	}
	return &Registrar{cfg: cfg, log: cfg.Logger, trigger: make(chan struct{}, 1), flush: make(chan chan error)}
}

// Trigger asks for a sync as soon as possible.
func (r *Registrar) Trigger() {
	select {
	case r.trigger <- struct{}{}:
	default:
	}
}

// Flush asks for a sync now and returns its result; Start must be running.
func (r *Registrar) Flush(ctx context.Context) error {
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

// Start syncs on every trigger, on lease loss and every Resync, until ctx
// ends; then it revokes the lease so this node's keys go at once.
func (r *Registrar) Start(ctx context.Context) error {
	bo := newBackOff(100*time.Millisecond, 5*time.Second)
	resync := time.NewTicker(r.cfg.Resync)
	defer resync.Stop()
	var retry <-chan time.Time
	failing := false
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
		case <-r.trigger:
		case reply = <-r.flush:
		case <-retry:
		case <-resync.C:
		case <-leaseDone:
			r.log.Warn().Str("lease", fmt.Sprintf("%x", r.lease.ID)).Msg("etcd lease lost; registering again under a new lease")
			r.lease.Release()
			r.lease = nil
		}
		retry = nil
		err := r.sync(ctx)
		if reply != nil {
			reply <- err
		}
		if err != nil {
			if ctx.Err() != nil {
				continue
			}
			d := bo.NextBackOff()
			if !failing {
				r.log.Error().Err(err).Dur("retry_in", d).Msg("etcd registration sync failed; retrying with backoff")
			}
			failing = true
			retry = time.After(d)
			continue
		}
		if failing {
			r.log.Info().Msg("etcd registration sync recovered")
		}
		failing = false
		bo.Reset()
	}
}

func (r *Registrar) shutdown(ctx context.Context) {
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
func (r *Registrar) desired() (put map[string]store.Registration, keep map[string]bool) {
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

// sync makes etcd match the desired registrations.
func (r *Registrar) sync(ctx context.Context) error {
	if r.lease == nil {
		l, err := r.cfg.Store.Grant(ctx, r.cfg.TTL)
		if err != nil {
			return err
		}
		r.lease = l
	}
	put, keep := r.desired()
	var errs []error
	for _, svc := range r.cfg.Services {
		kvs, _, err := r.cfg.Store.List(ctx, store.ServicePrefix(r.cfg.Prefix, svc))
		if err != nil {
			return err
		}
		for _, kv := range kvs {
			e, err := store.ParseEntry(r.cfg.Prefix, kv.Key, kv.Value)
			if err != nil || e.Reg.Node != r.cfg.Node {
				continue // not ours: another node's, or invalid (the cache logs those)
			}
			want, ok := put[kv.Key]
			switch {
			case ok && e.Value == want.Encode() && kv.Lease == r.lease.ID:
				delete(put, kv.Key) // already right
			case ok:
				// rewritten below, under our lease
			case keep[kv.Key]:
				// pending first probe: leave it
			default:
				if err := r.cfg.Store.Delete(ctx, kv.Key); err != nil {
					errs = append(errs, err)
					continue
				}
				r.log.Info().Str("service", e.Service).Str("key", kv.Key).Str("container", e.Reg.Container).Msg("deregistered")
			}
		}
	}
	for key, reg := range put {
		err := r.cfg.Store.Put(ctx, key, reg.Encode(), r.lease.ID)
		if errors.Is(err, store.ErrLeaseLost) {
			r.lease.Release() // gone on the server; stop its keep-alive
			r.lease = nil
			return err
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		r.log.Info().Str("key", key).Str("container", reg.Host).Msg("registered")
	}
	return errors.Join(errs...)
}
