package render

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/nginx"
	"github.com/upstreamd/upstreamd/store"
)

// listTemplate renders one line per service: its name and addresses.
const listTemplate = `{{range .Services}}{{.Name}}:{{range .Backends}} {{.Addr}}{{end}}
{{end}}`

// backends returns a snapshot of n apache backends at revision rev.
func backends(t testing.TB, n int, rev int64) store.Snapshot {
	t.Helper()
	keys := make([]string, 0, n)
	for i := range n {
		keys = append(keys, fmt.Sprintf("/services/apache/10.0.%d.%d:80", i/250, i%250+1))
	}
	snap := snapshotOf(t, keys...)
	snap.Revision = rev
	return snap
}

// want renders snap the way the test controllers do.
func want(t testing.TB, tmpl *Template, snap store.Snapshot) string {
	t.Helper()
	out, err := Render(tmpl, NewView(ViewInput{Projects: anyProject, Snapshot: snap, Services: []string{"apache"}, Default: "apache", Listen: 80}))
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func TestControllerNoSnapshotYet(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tmpl, err := Parse("list.tmpl", listTemplate)
		if err != nil {
			t.Fatal(err)
		}
		del := &fakeNginx{}
		h := start(t, tmpl, del)
		h.src.notify() // a change signal before the first load
		h.host.restart()
		advance(time.Minute)
		if _, calls := del.snapshot(); len(calls) != 0 {
			t.Fatalf("Deliver called %d times before any snapshot; want 0", len(calls))
		}
		if o, n := h.observed(), h.waited(); len(o) != 0 || n == 0 {
			t.Errorf("before any snapshot: outcomes %+v and %d waiting passes; want only waiting ones", o, n)
		}
		// Once the first snapshot arrives it is delivered at once: a
		// change after a quiet spell waits for no debounce.
		snap := backends(t, 2, 7)
		setAt := time.Now()
		h.src.set(snap)
		advance(time.Second)
		live, calls := del.snapshot()
		if len(calls) != 1 {
			t.Fatalf("Deliver called %d times after the first snapshot; want 1", len(calls))
		}
		if got := calls[0].at.Sub(setAt); got != 0 {
			t.Errorf("delivered %v after the change; want at once", got)
		}
		if w := want(t, tmpl, snap); live != w || calls[0].id != "proxy-1" {
			t.Errorf("delivered %q to %q; want %q to proxy-1", live, calls[0].id, w)
		}
		if o := h.observed(); len(o) != 1 || !o[0].Changed || o[0].Revision != 7 || o[0].Backends != 2 || o[0].Err != nil {
			t.Errorf("outcomes = %+v; want one changed outcome at revision 7 with 2 backends", o)
		}
	})
}

func TestControllerDebounce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tmpl, err := Parse("list.tmpl", listTemplate)
		if err != nil {
			t.Fatal(err)
		}
		del := &fakeNginx{}
		h := start(t, tmpl, del)
		const (
			changes  = 100
			interval = 10 * time.Millisecond
			window   = changes * interval // one second
		)
		var last store.Snapshot
		first := time.Now()
		for i := range changes {
			last = backends(t, i+1, int64(i+1))
			h.src.set(last)
			advance(interval)
		}
		advance(time.Second) // let the last debounce run out
		live, calls := del.snapshot()
		for _, c := range calls {
			t.Logf("delivered at +%v", c.at.Sub(first))
		}
		maxPasses := int(math.Ceil(float64(window)/float64(DefaultMaxDebounce))) + 1
		if len(calls) == 0 || len(calls) > maxPasses {
			t.Errorf("%d changes in %v gave %d deliveries; want 1 to %d", changes, window, len(calls), maxPasses)
		}
		if w := want(t, tmpl, last); live != w {
			t.Errorf("last delivered config =\n%.200s…\nwant the last snapshot's\n%.200s…", live, w)
		}
		// Changes that keep coming do not hold rendering back for longer
		// than MaxDebounce.
		if got := calls[0].at.Sub(first); got > DefaultMaxDebounce {
			t.Errorf("first delivery %v after the first change; want at most MaxDebounce %v", got, DefaultMaxDebounce)
		}
		// Nothing happens once the changes stop.
		advance(time.Minute)
		if _, again := del.snapshot(); len(again) != len(calls) {
			t.Errorf("%d deliveries after the changes stopped; want none", len(again)-len(calls))
		}
	})
}

func TestControllerCheckFailedNotRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tmpl, err := Parse("list.tmpl", listTemplate)
		if err != nil {
			t.Fatal(err)
		}
		bad := backends(t, 3, 1)
		badCfg := want(t, tmpl, bad)
		del := &fakeNginx{live: "last good", fail: func(_ int, cfg string) error {
			if cfg == badCfg {
				return fmt.Errorf("%w: nginx: [emerg] invalid number of arguments", nginx.ErrCheckFailed)
			}
			return nil
		}}
		h := start(t, tmpl, del)

		h.src.set(bad)
		advance(time.Second)
		if _, calls := del.snapshot(); len(calls) != 1 {
			t.Fatalf("Deliver called %d times for the bad config; want 1", len(calls))
		}
		// The same bytes again, by a change signal, nginx restarting in
		// place, or waiting: nginx said no to them once, so they are not
		// delivered again.
		h.src.set(bad)
		advance(time.Second)
		h.host.restart()
		advance(time.Minute)
		live, calls := del.snapshot()
		if len(calls) != 1 {
			t.Errorf("Deliver called %d times; want the rejected bytes delivered once only", len(calls))
		}
		if live != "last good" {
			t.Errorf("live = %q; want the last good config", live)
		}
		o := h.observed()
		if len(o) == 0 || !errors.Is(o[0].Err, nginx.ErrCheckFailed) || o[0].Result != ResultRejected {
			t.Fatalf("outcomes = %+v; want the first to be nginx.ErrCheckFailed, rejected", o)
		}
		for _, later := range o[1:] {
			if later.Err != nil || later.Changed || later.Pushed {
				t.Errorf("outcome %+v after the rejection; want unchanged: the same bytes are not tried again", later)
			}
		}

		// A new snapshot renders new bytes, which are delivered.
		good := backends(t, 2, 2)
		h.src.set(good)
		advance(time.Second)
		live, calls = del.snapshot()
		if len(calls) != 2 {
			t.Fatalf("Deliver called %d times; want 2 after a new snapshot", len(calls))
		}
		if w := want(t, tmpl, good); live != w {
			t.Errorf("live = %q; want %q", live, w)
		}
		// Only the last rejected bytes are remembered: once something else
		// went live, the bad config is checked again if it comes back.
		h.src.set(bad)
		advance(time.Second)
		if _, calls = del.snapshot(); len(calls) != 3 {
			t.Errorf("Deliver called %d times; want the bad config tried again after a good one", len(calls))
		}
	})
}

func TestControllerTransientErrorRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tmpl, err := Parse("list.tmpl", listTemplate)
		if err != nil {
			t.Fatal(err)
		}
		const failures = 4
		del := &fakeNginx{fail: func(n int, _ string) error {
			if n < failures {
				return errors.New("copy to container: engine timeout")
			}
			return nil
		}}
		h := start(t, tmpl, del)
		snap := backends(t, 2, 5)
		h.src.set(snap)
		advance(time.Minute)
		live, calls := del.snapshot()
		if len(calls) != failures+1 {
			t.Fatalf("Deliver called %d times; want %d failures then one success", len(calls), failures)
		}
		if w := want(t, tmpl, snap); live != w {
			t.Errorf("live = %q; want %q", live, w)
		}
		// The retries back off: 100 ms initially, ±50 % jitter, growing,
		// at most 5 s (+50 %). Each retry also waits the debounce.
		for i := 1; i < len(calls); i++ {
			gap := calls[i].at.Sub(calls[i-1].at)
			if gap < 50*time.Millisecond || gap > 7500*time.Millisecond+DefaultMaxDebounce {
				t.Errorf("retry %d came %v after the previous attempt; want a backoff between 50ms and 7.75s", i, gap)
			}
		}
		if total := calls[len(calls)-1].at.Sub(calls[0].at); total < 4*50*time.Millisecond {
			t.Errorf("%d retries took %v; want backoff, not a hot loop", failures, total)
		}
		// Once it succeeded, nothing more.
		advance(time.Minute)
		if _, again := del.snapshot(); len(again) != len(calls) {
			t.Errorf("%d deliveries after success; want none", len(again)-len(calls))
		}
		o := h.observed()
		if len(o) != failures+1 || !o[failures].Changed || o[failures].Err != nil {
			t.Fatalf("outcomes = %+v; want %d failures, then one changed outcome", o, failures)
		}
		for _, f := range o[:failures] {
			if f.Err == nil || !strings.Contains(f.Err.Error(), "engine timeout") || f.Revision != 5 {
				t.Errorf("outcome %+v; want the delivery's error at revision 5 (every pass is observed)", f)
			}
		}
	})
}

func TestControllerNoProxy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tmpl, err := Parse("list.tmpl", listTemplate)
		if err != nil {
			t.Fatal(err)
		}
		del := &fakeNginx{}
		h := start(t, tmpl, del)
		h.host.setProxy(false)
		snap := backends(t, 1, 3)
		h.src.set(snap)
		advance(time.Minute)
		if _, calls := del.snapshot(); len(calls) != 0 {
			t.Fatalf("Deliver called %d times without a proxy; want 0", len(calls))
		}
		// One pass (the triggers before it collapse into it): no polling
		// for the proxy, no retries.
		if o, n := h.observed(), h.waited(); len(o) != 0 || n != 1 {
			t.Errorf("without a proxy: outcomes %+v and %d waiting passes; want none and 1", o, n)
		}
		// The proxy appears: a pass delivers to it.
		h.host.setProxy(true)
		advance(time.Second)
		live, calls := del.snapshot()
		if len(calls) != 1 || calls[0].id != "proxy-1" {
			t.Fatalf("deliveries after the proxy appeared = %+v; want one to proxy-1", calls)
		}
		if w := want(t, tmpl, snap); live != w {
			t.Errorf("live = %q; want %q", live, w)
		}
		// nginx restarts in place with nothing new: a new Session finds
		// the same bytes live and reports no change.
		h.host.restart()
		advance(time.Second)
		if _, calls := del.snapshot(); len(calls) != 2 {
			t.Errorf("deliveries after a restart = %d; want 2", len(calls))
		}
		if got := del.started(); len(got) != 2 {
			t.Errorf("Sessions started with %q; want two: at first, and after the restart", got)
		}
		if o := h.observed(); len(o) != 2 || !o[0].Changed || o[1].Changed {
			t.Errorf("outcomes = %+v; want changed, then unchanged", o)
		}
	})
}

func TestControllerTemplateError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// Renders while apache has backends; getv of a missing key fails
		// otherwise.
		tmpl, err := Parse("strict.tmpl", `{{with .Backends}}{{range .}}server {{.Addr}};{{end}}{{else}}{{getv "/services/apache/none"}}{{end}}`)
		if err != nil {
			t.Fatal(err)
		}
		del := &fakeNginx{live: "last good"}
		h := start(t, tmpl, del)
		h.src.set(backends(t, 0, 4))
		advance(time.Minute)
		live, calls := del.snapshot()
		if len(calls) != 0 {
			t.Fatalf("Deliver called %d times after a template error; want 0", len(calls))
		}
		if live != "last good" {
			t.Errorf("live = %q; want it unchanged", live)
		}
		o := h.observed()
		if len(o) != 1 || o[0].Err == nil || o[0].Revision != 4 {
			t.Fatalf("outcomes = %+v; want one error at revision 4, not retried", o)
		}
		if !bytes.Contains([]byte(o[0].Err.Error()), []byte("strict.tmpl")) {
			t.Errorf("outcome error = %q; want it to name the template", o[0].Err)
		}
		var re *RenderError
		if !errors.As(o[0].Err, &re) || re.Template != "strict.tmpl" || o[0].Result != ResultError {
			t.Errorf("outcome %v (%s); want a *RenderError of strict.tmpl, an error", o[0].Err, o[0].Result)
		}
		// Data the template can render goes through.
		h.src.set(backends(t, 1, 5))
		advance(time.Second)
		live, calls = del.snapshot()
		if len(calls) != 1 || live != "server 10.0.0.1:80;" {
			t.Errorf("after a renderable snapshot: %d deliveries, live %q; want 1, %q", len(calls), live, "server 10.0.0.1:80;")
		}
	})
}

