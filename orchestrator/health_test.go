package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/internal/health"
)

var errProbe = errors.New("probe failed")

// probeLog is a fake Prober controlled by the test: result decides each
// answer from the address and the 0-based call index per address.
type probeLog struct {
	result func(ctx context.Context, addr string, n int) error

	mu          sync.Mutex
	calls       map[string][]time.Time
	inflight    map[string]int
	maxInflight map[string]int
}

func newProbeLog(result func(ctx context.Context, addr string, n int) error) *probeLog {
	return &probeLog{result: result, calls: map[string][]time.Time{}, inflight: map[string]int{}, maxInflight: map[string]int{}}
}

func (l *probeLog) newProber(HealthSpec) prober {
	return func(ctx context.Context, addr string) error {
		l.mu.Lock()
		n := len(l.calls[addr])
		l.calls[addr] = append(l.calls[addr], time.Now())
		l.inflight[addr]++
		l.maxInflight[addr] = max(l.maxInflight[addr], l.inflight[addr])
		l.mu.Unlock()
		err := l.result(ctx, addr, n)
		l.mu.Lock()
		l.inflight[addr]--
		l.mu.Unlock()
		return err
	}
}

func (l *probeLog) count(addr string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.calls[addr])
}

// offsets returns when addr was probed, relative to start.
func (l *probeLog) offsets(addr string, start time.Time) []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []time.Duration
	for _, at := range l.calls[addr] {
		out = append(out, at.Sub(start))
	}
	return out
}

// changeCount counts the notifications of a Health subscription. Read it
// after the bubble settled: changes between two reads collapse into one.
type changeCount struct {
	ch <-chan struct{}
	n  int32
}

// Load returns the notifications so far.
func (c *changeCount) Load() int32 {
	for {
		select {
		case <-c.ch:
			c.n++
		default:
			return c.n
		}
	}
}

// newTestHealth starts a Health probing with l until ctx ends, skipping
// what lg records as gone, and counts its notifications. Call it inside
// synctest.Test.
func newTestHealth(ctx context.Context, l *probeLog, lg *ledger) (*healthMonitor, *changeCount) {
	h := newHealth(healthConfig{NewProber: l.newProber, Gone: lg.gone, Logger: zerolog.Nop()})
	changes := &changeCount{ch: h.Subscribe()}
	go func() { _ = h.Start(ctx) }()
	return h, changes
}

func testTarget(id, addr string, rise, fall int) Target {
	return Target{
		ID: id, Name: "up-apache-" + id, Service: "apache", Addr: addr, IP: "10.0.0.1", Port: 80,
		Health: HealthSpec{Path: "/", Interval: time.Second, Timeout: 500 * time.Millisecond, Rise: rise, Fall: fall},
	}
}

func stateOf(t *testing.T, h *healthMonitor, id string) string {
	t.Helper()
	s, ok := h.State(id)
	if !ok {
		return "absent"
	}
	return string(s)
}

