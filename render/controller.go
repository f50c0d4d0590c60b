package render

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/store"
)

// ErrNoProxy: there is no running proxy container to deliver to yet.
var ErrNoProxy = errors.New("no running proxy container")

// source supplies validated registrations.
type source interface {
	Changed() <-chan struct{}
	Snapshot() (store.Snapshot, bool)
}

var _ source = (*store.Cache)(nil)

// deliverer puts a config live in a proxy.
type deliverer interface {
	Deliver(ctx context.Context, id string, cfg []byte) (changed bool, err error)
	Token(ctx context.Context, id string) (string, error)
	Forget(id string)
}

var _ deliverer = (*Deliverer)(nil)

// statusAPI reaches upstreamd's status server inside the proxy.
type statusAPI interface {
	PushPools(ctx context.Context, addr, token string, body []byte) error
	ConfigHash(ctx context.Context, addr string) (string, error)
}

var _ statusAPI = (*StatusClient)(nil)

// Proxy is the running proxy container.
type Proxy struct {
	ID string
	// IP is its address on the managed network, where the status server
	// listens; empty when unknown.
	IP string
}

// ProxyFunc returns the running proxy container, or an error matching
// ErrNoProxy when there is none.
type ProxyFunc func(ctx context.Context) (Proxy, error)

// Defaults for ControllerConfig.
const (
	DefaultMinDebounce    = 20 * time.Millisecond
	DefaultMaxDebounce    = 250 * time.Millisecond
	DefaultConfirmTimeout = 5 * time.Second
)

// ControllerConfig configures a Controller.
type ControllerConfig struct {
	// Template renders the config.
	Template *Template
	// Source supplies registrations (a store.Cache).
	Source source
	// Deliverer puts configs live.
	Deliverer deliverer
	// Status reaches the status server; needed when StatusPort is set.
	Status statusAPI
	// Proxy finds the proxy container.
	Proxy ProxyFunc
	// Services, Default, Listen, Dynamic and StatusPort complete the View
	// (see ViewInput). Dynamic needs StatusPort.
	Services   []string
	Default    string
	Listen     int
	Dynamic    bool
	StatusPort int
	// MinDebounce is the quiet time awaited after a change before rendering;
	// MaxDebounce bounds the wait while changes keep coming. Zero means the
	// defaults (20 ms and 250 ms).
	MinDebounce, MaxDebounce time.Duration
	// ConfirmTimeout bounds the wait for nginx to run a new config after
	// HUP; zero means 5 s.
	ConfirmTimeout time.Duration
	// Ready, when set, is awaited before the first pass: until the
	// orchestrator has registered this node's backends, etcd may hold no
	// registrations at all (a previous daemon revoked its lease).
	Ready <-chan struct{}
	// HealthyHere, when set, returns how many backends of a service this
	// node finds healthy. A pass that would leave a pool empty is refused
	// while it is non-zero: etcd and this node disagree, so the empty pool
	// is not real (a key changed by hand, a bug, a revoked lease).
	HealthyHere func(service string) int
	// Logger for render and reload lines.
	Logger zerolog.Logger
	// Observe, when set, is told about each pass that delivered or failed.
	Observe func(Outcome)
}

// Outcome describes one render pass, for metrics and tests.
type Outcome struct {
	Revision int64
	Backends int
	Changed  bool // a new config went live and nginx was sent HUP
	Pushed   bool // new pools went to the dynamic balancer
	Err      error
	Took     time.Duration
	// Confirmed is how long nginx took, after HUP, to answer with the new
	// config's hash; zero when not confirmed.
	Confirmed time.Duration
}

// Controller renders and delivers whenever registrations or the proxy
// change, and knows which backends nginx serves.
type Controller struct {
	cfg  ControllerConfig
	log  zerolog.Logger
	kick chan struct{}

	// Only the Start goroutine touches these. All but poolsOn are about
	// the proxy container proxyID and reset when it changes or on a Kick.
	proxyID  string
	rejected string // hash of the last config nginx rejected
	pushed   string // pools last pushed (without version)
	liveHash string // hash of the config confirmed running
	// poolsOn is the proxy container where a push went through: the
	// config it runs has the pools API. A Kick does not reset it (a
	// restart in place keeps the config).
	poolsOn string

	mu      sync.Mutex
	resync  bool                       // Kick: verify everything again
	served  map[string]map[string]bool // service → addresses nginx serves
	changed chan struct{}              // closed when served changes
}

