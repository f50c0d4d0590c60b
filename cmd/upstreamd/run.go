package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
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
	if warn := cfg.acmeReach(); warn != "" {
		log.Warn().Str("publish", cfg.Proxy.Publish).Strs("hosts", cfg.ACME.Hosts).Msg(warn)
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
	cfg           *Config
	log           zerolog.Logger
	docker        *containers.Client
	etcd          *store.Client
	registrations *store.Cache
	orch          *orchestrator.Orchestrator
	ctrl          *render.Controller
	metrics       *metrics
	checks        templateCheck // what the template renders, for nginx -t before anything is created
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

// wire builds the daemon from the config.
func wire(cfg *Config, log zerolog.Logger) (*daemon, error) {
	tmpl, err := cfg.LoadTemplate()
	if err != nil {
		return nil, err
	}
	// A template that cannot render stops the daemon before it touches
	// anything; what it renders is checked with nginx once Docker answers.
	checks, err := cfg.renderChecks(tmpl)
	if err != nil {
		return nil, err
	}
	scfg, err := cfg.StoreConfig()
	if err != nil {
		return nil, err
	}
	d := &daemon{cfg: cfg, log: log, metrics: newMetrics(), checks: checks, journal: events.New(0), started: time.Now()}
	d.history = admin.NewHistory(d.journal)
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
		Spec:           cfg.Spec(),
		Docker:         d.docker,
		Store:          d.etcd,
		Registrations:  d.registrations,
		LeaseTTL:       cfg.Etcd.LeaseTTL.D(),
		Version:        version,
		Mirror:         render.NewServed(),
		ProxyPlacement: cfg.Proxy.Placement,
		ProxyAddress:   cfg.ProxyAddress(),
		Pool:           served,
		Events:         d.journal,
		Logger:         log,
	})
	view := cfg.viewInput()
	var certSource render.Certificates
	if cfg.tls != nil {
		d.certs = certs.NewCache(d.etcd, cfg.Project, log.With().Str("component", "certs").Logger())
		certSource = etcdCerts{d.certs, cfg.Proxy.ConfigDir, cfg.acmeServed()}
	}
	ncfg := cfg.nginxConfig(log.With().Str("component", "nginx").Logger())
	ncfg.Docker = d.docker
	proxies := nginx.New(ncfg)
	d.proxies = proxies
	d.ctrl = render.NewController(render.ControllerConfig{
		Template:    tmpl,
		Source:      d.registrations,
		Host:        d.orch,
		Sessions:    render.NginxSessions(proxies),
		Served:      served,
		View:        view,
		Certs:       certSource,
		ConfigDir:   cfg.Proxy.ConfigDir,
		MinDebounce: cfg.Proxy.DebounceMin.D(),
		MaxDebounce: cfg.Proxy.DebounceMax.D(),
		Logger:      log.With().Str("component", "render").Logger(),
		Observe: func(o render.Outcome) {
			d.metrics.observe(o)
			d.history.Observe(o)
		},
	})
	if cfg.acmeOn() {
		var proxyNodes func(context.Context) ([]string, error)
		if cfg.Proxy.Placement == orchestrator.PlacementEvery {
			// Every node runs a proxy the CA may reach: each acknowledges
			// the answers its proxy serves, and the orderer waits for all.
			proxyNodes = func(ctx context.Context) ([]string, error) { return cluster.LiveNodes(ctx, d.etcd, cfg.Project) }
			d.acks = certs.NewAcker(certs.AckerConfig{Project: cfg.Project, Node: cfg.Node, Cache: d.certs, Store: d.etcd,
				Serves: func(ctx context.Context, token, keyAuth string) error {
					return d.ctrl.WaitAnswer(ctx, "", token, keyAuth)
				},
				Logger: log.With().Str("component", "acme").Logger()})
		}
		d.acme = certs.NewManager(certs.ManagerConfig{
			Project: cfg.Project, Node: cfg.Node,
			Directory: cfg.ACME.Directory, Email: cfg.ACME.Email, Roots: cfg.acmeRoots, Hosts: cfg.ACME.Hosts,
			Store: d.etcd, Cache: d.certs,
			CanOrder: func() bool { return d.orch.Proxy().ID != "" }, CanOrderChanged: d.orch.SubscribeProxy(),
			WaitAnswer: d.ctrl.WaitAnswer,
			ProxyNodes: proxyNodes,
			Observe:    d.metrics.observeOrder,
			Logger:     log.With().Str("component", "acme").Logger(),
		})
	}
	return d, nil
}

// servedCerts lists the certificates the proxy serves, files first, for
// the metrics.
func (d *daemon) servedCerts() []servedCert {
	out := slices.Clip(d.cfg.fileCerts)
	if d.certs != nil {
		for _, c := range d.certs.Served(d.cfg.acmeServed()) {
			out = append(out, servedCert{names: c.Names(), source: c.Source, notAfter: c.Leaf.NotAfter})
		}
	}
	return out
}

// run runs every component until ctx ends or one fails.
func (d *daemon) run(ctx context.Context) error {
	log := d.log.With().Str("component", "daemon").Logger()
	token, err := d.cfg.AdminToken()
	if err != nil {
		return fmt.Errorf("admin.token_file: %w", err)
	}
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
		waitReachable(gctx, log.With().Strs("endpoints", d.cfg.Etcd.Endpoints).Logger(), "etcd",
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
		srv := d.adminServer(token)
		grp.Go(func() error {
			log.Info().Str("listen", l.Addr().String()).Bool("token", token != "").
				Msgf("admin listener: status page at http://%s/, JSON API under %s, /metrics, /healthz, /readyz", l.Addr(), admin.APIVersion)
			if err := srv.Serve(gctx, l); err != nil {
				return fmt.Errorf("admin.listen %s: %w", d.cfg.Admin.Listen, err)
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
		err = d.cfg.checkWithNginx(ctx, s, d.checks, log)
		if errors.Is(err, nginx.ErrCheckFailed) {
			rejected = err
			return nil
		}
		return err
	}, func(err error, wait time.Duration, _ bool) {
		log.Warn().Err(err).Stringer("retry_in", wait).Msg("cannot check the template with nginx -t yet; nothing is created until it passes")
	})
	if rejected == nil && ctx.Err() == nil {
		log.Info().Str("image", d.cfg.Proxy.Image).Msg("template checked with nginx -t")
	}
	return rejected
}

// checkSession returns where to run the start-up nginx -t: the project's
// running proxy when it runs proxy.image (a restart: nothing to create,
// one exec per check), else a throwaway proxy.
func (d *daemon) checkSession(ctx context.Context, log zerolog.Logger) (*nginx.Session, func(), error) {
	list, err := d.docker.List(ctx, d.cfg.Project)
	if err != nil {
		return nil, nil, err
	}
	for _, c := range list {
		if c.Role == containers.RoleProxy && c.State == containers.StateRunning && c.Image == d.cfg.Proxy.Image {
			return d.proxies.Session(nginx.Proxy{ID: c.ID}), func() {}, nil
		}
	}
	return d.cfg.throwaway(ctx, log)
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

// acmeDir is where, under proxy.config_dir, the proxy serves the ACME
// HTTP-01 answers from (/.well-known/acme-challenge/<token>).
const acmeDir = "upstreamd-acme"

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