// TestHealthStateMachine drives one backend through a script of probe
// results, one per interval after a first passing probe, and checks the
// state and the OnChange count after every probe.
func TestHealthStateMachine(t *testing.T) {
	tests := []struct {
		name       string
		rise, fall int
		script     string // P pass, F fail; starts with P (a new backend registers on its first pass)
		want       string // state after each probe: h healthy, u unhealthy
	}{
		{name: "first pass registers at once", rise: 2, fall: 2, script: "P", want: "h"},
		{name: "one failure does not flip", rise: 2, fall: 2, script: "PFPP", want: "hhhh"},
		{name: "fall consecutive failures flip", rise: 2, fall: 2, script: "PFF", want: "hhu"},
		{name: "fall 3 needs exactly three", rise: 2, fall: 3, script: "PFFFF", want: "hhhuu"},
		{name: "fall 1 flips on the first failure", rise: 1, fall: 1, script: "PF", want: "hu"},
		{name: "non-consecutive failures do not add up", rise: 2, fall: 3, script: "PFFPFFPFF", want: "hhhhhhhhh"},
		{name: "rise consecutive passes bring it back", rise: 2, fall: 1, script: "PFPPP", want: "huuhh"},
		{name: "rise 3 needs exactly three", rise: 3, fall: 1, script: "PFPPPF", want: "huuuhu"},
		{name: "an interrupted rise starts over", rise: 3, fall: 1, script: "PFPPFPPP", want: "huuuuuuh"},
		{name: "flapping healthy backend never flips", rise: 2, fall: 2, script: "PFPFPFPFPFPFPFPFPFPF", want: "hhhhhhhhhhhhhhhhhhhh"},
		{name: "flapping unhealthy backend never comes back", rise: 2, fall: 2, script: "PFFPFPFPFPF", want: "hhuuuuuuuuu"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				l := newProbeLog(func(_ context.Context, _ string, n int) error {
					if tt.script[min(n, len(tt.script)-1)] == 'P' {
						return nil
					}
					return errProbe
				})
				h, changes := newTestHealth(ctx, l, newLedger())
				tg := testTarget("b1", "10.0.0.1:80", tt.rise, tt.fall)
				h.Sync([]Target{tg})
				synctest.Wait()

				wantChanges := 0
				for i := range tt.script {
					if i > 0 {
						// After a failure of a healthy backend the next probe
						// comes after interval/fall, to confirm it sooner.
						period := tg.Health.Interval
						if tt.script[i-1] == 'F' && tt.want[i-1] == 'h' {
							period /= time.Duration(tt.fall)
						}
						advance(period)
					}
					if got := l.count(tg.Addr); got != i+1 {
						t.Fatalf("after probe %d: %d probes made, want %d", i, got, i+1)
					}
					want := map[byte]string{'h': "healthy", 'u': "unhealthy"}[tt.want[i]]
					if got := stateOf(t, h, tg.ID); got != want {
						t.Errorf("after probe %d (%c): state %s, want %s", i, tt.script[i], got, want)
					}
					if i == 0 || tt.want[i] != tt.want[i-1] {
						wantChanges++ // pending→healthy, then every flip
					}
					if got := int(changes.Load()); got != wantChanges {
						t.Errorf("after probe %d (%c): OnChange called %d times, want %d", i, tt.script[i], got, wantChanges)
					}
				}
			})
		})
	}
}

