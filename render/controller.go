package render

import (
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/internal/loop"
	"github.com/upstreamd/upstreamd/nginx"
	"github.com/upstreamd/upstreamd/store"
)

// Sentinel errors of a pass, checked with errors.Is.
var (
	// ErrNotReady: no snapshot of the registrations or no running proxy
	// yet. Not retried: the arrival of either wakes the Controller.
	ErrNotReady = errors.New("not ready")
	// ErrWouldEmpty: the registrations would empty a pool while this node
	// has healthy backends for it; the pass was refused and is retried.
	ErrWouldEmpty = errors.New("refusing to empty a pool")
)

// source supplies validated registrations (a store.Cache).
type source interface {
	// Subscribe returns a channel that receives after each change of the
	// snapshot; several changes may collapse into one.
	Subscribe() <-chan struct{}
	Snapshot() (store.Snapshot, bool)
}

var _ source = (*store.Cache)(nil)

// Host is what the Controller needs from the orchestrator, which runs the
// proxy and probes this node's backends.
type Host interface {
	// Ready is closed once etcd reflects this node's backends. Until then
	// etcd may hold a previous daemon's registrations, or none after it
	// revoked its lease: rendering them could empty nginx's pools.
	Ready() <-chan struct{}
	// Proxy returns the running proxy (its ID is empty when there is none).
	Proxy() nginx.Proxy
	// SubscribeProxy returns a channel that receives after each change of
	// the running proxy.
	SubscribeProxy() <-chan struct{}
	// HealthyBackends returns how many backends of service this node finds
	// healthy. A pass that would leave that pool empty is refused while it
	// is non-zero: etcd and this node disagree, so the empty pool is not
	// real (a key deleted by hand, a revoked lease).
	HealthyBackends(service string) int
}

// Session is one proxy container as the Controller uses it (an
// *nginx.Session).
type Session interface {
	HasStatus() bool
	// Admin is the address the proxy sees the daemon at ("" if unknown).
	Admin() string
	Deliver(ctx context.Context, cfg []byte) (changed bool, err error)
	// WriteFiles makes sure the proxy has the files (certificates), by
	// path; files are named by their content, so none the live config
	// reads changes.
	WriteFiles(ctx context.Context, files map[string][]byte) error
	// WritePublicFiles is WriteFiles for files nginx's workers serve
	// (ACME challenge answers).
	WritePublicFiles(ctx context.Context, files map[string][]byte) error
	// Prune removes the files directly in dirs that keep does not name,
	// and returns their paths. Called once a config is live and
	// confirmed, with keep naming every file it reads.
	Prune(ctx context.Context, dirs []string, keep map[string]bool) ([]string, error)
	PushPools(ctx context.Context, body []byte) error
	WaitConfig(ctx context.Context, hash string) (time.Duration, error)
}

var _ Session = (*nginx.Session)(nil)

// session is the name the Controller's state uses.
type session = Session

// Sessions starts a Session with a proxy container.
type Sessions func(nginx.Proxy) Session

// NginxSessions returns the Sessions of an nginx.Client.
func NginxSessions(c *nginx.Client) Sessions {
	return func(p nginx.Proxy) Session { return c.Session(p) }
}

// Certificates are what changes at run time besides the registrations:
// the certificates kept in etcd and the ACME HTTP-01 answers.
type Certificates interface {
	// Subscribe returns a channel that receives after each change.
	Subscribe() <-chan struct{}
	// Certs are served after the View's own (the configured files).
	Certs() []TLSCert
	// Challenges are the HTTP-01 answers, by token.
	Challenges() map[string]string
}

// Defaults for ControllerConfig.
const (
	DefaultMinDebounce = 20 * time.Millisecond
	DefaultMaxDebounce = 250 * time.Millisecond
)

// ControllerConfig configures a Controller.
type ControllerConfig struct {
	// Template renders the config.
	Template *Template
	// Source supplies registrations (a store.Cache).
	Source source
	// Host says where the proxy runs and what this node finds healthy.
	Host Host
	// Sessions starts a Session with each proxy container.
	Sessions Sessions
	// Served is where the Controller records what nginx serves.
	Served *Served
	// View is what every pass builds its View from; each pass fills in
	// the Snapshot and the Admin address. Dynamic needs StatusPort.
	View ViewInput
	// MinDebounce is the quiet time awaited after a change before rendering;
	// MaxDebounce bounds the wait while changes keep coming. Zero means the
	// defaults (20 ms and 250 ms).
	MinDebounce, MaxDebounce time.Duration
	// Logger for render and reload lines.
	Logger zerolog.Logger
	// Observe, when set, is told about every pass.
	Observe func(Outcome)
	// Certs, when set, adds certificates to View.TLS and HTTP-01 answers
	// under View.ACME.
	Certs Certificates
	// ConfigDir is the proxy's config dir, under which certificate files
	// are delivered (TLSDir). Once a config is live and confirmed, the
	// files there it does not name, and the HTTP-01 answers under
	// View.ACME whose challenge is no longer in Certs, are removed.
	// Empty: nothing is removed.
	ConfigDir string
}

