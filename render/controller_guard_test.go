package render

import (
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/upstreamd/upstreamd/store"
)

// TestControllerReady: while Ready is open no pass runs, whatever triggers
// arrive; closing it runs exactly one pass, without a further trigger, for
// the snapshot current then.
func TestControllerReady(t *testing.T) {
	const a1, a2, a3 = "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"
	snaps := func(t testing.TB) []store.Snapshot {
		return []store.Snapshot{apacheSnap(t, 1, a1), apacheSnap(t, 2, a1, a2), apacheSnap(t, 3, a2, a3)}
	}
	tests := []struct {
		name    string
		dynamic bool
		changes bool // source changes arrive before Ready
		kicks   bool // Kicks arrive before Ready
		never   bool // Ready is never closed
	}{
		{name: "static, no trigger"},
		{name: "static, source changes", changes: true},
		{name: "static, Kicks", kicks: true},
		{name: "static, source changes and Kicks", changes: true, kicks: true},
		{name: "dynamic, no trigger", dynamic: true},
		{name: "dynamic, source changes and Kicks", dynamic: true, changes: true, kicks: true},
		{name: "never ready", dynamic: true, changes: true, kicks: true, never: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ngx, log := newFakeNginx()
				del := ngx
				ready := make(chan struct{})
				h := startWith(t, harnessConfig{tmpl: Default(), nginx: ngx, dynamic: tt.dynamic,
					statusPort: testStatusPort, ready: ready})
				all := snaps(t)
				current := all[len(all)-1]
				hash, full := h.finished(t, current)
				if tt.dynamic { // nginx runs the dynamic config already
					del.live, ngx.running = full, full
				}

				if !tt.changes {
					// The snapshot is loaded, but nobody says so.
					h.src.mu.Lock()
					h.src.snap, h.src.ok = current, true
					h.src.mu.Unlock()
				}
				for _, snap := range all {
					if tt.changes {
						h.src.set(snap)
					}
					if tt.kicks {
						h.host.restart()
					}
					advance(time.Second)
				}
				advance(time.Hour)
				if got := log.take(); len(got) != 0 {
					t.Fatalf("before Ready: events %q; want none", got)
				}
				if n := h.host.proxyCalls(); n != 0 {
					t.Errorf("before Ready: Proxy called %d times; want 0", n)
				}
				if err := servesWant(h.ctrl, []string{a1, a2, a3}, nil); err != nil {
					t.Errorf("before Ready: %v", err)
				}
				if tt.never {
					return // the harness checks that Start returns on cancel
				}

				closed := time.Now()
				close(ready)
				advance(time.Minute)
				want := []string{"Session " + testProxyID, "Deliver " + testProxyID + " changed=true", "ConfigHash " + testStatusAddr + " = " + hash}
				if tt.dynamic {
					want = []string{
						"Session " + testProxyID,
						"PushPools " + testStatusAddr + " v3",
						"Deliver " + testProxyID + " changed=false",
						"ConfigHash " + testStatusAddr + " = " + hash,
					}
				}
				if got := log.take(); !slices.Equal(got, want) {
					t.Errorf("after Ready: events =\n%q\nwant one pass\n%q", got, want)
				}
				live, calls := del.snapshot()
				if len(calls) != 1 {
					t.Fatalf("after Ready: Deliver called %d times; want 1", len(calls))
				}
				if live != full {
					t.Errorf("live config =\n%s\nwant the current snapshot's\n%s", live, full)
				}
				if got := calls[0].at.Sub(closed); got != DefaultMinDebounce {
					t.Errorf("delivered %v after Ready; want after DefaultMinDebounce (%v)", got, DefaultMinDebounce)
				}
				if tt.dynamic {
					if pushes, w := ngx.pushes(), string(PoolsBody(3, h.view(current))); len(pushes) != 1 || pushes[0] != w {
						t.Errorf("pushed bodies = %q; want one: %q", pushes, w)
					}
				}
				if err := servesWant(h.ctrl, []string{a1, a2, a3}, setOf([]string{a2, a3})); err != nil {
					t.Errorf("after Ready: %v", err)
				}
				if o := h.observed(); len(o) != 1 || o[0].Revision != 3 || o[0].Err != nil {
					t.Errorf("outcomes = %+v; want one success at revision 3", o)
				}
			})
		})
	}
}

// healthyCounts is a HealthyHere the test sets; it records when it
// answered a non-zero count, which refuses the pass that asked.
type healthyCounts struct {
	mu       sync.Mutex
	n        map[string]int
	refusals []time.Time // on the bubble's clock
}

func (c *healthyCounts) get(service string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.n[service]
	if n > 0 {
		c.refusals = append(c.refusals, time.Now())
	}
	return n
}