// TestHealthPending checks that a backend in its start period is probed
// every StartProbeInterval without its failures counting, and given up on
// as the period ends; and that a pending backend past it (adopted after a
// restart) is retried quickly (FirstProbeDelay, doubling up to the
// interval) and given up on only after Fall failures and Fall*Interval.
func TestHealthPending(t *testing.T) {
	type checkpoint struct {
		at          time.Duration // since Sync
		wantState   string
		wantProbes  int
		wantChanges int
	}
	const ms = time.Millisecond
	tests := []struct {
		name        string
		failFirst   int           // probes that fail before the first pass; -1 means all
		startPeriod time.Duration // from the container's creation, at Sync
		wantOffsets []time.Duration
		checks      []checkpoint
	}{
		{
			name:        "a slow starter in its start period: probed every 50 ms, failures do not count, healthy on its first pass",
			failFirst:   20,
			startPeriod: 5 * time.Second,
			// 0, 50, ..., 1000 (the 21st passes), then the 2 s interval.
			wantOffsets: steps(0, 50*ms, 21, 3000*ms),
			checks: []checkpoint{
				{at: 990 * ms, wantState: "pending", wantProbes: 20},
				{at: 1010 * ms, wantState: "healthy", wantProbes: 21, wantChanges: 1},
				{at: 3010 * ms, wantState: "healthy", wantProbes: 22, wantChanges: 1},
			},
		},
		{
			name:        "never answers in its start period: unhealthy as it ends",
			failFirst:   -1,
			startPeriod: time.Second,
			// 0, 50, ..., 950 in the start period; at 1000 it is over.
			wantOffsets: steps(0, 50*ms, 21, 3000*ms),
			checks: []checkpoint{
				{at: 990 * ms, wantState: "pending", wantProbes: 20},
				{at: 1010 * ms, wantState: "unhealthy", wantProbes: 21, wantChanges: 1},
				{at: 3010 * ms, wantState: "unhealthy", wantProbes: 22, wantChanges: 1},
			},
		},
		{
			name:      "never answers: fast retries, unhealthy only after fall*interval",
			failFirst: -1,
			// 25 ms doubling, capped at the 2 s interval: +25, +50, +100,
			// +200, +400, +800, +1600, +2000 (gives up: 5.175 s >= 4 s), +2000.
			wantOffsets: []time.Duration{0, 25 * ms, 75 * ms, 175 * ms, 375 * ms, 775 * ms, 1575 * ms, 3175 * ms, 5175 * ms, 7175 * ms},
			checks: []checkpoint{
				{at: 100 * ms, wantState: "pending", wantProbes: 3},
				// fall (2) failures long since, but fall*interval (4 s) not yet.
				{at: 5100 * ms, wantState: "pending", wantProbes: 8},
				{at: 5200 * ms, wantState: "unhealthy", wantProbes: 9, wantChanges: 1},
				{at: 7200 * ms, wantState: "unhealthy", wantProbes: 10, wantChanges: 1},
			},
		},
		{
			name:        "answers on the fourth probe: healthy at once",
			failFirst:   3,
			wantOffsets: []time.Duration{0, 25 * ms, 75 * ms, 175 * ms, 2175 * ms},
			checks: []checkpoint{
				{at: 100 * ms, wantState: "pending", wantProbes: 3},
				{at: 200 * ms, wantState: "healthy", wantProbes: 4, wantChanges: 1},
				{at: 2100 * ms, wantState: "healthy", wantProbes: 4, wantChanges: 1},
				{at: 2200 * ms, wantState: "healthy", wantProbes: 5, wantChanges: 1},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				l := newProbeLog(func(_ context.Context, _ string, n int) error {
					if tt.failFirst < 0 || n < tt.failFirst {
						return errProbe
					}
					return nil
				})
				h, changes := newTestHealth(ctx, l, newLedger())
				tg := testTarget("b1", "10.0.0.1:80", 2, 2)
				tg.Health.Interval = 2 * time.Second
				tg.Health.StartPeriod = tt.startPeriod
				tg.Created = time.Now()
				start := time.Now()
				h.Sync([]Target{tg})
				synctest.Wait()
				for _, c := range tt.checks {
					advance(c.at - time.Since(start))
					if got := stateOf(t, h, tg.ID); got != c.wantState {
						t.Errorf("at %s: state %s, want %s", c.at, got, c.wantState)
					}
					if got := l.count(tg.Addr); got != c.wantProbes {
						t.Errorf("at %s: %d probes, want %d", c.at, got, c.wantProbes)
					}
					if got := int(changes.Load()); got != c.wantChanges {
						t.Errorf("at %s: OnChange called %d times, want %d", c.at, got, c.wantChanges)
					}
					healthy, pending := h.Snapshot()
					inPending := slices.ContainsFunc(pending, func(x Target) bool { return x.ID == tg.ID })
					inHealthy := slices.ContainsFunc(healthy, func(x Target) bool { return x.ID == tg.ID })
					if inPending != (c.wantState == "pending") || inHealthy != (c.wantState == "healthy") {
						t.Errorf("at %s: Snapshot has it healthy=%v pending=%v, want state %s", c.at, inHealthy, inPending, c.wantState)
					}
				}
				if got := l.offsets(tg.Addr, start); !slices.Equal(got, tt.wantOffsets) {
					t.Errorf("probe times:\n got %v\nwant %v", got, tt.wantOffsets)
				}
			})
		})
	}
}