// NewController returns a Controller.
func NewController(cfg ControllerConfig) *Controller {
	if cfg.MinDebounce <= 0 {
		cfg.MinDebounce = DefaultMinDebounce
	}
	if cfg.MaxDebounce < cfg.MinDebounce {
		cfg.MaxDebounce = max(DefaultMaxDebounce, cfg.MinDebounce)
	}
	if cfg.ConfirmTimeout <= 0 {
		cfg.ConfirmTimeout = DefaultConfirmTimeout
	}
	return &Controller{cfg: cfg, log: cfg.Logger, kick: make(chan struct{}, 1), changed: make(chan struct{})}
}

// Kick asks for a pass that verifies everything again without waiting for a
// registration change: after the proxy or its data volume was (re)created
// or restarted.
func (c *Controller) Kick() {
	c.mu.Lock()
	c.resync = true
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// Serves reports whether nginx is known to send traffic for service to addr.
func (c *Controller) Serves(service, addr string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.served[service][addr]
}

// WaitServes waits until Serves(service, addr) == want, or ctx ends.
func (c *Controller) WaitServes(ctx context.Context, service, addr string, want bool) error {
	for {
		c.mu.Lock()
		ok := c.served[service][addr] == want
		ch := c.changed
		c.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			verb := "stop serving"
			if want {
				verb = "serve"
			}
			return fmt.Errorf("wait for nginx to %s %s of %s: %w", verb, addr, service, ctx.Err())
		case <-ch:
		}
	}
}

func (c *Controller) setServed(v View) {
	served := make(map[string]map[string]bool, len(v.Services))
	for _, s := range v.Services {
		set := make(map[string]bool, len(s.Backends))
		for _, b := range s.Backends {
			set[b.Addr] = true
		}
		served[s.Name] = set
	}
	c.mu.Lock()
	c.served = served
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
}

// Start runs until ctx ends; it returns nil then.
func (c *Controller) Start(ctx context.Context) error {
	bo := backoff.NewExponentialBackOff(backoff.WithInitialInterval(100*time.Millisecond),
		backoff.WithMaxInterval(5*time.Second), backoff.WithMaxElapsedTime(0))
	if c.cfg.Ready != nil {
		select {
		case <-ctx.Done():
			return nil
		case <-c.cfg.Ready:
		}
	}
	var retry <-chan time.Time
	for first := true; ; {
		// Wait for a trigger (the first pass needs none).
		if !first {
			select {
			case <-ctx.Done():
				return nil
			case <-c.cfg.Source.Changed():
			case <-c.kick:
			case <-retry:
			}
		}
		first = false
		retry = nil
		if !c.debounce(ctx) {
			return nil
		}
		err := c.pass(ctx)
		switch {
		case err == nil || errors.Is(err, ErrCheckFailed) || errors.Is(err, errNotReady):
			bo.Reset()
		case ctx.Err() != nil:
			return nil
		default:
			d := bo.NextBackOff()
			if !errors.Is(err, ErrWouldEmpty) { // pass already said why
				c.log.Warn().Err(err).Dur("retry_in", d).Msg("render pass failed; will retry")
			}
			retry = time.After(d)
		}
	}
}

// debounce waits until no trigger came for MinDebounce, or MaxDebounce
// passed since the first. It reports false when ctx ended.
func (c *Controller) debounce(ctx context.Context) bool {
	deadline := time.NewTimer(c.cfg.MaxDebounce)
	defer deadline.Stop()
	quiet := time.NewTimer(c.cfg.MinDebounce)
	defer quiet.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-deadline.C:
			return true
		case <-quiet.C:
			return true
		case <-c.cfg.Source.Changed():
		case <-c.kick:
		}
		if !quiet.Stop() {
			select {
			case <-quiet.C:
			default:
			}
		}
		quiet.Reset(c.cfg.MinDebounce)
	}
}