func (c *healthyCounts) set(service string, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n[service] = n
}

func (c *healthyCounts) refused() []time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Time(nil), c.refusals...)
}

// TestControllerGuardEmptying: registrations that leave a pool empty while
// this node finds healthy backends of that service are refused for that
// pool (nothing new delivered or pushed, Serves unchanged) and retried with
// backoff; once HealthyHere agrees, a retry applies them without a further
// trigger. Registrations with backends are never refused, and only the
// services with healthy backends here are guarded.
func TestControllerGuardEmptying(t *testing.T) {
	const (
		a1 = "apache/10.0.0.1:80"
		a2 = "apache/10.0.0.2:80"
		b1 = "api/10.0.1.1:80"
	)
	twoServices := []string{"apache", "api"}
	tests := []struct {
		name     string
		dynamic  bool
		services []string       // nil: apache alone
		healthy  map[string]int // what HealthyHere answers at first
		from, to []string       // the registrations applied, then the next
		refused  string         // the service whose emptying is refused; "": to applies at once
	}{
		{name: "static, apache emptied while healthy here", healthy: map[string]int{"apache": 2}, from: []string{a1}, refused: "apache"},
		{name: "dynamic, apache emptied while healthy here", dynamic: true, healthy: map[string]int{"apache": 2}, from: []string{a1}, refused: "apache"},
		{name: "static, apache emptied, none healthy here", healthy: map[string]int{}, from: []string{a1}},
		{name: "dynamic, apache emptied, none healthy here", dynamic: true, healthy: map[string]int{}, from: []string{a1}},
		{name: "static, fewer backends than healthy here", healthy: map[string]int{"apache": 3}, from: []string{a1, a2}, to: []string{a2}},
		{name: "dynamic, fewer backends than healthy here", dynamic: true, healthy: map[string]int{"apache": 3}, from: []string{a1, a2}, to: []string{a2}},
		{name: "static, api emptied, only apache healthy here", services: twoServices, healthy: map[string]int{"apache": 2}, from: []string{a1, b1}, to: []string{a1}},
		{name: "dynamic, api emptied, only apache healthy here", dynamic: true, services: twoServices, healthy: map[string]int{"apache": 2}, from: []string{a1, b1}, to: []string{a1}},
		{name: "static, api emptied while healthy here", services: twoServices, healthy: map[string]int{"apache": 2, "api": 1}, from: []string{a1, b1}, to: []string{a1}, refused: "api"},
		{name: "dynamic, api emptied while healthy here", dynamic: true, services: twoServices, healthy: map[string]int{"apache": 2, "api": 1}, from: []string{a1, b1}, to: []string{a1}, refused: "api"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ngx, log := newFakeNginx()
				del := ngx
				hh := &healthyCounts{n: maps.Clone(tt.healthy)}
				h := startWith(t, harnessConfig{tmpl: Default(), nginx: ngx, dynamic: tt.dynamic,
					statusPort: testStatusPort, services: tt.services, healthyHere: hh.get})
				from, to := poolSnap(t, 1, tt.from...), poolSnap(t, 2, tt.to...)
				all := append(append([]string{}, tt.from...), tt.to...)
				if tt.dynamic { // nginx runs the dynamic config already
					_, full := h.finished(t, from)
					del.live, ngx.running = full, full
				}
				h.src.set(from)
				advance(time.Second)
				if err := servesExactly(h.ctrl, all, tt.from); err != nil {
					t.Fatalf("after the first pass: %v", err)
				}
				if r := hh.refused(); len(r) != 0 {
					t.Fatalf("the first registrations (with backends) were refused %d times", len(r))
				}
				log.take()

				h.src.set(to)
				if tt.refused != "" {
					advance(3 * time.Second)
					got := log.take()
					if countPrefix(got, "PushPools") != 0 || slices.ContainsFunc(got, func(e string) bool { return strings.HasSuffix(e, "changed=true") }) {
						t.Errorf("while refused: events %q; want nothing new delivered or pushed", got)
					}
					if err := servesExactly(h.ctrl, all, tt.from); err != nil {
						t.Errorf("while refused: %v; want the previous pools served", err)
					}
					// Retried with backoff: 100ms ±50%, growing by 1.5, plus
					// the debounce, gives at least 6 tries in 3s.
					r := hh.refused()
					if len(r) < 6 || len(r) > int(3*time.Second/(50*time.Millisecond)) {
						t.Fatalf("refused %d times in 3s; want retries with backoff (6 to 60)", len(r))
					}
					for i := 1; i < len(r); i++ {
						if gap := r[i].Sub(r[i-1]); gap < 50*time.Millisecond {
							t.Errorf("retry %d came %v after the previous one; want at least 50ms", i, gap)
						}
					}
					if first, last := r[1].Sub(r[0]), r[len(r)-1].Sub(r[len(r)-2]); last <= first {
						t.Errorf("last retry gap %v, first %v; want the gaps to grow", last, first)
					}
					// This node now agrees: a retry applies the registrations,
					// with no further trigger.
					hh.set(tt.refused, 0)
					advance(10 * time.Second)
				} else {
					advance(time.Second)
					if r := hh.refused(); len(r) != 0 {
						t.Errorf("refused %d times; want the registrations applied", len(r))
					}
				}

				events := log.take()
				wantPushes := map[bool]int{false: 0, true: 1}[tt.dynamic]
				if countPrefix(events, "Deliver") != 1 || countPrefix(events, "PushPools") != wantPushes {
					t.Errorf("applying: events %q; want one Deliver and %d PushPools", events, wantPushes)
				}
				if err := servesExactly(h.ctrl, all, tt.to); err != nil {
					t.Errorf("after applying: %v", err)
				}
				_, full := h.finished(t, to)
				if live := del.liveConfig(); live != full {
					t.Errorf("live config =\n%s\nwant\n%s", live, full)
				}
				if tt.dynamic {
					pushes := ngx.pushes()
					if w := string(PoolsBody(2, h.view(to))); len(pushes) == 0 || pushes[len(pushes)-1] != w {
						t.Errorf("pushed bodies = %q; want the last to be %q", pushes, w)
					}
					if tt.refused != "" && !strings.Contains(pushes[len(pushes)-1], "\n"+tt.refused+"\n") {
						t.Errorf("last push %q; want an empty %s line", pushes[len(pushes)-1], tt.refused)
					}
				} else if len(tt.to) == 0 && !strings.Contains(del.liveConfig(), `return 503 "no healthy backend for service apache\n";`) {
					t.Errorf("live config =\n%s\nwant the 503 answer for apache", del.liveConfig())
				}
				// Refused passes are observed (for metrics) with ErrWouldEmpty;
				// besides them, two successes, the second at revision 2.
				var ok []Outcome
				for _, o := range h.observed() {
					switch {
					case o.Err == nil:
						ok = append(ok, o)
					case !errors.Is(o.Err, ErrWouldEmpty) || o.Result != ResultRefused:
						t.Errorf("outcome error %v (%s); want only ErrWouldEmpty, refused", o.Err, o.Result)
					}
				}
				if len(ok) != 2 || ok[1].Revision != 2 {
					t.Errorf("successful outcomes = %+v; want two, the second at revision 2", ok)
				}
				// Settled: no more retries.
				advance(time.Minute)
				if got := log.take(); len(got) != 0 {
					t.Errorf("after applying: %q; want nothing", got)
				}
			})
		})
	}
}