// steps returns n offsets from first, step apart, then the extra ones.
func steps(first, step time.Duration, n int, extra ...time.Duration) []time.Duration {
	out := make([]time.Duration, 0, n+len(extra))
	for i := range n {
		out = append(out, first+time.Duration(i)*step)
	}
	return append(out, extra...)
}

// TestHealthOneProbeInFlight uses a backend that never answers: each probe
// runs into its timeout, and a new one must not start before it returns,
// even when Sync is called again with the same targets meanwhile.
func TestHealthOneProbeInFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		var badDeadline atomic.Int32
		l := newProbeLog(func(ctx context.Context, _ string, _ int) error {
			if dl, ok := ctx.Deadline(); !ok || time.Until(dl) != 500*time.Millisecond {
				badDeadline.Add(1)
			}
			<-ctx.Done() // hung backend
			return ctx.Err()
		})
		h, _ := newTestHealth(ctx, l, newLedger())
		targets := []Target{testTarget("b1", "10.0.0.1:80", 2, 2), testTarget("b2", "10.0.0.2:80", 2, 2)}
		h.Sync(targets)
		for range 20 {
			advance(300 * time.Millisecond)
			h.Sync(targets) // unchanged: must not start a second prober
		}
		for _, tg := range targets {
			l.mu.Lock()
			gotMax := l.maxInflight[tg.Addr]
			l.mu.Unlock()
			if gotMax != 1 {
				t.Errorf("%s: at most %d probes in flight, want 1", tg.Addr, gotMax)
			}
			// 6 s of 500 ms timeouts with fast retries, then 1 s intervals:
			// several probes, but never overlapping ones.
			if got := l.count(tg.Addr); got < 5 || got > 12 {
				t.Errorf("%s: %d probes in 6s, want 5-12", tg.Addr, got)
			}
			if got := stateOf(t, h, tg.ID); got != "unhealthy" {
				t.Errorf("%s: state %s after 6s of timeouts, want unhealthy", tg.Addr, got)
			}
		}
		if n := badDeadline.Load(); n != 0 {
			t.Errorf("%d probes without a deadline of the spec's timeout (500ms)", n)
		}
	})
}

// TestHealthDead covers Dead and Retire (a backend being drained), which
// drop a backend the same way.
func TestHealthDead(t *testing.T) {
	tests := []struct {
		name        string
		pass        bool // the backend's probes pass
		retire      bool // Retire instead of Dead
		deadID      string
		wantChanges int32 // OnChange calls caused by Dead
		wantGone    bool
	}{
		{name: "healthy backend is dropped at once", pass: true, deadID: "b1", wantChanges: 1, wantGone: true},
		{name: "pending backend is dropped at once", pass: false, deadID: "b1", wantChanges: 1, wantGone: true},
		{name: "unknown container changes nothing", pass: true, deadID: "nosuch", wantChanges: 0, wantGone: false},
		{name: "retired healthy backend is dropped at once", pass: true, retire: true, deadID: "b1", wantChanges: 1, wantGone: true},
		{name: "retired pending backend is dropped at once", pass: false, retire: true, deadID: "b1", wantChanges: 1, wantGone: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				l := newProbeLog(func(context.Context, string, int) error {
					if tt.pass {
						return nil
					}
					return errProbe
				})
				lg := newLedger()
				h, changes := newTestHealth(ctx, l, lg)
				tg := testTarget("b1", "10.0.0.1:80", 2, 2)
				h.Sync([]Target{tg})
				synctest.Wait()
				before := changes.Load()

				// No Wait: the drop must be synchronous.
				if tt.retire {
					lg.mark(tt.deadID, fateDraining)
					h.Drop(tt.deadID, "backend retired; deregistering before it is drained")
				} else {
					lg.mark(tt.deadID, fateDied)
					h.Drop(tt.deadID, "backend died; deregistering")
				}
				if got := changes.Load() - before; got != tt.wantChanges {
					t.Errorf("%d notifications, want %d", got, tt.wantChanges)
				}
				h.Sync([]Target{tg}) // a stale listing must not bring it back
				_, probed := h.State(tg.ID)
				healthy, pending := h.Snapshot()
				if gone := !probed && len(healthy) == 0 && len(pending) == 0; gone != tt.wantGone {
					t.Errorf("gone=%v (probed=%v healthy=%v pending=%v), want gone=%v", gone, probed, healthy, pending, tt.wantGone)
				}
				probes := l.count(tg.Addr)
				advance(5 * time.Second)
				if got := l.count(tg.Addr) - probes; tt.wantGone && got != 0 {
					t.Errorf("%d probes after Dead, want 0", got)
				}
			})
		})
	}
}