// Outcome describes one render pass, for metrics and tests.
type Outcome struct {
	// Result is what the pass came to, decided from what follows.
	Result   Result
	Revision int64
	Backends int
	Changed  bool // a new config went live and nginx was sent HUP
	Pushed   bool // new pools went to the dynamic balancer
	// Err is why the pass failed: ErrNotReady, ErrWouldEmpty, a
	// *RenderError, an *nginx.CheckError, or what failed on the way to
	// the proxy.
	Err  error
	Took time.Duration
	// Confirmed is how long nginx took, after HUP, to answer with the new
	// config's hash; zero when not confirmed.
	Confirmed time.Duration
	// Config is what the pass rendered (template and trailer), Hash the
	// rendered template's hash, and Pools the backends of each service
	// (addresses, sorted as rendered); empty when nothing was rendered.
	Config []byte
	Hash   string
	Pools  map[string][]string
}

// Controller renders and delivers whenever the registrations or the proxy
// change, and records what nginx serves.
type Controller struct {
	cfg ControllerConfig
	log zerolog.Logger
	// Only the Start goroutine touches these.
	state   proxyState
	applied *View // the last view nginx took (its pools, its config)

	answers answers // the HTTP-01 answers the proxy has
}

// NewController returns a Controller.
func NewController(cfg ControllerConfig) *Controller {
	if cfg.MinDebounce <= 0 {
		cfg.MinDebounce = DefaultMinDebounce
	}
	if cfg.MaxDebounce < cfg.MinDebounce {
		cfg.MaxDebounce = max(DefaultMaxDebounce, cfg.MinDebounce)
	}
	if cfg.Served == nil {
		cfg.Served = NewServed()
	}
	return &Controller{cfg: cfg, log: cfg.Logger}
}

// Served returns where the Controller records what nginx serves.
func (c *Controller) Served() *Served { return c.cfg.Served }

// Start renders once the Host is ready, then whenever the registrations,
// the proxy or the certificates change, until ctx ends; it returns nil
// then. A change after a quiet spell goes out at once (a killed backend
// leaves the pool without waiting); what follows it within a pass is
// collected by the debounce, so a burst still makes few passes. A pass
// that failed on the way to nginx is tried again with backoff.
func (c *Controller) Start(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case <-c.cfg.Host.Ready():
	}
	triggers := []<-chan struct{}{c.cfg.Source.Subscribe(), c.cfg.Host.SubscribeProxy()}
	if c.cfg.Certs != nil {
		triggers = append(triggers, c.cfg.Certs.Subscribe())
	}
	l := loop.New(loop.Config{
		Triggers: triggers,
		Debounce: loop.Debounce{Min: c.cfg.MinDebounce, Max: c.cfg.MaxDebounce},
		Initial:  100 * time.Millisecond, Max: 5 * time.Second,
		Log: c.log, Failed: "render pass failed; will retry", Level: zerolog.WarnLevel,
		Said: func(err error) bool { return errors.Is(err, ErrWouldEmpty) }, // the pass said why
	})
	return l.Run(ctx, func(ctx context.Context) (loop.Result, error) {
		o := c.pass(ctx)
		if c.cfg.Observe != nil {
			c.cfg.Observe(o)
		}
		if !retryable(o) {
			return loop.Result{}, nil
		}
		return loop.Result{}, o.Err
	})
}

// retryable reports whether a pass that ended as o is tried again after
// a backoff: not when it succeeded, when it waits for something whose
// arrival wakes the Controller anyway (ResultWaiting), or when the same
// input must fail the same way (ResultRejected, a template's error).
func retryable(o Outcome) bool {
	var re *RenderError
	return (o.Result == ResultRefused || o.Result == ResultError) && !errors.As(o.Err, &re)
}

// pass renders the current registrations and makes nginx serve them, as
// plan decides, and says what it came to.
func (c *Controller) pass(ctx context.Context) Outcome {
	o, cand := c.attempt(ctx)
	o.Result = resultOf(o)
	c.logPass(o, cand)
	return o
}