var errNotReady = errors.New("not ready")

// pass renders the current registrations and makes nginx serve them: new
// pools are pushed to the dynamic balancer (no reload), a changed config is
// delivered (stage, check, swap, HUP) and its reload confirmed.
func (c *Controller) pass(ctx context.Context) error {
	start := time.Now()
	snap, ok := c.cfg.Source.Snapshot()
	if !ok {
		c.log.Debug().Msg("no registrations loaded from etcd yet; not rendering")
		return errNotReady
	}
	view := NewView(ViewInput{Snapshot: snap, Services: c.cfg.Services, Default: c.cfg.Default,
		Listen: c.cfg.Listen, Dynamic: c.cfg.Dynamic, StatusPort: c.cfg.StatusPort})
	out, err := Render(c.cfg.Template, view)
	if err != nil {
		// A template error is terminal for this input; the live config stays.
		c.log.Error().Err(err).Int64("revision", snap.Revision).Msg("render failed; live config unchanged")
		c.observe(Outcome{Revision: snap.Revision, Backends: len(snap.Entries), Err: err, Took: time.Since(start)})
		return nil
	}
	if err := c.guardEmptying(view); err != nil {
		c.log.Warn().Err(err).Int64("revision", snap.Revision).Msg("not applying these registrations; nginx keeps its pools")
		c.observe(Outcome{Revision: snap.Revision, Backends: len(snap.Entries), Err: err, Took: time.Since(start)})
		return err
	}
	hash := Hash(out)
	full := Finish(out, view)
	proxy, err := c.cfg.Proxy(ctx)
	if errors.Is(err, ErrNoProxy) {
		c.log.Debug().Msg("no running proxy yet; not delivering")
		return errNotReady
	}
	if err != nil {
		return err
	}
	c.mu.Lock()
	resync := c.resync
	c.resync = false
	c.mu.Unlock()
	if proxy.ID != c.proxyID {
		// Another container: what nginx rejected elsewhere may pass here.
		c.rejected = ""
	}
	if resync || proxy.ID != c.proxyID {
		c.cfg.Deliverer.Forget(proxy.ID)
		c.pushed, c.liveHash = "", ""
		c.proxyID = proxy.ID
	}
	statusAddr := ""
	if c.cfg.StatusPort > 0 && proxy.IP != "" {
		statusAddr = net.JoinHostPort(proxy.IP, strconv.Itoa(c.cfg.StatusPort))
	}
	o := Outcome{Revision: snap.Revision, Backends: len(snap.Entries)}
	if hash == c.rejected {
		// nginx already said no to exactly these bytes. The last good
		// config still runs the pools API: membership keeps flowing.
		// Whether it went live here or was running when upstreamd
		// started, a push that went through says it has that API.
		if !c.cfg.Dynamic || statusAddr == "" || (c.liveHash == "" && c.poolsOn != proxy.ID) {
			return nil
		}
		if pools := string(PoolsBody(0, view)); pools != c.pushed {
			if err := c.push(ctx, proxy, statusAddr, PoolsBody(snap.Revision, view)); err != nil {
				return err
			}
			c.pushed = pools
			c.setServed(view)
			o.Pushed, o.Took = true, time.Since(start)
			c.log.Info().Int64("revision", snap.Revision).Msg("pools updated; the rendered config stays rejected")
			c.observe(o)
		}
		return nil
	}

	pools := ""
	if c.cfg.Dynamic {
		pools = string(PoolsBody(0, view))
	}
	// Push first, so that a config that names a new service finds its pool;
	// when the live config has no pools API yet, push after delivering.
	// (pools is never empty: it has at least the version line.)
	needPush := c.cfg.Dynamic && pools != c.pushed
	if needPush {
		for _, b := range DynamicSkips(view) {
			c.log.Warn().Str("service", b.Service).Str("key", b.Key).
				Msg("dynamic pools take IP addresses only; this backend, registered by host name, is left out")
		}
	}
	if needPush && statusAddr != "" {
		if err := c.push(ctx, proxy, statusAddr, PoolsBody(snap.Revision, view)); err == nil {
			needPush, o.Pushed = false, true
			c.pushed = pools
		} else if !errors.Is(err, ErrNoStatusServer) {
			return err
		}
	}

	changed, err := c.cfg.Deliverer.Deliver(ctx, proxy.ID, full)
	if errors.Is(err, ErrCheckFailed) {
		c.rejected = hash
		if o.Pushed { // the pools went to the last good config, which serves them
			c.setServed(view)
		}
		o.Err, o.Took = err, time.Since(start)
		c.log.Error().Err(err).Str("config", hash).Int64("revision", snap.Revision).
			Msg("nginx -t rejected the rendered config; the last good config stays live")
		c.observe(o)
		return err
	}
	if err != nil {
		return err
	}
	c.rejected = ""
	o.Changed = changed
	if (changed || c.liveHash != hash) && statusAddr != "" {
		took, err := c.confirm(ctx, statusAddr, hash)
		if err != nil {
			return err
		}
		o.Confirmed = took
	}
	c.liveHash = hash
	if needPush {
		if statusAddr == "" {
			return fmt.Errorf("dynamic pools: the proxy's address on the network is unknown")
		}
		if err := c.push(ctx, proxy, statusAddr, PoolsBody(snap.Revision, view)); err != nil {
			return err
		}
		o.Pushed = true
		c.pushed = pools
	}
	c.setServed(view)
	o.Took = time.Since(start)
	if changed || o.Pushed {
		ev := c.log.Info().Str("config", hash).Int64("revision", snap.Revision).Dur("took", o.Took)
		for _, s := range view.Services {
			ev = ev.Int("backends_"+s.Name, len(s.Backends))
		}
		ev = ev.Str("proxy", shortID(proxy.ID))
		switch {
		case changed:
			ev.Dur("reload_confirmed_after", o.Confirmed).Bool("pools_pushed", o.Pushed).Msg("nginx reloaded with new config")
		default:
			ev.Msg("pools updated without reload")
		}
	}
	c.observe(o)
	return nil
}

