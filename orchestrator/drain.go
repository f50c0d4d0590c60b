package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/internal/events"
	"github.com/upstreamd/upstreamd/internal/retry"
)

// stopAPI is what the drainer needs from the Docker engine.
type stopAPI interface {
	Stop(ctx context.Context, id string, grace time.Duration) error
	Remove(ctx context.Context, id string) error
}

// pool tells which backends nginx serves (a render.Served).
type pool interface {
	// Known is closed once what nginx serves is known at all.
	Known() <-chan struct{}
	Serves(service, addr string) bool
	WaitServes(ctx context.Context, service, addr string, want bool) error
	// Subscribe returns a channel that receives after each change.
	Subscribe() <-chan struct{}
}

// drainerConfig configures a drainer.
type drainerConfig struct {
	Docker stopAPI
	// Health is told to stop probing a draining backend at once.
	Health probes
	Ledger *ledger
	// Pool says when nginx stopped sending to a backend; nil: not waited for.
	Pool pool
	// Spec says where backends have the address nginx dials.
	Spec Spec
	// Timeout bounds the wait for nginx; zero means 10 s.
	Timeout time.Duration
	// Done is called after each drain ended (the Reconciler's Wake).
	Done   func()
	Events *events.Journal
	Logger zerolog.Logger
}

// drainer takes backends out of service gracefully, each in its own task:
// deregister at once, wait until nginx no longer sends to it, then stop it
// with its grace period, so its in-flight requests finish, and remove it.
// It is a runnable: a daemon stopping meanwhile leaves the backends
// running, and the next daemon adopts them.
type drainer struct {
	cfg   drainerConfig
	log   zerolog.Logger
	tasks workers
	// stops bounds concurrent stops: a scale-down of a hundred backends
	// must not send the engine a hundred stops at once.
	stops chan struct{}
}

func newDrainer(cfg drainerConfig) *drainer {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Done == nil {
		cfg.Done = func() {}
	}
	return &drainer{cfg: cfg, log: cfg.Logger, stops: make(chan struct{}, 4)}
}

// Start runs the drains until ctx ends, then waits for them.
func (d *drainer) Start(ctx context.Context) error { return d.tasks.Start(ctx) }

// Drain starts draining backend c of svc; a backend already draining is
// left to its drain.
func (d *drainer) Drain(c containers.Container, svc ServiceSpec, reason string) {
	if !d.cfg.Ledger.mark(c.ID, fateDraining) {
		return
	}
	log := d.log.With().Str("service", svc.Name).Str("container", c.Name).Logger()
	log.Info().Str("reason", reason).Msg("draining backend")
	d.cfg.Events.Record(events.Event{Kind: events.Draining, Service: svc.Name, Container: c.Name, ID: containers.ShortID(c.ID), Reason: reason,
		Message: fmt.Sprintf("draining %s of %s (%s): deregistered, stopped once nginx no longer sends to it", c.Name, svc.Name, reason)})
	d.cfg.Health.Drop(c.ID, "backend retired; deregistering before it is drained")
	addr := ""
	if ip, port, ok := d.cfg.Spec.backendAddr(c, svc.Port); ok {
		addr = net.JoinHostPort(ip, strconv.Itoa(port))
	}
	d.tasks.Go(func(ctx context.Context) {
		start := time.Now()
		if d.drain(ctx, log, c.ID, svc, addr) {
			// The mark stays until a listing no longer shows the backend.
			took := time.Since(start)
			log.Info().Stringer("took", took).Msg("backend drained and removed")
			d.cfg.Events.Record(events.Event{Kind: events.Drained, Service: svc.Name, Container: c.Name, ID: containers.ShortID(c.ID),
				Message: fmt.Sprintf("%s of %s drained, stopped and removed after %s", c.Name, svc.Name, took.Round(time.Millisecond))})
		}
		d.cfg.Done()
	})
}

// drain waits for nginx, then stops and removes the backend, retrying
// until that works; it reports false when ctx ended first.
func (d *drainer) drain(ctx context.Context, log zerolog.Logger, id string, svc ServiceSpec, addr string) bool {
	if addr != "" && d.cfg.Pool != nil {
		// Unknown is not drained: while nothing says what nginx serves
		// (etcd unreachable since a restart, no pass yet), nginx may still
		// send to the backend from the pools it keeps.
		select {
		case <-d.cfg.Pool.Known():
		default:
			log.Info().Msg("waiting to learn what nginx serves before stopping the backend")
			select {
			case <-d.cfg.Pool.Known():
			case <-ctx.Done():
				return false
			}
		}
		wctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
		err := d.cfg.Pool.WaitServes(wctx, svc.Name, addr, false)
		cancel()
		if err != nil && ctx.Err() == nil {
			log.Warn().Err(err).Msg("nginx did not confirm it stopped sending to the backend; stopping it anyway")
		}
	}
	if ctx.Err() != nil { // the daemon is stopping: leave the backend running
		return false
	}
	err := retry.Until(ctx, retry.New(200*time.Millisecond, 10*time.Second), func(ctx context.Context) error {
		select {
		case d.stops <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		defer func() { <-d.stops }()
		return errors.Join(d.cfg.Docker.Stop(ctx, id, svc.StopGrace), d.cfg.Docker.Remove(ctx, id))
	}, func(err error, wait time.Duration, first bool) {
		if first {
			log.Error().Err(err).Stringer("retry_in", wait).Msg("drained backend not removed; retrying")
		}
	})
	return err == nil
}
