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

	"github.com/upstreamd/upstreamd/admin"
	"github.com/upstreamd/upstreamd/certs"
	"github.com/upstreamd/upstreamd/cluster"
	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/internal/events"
	"github.com/upstreamd/upstreamd/internal/retry"
	"github.com/upstreamd/upstreamd/nginx"
	"github.com/upstreamd/upstreamd/orchestrator"
	"github.com/upstreamd/upstreamd/render"
	"github.com/upstreamd/upstreamd/spec"
	"github.com/upstreamd/upstreamd/store"
)

func newRunCmd(g *globalFlags, stderr io.Writer) *cobra.Command {
	return g.specCommand(stderr, &cobra.Command{
		Use:   "run",
		Short: "run the daemon: create and supervise the proxy and backends, register, render, reload",
		Args:  usageArgs(cobra.NoArgs),
	}, func(cmd *cobra.Command, _ []string, log zerolog.Logger, cfg *spec.Spec, files spec.Files) error {
		return runDaemon(cmd.Context(), cfg, files, log)
	})
}

// runDaemon wires the components and runs them until ctx ends.
func runDaemon(ctx context.Context, cfg *spec.Spec, files spec.Files, root zerolog.Logger) error {
	d, err := wire(cfg, files, root)
	log := root.With().Str("component", "daemon").Logger()
	if err != nil {
		return err
	}
	defer d.close()
	log.Info().Str("version", version).Str("config", cfg.File()).Str("project", cfg.Project.Name).
		Str("node", cfg.Node.Name).Strs("etcd", cfg.Node.Etcd.Endpoints).Msg("upstreamd starting")
	if warn := cfg.ACMEReach(); warn != "" {
		log.Warn().Str("publish", cfg.Project.Proxy.Publish).Strs("hosts", files.ACMEHosts).Msg(warn)
	}
	err = d.run(ctx)
	if err != nil && !errors.Is(err, context.Canceled) {
		log.Info().Msg("upstreamd stopped on an error")
		return err
	}
	log.Info().Msg("upstreamd stopped; the proxy and backends keep running")
	return nil
}

// daemon is `upstreamd run` wired: one adapter per outside system, one
// watch of the registrations, and the two loops that meet in etcd and in
// what nginx serves.
type daemon struct {
	cfg           *spec.Spec
	files         spec.Files // what the spec's files hold
	log           zerolog.Logger
	docker        *containers.Client
	etcd          *store.Client
	registrations *store.Cache
	orch          *orchestrator.Orchestrator
	ctrl          *render.Controller
	metrics       *admin.Metrics
	checks        spec.TemplateCheck // what the template renders, for nginx -t before anything is created
	proxies       *nginx.Client
	journal       *events.Journal // what happened, for the admin API and page
	history       *admin.History  // the configs nginx took
	certs         *certs.Cache    // the certificates and ACME answers in etcd; nil without TLS
	acme          *certs.Manager  // orders certificates; nil without [acme]
	acks          *certs.Acker    // acknowledges the ACME answers the proxy serves; nil unless [acme] with placement "every"
	started       time.Time

	clusterState cluster.StateCache // the nodes and leader, read from etcd for status
}

// ejections reads the running proxy's balancer ejections, for /metrics.
func (d *daemon) ejections(ctx context.Context) (nginx.Ejections, error) {
	p := d.orch.Proxy()
	if p.ID == "" {
		return nginx.Ejections{}, errors.New("no proxy running")
	}
	return d.proxies.Session(p).Ejections(ctx)
}