func TestControllerStopsOnCancel(t *testing.T) {
	tmpl, err := Parse("list.tmpl", listTemplate)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		before func(t *testing.T, src *fakeSource, del *fakeNginx)
	}{
		{name: "idle"},
		{name: "while debouncing", before: func(t *testing.T, src *fakeSource, _ *fakeNginx) {
			src.set(backends(t, 1, 1))
			advance(time.Millisecond)
		}},
		{name: "while waiting to retry", before: func(t *testing.T, src *fakeSource, del *fakeNginx) {
			src.set(backends(t, 1, 1))
			advance(DefaultMinDebounce) // the first attempt, which fails
			if _, calls := del.snapshot(); len(calls) != 1 {
				t.Fatalf("Deliver called %d times; want 1 failed attempt before cancelling", len(calls))
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				src := newFakeSource()
				del := &fakeNginx{fail: func(int, string) error { return errors.New("transient") }}
				ready := make(chan struct{})
				close(ready)
				ctrl := NewController(ControllerConfig{
					View:     ViewInput{Projects: anyProject},
					Template: tmpl, Source: src, Sessions: del.session, Logger: zerolog.Nop(),
					Host: &fakeHost{ready: ready, up: true, proxy: nginx.Proxy{ID: "proxy-1"}},
				})
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				done := make(chan error, 1)
				go func() { done <- ctrl.Start(ctx) }()
				if tt.before != nil {
					tt.before(t, src, del)
				}
				cancel()
				synctest.Wait()
				select {
				case err := <-done:
					if err != nil {
						t.Errorf("Start = %v; want nil", err)
					}
				default:
					t.Fatal("Start did not return after cancellation")
				}
			})
		})
	}
}

// apacheSnap returns a snapshot at rev of apache backends at addrs.
func apacheSnap(t testing.TB, rev int64, addrs ...string) store.Snapshot {
	t.Helper()
	keys := make([]string, 0, len(addrs))
	for _, a := range addrs {
		keys = append(keys, "/services/apache/"+a)
	}
	snap := snapshotOf(t, keys...)
	snap.Revision = rev
	return snap
}

// poolSnap returns a snapshot at rev of the backends, each written
// "service/host:port".
func poolSnap(t testing.TB, rev int64, backends ...string) store.Snapshot {
	t.Helper()
	keys := make([]string, 0, len(backends))
	for _, b := range backends {
		keys = append(keys, store.DefaultPrefix+"/"+b)
	}
	snap := snapshotOf(t, keys...)
	snap.Revision = rev
	return snap
}

// servesExactly checks, for each backend of all (each "service/host:port"),
// that ctrl.Serves says true exactly for those in want; it returns an error
// listing each mismatch.
func servesExactly(ctrl *Controller, all, want []string) error {
	var errs []error
	for _, b := range all {
		service, addr, _ := strings.Cut(b, "/")
		if got, w := ctrl.Served().Serves(service, addr), slices.Contains(want, b); got != w {
			errs = append(errs, fmt.Errorf("Serves(%s, %s) = %v; want %v", service, addr, got, w))
		}
	}
	return errors.Join(errs...)
}

// countPrefix counts the events that start with prefix.
func countPrefix(events []string, prefix string) int {
	n := 0
	for _, e := range events {
		if strings.HasPrefix(e, prefix) {
			n++
		}
	}
	return n
}

// view builds snap's View the way h's Controller does.
func (h *harness) view(snap store.Snapshot) View {
	in := h.ctrl.cfg.View
	in.Snapshot = snap
	return NewView(in)
}

// finished returns the hash of snap's rendered config and the config that
// h's Controller delivers for it.
func (h *harness) finished(t testing.TB, snap store.Snapshot) (hash, full string) {
	t.Helper()
	v := h.view(snap)
	out, err := Render(h.ctrl.cfg.Template, v)
	if err != nil {
		t.Fatal(err)
	}
	return Hash(out), string(Finish(out, v))
}

// servesWant checks, for each of addrs, that ctrl.Served().Serves("apache", addr)
// is want[addr]; it returns an error listing each mismatch.
func servesWant(ctrl *Controller, addrs []string, want map[string]bool) error {
	var errs []error
	for _, a := range addrs {
		if got := ctrl.Served().Serves("apache", a); got != want[a] {
			errs = append(errs, fmt.Errorf("Serves(apache, %s) = %v; want %v", a, got, want[a]))
		}
	}
	return errors.Join(errs...)
}

func setOf(addrs []string) map[string]bool {
	m := make(map[string]bool, len(addrs))
	for _, a := range addrs {
		m[a] = true
	}
	return m
}