func TestHealthSync(t *testing.T) {
	oldAddr, newAddr := "10.0.0.1:80", "10.0.0.2:80"
	tests := []struct {
		name        string
		next        func(tg Target) []Target // the second Sync's targets
		wantState   string
		wantPending []string // addresses
		wantChanges int32    // OnChange calls caused by the second Sync
		wantOld     bool     // the old address is still probed afterwards
	}{
		{
			name:      "unchanged target keeps its state and prober",
			next:      func(tg Target) []Target { return []Target{tg} },
			wantState: "healthy", wantChanges: 0, wantOld: true,
		},
		{
			name: "changed address restarts as pending",
			next: func(tg Target) []Target {
				tg.Addr = newAddr
				return []Target{tg}
			},
			wantState: "pending", wantPending: []string{newAddr}, wantChanges: 1, wantOld: false,
		},
		{
			name:      "removed healthy target calls OnChange",
			next:      func(Target) []Target { return nil },
			wantState: "absent", wantChanges: 1, wantOld: false,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				l := newProbeLog(func(_ context.Context, addr string, _ int) error {
					if addr == oldAddr {
						return nil
					}
					return errProbe // the new address does not answer yet
				})
				h, changes := newTestHealth(ctx, l, newLedger())
				tg := testTarget("b1", oldAddr, 2, 2)
				h.Sync([]Target{tg})
				synctest.Wait()
				if got := stateOf(t, h, tg.ID); got != "healthy" {
					t.Fatalf("setup: state %s, want healthy", got)
				}
				before := changes.Load()
				oldProbes := l.count(oldAddr)

				h.Sync(tt.next(tg))
				synctest.Wait()
				if got := changes.Load() - before; got != tt.wantChanges {
					t.Errorf("OnChange called %d times by Sync, want %d", got, tt.wantChanges)
				}
				if got := stateOf(t, h, tg.ID); got != tt.wantState {
					t.Errorf("state %s, want %s", got, tt.wantState)
				}
				_, pending := h.Snapshot()
				var gotPending []string
				for _, p := range pending {
					gotPending = append(gotPending, p.Addr)
				}
				if !slices.Equal(gotPending, tt.wantPending) {
					t.Errorf("pending %v, want %v", gotPending, tt.wantPending)
				}
				if got := l.count(oldAddr) - oldProbes; got != 0 {
					t.Errorf("Sync probed the old address %d times at once, want 0 (no restart of an unchanged prober)", got)
				}
				advance(3 * time.Second)
				if got := l.count(oldAddr) > oldProbes; got != tt.wantOld {
					t.Errorf("old address probed after Sync: %v, want %v", got, tt.wantOld)
				}
			})
		})
	}
}

