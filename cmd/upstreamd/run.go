package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/orchestrator"
	"github.com/upstreamd/upstreamd/render"
	"github.com/upstreamd/upstreamd/store"
)

func newRunCmd(g *globalFlags, stderr io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "run",
		Short: "run the daemon: create and supervise the proxy and backends, register, render, reload",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := g.logger(stderr)
			if err != nil {
				return err
			}
			cfg, err := LoadConfig(g.config)
			if err != nil {
				return err
			}
			return runDaemon(cmd.Context(), cfg, log)
		},
	}
}

// runDaemon wires the components and runs them until ctx ends.
func runDaemon(ctx context.Context, cfg *Config, log zerolog.Logger) error {
	tmpl, err := cfg.LoadTemplate()
	if err != nil {
		return err
	}
	docker, err := containers.New(containers.Config{
		Host:    cfg.Docker.Host,
		Timeout: cfg.Docker.Timeout.D(),
		Logger:  log.With().Str("component", "docker").Logger(),
	})
	if err != nil {
		return err
	}
	defer docker.Close()
	scfg, err := cfg.StoreConfig()
	if err != nil {
		return err
	}
	scfg.Logger = log.With().Str("component", "etcd").Logger()
	etcd, err := store.New(scfg)
	if err != nil {
		return err
	}
	defer etcd.Close()

	spec := cfg.Spec()
	log.Info().Str("version", version).Str("config", cfg.file).Str("project", spec.Project).
		Str("node", spec.Node).Strs("etcd", cfg.Etcd.Endpoints).Msg("upstreamd starting")
	// One clear line each when a dependency is down at start-up; the
	// components then retry on their own with backoff.
	go waitReachable(ctx, log, "docker engine", func(ctx context.Context) error {
		v, err := docker.Ping(ctx)
		if err == nil {
			log.Info().Str("engine", v).Msg("docker engine reachable")
		}
		return err
	})
	go waitReachable(ctx, log, "etcd", func(ctx context.Context) error {
		err := etcd.Ping(ctx)
		if err == nil {
			log.Info().Msg("etcd reachable")
		}
		return err
	})

	m := newMetrics()
	cache := etcd.NewCache(cfg.Etcd.Prefix, log.With().Str("component", "watch").Logger())
	deliverer := render.NewDeliverer(render.DelivererConfig{
		API:        docker,
		ConfigPath: cfg.Proxy.ConfigPath,
		MainPath:   cfg.Proxy.MainConfig,
		Logger:     log.With().Str("component", "deliver").Logger(),
	})
	var orch *orchestrator.Orchestrator
	readyCh := make(chan struct{}) // closed when orch is ready
	ctrl := render.NewController(render.ControllerConfig{
		Template:  tmpl,
		Source:    cache,
		Deliverer: deliverer,
		Status:    render.NewStatusClient(2 * time.Second),
		Proxy: func(context.Context) (render.Proxy, error) {
			if p := orch.Proxy(); p.ID != "" {
				return render.Proxy{ID: p.ID, IP: p.IP}, nil
			}
			return render.Proxy{}, render.ErrNoProxy
		},
		Services:    cfg.ServiceNames(),
		Default:     cfg.Proxy.Service,
		Listen:      cfg.Proxy.Port,
		Dynamic:     *cfg.Proxy.Dynamic,
		StatusPort:  *cfg.Proxy.StatusPort,
		MinDebounce: cfg.Proxy.DebounceMin.D(),
		MaxDebounce: cfg.Proxy.DebounceMax.D(),
		Logger:      log.With().Str("component", "render").Logger(),
		Ready:       readyCh,
		HealthyHere: func(service string) int { return orch.HealthyBackends(service) },
		Observe: func(o render.Outcome) {
			m.observe(o)
			if o.Changed || o.Pushed {
				orch.Wake() // drains and rolling updates wait for this
			}
		},
	})
	orch = orchestrator.New(orchestrator.Config{
		Spec:          spec,
		Docker:        docker,
		Store:         etcd,
		LeaseTTL:      cfg.Etcd.LeaseTTL.D(),
		OnProxyChange: ctrl.Kick,
		Pool:          ctrl,
		Logger:        log,
	})

	grp, gctx := errgroup.WithContext(ctx)
	grp.Go(func() error {
		select {
		case <-orch.Ready():
			close(readyCh)
		case <-gctx.Done():
		}
		return nil
	})
	grp.Go(func() error { return cache.Start(gctx) })
	grp.Go(func() error { return ctrl.Start(gctx) })
	grp.Go(func() error { return orch.Start(gctx) })
	if cfg.Metrics.Listen != "" {
		grp.Go(func() error {
			log.Info().Str("listen", cfg.Metrics.Listen).Msg("serving /metrics and /healthz")
			if err := m.serve(gctx, cfg.Metrics.Listen, orch.Backends); err != nil {
				return fmt.Errorf("metrics.listen %s: %w", cfg.Metrics.Listen, err)
			}
			return nil
		})
	}
	err = grp.Wait()
	log.Info().Msg("upstreamd stopped; the proxy and backends keep running")
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// waitReachable calls ping until it succeeds, logging the first failure
// once as an error and later ones at debug level.
func waitReachable(ctx context.Context, log zerolog.Logger, what string, ping func(context.Context) error) {
	bo := backoff.NewExponentialBackOff(backoff.WithInitialInterval(500*time.Millisecond),
		backoff.WithMaxInterval(15*time.Second), backoff.WithMaxElapsedTime(0))
	for first := true; ctx.Err() == nil; first = false {
		err := ping(ctx)
		if err == nil || ctx.Err() != nil {
			return
		}
		d := bo.NextBackOff()
		if first {
			log.Error().Err(err).Dur("retry_in", d).Msgf("%s unreachable; retrying with backoff", what)
		} else {
			log.Debug().Err(err).Msgf("%s still unreachable", what)
		}
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
	}
}
