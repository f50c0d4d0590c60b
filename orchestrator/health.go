package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Prober probes one backend at addr (host:port); nil means it passed.
type Prober func(ctx context.Context, addr string) error

// HTTPProber returns a Prober that GETs path and passes on a 2xx or 3xx
// answer. Each probe opens a fresh connection, so a hung backend cannot hide
// behind a pooled one.
func HTTPProber(path string) Prober {
	client := &http.Client{
		Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	return func(ctx context.Context, addr string) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
		if err != nil {
			return err
		}
		req.Header.Set("User-Agent", "upstreamd-health")
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("GET %s: status %d", path, resp.StatusCode)
		}
		return nil
	}
}

// Target is one running backend to probe.
type Target struct {
	ID      string // container ID
	Name    string // container name
	Service string
	Addr    string // IP:port nginx dials and the probe uses
	IP      string
	Port    int
	Health  HealthSpec
}

// healthState is where a backend stands.
type healthState int

const (
	// statePending: not yet probed, or failing its first probes. A key
	// already in etcd for it (adopted after a daemon restart) is kept, none
	// is written.
	statePending healthState = iota
	stateHealthy
	stateUnhealthy
)

func (s healthState) String() string {
	switch s {
	case stateHealthy:
		return "healthy"
	case stateUnhealthy:
		return "unhealthy"
	default:
		return "pending"
	}
}

// HealthConfig configures a Health manager.
type HealthConfig struct {
	// NewProber builds the prober for a health spec; nil means HTTPProber.
	NewProber func(HealthSpec) Prober
	// OnChange is called after any backend changes state.
	OnChange func()
	// FirstProbeDelay is the first retry delay while a backend is pending;
	// it doubles up to the interval. Zero means 25 ms.
	FirstProbeDelay time.Duration
	Logger          zerolog.Logger
}

// Health probes backends and keeps a small state machine per backend: one
// probe in flight, consecutive pass and failure counters, and a state flip
// only at the rise or fall threshold.
type Health struct {
	cfg HealthConfig
	log zerolog.Logger

	mu      sync.Mutex
	targets map[string]*probed // by container ID
	// dead holds containers reported dead (Dead) whose death a container
	// listing may not show yet: the engine emits "die" before its list
	// view is updated. Sync does not probe them again until Revive.
	dead map[string]bool
}

type probed struct {
	t      Target
	cancel context.CancelFunc
	state  healthState
	passes int
	fails  int
	since  time.Time
	err    error
}

// NewHealth returns a Health manager with no targets.
func NewHealth(cfg HealthConfig) *Health {
	if cfg.NewProber == nil {
		cfg.NewProber = func(h HealthSpec) Prober { return HTTPProber(h.Path) }
	}
	if cfg.FirstProbeDelay <= 0 {
		cfg.FirstProbeDelay = 25 * time.Millisecond
	}
	if cfg.OnChange == nil {
		cfg.OnChange = func() {}
	}
	return &Health{cfg: cfg, log: cfg.Logger, targets: map[string]*probed{}, dead: map[string]bool{}}
}

// Sync makes the probed set equal targets: probers start for new targets and
// stop for missing ones; a target whose address or spec changed starts over.
// Probers run until ctx ends.
func (h *Health) Sync(ctx context.Context, targets []Target) {
	want := make(map[string]Target, len(targets))
	for _, t := range targets {
		want[t.ID] = t
	}
	changed := false
	h.mu.Lock()
	for id := range h.dead { // forget deaths the listing has caught up with
		if _, ok := want[id]; !ok {
			delete(h.dead, id)
		}
	}
	for id := range want {
		if h.dead[id] {
			delete(want, id)
		}
	}
	for id, p := range h.targets {
		if t, ok := want[id]; !ok || t != p.t {
			p.cancel()
			delete(h.targets, id)
			changed = changed || p.state == stateHealthy
		}
	}
	for id, t := range want {
		if _, ok := h.targets[id]; ok {
			continue
		}
		pctx, cancel := context.WithCancel(ctx)
		p := &probed{t: t, cancel: cancel, state: statePending, since: time.Now()}
		h.targets[id] = p
		go h.run(pctx, p)
	}
	h.mu.Unlock()
	if changed {
		h.cfg.OnChange()
	}
}

// Dead stops probing a container that died and drops it at once. Later
// Syncs ignore it until Revive, even if a stale listing still shows it.
func (h *Health) Dead(id string) { h.drop(id, "backend died; deregistering") }