// attempt is a pass but for its Result: it returns the candidate it
// rendered (none when it stopped before).
func (c *Controller) attempt(ctx context.Context) (Outcome, candidate) {
	start := time.Now()
	snap, ok := c.cfg.Source.Snapshot()
	if !ok {
		c.log.Debug().Msg("no registrations loaded from etcd yet; not rendering")
		return Outcome{Err: fmt.Errorf("%w: no registrations loaded from etcd yet", ErrNotReady)}, candidate{}
	}
	o := Outcome{Revision: snap.Revision, Backends: len(snap.Entries)}
	proxy := c.cfg.Host.Proxy()
	if proxy.ID == "" {
		c.log.Debug().Msg("no running proxy yet; not delivering")
		o.Err = fmt.Errorf("%w: no running proxy", ErrNotReady)
		return o, candidate{}
	}
	if proxy != c.state.proxy {
		c.state = newProxyState(proxy, c.cfg.Sessions(proxy), c.state)
		c.answers.reset()
	}
	answered, err := c.writeAnswers(ctx)
	if err != nil {
		o.Err, o.Took = err, time.Since(start)
		return o, candidate{}
	}
	cand, guarded := c.candidate(snap, c.state.session.Admin())
	if cand.config == nil {
		o.Err, o.Took = guarded, time.Since(start)
		return o, candidate{}
	}
	o.Config, o.Hash, o.Pools = cand.config, cand.hash, poolsOf(cand.view)
	steps := plan(c.state, cand)
	if len(steps) > 0 {
		o.Err = c.apply(ctx, steps, cand, &o)
	}
	if o.Err == nil {
		// The answers are served once a config with their location is.
		c.answers.set(answered)
		if slices.Contains(steps, stepDeliver) {
			// cand is live and confirmed: what it does not name can go.
			c.prune(ctx, cand, answered)
		}
		o.Err = guarded // applied, but a pool was kept: look again soon
	}
	o.Took = time.Since(start)
	return o, cand
}

// candidate renders snap for a proxy that sees the daemon at admin. A pool it would empty while this node finds
// healthy backends of that service keeps its backends from the last view
// nginx took (guardEmptying); the other services go ahead. The error is
// then ErrWouldEmpty, with the candidate usable: the pass is retried.
func (c *Controller) candidate(snap store.Snapshot, admin string) (candidate, error) {
	in := c.cfg.View
	in.Snapshot, in.Admin = snap, admin
	if c.cfg.Certs != nil && in.TLS != nil {
		t := *in.TLS
		t.Certs = append(slices.Clip(t.Certs), c.cfg.Certs.Certs()...)
		in.TLS = &t
	}
	view := NewView(in)
	guarded := c.guardEmptying(&view)
	if guarded != nil && c.applied == nil {
		// Nothing is known to keep: refuse the whole pass.
		c.log.Warn().Err(guarded).Int64("revision", snap.Revision).Msg("not applying these registrations; nginx keeps its pools")
		return candidate{}, guarded
	}
	if guarded != nil {
		c.log.Warn().Err(guarded).Int64("revision", snap.Revision).Msg("keeping that pool as nginx has it; applying the others")
	}
	out, err := Render(c.cfg.Template, view)
	if err != nil {
		// Terminal for this input; the live config stays.
		c.log.Error().Err(err).Int64("revision", snap.Revision).Msg("render failed; live config unchanged")
		return candidate{}, err
	}
	cand := candidate{view: view, revision: snap.Revision, config: Finish(out, view), hash: Hash(out)}
	if c.cfg.View.Dynamic {
		cand.pools = string(PoolsBody(0, view))
	}
	return cand, guarded
}

// guardEmptying finds the services of v with an empty pool while this node
// still finds healthy backends of them: etcd and this node disagree (a key
// deleted by hand, a revoked lease), and the registrar is about to put
// them back. Each keeps the backends of the last view that went live; the
// error, matching ErrWouldEmpty, names them.
func (c *Controller) guardEmptying(v *View) error {
	var errs []error
	for i, s := range v.Services {
		if len(s.Backends) > 0 || !s.Configured {
			continue
		}
		if n := c.cfg.Host.HealthyBackends(s.Name); n > 0 {
			errs = append(errs, fmt.Errorf("%w of service %s: etcd lists no backend but %d are healthy here", ErrWouldEmpty, s.Name, n))
			if c.applied != nil {
				v.Services[i].Backends = c.applied.Service(s.Name).Backends
			}
		}
	}
	return errors.Join(errs...)
}