// TestControllerGuardKeepsOnlyThatPool: one service's pool is kept while
// etcd and this node disagree about it; the other service's changes go
// live at once.
func TestControllerGuardKeepsOnlyThatPool(t *testing.T) {
	const (
		a1 = "apache/10.0.0.1:80"
		a2 = "apache/10.0.0.2:80"
		b1 = "api/10.0.1.1:80"
	)
	for _, dynamic := range []bool{false, true} {
		t.Run(map[bool]string{false: "static", true: "dynamic"}[dynamic], func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ngx, _ := newFakeNginx()
				hh := &healthyCounts{n: map[string]int{"api": 1}}
				h := startWith(t, harnessConfig{tmpl: Default(), nginx: ngx, dynamic: dynamic,
					statusPort: testStatusPort, services: []string{"apache", "api"}, healthyHere: hh.get})
				from := poolSnap(t, 1, a1, b1)
				if dynamic {
					_, full := h.finished(t, from)
					ngx.live, ngx.running = full, full
				}
				h.src.set(from)
				advance(time.Second)
				// api's key is gone from etcd, apache gained a backend.
				h.src.set(poolSnap(t, 2, a1, a2))
				advance(time.Second)
				if err := servesExactly(h.ctrl, []string{a1, a2, b1}, []string{a1, a2, b1}); err != nil {
					t.Errorf("apache's new backend must be served at once, api's pool kept: %v", err)
				}
				o := h.observed()
				if len(o) < 2 || !errors.Is(o[1].Err, ErrWouldEmpty) || o[1].Result != ResultRefused || !(o[1].Changed || o[1].Pushed) {
					t.Errorf("outcomes %+v; want the second applied and marked ErrWouldEmpty", o)
				}
			})
		})
	}
}