// ErrWouldEmpty: the registrations would empty a pool while this node has
// healthy backends for it; the pass was refused and is retried.
var ErrWouldEmpty = errors.New("refusing to empty a pool")

// guardEmptying refuses a view with an empty pool while this node still
// finds healthy backends of that service: etcd and this node disagree, and
// the registrar is about to put them back.
func (c *Controller) guardEmptying(v View) error {
	if c.cfg.HealthyHere == nil {
		return nil
	}
	for _, s := range v.Services {
		if len(s.Backends) > 0 {
			continue
		}
		if n := c.cfg.HealthyHere(s.Name); n > 0 {
			return fmt.Errorf("%w of service %s: etcd lists no backend but %d are healthy here", ErrWouldEmpty, s.Name, n)
		}
	}
	return nil
}

// push sends the pools to the Lua balancer.
func (c *Controller) push(ctx context.Context, proxy Proxy, addr string, body []byte) error {
	token, err := c.cfg.Deliverer.Token(ctx, proxy.ID)
	if err != nil {
		return err
	}
	if err := c.cfg.Status.PushPools(ctx, addr, token, body); err != nil {
		return err
	}
	c.poolsOn = proxy.ID
	return nil
}

// confirm polls the status server until nginx answers with hash: the new
// config is running in fresh workers.
func (c *Controller) confirm(ctx context.Context, addr, hash string) (time.Duration, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, c.cfg.ConfirmTimeout)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	var last string
	var lastErr error
	for {
		got, err := c.cfg.Status.ConfigHash(ctx, addr)
		if err == nil && got == hash {
			return time.Since(start), nil
		}
		last, lastErr = got, err
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("nginx did not run config %s within %s (last answer %q, %v)", hash, c.cfg.ConfirmTimeout, last, lastErr)
		case <-tick.C:
		}
	}
}

func (c *Controller) observe(o Outcome) {
	if c.cfg.Observe != nil {
		c.cfg.Observe(o)
	}
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