// TestControllerDynamicMembership: with dynamic pools, a change of
// backends is one push to the Lua balancer; the config stays the same, so
// there is no reload to confirm. nginx is known to serve the new pools only
// once the push went through.
func TestControllerDynamicMembership(t *testing.T) {
	const a1, a2, a3 = "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"
	tests := []struct {
		name     string
		from, to []string
	}{
		{name: "backend added", from: []string{a1, a2}, to: []string{a1, a2, a3}},
		{name: "backend removed", from: []string{a1, a2, a3}, to: []string{a1, a2}},
		{name: "backend replaced", from: []string{a1, a2}, to: []string{a1, a3}},
		{name: "last backend gone", from: []string{a1}, to: nil},
		{name: "first backend", from: nil, to: []string{a1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ngx, log := newFakeNginx()
				del := ngx
				h := startWith(t, harnessConfig{tmpl: Default(), nginx: ngx, dynamic: true, statusPort: testStatusPort})
				before, after := apacheSnap(t, 1, tt.from...), apacheSnap(t, 2, tt.to...)
				hash, full := h.finished(t, before)
				if h2, full2 := h.finished(t, after); h2 != hash || full2 != full {
					t.Fatalf("the dynamic config differs between the snapshots; this test needs them equal")
				}
				// upstreamd restarts while nginx runs the dynamic config.
				del.live = full
				ngx.running = full
				h.src.set(before)
				advance(time.Second)
				wantStart := []string{
					"Session " + testProxyID,
					"PushPools " + testStatusAddr + " v1",
					"Deliver " + testProxyID + " changed=false",
					"ConfigHash " + testStatusAddr + " = " + hash, // confirmed once
				}
				if got := log.take(); !slices.Equal(got, wantStart) {
					t.Fatalf("first pass =\n%q\nwant\n%q", got, wantStart)
				}
				all := append(append([]string{}, tt.from...), tt.to...)
				if err := servesWant(h.ctrl, all, setOf(tt.from)); err != nil {
					t.Fatalf("after the first pass: %v", err)
				}

				// Wait for each address whose state changes.
				var waits []chan error
				for _, a := range all {
					if want := setOf(tt.to)[a]; want != setOf(tt.from)[a] {
						ch := make(chan error, 1)
						go func() { ch <- h.ctrl.Served().WaitServes(t.Context(), "apache", a, want) }()
						waits = append(waits, ch)
					}
				}
				var atPush []error
				ngx.onPush = func() {
					// Nothing flips before the push.
					atPush = append(atPush, servesWant(h.ctrl, all, setOf(tt.from)))
					for _, ch := range waits {
						if len(ch) > 0 {
							atPush = append(atPush, errors.New("WaitServes returned before the push"))
						}
					}
				}
				h.src.set(after)
				advance(time.Second)
				wantChange := []string{
					"PushPools " + testStatusAddr + " v2",
					"Deliver " + testProxyID + " changed=false",
				}
				if got := log.take(); !slices.Equal(got, wantChange) {
					t.Errorf("membership change =\n%q\nwant\n%q (one push, no reload, nothing to confirm)", got, wantChange)
				}
				if err := errors.Join(atPush...); err != nil || len(atPush) == 0 {
					t.Errorf("at the push: %v (%d pushes seen)", err, len(atPush))
				}
				pushes := ngx.pushes()
				if want := string(PoolsBody(2, h.view(after))); len(pushes) != 2 || pushes[1] != want {
					t.Errorf("pushed bodies = %q; want the second to be %q", pushes, want)
				}
				if err := servesWant(h.ctrl, all, setOf(tt.to)); err != nil {
					t.Errorf("after the push: %v", err)
				}
				for _, ch := range waits {
					select {
					case err := <-ch:
						if err != nil {
							t.Errorf("WaitServes = %v; want nil after the push", err)
						}
					default:
						t.Errorf("WaitServes still waiting after the push")
					}
				}
				o := h.observed()
				if len(o) != 2 {
					t.Fatalf("outcomes = %+v; want 2", o)
				}
				if got := o[1]; !got.Pushed || got.Changed || got.Confirmed != 0 || got.Err != nil || got.Revision != 2 || got.Backends != len(tt.to) {
					t.Errorf("outcome = %+v; want pushed, unchanged, unconfirmed, revision 2, %d backends", got, len(tt.to))
				}
			})
		})
	}
}

// TestControllerDynamicFirstStart: when the live config has no pools API
// yet, the pools are pushed after the dynamic config went live and nginx
// confirmed running it.
func TestControllerDynamicFirstStart(t *testing.T) {
	const a1 = "10.0.0.1:80"
	tests := []struct {
		name string
		// running is the config nginx runs before; "static" is the
		// static config with a status server but no pools API.
		running  string
		oldPolls string // what ConfigHash answers during the reload
		wantPush string // the first push's failure
	}{
		{name: "fresh proxy", running: "", oldPolls: "ConfigHash " + testStatusAddr + ": no status server", wantPush: "no status server"},
		{name: "static config live", running: "static", wantPush: "404"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ngx, log := newFakeNginx()
				del := ngx
				ngx.lag = 3
				h := startWith(t, harnessConfig{tmpl: Default(), nginx: ngx, dynamic: true, statusPort: testStatusPort})
				snap := apacheSnap(t, 5, a1)
				oldPolls := tt.oldPolls
				if tt.running == "static" {
					v := h.view(snap)
					v.Dynamic = false
					out, err := Render(Default(), v)
					if err != nil {
						t.Fatal(err)
					}
					del.live = string(Finish(out, v))
					ngx.running = del.live
					oldPolls = "ConfigHash " + testStatusAddr + " = " + Hash(out)
				}
				var servedDuringPolls []bool
				ngx.onPoll = func() { servedDuringPolls = append(servedDuringPolls, h.ctrl.Served().Serves("apache", a1)) }
				hash, full := h.finished(t, snap)
				h.src.set(snap)
				advance(time.Second)
				want := []string{
					"Session " + testProxyID,
					"PushPools " + testStatusAddr + " v5: " + tt.wantPush,
					"Deliver " + testProxyID + " changed=true",
					oldPolls, oldPolls, oldPolls,
					"ConfigHash " + testStatusAddr + " = " + hash,
					"PushPools " + testStatusAddr + " v5",
				}
				if got := log.take(); !slices.Equal(got, want) {
					t.Errorf("first pass =\n%q\nwant\n%q", got, want)
				}
				if del.liveConfig() != full {
					t.Errorf("live config =\n%s\nwant\n%s", del.liveConfig(), full)
				}
				if slices.Contains(servedDuringPolls, true) {
					t.Errorf("Serves during the reload = %v; want false until the pools are pushed", servedDuringPolls)
				}
				if !h.ctrl.Served().Serves("apache", a1) {
					t.Errorf("Serves(apache, %s) = false after the push; want true", a1)
				}
				if pushes := ngx.pushes(); len(pushes) != 1 || pushes[0] != string(PoolsBody(5, h.view(snap))) {
					t.Errorf("pushed bodies = %q; want one: %q", pushes, PoolsBody(5, h.view(snap)))
				}
				if o := h.observed(); len(o) != 1 || !o[0].Changed || !o[0].Pushed || o[0].Confirmed <= 0 || o[0].Err != nil {
					t.Errorf("outcomes = %+v; want one changed, pushed and confirmed", o)
				}
				// Settled: nothing more happens.
				advance(time.Minute)
				if got := log.take(); len(got) != 0 {
					t.Errorf("after settling: %q; want nothing", got)
				}
			})
		})
	}
}

