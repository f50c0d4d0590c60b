package render

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
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
}

var _ deliverer = (*Deliverer)(nil)

// ProxyFunc returns the ID of the running proxy container, or an error
// matching ErrNoProxy when there is none.
type ProxyFunc func(ctx context.Context) (string, error)

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
	// Deliverer puts configs live.
	Deliverer deliverer
	// Proxy finds the proxy container.
	Proxy ProxyFunc
	// Services, Default and Listen complete the View (see ViewInput).
	Services []string
	Default  string
	Listen   int
	// MinDebounce is the quiet time awaited after a change before rendering;
	// MaxDebounce bounds the wait while changes keep coming. Zero means the
	// defaults (20 ms and 250 ms).
	MinDebounce, MaxDebounce time.Duration
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
	Err      error
	Took     time.Duration
}

// Controller renders and delivers whenever registrations or the proxy change.
type Controller struct {
	cfg  ControllerConfig
	log  zerolog.Logger
	kick chan struct{}
}

// NewController returns a Controller.
func NewController(cfg ControllerConfig) *Controller {
	if cfg.MinDebounce <= 0 {
		cfg.MinDebounce = DefaultMinDebounce
	}
	if cfg.MaxDebounce < cfg.MinDebounce {
		cfg.MaxDebounce = DefaultMaxDebounce
		if cfg.MaxDebounce < cfg.MinDebounce {
			cfg.MaxDebounce = cfg.MinDebounce
		}
	}
	return &Controller{cfg: cfg, log: cfg.Logger, kick: make(chan struct{}, 1)}
}

// Kick asks for a pass without waiting for a registration change: after the
// proxy or its data volume was (re)created.
func (c *Controller) Kick() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// Start runs until ctx ends; it returns nil then.
func (c *Controller) Start(ctx context.Context) error {
	bo := backoff.NewExponentialBackOff(backoff.WithInitialInterval(100*time.Millisecond),
		backoff.WithMaxInterval(5*time.Second), backoff.WithMaxElapsedTime(0))
	var retry <-chan time.Time
	var rejected string // hash of the last config nginx rejected
	for {
		// Wait for a trigger.
		select {
		case <-ctx.Done():
			return nil
		case <-c.cfg.Source.Changed():
		case <-c.kick:
		case <-retry:
		}
		retry = nil
		if !c.debounce(ctx) {
			return nil
		}
		err := c.pass(ctx, &rejected)
		switch {
		case err == nil || errors.Is(err, ErrCheckFailed) || errors.Is(err, errNotReady):
			bo.Reset()
		default:
			d := bo.NextBackOff()
			c.log.Warn().Err(err).Dur("retry_in", d).Msg("render pass failed; will retry")
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

func (c *Controller) pass(ctx context.Context, rejected *string) error {
	start := time.Now()
	snap, ok := c.cfg.Source.Snapshot()
	if !ok {
		c.log.Debug().Msg("no registrations loaded from etcd yet; not rendering")
		return errNotReady
	}
	view := NewView(ViewInput{Snapshot: snap, Services: c.cfg.Services, Default: c.cfg.Default, Listen: c.cfg.Listen})
	out, err := Render(c.cfg.Template, view)
	if err != nil {
		// A template error is terminal for this input; the live config stays.
		c.log.Error().Err(err).Int64("revision", snap.Revision).Msg("render failed; live config unchanged")
		c.observe(Outcome{Revision: snap.Revision, Backends: len(snap.Entries), Err: err, Took: time.Since(start)})
		return nil
	}
	sum := sha256.Sum256(out)
	hash := hex.EncodeToString(sum[:8])
	if hash == *rejected {
		return nil // nginx already said no to exactly these bytes
	}
	id, err := c.cfg.Proxy(ctx)
	if errors.Is(err, ErrNoProxy) {
		c.log.Debug().Msg("no running proxy yet; not delivering")
		return errNotReady
	}
	if err != nil {
		return err
	}
	changed, err := c.cfg.Deliverer.Deliver(ctx, id, out)
	took := time.Since(start)
	if errors.Is(err, ErrCheckFailed) {
		*rejected = hash
		c.log.Error().Err(err).Str("config", hash).Int64("revision", snap.Revision).
			Msg("nginx -t rejected the rendered config; the last good config stays live")
		c.observe(Outcome{Revision: snap.Revision, Backends: len(snap.Entries), Err: err, Took: took})
		return err
	}
	if err != nil {
		return err
	}
	*rejected = ""
	if changed {
		ev := c.log.Info().Str("config", hash).Int64("revision", snap.Revision).Dur("took", took)
		for _, s := range view.Services {
			ev = ev.Int("backends_"+s.Name, len(s.Backends))
		}
		ev.Str("proxy", shortID(id)).Msg("nginx reloaded with new config")
	}
	c.observe(Outcome{Revision: snap.Revision, Backends: len(snap.Entries), Changed: changed, Took: took})
	return nil
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