// TestHealthDeadIsNotResurrected: a listing taken before the engine
// recorded a container's exit still shows it running; Sync must not probe
// (and so re-register) it again while the ledger says it died.
func TestHealthDeadIsNotResurrected(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		l := newProbeLog(func(context.Context, string, int) error { return nil })
		lg := newLedger()
		h, _ := newTestHealth(ctx, l, lg)
		tg := testTarget("b1", "10.0.0.1:80", 2, 2)
		h.Sync([]Target{tg})
		synctest.Wait()

		lg.mark(tg.ID, fateDied)
		h.Drop(tg.ID, "backend died; deregistering")
		h.Sync([]Target{tg}) // stale listing
		synctest.Wait()
		if _, probed := h.State(tg.ID); probed {
			t.Fatalf("after a death and a stale Sync: probed, want not")
		}

		lg.clear(tg.ID) // the engine restarted it
		h.Sync([]Target{tg})
		synctest.Wait()
		if st, probed := h.State(tg.ID); !probed || st != health.Healthy {
			t.Errorf("after a restart and Sync: state %v probed=%v, want healthy, true", st, probed)
		}
	})
}

// TestHealthHungBackendLeavesInTime: a healthy backend that stops answering
// (each probe runs into its timeout) is unhealthy within
// interval + (fall-1)·max(interval/fall, timeout) + timeout after it hung:
// after a first failure the next probes come every interval/fall. With the
// defaults (2 s, 1 s, fall 2) that is 4 s, under interval × fall + 300 ms.
func TestHealthHungBackendLeavesInTime(t *testing.T) {
	for _, fall := range []int{1, 2, 3} {
		t.Run(fmt.Sprintf("fall=%d", fall), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				var hung atomic.Bool
				l := newProbeLog(func(pctx context.Context, _ string, _ int) error {
					if hung.Load() {
						<-pctx.Done() // hangs until the probe's timeout
						return pctx.Err()
					}
					return nil
				})
				h, _ := newTestHealth(ctx, l, newLedger())
				tg := testTarget("b1", "10.0.0.1:80", 2, fall)
				h.Sync([]Target{tg})
				synctest.Wait()
				if got := stateOf(t, h, tg.ID); got != "healthy" {
					t.Fatalf("state %s after the first probe, want healthy", got)
				}
				hung.Store(true) // just after a passing probe: the worst case
				start := time.Now()
				for stateOf(t, h, tg.ID) == "healthy" {
					advance(10 * time.Millisecond)
				}
				hs := tg.Health
				limit := hs.Interval + time.Duration(fall-1)*max(hs.Interval/time.Duration(fall), hs.Timeout) + hs.Timeout
				if took := time.Since(start); took > limit {
					t.Errorf("unhealthy %s after the hang, want at most %s", took, limit)
				}
			})
		})
	}
}

// TestHealthAdd: a backend added as it starts is probed at once; the
// pass's Sync that lists it afterwards keeps its prober (no second one,
// no state reset), and Add of a probed or gone backend does nothing.
func TestHealthAdd(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		l := newProbeLog(func(context.Context, string, int) error { return nil })
		lg := newLedger()
		h, _ := newTestHealth(ctx, l, lg)
		tg := testTarget("b1", "10.0.0.1:80", 2, 2)
		h.Add(tg)
		synctest.Wait()
		if got := stateOf(t, h, tg.ID); got != "healthy" || l.count(tg.Addr) != 1 {
			t.Fatalf("after Add: state %s, %d probes; want healthy after 1", got, l.count(tg.Addr))
		}
		h.Sync([]Target{tg})
		h.Add(tg)
		synctest.Wait()
		if n := l.count(tg.Addr); n != 1 {
			t.Errorf("%d probes after Sync and Add of a probed backend; want 1 (one prober, on its interval)", n)
		}
		gone := testTarget("b2", "10.0.0.2:80", 2, 2)
		lg.mark(gone.ID, fateDied)
		h.Add(gone)
		synctest.Wait()
		if got := stateOf(t, h, gone.ID); got != "absent" {
			t.Errorf("a dead backend was added: state %s", got)
		}
	})
}
