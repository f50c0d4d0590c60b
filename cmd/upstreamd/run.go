package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/internal/retry"
	"github.com/upstreamd/upstreamd/nginx"
	"github.com/upstreamd/upstreamd/orchestrator"
	"github.com/upstreamd/upstreamd/render"
	"github.com/upstreamd/upstreamd/store"
)

func newRunCmd(g *globalFlags, stderr io.Writer) *cobra.Command {
	return g.specCommand(stderr, &cobra.Command{
		Use:   "run",
		Short: "run the daemon: create and supervise the proxy and backends, register, render, reload",
		Args:  usageArgs(cobra.NoArgs),
	}, func(cmd *cobra.Command, _ []string, log zerolog.Logger, cfg *Config) error {
		return runDaemon(cmd.Context(), cfg, log)
	})
}

// runDaemon wires the components and runs them until ctx ends.
func runDaemon(ctx context.Context, cfg *Config, root zerolog.Logger) error {
	d, err := wire(cfg, root)
	log := root.With().Str("component", "daemon").Logger()
	if err != nil {
		return err
	}
	defer d.close()
	log.Info().Str("version", version).Str("config", cfg.file).Str("project", cfg.Project).
		Str("node", cfg.Node).Strs("etcd", cfg.Etcd.Endpoints).Msg("upstreamd starting")
	err = d.run(ctx)
	log.Info().Msg("upstreamd stopped; the proxy and backends keep running")
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// daemon is `upstreamd run` wired: one adapter per outside system, one
// watch of the registrations, and the two loops that meet in etcd and in
// what nginx serves.
type daemon struct {
	cfg           *Config
	log           zerolog.Logger
	docker        *containers.Client
	etcd          *store.Client
	registrations *store.Cache
	orch          *orchestrator.Orchestrator
	ctrl          *render.Controller
	metrics       *metrics
}

// wire builds the daemon from the config.
func wire(cfg *Config, log zerolog.Logger) (*daemon, error) {
	tmpl, err := cfg.LoadTemplate()
	if err != nil {
		return nil, err
	}
	scfg, err := cfg.StoreConfig()
	if err != nil {
		return nil, err
	}
	d := &daemon{cfg: cfg, log: log, metrics: newMetrics()}
	d.docker, err = containers.New(containers.Config{
		Host:    cfg.Docker.Host,
		Timeout: cfg.Docker.Timeout.D(),
		Logger:  log.With().Str("component", "docker").Logger(),
	})
	if err != nil {
		return nil, err
	}
	scfg.Logger = log.With().Str("component", "etcd").Logger()
	if d.etcd, err = store.New(scfg); err != nil {
		d.docker.Close()
		return nil, err
	}
	// One watch of the registrations: the renderer reads them, the
	// registrar compares them with the healthy backends.
	d.registrations = d.etcd.NewCache(cfg.Etcd.Prefix, log.With().Str("component", "watch").Logger())
	// What nginx serves: the renderer records it, drains and rolling
	// updates wait on it.
	served := render.NewServed()
	d.orch = orchestrator.New(orchestrator.Config{
		Spec:          cfg.Spec(),
		Docker:        d.docker,
		Store:         d.etcd,
		Registrations: d.registrations,
		LeaseTTL:      cfg.Etcd.LeaseTTL.D(),
		Version:       version,
		Pool:          served,
		Logger:        log,
	})
	proxies := nginx.New(nginx.Config{
		Docker:     d.docker,
		ConfigPath: cfg.Proxy.ConfigPath,
		MainPath:   cfg.Proxy.MainConfig,
		StatusPort: *cfg.Proxy.StatusPort,
		Logger:     log.With().Str("component", "nginx").Logger(),
	})
	d.ctrl = render.NewController(render.ControllerConfig{
		Template:    tmpl,
		Source:      d.registrations,
		Host:        d.orch,
		Sessions:    render.NginxSessions(proxies),
		Served:      served,
		Projects:    cfg.Projects(),
		Services:    cfg.ServiceNames(),
		Default:     cfg.Proxy.Service,
		Listen:      cfg.Proxy.Port,
		Dynamic:     *cfg.Proxy.Dynamic,
		StatusPort:  *cfg.Proxy.StatusPort,
		MinDebounce: cfg.Proxy.DebounceMin.D(),
		MaxDebounce: cfg.Proxy.DebounceMax.D(),
		Logger:      log.With().Str("component", "render").Logger(),
		Observe:     d.metrics.observe,
	})
	return d, nil
}

// run runs every component until ctx ends or one fails.
func (d *daemon) run(ctx context.Context) error {
	grp, gctx := errgroup.WithContext(ctx)
	// One clear line each when a dependency is down at start-up; the
	// components then retry on their own with backoff.
	log := d.log.With().Str("component", "daemon").Logger()
	grp.Go(func() error {
		return waitReachable(gctx, log.With().Str("host", d.docker.Host()).Logger(), "docker engine", d.docker.Ping)
	})
	grp.Go(func() error {
		return waitReachable(gctx, log.With().Strs("endpoints", d.cfg.Etcd.Endpoints).Logger(), "etcd",
			func(ctx context.Context) (string, error) { return "", d.etcd.Ping(ctx) })
	})
	grp.Go(func() error { return d.registrations.Start(gctx) })
	grp.Go(func() error { return d.orch.Start(gctx) })
	grp.Go(func() error { return d.ctrl.Start(gctx) })
	if listen := d.cfg.Metrics.Listen; listen != "" {
		grp.Go(func() error {
			log.Info().Str("listen", listen).Msg("serving /metrics and /healthz")
			if err := d.metrics.serve(gctx, listen, d.orch); err != nil {
				return fmt.Errorf("metrics.listen %s: %w", listen, err)
			}
			return nil
		})
	}
	return grp.Wait()
}

// close releases the adapters' connections.
func (d *daemon) close() {
	d.etcd.Close()
	d.docker.Close()
}

// waitReachable pings until what answers, saying so at each retry (with
// backoff, so ever more rarely), then one line when it answers. At start-up
// these are the lines that speak for an unreachable etcd or engine: the
// components waiting on it stay quiet until it first answers.
func waitReachable(ctx context.Context, log zerolog.Logger, what string, ping func(context.Context) (string, error)) error {
	_ = retry.Until(ctx, retry.New(500*time.Millisecond, 15*time.Second), func(ctx context.Context) error {
		version, err := ping(ctx)
		if err == nil {
			ev := log.Info()
			if version != "" {
				ev = ev.Str("version", version)
			}
			ev.Msgf("%s reachable", what)
		}
		return err
	}, func(err error, wait time.Duration, _ bool) {
		log.Warn().Err(err).Stringer("retry_in", wait).Msgf("%s unreachable; waiting for it: no container is created or changed until etcd and the docker engine both answer", what)
	})
	return nil
}
