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

	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/internal/events"
	"github.com/upstreamd/upstreamd/internal/health"
	"github.com/upstreamd/upstreamd/internal/wake"
)

// prober probes one backend at addr (host:port); nil means it passed.
type prober func(ctx context.Context, addr string) error

// httpProber returns a Prober that GETs path and passes on a 2xx or 3xx
// answer. Each probe opens a fresh connection, so a hung backend cannot hide
// behind a pooled one.
func httpProber(path string) prober {
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
	Created time.Time // when its container was created: its start period counts from then
}

// starting reports whether t is still in its start period at now.
func (t Target) starting(now time.Time) bool {
	return t.Health.StartPeriod > 0 && now.Sub(t.Created) < t.Health.StartPeriod
}

// healthConfig configures a Health manager.
type healthConfig struct {
	// NewProber builds the prober for a health spec; nil means HTTPProber.
	NewProber func(HealthSpec) prober
	// Gone reports containers that died or are draining: Sync never
	// probes them, even when a stale listing still shows them. Nil: none.
	Gone func(id string) bool
	// FirstProbeDelay is the first retry delay while a backend is pending
	// outside its start period; it doubles up to the interval. Zero means
	// 25 ms.
	FirstProbeDelay time.Duration
	// StartProbeInterval is the probe period of a backend in its start
	// period. Zero means StartProbeInterval.
	StartProbeInterval time.Duration
	Events             *events.Journal
	Logger             zerolog.Logger
}

// healthMonitor probes backends and keeps a small state machine per backend: one
// probe in flight, consecutive pass and failure counters, and a state flip
// only at the rise or fall threshold. It is a runnable: its probers run
// under the context of Start.
type healthMonitor struct {
	cfg     healthConfig
	log     zerolog.Logger
	probers workers

	changed wake.Fanout // a state changed or a backend was dropped

	mu      sync.Mutex
	targets map[string]*probed // by container ID
}

type probed struct {
	t      Target
	cancel context.CancelFunc
	state  health.State
	passes int
	fails  int
	since  time.Time
	err    error // the last failed probe's
	// last is when the last probe ended, took how long it ran, and lastErr
	// its error (nil: it passed).
	last    time.Time
	took    time.Duration
	lastErr error
}

// newHealth returns a Health manager with no targets.
func newHealth(cfg healthConfig) *healthMonitor {
	if cfg.NewProber == nil {
		cfg.NewProber = func(h HealthSpec) prober { return httpProber(h.Path) }
	}
	if cfg.FirstProbeDelay <= 0 {
		cfg.FirstProbeDelay = 25 * time.Millisecond
	}
	if cfg.StartProbeInterval <= 0 {
		cfg.StartProbeInterval = StartProbeInterval
	}
	if cfg.Gone == nil {
		cfg.Gone = func(string) bool { return false }
	}
	return &healthMonitor{cfg: cfg, log: cfg.Logger, targets: map[string]*probed{}}
}

// Start runs the probers until ctx ends, then waits for them.
func (h *healthMonitor) Start(ctx context.Context) error { return h.probers.Start(ctx) }

// Subscribe returns a channel that receives a value after a backend's
// state changed or a backend was dropped; several changes may collapse
// into one.
func (h *healthMonitor) Subscribe() <-chan struct{} { return h.changed.Subscribe() }

// Sync makes the probed set equal targets, less the ones Gone reports:
// probers start for new targets and stop for missing ones; a target whose
// address or spec changed starts over.
func (h *healthMonitor) Sync(targets []Target) {
	want := make(map[string]Target, len(targets))
	for _, t := range targets {
		if !h.cfg.Gone(t.ID) {
			want[t.ID] = t
		}
	}
	changed := false
	h.mu.Lock()
	for id, p := range h.targets {
		if t, ok := want[id]; !ok || t != p.t {
			p.cancel()
			delete(h.targets, id)
			changed = changed || p.state == health.Healthy
		}
	}
	for id, t := range want {
		if _, ok := h.targets[id]; !ok {
			h.startLocked(t)
		}
	}
	h.mu.Unlock()
	if changed {
		h.changed.Wake()
	}
}