// TestControllerStaticConfirm: without dynamic pools, a changed config is
// confirmed by polling the status server until nginx answers with its
// hash; only then is nginx known to serve its backends.
func TestControllerStaticConfirm(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const a1, a2 = "10.0.0.1:80", "10.0.0.2:80"
		tmpl, err := Parse("list.tmpl", listTemplate)
		if err != nil {
			t.Fatal(err)
		}
		ngx, log := newFakeNginx()
		del := ngx
		ngx.lag = 3
		h := startWith(t, harnessConfig{tmpl: tmpl, nginx: ngx, statusPort: testStatusPort})
		var duringPolls []error
		want := map[string]bool{} // what Serves must say during the polls
		ngx.onPoll = func() { duringPolls = append(duringPolls, servesWant(h.ctrl, []string{a1, a2}, want)) }

		steps := []struct {
			name     string
			snap     store.Snapshot
			oldPolls string
		}{
			{name: "first config", snap: apacheSnap(t, 1, a1), oldPolls: "ConfigHash " + testStatusAddr + ": no status server"},
			{name: "backend added", snap: apacheSnap(t, 2, a1, a2)},
			{name: "backend removed", snap: apacheSnap(t, 3, a2)},
		}
		var prev []string
		prevHash := ""
		// A sequence in one bubble (t.Run is not allowed in a bubble), so
		// messages name the step.
		for i, st := range steps {
			hash, full := h.finished(t, st.snap)
			oldPolls := st.oldPolls
			if oldPolls == "" {
				oldPolls = "ConfigHash " + testStatusAddr + " = " + prevHash
			}
			want = setOf(prev)
			duringPolls = nil
			h.src.set(st.snap)
			advance(time.Second)
			wantEvents := []string{
				"Deliver " + testProxyID + " changed=true",
				oldPolls, oldPolls, oldPolls,
				"ConfigHash " + testStatusAddr + " = " + hash,
			}
			if i == 0 {
				wantEvents = append([]string{"Session " + testProxyID}, wantEvents...)
			}
			if got := log.take(); !slices.Equal(got, wantEvents) {
				t.Errorf("%s: events =\n%q\nwant\n%q (no push in static mode)", st.name, got, wantEvents)
			}
			if del.liveConfig() != full {
				t.Errorf("%s: live config =\n%s\nwant\n%s", st.name, del.liveConfig(), full)
			}
			if err := errors.Join(duringPolls...); err != nil || len(duringPolls) != 4 {
				t.Errorf("%s: during the %d polls: %v; want the previous backends served until confirmed", st.name, len(duringPolls), err)
			}
			var now []string
			for _, e := range st.snap.Entries {
				now = append(now, e.Addr)
			}
			if err := servesWant(h.ctrl, []string{a1, a2}, setOf(now)); err != nil {
				t.Errorf("%s: after the confirmation: %v", st.name, err)
			}
			if o := h.observed(); len(o) != i+1 || !o[i].Changed || o[i].Pushed || o[i].Confirmed <= 0 || o[i].Revision != st.snap.Revision {
				t.Errorf("%s: outcomes = %+v; want %d, the last changed and confirmed after the polls", st.name, o, i+1)
			}
			prev, prevHash = now, hash
		}
	})
}

// TestControllerConfirmTimeout: a reload nginx never confirms fails the
// pass, which is retried with backoff; each retry confirms again, though
// the bytes are already live.
func TestControllerConfirmTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const a1 = "10.0.0.1:80"
		const confirmTimeout = 200 * time.Millisecond
		tmpl, err := Parse("list.tmpl", listTemplate)
		if err != nil {
			t.Fatal(err)
		}
		ngx, log := newFakeNginx()
		del := ngx
		ngx.stuck = true
		h := startWith(t, harnessConfig{tmpl: tmpl, nginx: ngx, statusPort: testStatusPort})
		ngx.confirmTimeout = confirmTimeout
		snap := apacheSnap(t, 1, a1)
		hash, _ := h.finished(t, snap)
		h.src.set(snap)
		advance(5 * time.Second)

		_, calls := del.snapshot()
		if len(calls) < 3 || len(calls) > int(5*time.Second/confirmTimeout) {
			t.Fatalf("%d delivery attempts in 5s; want retries with backoff (3 to %d)", len(calls), 5*time.Second/confirmTimeout)
		}
		for i := 1; i < len(calls); i++ {
			// The timeout, then at least half the initial 100ms backoff.
			if gap := calls[i].at.Sub(calls[i-1].at); gap < confirmTimeout+50*time.Millisecond {
				t.Errorf("attempt %d came %v after the previous one; want at least %v", i, gap, confirmTimeout+50*time.Millisecond)
			}
			if calls[i].changed {
				t.Errorf("attempt %d changed the live config; want the same bytes", i)
			}
		}
		if h.ctrl.Served().Serves("apache", a1) {
			t.Errorf("Serves(apache, %s) = true; want false while nginx does not confirm", a1)
		}
		failed := h.observed()
		// (The last attempt may still be confirming.)
		if len(failed) != len(calls) && len(failed) != len(calls)-1 {
			t.Errorf("%d outcomes for %d attempts; want every pass observed", len(failed), len(calls))
		}
		for _, o := range failed {
			if o.Err == nil || !strings.Contains(o.Err.Error(), "did not run config "+hash) {
				t.Errorf("outcome %+v; want the confirmation's error", o)
			}
		}
		events := log.take()
		for i, e := range events {
			// Every attempt confirms: a Deliver is followed by a poll.
			if strings.HasPrefix(e, "Deliver") && (i+1 == len(events) || !strings.HasPrefix(events[i+1], "ConfigHash")) {
				t.Errorf("event %d %q is not followed by a ConfigHash poll", i, e)
			}
		}

		// nginx catches up: the next retry confirms, then all is quiet.
		ngx.set(func(n *fakeNginx) { n.stuck = false })
		advance(10 * time.Second)
		if !h.ctrl.Served().Serves("apache", a1) {
			t.Errorf("Serves(apache, %s) = false after nginx caught up; want true", a1)
		}
		// (The attempt may have been polling when nginx caught up.)
		events = log.take()
		if len(events) == 0 || events[len(events)-1] != "ConfigHash "+testStatusAddr+" = "+hash {
			t.Errorf("events after nginx caught up = %q; want them to end with the confirmation", events)
		}
		// (Confirmed is zero here: nginx answered the first poll, and
		// no time passes on the bubble's clock.)
		if o := h.observed()[len(failed):]; len(o) != 1 || o[0].Err != nil || o[0].Revision != 1 {
			t.Errorf("outcomes after nginx caught up = %+v; want one success at revision 1", o)
		}
		_, before := del.snapshot()
		advance(time.Minute)
		if _, after := del.snapshot(); len(after) != len(before) {
			t.Errorf("%d more deliveries after the confirmation; want none", len(after)-len(before))
		}
	})
}