// apply carries out the steps of a plan, recording in o and in the proxy
// state what went through; nginx serves the view once every step did.
func (c *Controller) apply(ctx context.Context, steps []step, cand candidate, o *Outcome) error {
	st := &c.state
	for _, s := range steps {
		var err error
		switch s {
		case stepTryPush:
			if err = c.push(ctx, cand, o); errors.Is(err, nginx.ErrNoStatusServer) {
				err = nil // no pools API live yet: stepPush, after the new config
			}
		case stepDeliver:
			if err = st.session.WriteFiles(ctx, cand.view.Files()); err != nil {
				break
			}
			o.Changed, err = st.session.Deliver(ctx, cand.config)
			if errors.Is(err, nginx.ErrCheckFailed) {
				st.rejected = cand.hash
				if o.Pushed { // the last good config serves the new pools
					c.cfg.Served.update(cand.view)
				}
			} else if err == nil {
				st.rejected = ""
			}
		case stepConfirm:
			if st.session.HasStatus() {
				o.Confirmed, err = st.session.WaitConfig(ctx, cand.hash)
			}
			if err == nil {
				st.liveHash, st.poolsAPI = cand.hash, st.poolsAPI || cand.pools != ""
			}
		case stepPush:
			if !o.Pushed {
				err = c.push(ctx, cand, o)
			}
		}
		if err != nil {
			return err
		}
	}
	c.cfg.Served.update(cand.view)
	c.applied = &cand.view
	return nil
}

// prune removes from the proxy the certificate files that cand, the config
// now live and confirmed, does not name, and the HTTP-01 answers other than
// answered (those of the challenges in etcd). It runs in the pass, after
// the config went live: no other config is being checked then, and one
// nginx rejected never gets here, so every file the running nginx reads
// stays. A failure is logged; the next pass that delivers tries again.
func (c *Controller) prune(ctx context.Context, cand candidate, answered []string) {
	if c.cfg.ConfigDir == "" {
		return
	}
	dirs := []string{path.Join(c.cfg.ConfigDir, TLSDir)}
	keep := map[string]bool{}
	for p := range cand.view.Files() {
		keep[p] = true
	}
	if root := c.cfg.View.ACME; root != "" {
		dirs = append(dirs, path.Dir(ChallengePath(root, "token")))
		for _, t := range answered {
			keep[ChallengePath(root, t)] = true
		}
	}
	removed, err := c.state.session.Prune(ctx, dirs, keep)
	if len(removed) > 0 {
		c.log.Info().Strs("removed", removed).Str("proxy", c.state.proxy.Short()).
			Msg("removed files from the proxy that the live config and the ACME challenges no longer name")
	}
	if err != nil {
		c.log.Warn().Err(err).Str("proxy", c.state.proxy.Short()).Msg("could not remove old certificate or answer files; trying again at the next delivery")
	}
}

// push sends the candidate's pools to the Lua balancer.
func (c *Controller) push(ctx context.Context, cand candidate, o *Outcome) error {
	if err := c.state.session.PushPools(ctx, cand.body()); err != nil {
		return err
	}
	c.state.pushed, c.state.poolsAPI, o.Pushed = cand.pools, true, true
	return nil
}

// logPass says what a pass that reached the proxy did: one line when
// something changed or nginx rejected the config.
func (c *Controller) logPass(o Outcome, cand candidate) {
	switch o.Result {
	case ResultRejected:
		c.log.Error().Err(o.Err).Str("config", cand.hash).Int64("revision", o.Revision).
			Msg("nginx -t rejected the rendered config; the last good config stays live")
		return
	case ResultReload, ResultPush:
	default:
		return
	}
	ev := c.log.Info().Str("config", cand.hash).Int64("revision", o.Revision).Stringer("took", o.Took)
	for _, s := range cand.view.Services {
		ev = ev.Int("backends_"+s.Name, len(s.Backends))
	}
	ev = ev.Str("proxy", c.state.proxy.Short())
	switch {
	case o.Result == ResultReload:
		ev.Stringer("reload_confirmed_after", o.Confirmed).Bool("pools_pushed", o.Pushed).Msg("nginx reloaded with new config")
	case cand.hash == c.state.rejected:
		ev.Msg("pools updated; the rendered config stays rejected")
	default:
		ev.Msg("pools updated without reload")
	}
}

// poolsOf lists the backend addresses of each service of v.
func poolsOf(v View) map[string][]string {
	out := make(map[string][]string, len(v.Services))
	for _, s := range v.Services {
		addrs := make([]string, 0, len(s.Backends))
		for _, b := range s.Backends {
			addrs = append(addrs, b.Addr)
		}
		out[s.Name] = addrs
	}
	return out
}