// Add starts probing t now, unless it is probed already or gone: a
// backend of a scale-up is probed as soon as it started, not when the
// whole pass is done. The pass's Sync then finds it in place.
func (h *healthMonitor) Add(t Target) {
	if h.cfg.Gone(t.ID) {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.targets[t.ID]; !ok {
		h.startLocked(t)
	}
}

// startLocked starts the prober of t; the caller holds mu.
func (h *healthMonitor) startLocked(t Target) {
	p := &probed{t: t, state: health.Pending, since: time.Now()}
	pctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	h.targets[t.ID] = p
	h.probers.Go(func(ctx context.Context) {
		stop := context.AfterFunc(ctx, cancel)
		defer stop()
		h.run(pctx, p)
	})
}

// Drop stops probing a backend at once, for why ("backend died;
// deregistering"): it leaves the healthy set now, not at the next Sync.
// The caller records its fate first, so that no Sync brings it back.
func (h *healthMonitor) Drop(id, why string) {
	h.mu.Lock()
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
		Str("was", string(p.state)).Msg(why)
	h.changed.Wake()
}

// Snapshot returns the healthy targets and the pending ones, each sorted by
// address.
func (h *healthMonitor) Snapshot() (healthy, pending []Target) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, p := range h.targets {
		switch p.state {
		case health.Healthy:
			healthy = append(healthy, p.t)
		case health.Pending:
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

// Counts returns, by service, how many probed backends are in each state
// (every state, zeros included): one consistent reading.
func (h *healthMonitor) Counts() map[string]map[health.State]int {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string]map[health.State]int{}
	for _, p := range h.targets {
		if out[p.t.Service] == nil {
			out[p.t.Service] = make(map[health.State]int, len(health.States()))
			for _, s := range health.States() {
				out[p.t.Service][s] = 0
			}
		}
		out[p.t.Service][p.state]++
	}
	return out
}

// BackendHealth is where one probed backend stands, for the admin API.
type BackendHealth struct {
	Service   string
	Container string // name
	ID        string
	Addr      string // what is probed and registered
	Node      string
	State     health.State
	Since     time.Time
	// LastProbe is when the last probe ended (zero: none yet), Took how
	// long it ran and Error why it failed ("" when it passed).
	LastProbe time.Time
	Took      time.Duration
	Error     string
}

// Backends returns every probed backend, by service and address.
func (h *healthMonitor) Backends() []BackendHealth {
	h.mu.Lock()
	out := make([]BackendHealth, 0, len(h.targets))
	for _, p := range h.targets {
		b := BackendHealth{Service: p.t.Service, Container: p.t.Name, ID: containers.ShortID(p.t.ID), Addr: p.t.Addr,
			State: p.state, Since: p.since, LastProbe: p.last, Took: p.took}
		if p.lastErr != nil {
			b.Error = p.lastErr.Error()
		}
		out = append(out, b)
	}
	h.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Service != out[j].Service {
			return out[i].Service < out[j].Service
		}
		return out[i].Addr < out[j].Addr
	})
	return out
}

// State returns a backend's state and whether it is probed at all.
func (h *healthMonitor) State(id string) (health.State, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	p, ok := h.targets[id]
	if !ok {
		return "", false
	}
	return p.state, true
}

func (h *healthMonitor) run(ctx context.Context, p *probed) {
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
		state, fails := h.record(p, err, time.Since(started))
		// Probes start on a cadence, however long each takes.
		period := spec.Interval
		switch {
		case state == health.Pending && p.t.starting(time.Now()):
			// Starting: probe at a steady short period, so that it is
			// served within that long of answering, however slow to start.
			period = h.cfg.StartProbeInterval
		case state == health.Pending:
			// Probe again soon (doubling up to the interval) so a backend
			// adopted after a restart is known quickly.
			period = min(fast, spec.Interval)
			fast *= 2
		case state == health.Healthy && fails > 0:
			// A healthy backend just failed: confirm sooner, so that a hung
			// one leaves the pool within interval × fall.
			period = spec.Interval / time.Duration(spec.Fall)
		}
		timer.Reset(max(0, period-time.Since(started)))
	}
}

// record applies one probe result and reports the state after it and the
// consecutive failures so far.
func (h *healthMonitor) record(p *probed, err error, took time.Duration) (health.State, int) {
	h.mu.Lock()
	p.last, p.took, p.lastErr = time.Now(), took, err
	if h.targets[p.t.ID] != p { // removed while probing
		h.mu.Unlock()
		return health.Unhealthy, 0
	}
	from := p.state
	if err == nil {
		p.fails = 0
		p.passes++
		if p.state == health.Pending || (p.state == health.Unhealthy && p.passes >= p.t.Health.Rise) {
			p.state = health.Healthy
		}
	} else {
		p.passes = 0
		p.fails++
		p.err = err
		switch {
		case p.state == health.Healthy && p.fails >= p.t.Health.Fall:
			p.state = health.Unhealthy
		case p.state == health.Pending && p.t.starting(time.Now()):
			// Still starting: failures do not count until its start
			// period is over.
		case p.state == health.Pending && p.fails >= p.t.Health.Fall &&
			(p.t.Created.Add(p.t.Health.StartPeriod).After(p.since) ||
				time.Since(p.since) >= time.Duration(p.t.Health.Fall)*p.t.Health.Interval):
			// Its start period, spent pending, is over: it failed to
			// start. A backend found already past it (adopted after a
			// restart) gives up after as long as a healthy one takes to
			// fall.
			p.state = health.Unhealthy
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
	if to == health.Unhealthy {
		ev = h.log.Warn().AnErr("probe_error", err)
	}
	ev.Str("service", p.t.Service).Str("container", p.t.Name).Str("addr", p.t.Addr).
		Str("from", string(from)).Str("to", string(to)).Msg("backend health changed")
	msg := fmt.Sprintf("%s of %s is %s (was %s)", p.t.Name, p.t.Service, to, from)
	if to == health.Unhealthy && err != nil {
		msg += ": " + err.Error()
	}
	h.cfg.Events.Record(events.Event{Kind: events.HealthChanged, Service: p.t.Service, Container: p.t.Name, ID: containers.ShortID(p.t.ID),
		Addr: p.t.Addr, From: from, To: to, Message: msg})
	h.changed.Wake()
	return to, fails
}