// wire builds the daemon from the spec.
func wire(cfg *spec.Spec, files spec.Files, log zerolog.Logger) (*daemon, error) {
	tmpl, err := cfg.LoadTemplate()
	if err != nil {
		return nil, err
	}
	// A template that cannot render stops the daemon before it touches
	// anything; what it renders is checked with nginx once Docker answers.
	checks, err := cfg.RenderChecks(tmpl, files)
	if err != nil {
		return nil, err
	}
	d := &daemon{cfg: cfg, files: files, log: log, metrics: admin.NewMetrics(), checks: checks, journal: events.New(0), started: time.Now()}
	d.history = admin.NewHistory(d.journal)
	if err := d.connect(); err != nil {
		return nil, err
	}
	// One watch of the registrations: the renderer reads them, the
	// registrar compares them with the healthy backends.
	d.registrations = d.etcd.NewCache(cfg.Project.Etcd.Prefix, log.With().Str("component", "watch").Logger())
	// What nginx serves: the renderer records it, drains and rolling
	// updates wait on it.
	served := render.NewServed()
	ocfg := cfg.OrchestratorConfig()
	ocfg.Docker = d.docker
	ocfg.Store = d.etcd
	ocfg.Registrations = d.registrations
	ocfg.Version = version
	ocfg.Mirror = render.NewServed()
	ocfg.Pool = served
	ocfg.Events = d.journal
	ocfg.Logger = log
	d.orch = orchestrator.New(ocfg)
	if cfg.ServesTLS() {
		d.certs = certs.NewCache(d.etcd, cfg.Project.Name, log.With().Str("component", "certs").Logger())
	}
	d.ctrl = render.NewController(d.controllerConfig(tmpl, served))
	if acme, ok := cfg.ACMEConfig(files); ok {
		d.wireACME(acme)
	}
	return d, nil
}

// connect opens the adapters: Docker's and etcd's clients.
func (d *daemon) connect() error {
	dcfg := d.cfg.DockerConfig()
	dcfg.Logger = d.log.With().Str("component", "docker").Logger()
	var err error
	if d.docker, err = containers.New(dcfg); err != nil {
		return err
	}
	scfg := d.cfg.StoreConfig(d.files)
	scfg.Logger = d.log.With().Str("component", "etcd").Logger()
	if d.etcd, err = store.New(scfg); err != nil {
		d.docker.Close()
		return err
	}
	return nil
}

// controllerConfig is the render controller's config: the spec's, with
// the template, the adapters, the certificates in etcd (with TLS) and the
// outcomes to the metrics and the history.
func (d *daemon) controllerConfig(tmpl *render.Template, served *render.Served) render.ControllerConfig {
	ncfg := d.cfg.NginxConfig()
	ncfg.Docker = d.docker
	ncfg.Logger = d.log.With().Str("component", "nginx").Logger()
	d.proxies = nginx.New(ncfg)
	rcfg := d.cfg.ControllerConfig(d.files)
	rcfg.Template = tmpl
	rcfg.Source = d.registrations
	rcfg.Host = d.orch
	rcfg.Sessions = render.NginxSessions(d.proxies)
	rcfg.Served = served
	rcfg.Logger = d.log.With().Str("component", "render").Logger()
	rcfg.Observe = d.observePass
	if d.certs != nil {
		rcfg.Certs = etcdCerts{d.certs, d.cfg.Project.Proxy.ConfigDir, d.files.ACMEHosts}
	}
	return rcfg
}

// run runs every component until ctx ends or one fails.
func (d *daemon) run(ctx context.Context) error {
	log := d.log.With().Str("component", "daemon").Logger()
	l, err := d.listenAdmin(log)
	if err != nil {
		return err
	}
	grp, gctx := errgroup.WithContext(ctx)
	// One clear line each when a dependency is down at start-up; the
	// components then retry on their own with backoff.
	checked := make(chan struct{}) // the template passed nginx -t
	grp.Go(func() error {
		waitReachable(gctx, log.With().Str("host", d.docker.Host()).Logger(), "docker engine", d.docker.Ping)
		if err := d.checkTemplate(gctx, log); err != nil {
			return err
		}
		close(checked)
		return nil
	})
	grp.Go(func() error {
		waitReachable(gctx, log.With().Strs("endpoints", d.cfg.Node.Etcd.Endpoints).Logger(), "etcd",
			func(ctx context.Context) (string, error) { return "", d.etcd.Ping(ctx) })
		return nil
	})
	grp.Go(func() error { return d.registrations.Start(gctx) })
	grp.Go(func() error {
		select {
		case <-gctx.Done():
			return nil
		case <-checked:
		}
		return d.orch.Start(gctx)
	})
	grp.Go(func() error { return d.ctrl.Start(gctx) })
	if d.certs != nil {
		grp.Go(func() error { return d.certs.Start(gctx) })
	}
	if d.acme != nil {
		grp.Go(func() error { return d.acme.Start(gctx) })
	}
	if d.acks != nil {
		grp.Go(func() error { return d.acks.Start(gctx) })
	}
	if l != nil {
		srv := d.adminServer()
		grp.Go(func() error {
			log.Info().Str("listen", l.Addr().String()).Bool("token", d.files.AdminToken != "").
				Msgf("admin listener: status page at http://%s/, JSON API under %s, /metrics, /healthz, /readyz", l.Addr(), admin.APIVersion)
			if err := srv.Serve(gctx, l); err != nil {
				return fmt.Errorf("admin.listen %s: %w", d.cfg.Node.Admin.Listen, err)
			}
			return nil
		})
	}
	return grp.Wait()
}