// Retire drops a backend that is being drained, as Dead does.
func (h *Health) Retire(id string) { h.drop(id, "backend retired; deregistering before it is drained") }

func (h *Health) drop(id, msg string) {
	h.mu.Lock()
	h.dead[id] = true
	p, ok := h.targets[id]
	if ok {
		p.cancel()
		delete(h.targets, id)
	}
	h.mu.Unlock()
	if !ok {
		return
	}
	h.log.Info().Str("service", p.t.Service).Str("container", p.t.Name).Str("addr", p.t.Addr).
		Str("was", p.state.String()).Msg(msg)
	h.cfg.OnChange()
}

// IsDead reports whether Dead was called for id and not undone by Revive.
func (h *Health) IsDead(id string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.dead[id]
}

// Revive undoes Dead: the container runs again (the engine restarted it),
// so the next Sync probes it from scratch.
func (h *Health) Revive(id string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.dead, id)
}

// Snapshot returns the healthy targets and the pending ones, each sorted by
// address.
func (h *Health) Snapshot() (healthy, pending []Target) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, p := range h.targets {
		switch p.state {
		case stateHealthy:
			healthy = append(healthy, p.t)
		case statePending:
			pending = append(pending, p.t)
		}
	}
	byAddr := func(ts []Target) {
		sort.Slice(ts, func(i, j int) bool { return ts[i].Addr < ts[j].Addr })
	}
	byAddr(healthy)
	byAddr(pending)
	return healthy, pending
}

// State returns a backend's state name ("pending", "healthy", "unhealthy")
// and whether it is probed at all.
func (h *Health) State(id string) (string, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	p, ok := h.targets[id]
	if !ok {
		return "", false
	}
	return p.state.String(), true
}

func (h *Health) run(ctx context.Context, p *probed) {
	spec := p.t.Health
	probe := h.cfg.NewProber(spec)
	delay := time.Duration(0) // the first probe goes out at once
	fast := h.cfg.FirstProbeDelay
	timer := time.NewTimer(delay)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		started := time.Now()
		pctx, cancel := context.WithTimeout(ctx, spec.Timeout)
		err := probe(pctx, p.t.Addr)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("no answer within %s", spec.Timeout)
		}
		state, fails := h.record(p, err)
		// Probes start on a cadence, however long each takes.
		period := spec.Interval
		switch {
		case state == statePending:
			// Probe again soon (doubling up to the interval) so a new
			// backend gets traffic as soon as it answers.
			period = min(fast, spec.Interval)
			fast *= 2
		case state == stateHealthy && fails > 0:
			// A healthy backend just failed: confirm sooner, so that a hung
			// one leaves the pool within interval × fall.
			period = spec.Interval / time.Duration(spec.Fall)
		}
		timer.Reset(max(0, period-time.Since(started)))
	}
}

// record applies one probe result and reports the state after it and the
// consecutive failures so far.
func (h *Health) record(p *probed, err error) (healthState, int) {
	h.mu.Lock()
	if h.targets[p.t.ID] != p { // removed while probing
		h.mu.Unlock()
		return stateUnhealthy, 0
	}
	from := p.state
	if err == nil {
		p.fails = 0
		p.passes++
		if p.state == statePending || (p.state == stateUnhealthy && p.passes >= p.t.Health.Rise) {
			p.state = stateHealthy
		}
	} else {
		p.passes = 0
		p.fails++
		p.err = err
		switch {
		case p.state == stateHealthy && p.fails >= p.t.Health.Fall:
			p.state = stateUnhealthy
		case p.state == statePending && p.fails >= p.t.Health.Fall &&
			time.Since(p.since) >= time.Duration(p.t.Health.Fall)*p.t.Health.Interval:
			// A starting backend is retried quickly; those early failures
			// give up only after as long as a healthy one takes to fall.
			p.state = stateUnhealthy
		}
	}
	to, fails := p.state, p.fails
	if from != to {
		p.since = time.Now()
	}
	h.mu.Unlock()
	if from == to {
		return to, fails
	}
	ev := h.log.Info()
	if to == stateUnhealthy {
		ev = h.log.Warn().AnErr("probe_error", err)
	}
	ev.Str("service", p.t.Service).Str("container", p.t.Name).Str("addr", p.t.Addr).
		Str("from", from.String()).Str("to", to.String()).Msg("backend health changed")
	h.cfg.OnChange()
	return to, fails
}