// TestControllerKick: a change signal with nothing new costs one Deliver
// the Deliverer answers from memory; a Kick verifies everything again:
// the Deliverer forgets the proxy, the pools are pushed and the config
// confirmed anew.
func TestControllerKick(t *testing.T) {
	const a1 = "10.0.0.1:80"
	tests := []struct {
		name    string
		dynamic bool
		kick    bool
		want    func(hash string) []string
	}{
		{name: "dynamic, change signal", dynamic: true, want: func(string) []string {
			return []string{"Deliver " + testProxyID + " changed=false"}
		}},
		{name: "dynamic, Kick", dynamic: true, kick: true, want: func(hash string) []string {
			return []string{
				"Session " + testProxyID,
				"PushPools " + testStatusAddr + " v1",
				"Deliver " + testProxyID + " changed=false",
				"ConfigHash " + testStatusAddr + " = " + hash,
			}
		}},
		{name: "static, change signal", want: func(string) []string {
			return []string{"Deliver " + testProxyID + " changed=false"}
		}},
		{name: "static, Kick", kick: true, want: func(hash string) []string {
			return []string{
				"Session " + testProxyID,
				"Deliver " + testProxyID + " changed=false",
				"ConfigHash " + testStatusAddr + " = " + hash,
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ngx, log := newFakeNginx()
				del := ngx
				h := startWith(t, harnessConfig{tmpl: Default(), nginx: ngx, dynamic: tt.dynamic, statusPort: testStatusPort})
				snap := apacheSnap(t, 1, a1)
				hash, _ := h.finished(t, snap)
				h.src.set(snap)
				advance(time.Second)
				if !h.ctrl.Served().Serves("apache", a1) {
					t.Fatalf("Serves(apache, %s) = false after the first pass; want true", a1)
				}
				log.take()
				if tt.kick {
					h.host.restart()
				} else {
					h.src.notify()
				}
				advance(time.Second)
				if got, want := log.take(), tt.want(hash); !slices.Equal(got, want) {
					t.Errorf("events =\n%q\nwant\n%q", got, want)
				}
				if got, want := len(del.started()), map[bool]int{false: 1, true: 2}[tt.kick]; got != want {
					t.Errorf("Forget called %d times; want %d", got, want)
				}
				if !h.ctrl.Served().Serves("apache", a1) {
					t.Errorf("Serves(apache, %s) = false; want true", a1)
				}
			})
		})
	}
}

// TestControllerDynamicPushRejected: a push the status server refuses
// (not a missing pools API) fails the pass before anything is delivered,
// and is retried.
func TestControllerDynamicPushRejected(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ngx, log := newFakeNginx()
		del := ngx
		del.token = "stale" // not the token nginx wants
		h := startWith(t, harnessConfig{tmpl: Default(), nginx: ngx, dynamic: true, statusPort: testStatusPort})
		snap := apacheSnap(t, 1, "10.0.0.1:80")
		_, full := h.finished(t, snap)
		del.live, ngx.running = full, full // nginx runs the dynamic config
		h.src.set(snap)
		advance(2 * time.Second)
		events := log.take()
		pushes := 0
		for _, e := range events {
			switch {
			case strings.HasPrefix(e, "PushPools"):
				pushes++
				if !strings.HasSuffix(e, ": 403") {
					t.Errorf("push %q; want it refused", e)
				}
			case strings.HasPrefix(e, "Deliver"):
				t.Errorf("event %q; want nothing delivered after a refused push", e)
			}
		}
		if pushes < 2 {
			t.Errorf("%d pushes in 2s; want the refused push retried: %q", pushes, events)
		}
		if h.ctrl.Served().Serves("apache", "10.0.0.1:80") {
			t.Errorf("Serves = true; want false while the push is refused")
		}
	})
}

func TestControllerWaitServes(t *testing.T) {
	const served, other = "10.0.0.1:80", "10.0.0.9:80"
	tests := []struct {
		name     string
		service  string
		addr     string
		want     bool
		wantErr  []string // substrings; empty: returns nil at once
		canceled bool     // the caller cancels instead of a deadline
	}{
		{name: "served, want served", service: "apache", addr: served, want: true},
		{name: "not served, want not served", service: "apache", addr: other, want: false},
		{name: "unknown service, want not served", service: "nope", addr: served, want: false},
		{name: "never served", service: "apache", addr: other, want: true, wantErr: []string{"wait for nginx to serve 10.0.0.9:80 of apache", "deadline exceeded"}},
		{name: "never stops", service: "apache", addr: served, want: false, wantErr: []string{"wait for nginx to stop serving 10.0.0.1:80 of apache", "deadline exceeded"}},
		{name: "caller gives up", service: "apache", addr: other, want: true, canceled: true, wantErr: []string{"context canceled"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				tmpl, err := Parse("list.tmpl", listTemplate)
				if err != nil {
					t.Fatal(err)
				}
				h := start(t, tmpl, &fakeNginx{})
				h.src.set(apacheSnap(t, 1, served))
				advance(time.Second)

				ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
				defer cancel()
				if tt.canceled {
					time.AfterFunc(time.Second, cancel)
				}
				// Passes that change nothing for addr do not end the wait.
				h.src.set(apacheSnap(t, 2, served, "10.0.0.2:80"))
				begin := time.Now()
				err = h.ctrl.Served().WaitServes(ctx, tt.service, tt.addr, tt.want)
				took := time.Since(begin)
				if len(tt.wantErr) == 0 {
					if err != nil || took != 0 {
						t.Errorf("WaitServes = %v after %v; want nil at once", err, took)
					}
					return
				}
				if err == nil {
					t.Fatalf("WaitServes = nil; want an error")
				}
				for _, want := range tt.wantErr {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("WaitServes error = %q; want it to contain %q", err, want)
					}
				}
				if !errors.Is(err, ctx.Err()) {
					t.Errorf("WaitServes error = %v; want it to match ctx's error %v", err, ctx.Err())
				}
				if wantTook := map[bool]time.Duration{false: time.Minute, true: time.Second}[tt.canceled]; took != wantTook {
					t.Errorf("WaitServes returned after %v; want %v", took, wantTook)
				}
			})
		})
	}
}