// checkTemplate runs nginx -t on what the template renders, in a
// throwaway proxy, before the orchestrator may create anything: a config
// nginx rejects ends the daemon with nginx's reason. When the check itself
// cannot run (the engine failed), it is retried with backoff.
func (d *daemon) checkTemplate(ctx context.Context, log zerolog.Logger) error {
	var rejected error
	_ = retry.Until(ctx, retry.New(time.Second, 30*time.Second), func(ctx context.Context) error {
		s, remove, err := d.checkSession(ctx, log)
		if err != nil {
			return err
		}
		defer remove()
		err = d.cfg.CheckWithNginx(ctx, s, d.checks, log)
		if errors.Is(err, nginx.ErrCheckFailed) {
			rejected = err
			return nil
		}
		return err
	}, func(err error, wait time.Duration, _ bool) {
		log.Warn().Err(err).Stringer("retry_in", wait).Msg("cannot check the template with nginx -t yet; nothing is created until it passes")
	})
	if rejected == nil && ctx.Err() == nil {
		log.Info().Str("image", d.cfg.Project.Proxy.Image).Msg("template checked with nginx -t")
	}
	return rejected
}

// checkSession returns where to run the start-up nginx -t: the project's
// running proxy when it runs proxy.image (a restart: nothing to create,
// one exec per check), else a throwaway proxy.
func (d *daemon) checkSession(ctx context.Context, log zerolog.Logger) (*nginx.Session, func(), error) {
	list, err := d.docker.List(ctx, d.cfg.Project.Name)
	if err != nil {
		return nil, nil, err
	}
	for _, c := range list {
		if c.Role == containers.RoleProxy && c.State == containers.StateRunning && c.Image == d.cfg.Project.Proxy.Image {
			return d.proxies.Session(nginx.Proxy{ID: c.ID}), func() {}, nil
		}
	}
	return throwaway(ctx, d.cfg, log)
}

// throwaway starts a throwaway proxy for nginx -t. Its container chatter
// is not logged: "container created" in a daemon's log means one of the
// project's.
func throwaway(ctx context.Context, cfg *spec.Spec, log zerolog.Logger) (*nginx.Session, func(), error) {
	dcfg := cfg.DockerConfig()
	dcfg.Logger = log.Level(zerolog.WarnLevel)
	docker, err := containers.New(dcfg)
	if err != nil {
		return nil, nil, err
	}
	ncfg := cfg.NginxConfig()
	ncfg.Logger = log
	s, remove, err := nginx.Throwaway(ctx, docker, cfg.Project.Proxy.Image, ncfg)
	if err != nil {
		docker.Close()
		return nil, nil, err
	}
	return s, func() { remove(); docker.Close() }, nil
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
func waitReachable(ctx context.Context, log zerolog.Logger, what string, ping func(context.Context) (string, error)) {
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
		state := "unreachable; waiting for it"
		if !containers.IsUnreachable(err) && !store.IsUnreachable(err) {
			state = "answers with an error; retrying" // refused credentials, say
		}
		log.Warn().Err(err).Stringer("retry_in", wait).Msgf("%s %s: no container is created or changed until etcd and the docker engine both answer", what, state)
	})
}

// etcdCerts are the certificates and ACME answers in etcd, as the render
// Controller takes them: the ACME certificates of acmeHosts only.
type etcdCerts struct {
	cache     *certs.Cache
	configDir string
	acmeHosts []string
}

func (e etcdCerts) Subscribe() <-chan struct{}    { return e.cache.Subscribe() }
func (e etcdCerts) Challenges() map[string]string { return e.cache.Challenges() }

func (e etcdCerts) Certs() []render.TLSCert {
	all := e.cache.Served(e.acmeHosts)
	out := make([]render.TLSCert, 0, len(all))
	for _, c := range all {
		out = append(out, render.NewTLSCert(e.configDir, c.Names(), []byte(c.Cert), []byte(c.Key)))
	}
	return out
}