// TestControllerRejectedConfigPools: nginx rejects the rendered config
// (an include of a file it does not have, for a service only etcd lists).
// The rejected bytes are not delivered again, and with dynamic pools the
// last good config keeps receiving membership changes, which Serves
// reflects: whether it went live through this controller, was running
// when upstreamd started, or nginx restarted in place since (a Kick). In
// static mode, and while no config with the pools API runs, Serves keeps
// what it knew.
func TestControllerRejectedConfigPools(t *testing.T) {
	const (
		a1 = "apache/10.0.0.1:80"
		a2 = "apache/10.0.0.2:80"
		l1 = "legacy/10.0.9.1:80" // a service etcd lists but the spec does not
	)
	tmpl, err := Parse("includes.tmpl", defaultTemplate+`{{range .Services}}{{if not .Configured}}
include /etc/nginx/upstreamd/{{.Name}}.conf;
{{- end}}{{end}}
`)
	if err != nil {
		t.Fatal(err)
	}
	const missing = "include /etc/nginx/upstreamd/legacy.conf;"
	tests := []struct {
		name    string
		dynamic bool
		// good is how the last good config (for a1) came to run:
		// "delivered" by this controller, "running" when upstreamd
		// started, or "none": nginx runs no config of upstreamd's.
		good       string
		kick       bool // the proxy restarts in place after the rejection …
		restarting bool // … and its status server answers only a while later
	}{
		{name: "dynamic, good config delivered", dynamic: true, good: "delivered"},
		{name: "dynamic, good config running at start", dynamic: true, good: "running"},
		{name: "dynamic, good config delivered, then Kick", dynamic: true, good: "delivered", kick: true},
		{name: "dynamic, good config running at start, then Kick", dynamic: true, good: "running", kick: true},
		{name: "dynamic, good config running at start, then Kick while nginx restarts", dynamic: true, good: "running", kick: true, restarting: true},
		{name: "dynamic, no good config", dynamic: true, good: "none"},
		{name: "static, good config delivered", good: "delivered"},
		{name: "static, good config delivered, then Kick", good: "delivered", kick: true},
		{name: "static, good config running at start", good: "running"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ngx, log := newFakeNginx()
				del := ngx
				del.fail = func(_ int, cfg string) error {
					if strings.Contains(cfg, missing) {
						return fmt.Errorf(`%w: nginx: [emerg] open() "/etc/nginx/upstreamd/legacy.conf" failed (2: No such file or directory)`, nginx.ErrCheckFailed)
					}
					return nil
				}
				h := startWith(t, harnessConfig{tmpl: tmpl, nginx: ngx, dynamic: tt.dynamic, statusPort: testStatusPort})
				all := []string{a1, a2, l1}
				good, bad1, bad2 := poolSnap(t, 1, a1), poolSnap(t, 2, a1, l1), poolSnap(t, 3, a1, a2, l1)
				var served []string // what Serves knows before the rejection
				switch tt.good {
				case "delivered":
					h.src.set(good)
					advance(time.Second)
					served = []string{a1}
				case "running":
					_, full := h.finished(t, good)
					del.live, ngx.running = full, full
				}
				if err := servesExactly(h.ctrl, all, served); err != nil {
					t.Fatalf("before the rejection: %v", err)
				}
				// The pools reach nginx when a config with the pools API runs.
				poolsAPI := tt.dynamic && tt.good != "none"

				h.src.set(bad1)
				advance(time.Second)
				if _, calls := del.snapshot(); len(calls) == 0 || !errors.Is(calls[len(calls)-1].err, nginx.ErrCheckFailed) {
					t.Fatalf("deliveries = %+v; want the last rejected", calls)
				}
				// Legacy is not the spec's: nothing is pushed for it, and it
				// is never served.
				if poolsAPI {
					served = []string{a1}
				}
				if err := servesExactly(h.ctrl, all, served); err != nil {
					t.Errorf("after the rejection: %v", err)
				}
				log.take()
				if tt.kick {
					// Verify everything again: the pools are pushed anew,
					// the rejected config is not delivered again.
					var running string
					if tt.restarting {
						ngx.set(func(n *fakeNginx) { running, n.running = n.running, "" })
					}
					h.host.restart()
					advance(time.Second)
					events := log.take()
					if tt.restarting {
						if n := countPrefix(events, "PushPools "+testStatusAddr+" v2: no status server"); n < 2 {
							t.Errorf("Kick while nginx restarts: events %q; want the push retried", events)
						}
						ngx.set(func(n *fakeNginx) { n.running = running })
						advance(10 * time.Second)
						events = append(events, log.take()...)
					}
					if poolsAPI && (len(events) == 0 || events[len(events)-1] != "PushPools "+testStatusAddr+" v2") {
						t.Errorf("Kick: events %q; want them to end with the pools pushed again", events)
					}
					if n := countPrefix(events, "Deliver"); n != 0 {
						t.Errorf("Kick: events %q; want the rejected config not delivered again", events)
					}
				}

				// Membership changes; in dynamic mode the config does not.
				h.src.set(bad2)
				advance(time.Second)
				events := log.take()
				if poolsAPI {
					served = []string{a1, a2}
					if n := countPrefix(events, "PushPools "+testStatusAddr+" v3"); n != 1 {
						t.Errorf("membership change: events %q; want one push of revision 3", events)
					}
					pushes := ngx.pushes()
					if w := string(PoolsBody(3, h.view(bad2))); len(pushes) == 0 || pushes[len(pushes)-1] != w {
						t.Errorf("pushed bodies = %q; want the last to be %q", pushes, w)
					}
					if o := h.observed(); len(o) == 0 || !o[len(o)-1].Pushed || o[len(o)-1].Revision != 3 {
						t.Errorf("outcomes = %+v; want the last pushed at revision 3", o)
					}
				}
				if err := servesExactly(h.ctrl, all, served); err != nil {
					t.Errorf("after the membership change: %v", err)
				}
				if tt.dynamic && countPrefix(events, "Deliver") != 0 {
					t.Errorf("membership change: events %q; want the rejected config not delivered again", events)
				}
				live, calls := del.snapshot()
				seen := map[string]int{}
				for _, c := range calls {
					if seen[c.cfg]++; seen[c.cfg] > 1 {
						t.Errorf("the same config delivered %d times; want each once", seen[c.cfg])
					}
				}
				if strings.Contains(live, missing) {
					t.Errorf("live config =\n%s\nwant the last good one", live)
				}
				// Settled: nothing more happens.
				advance(time.Minute)
				if got := log.take(); len(got) != 0 {
					t.Errorf("after settling: %q; want nothing", got)
				}
			})
		})
	}
}

// fakeCerts is a Certificates source.
type fakeCerts struct {
	mu         sync.Mutex
	certs      []TLSCert
	challenges map[string]string
	changed    chan struct{}
}

func (f *fakeCerts) Subscribe() <-chan struct{} { return f.changed }
func (f *fakeCerts) Certs() []TLSCert {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.certs
}
func (f *fakeCerts) Challenges() map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.challenges)
}
func (f *fakeCerts) set(certs []TLSCert, challenges map[string]string) {
	f.mu.Lock()
	f.certs, f.challenges = certs, challenges
	f.mu.Unlock()
	select {
	case f.changed <- struct{}{}:
	default:
	}
}

// TestControllerCertsAndAnswers: certificates from etcd join the
// configured TLS (none configured: TLS starts with the first), and ACME
// answers are written into the proxy before a pass, served once a config
// with their location is live; an answer alone changes no config.
func TestControllerCertsAndAnswers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tmpl, err := Parse("default.conf.tmpl", defaultTemplate)
		if err != nil {
			t.Fatal(err)
		}
		del, _ := newFakeNginx()
		fc := &fakeCerts{changed: make(chan struct{}, 1)}
		h := startWith(t, harnessConfig{tmpl: tmpl, nginx: del, certs: fc,
			tls: &TLS{Port: 443, PublicPort: 443}, acme: "/etc/nginx/upstreamd-acme"})
		h.src.set(backends(t, 1, 3))
		advance(time.Second)
		live, _ := del.snapshot()
		if strings.Contains(live, "ssl_certificate") || !strings.Contains(live, "root /etc/nginx/upstreamd-acme;") {
			t.Fatalf("before any certificate: TLS or no ACME location in\n%s", live)
		}
		const token = "tok_0123456789abcdef"
		answered := make(chan error, 1)
		go func() { answered <- h.ctrl.WaitAnswerLive(t.Context(), token) }()
		fc.set(nil, map[string]string{token: token + ".x"})
		advance(time.Second)
		if err := <-answered; err != nil {
			t.Fatal(err)
		}
		if want := "/etc/nginx/upstreamd-acme/.well-known/acme-challenge/" + token; !slices.Contains(del.public, want) {
			t.Errorf("public files %q; want %s", del.public, want)
		}
		if _, calls := del.snapshot(); len(calls) == 0 || calls[len(calls)-1].cfg != live || calls[len(calls)-1].changed {
			t.Errorf("deliveries %+v; an answer alone must not change the config", calls)
		}
		fc.set([]TLSCert{NewTLSCert("/etc/nginx", []string{"a.example"}, []byte("cert"), []byte("key"))}, nil)
		advance(time.Second)
		live, _ = del.snapshot()
		if !strings.Contains(live, "listen 443 ssl http2") || !strings.Contains(live, "ssl_certificate /etc/nginx/upstreamd-tls/") {
			t.Errorf("the certificate from etcd is not served:\n%s", live)
		}
	})
}

// TestControllerPrunesOldFiles: once a config is live and confirmed, the
// certificate files it does not name and the answers of challenges no
// longer in etcd are removed from the proxy (those of an earlier daemon
// too); a config nginx rejects removes nothing, so every file the running
// nginx reads stays.
func TestControllerPrunesOldFiles(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tmpl, err := Parse("default.conf.tmpl", defaultTemplate)
		if err != nil {
			t.Fatal(err)
		}
		const (
			tlsDir  = "/etc/nginx/" + TLSDir
			acme    = "/etc/nginx/upstreamd-acme"
			answers = acme + "/.well-known/acme-challenge"
		)
		certA := NewTLSCert("/etc/nginx", []string{"a.example"}, []byte("cert A"), []byte("key A"))
		certB := NewTLSCert("/etc/nginx", []string{"a.example"}, []byte("cert B"), []byte("key B"))
		certC := NewTLSCert("/etc/nginx", []string{"a.example"}, []byte("cert C"), []byte("key C"))
		del, _ := newFakeNginx()
		// Left by an earlier daemon: an old key and a finished challenge.
		del.files = map[string]bool{tlsDir + "/0123456789abcdef.key": true, answers + "/tok_old_0123456789ab": true, "/etc/nginx/nginx.conf": true}
		del.fail = func(_ int, cfg string) error {
			if strings.Contains(cfg, certC.CertPath) {
				return fmt.Errorf("%w: nginx: [emerg] cannot load certificate", nginx.ErrCheckFailed)
			}
			return nil
		}
		fc := &fakeCerts{changed: make(chan struct{}, 1)}
		h := startWith(t, harnessConfig{tmpl: tmpl, nginx: del, certs: fc, statusPort: testStatusPort,
			tls: &TLS{Port: 443, PublicPort: 443}, acme: acme, configDir: "/etc/nginx"})
		const tokA = "tok_a_0123456789abcdef"
		fc.set([]TLSCert{certA}, map[string]string{tokA: tokA + ".x"})
		h.src.set(backends(t, 1, 3))
		advance(time.Second)
		check := func(step string, wantTLS, wantAnswers []string) {
			t.Helper()
			slices.Sort(wantTLS)
			if got := del.filesIn(tlsDir); !slices.Equal(got, wantTLS) {
				t.Errorf("%s: certificate files %q; want %q", step, got, wantTLS)
			}
			if got := del.filesIn(answers); !slices.Equal(got, wantAnswers) {
				t.Errorf("%s: answer files %q; want %q", step, got, wantAnswers)
			}
		}
		check("first pass", []string{certA.CertPath, certA.KeyPath}, []string{answers + "/" + tokA})
		if got := del.filesIn("/etc/nginx"); !slices.Equal(got, []string{"/etc/nginx/nginx.conf"}) {
			t.Errorf("files outside the directories: %q", got)
		}

		// Replaced, and the challenge done: the old files go.
		fc.set([]TLSCert{certB}, nil)
		advance(time.Second)
		check("replaced", []string{certB.CertPath, certB.KeyPath}, nil)

		// A certificate nginx rejects: the live config's files stay.
		fc.set([]TLSCert{certC}, nil)
		advance(time.Second)
		if o := h.observed(); !errors.Is(o[len(o)-1].Err, nginx.ErrCheckFailed) {
			t.Fatalf("last outcome %v; want the rejection", o[len(o)-1].Err)
		}
		check("rejected", []string{certB.CertPath, certB.KeyPath, certC.CertPath, certC.KeyPath}, nil)

		// Every certificate removed: plain HTTP, and no certificate file.
		fc.set(nil, nil)
		advance(time.Second)
		check("removed", nil, nil)

		del.mu.Lock()
		defer del.mu.Unlock()
		if len(del.prunes) == 0 {
			t.Fatal("never pruned")
		}
		for i, p := range del.prunes {
			if p.running != p.live {
				t.Errorf("prune %d while nginx ran another config than the live one", i)
			}
			if len(p.missing) > 0 {
				t.Errorf("prune %d removed files the live config names: %q", i, p.missing)
			}
		}
	})
}
