package render

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/store"
)

// fakeSource is a store.Cache stand-in: a settable snapshot and a Changed
// channel with the cache's collapse-on-full semantics.
type fakeSource struct {
	mu      sync.Mutex
	snap    store.Snapshot
	ok      bool
	changed chan struct{}
}

var _ source = (*fakeSource)(nil)

func newFakeSource() *fakeSource { return &fakeSource{changed: make(chan struct{}, 1)} }

func (s *fakeSource) Changed() <-chan struct{} { return s.changed }

func (s *fakeSource) Snapshot() (store.Snapshot, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snap, s.ok
}

// notify signals a change without touching the snapshot.
func (s *fakeSource) notify() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// set installs a snapshot and signals the change.
func (s *fakeSource) set(snap store.Snapshot) {
	s.mu.Lock()
	s.snap, s.ok = snap, true
	s.mu.Unlock()
	s.notify()
}

type delivery struct {
	at  time.Time // on the bubble's clock
	id  string
	cfg string
	err error
}

// fakeDeliverer records every Deliver and keeps what it made live. fail,
// when set, decides the error of each call (n counts from 0).
type fakeDeliverer struct {
	mu    sync.Mutex
	live  string
	calls []delivery
	fail  func(n int, cfg string) error
}

var _ deliverer = (*fakeDeliverer)(nil)

func (d *fakeDeliverer) Deliver(_ context.Context, id string, cfg []byte) (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var err error
	if d.fail != nil {
		err = d.fail(len(d.calls), string(cfg))
	}
	d.calls = append(d.calls, delivery{at: time.Now(), id: id, cfg: string(cfg), err: err})
	if err != nil {
		return false, err
	}
	changed := d.live != string(cfg)
	d.live = string(cfg)
	return changed, nil
}

func (d *fakeDeliverer) snapshot() (live string, calls []delivery) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.live, append([]delivery(nil), d.calls...)
}

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
	out, err := Render(tmpl, NewView(ViewInput{Snapshot: snap, Services: []string{"apache"}, Default: "apache", Listen: 80}))
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// harness runs a Controller inside the current synctest bubble.
type harness struct {
	src      *fakeSource
	del      *fakeDeliverer
	ctrl     *Controller
	mu       sync.Mutex
	proxyUp  bool
	proxyN   int // calls of the Proxy func
	outcomes []Outcome
}

func (h *harness) setProxy(up bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.proxyUp = up
}

func (h *harness) proxyCalls() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.proxyN
}

func (h *harness) observed() []Outcome {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Outcome(nil), h.outcomes...)
}

// start starts a Controller with tmpl; it is stopped, and its return value
// checked, when the test ends. Call it inside synctest.Test.
func start(t *testing.T, tmpl *Template, del *fakeDeliverer) *harness {
	t.Helper()
	h := &harness{src: newFakeSource(), del: del, proxyUp: true}
	h.ctrl = NewController(ControllerConfig{
		Template:  tmpl,
		Source:    h.src,
		Deliverer: del,
		Proxy: func(context.Context) (string, error) {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.proxyN++
			if !h.proxyUp {
				return "", fmt.Errorf("find proxy: %w", ErrNoProxy)
			}
			return "proxy-1", nil
		},
		Services: []string{"apache"},
		Default:  "apache",
		Listen:   80,
		Logger:   zerolog.Nop(),
		Observe: func(o Outcome) {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.outcomes = append(h.outcomes, o)
		},
	})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- h.ctrl.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Start returned %v after cancellation; want nil", err)
		}
	})
	return h
}

// advance lets d pass on the synctest bubble's fake clock and then waits
// for the bubble's goroutines to settle. The timer fires as soon as every
// goroutine in the bubble is blocked, so no real time passes; only call it
// inside synctest.Test.
func advance(d time.Duration) {
	<-time.After(d)
	synctest.Wait()
}

func TestControllerNoSnapshotYet(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tmpl, err := Parse("list.tmpl", listTemplate)
		if err != nil {
			t.Fatal(err)
		}
		del := &fakeDeliverer{}
		h := start(t, tmpl, del)
		h.src.notify() // a change signal before the first load
		h.ctrl.Kick()
		advance(time.Minute)
		if _, calls := del.snapshot(); len(calls) != 0 {
			t.Fatalf("Deliver called %d times before any snapshot; want 0", len(calls))
		}
		if n := h.proxyCalls(); n != 0 {
			t.Errorf("Proxy called %d times before any snapshot; want 0", n)
		}
		// Once the first snapshot arrives it is delivered, after the
		// minimum debounce.
		snap := backends(t, 2, 7)
		setAt := time.Now()
		h.src.set(snap)
		advance(time.Second)
		live, calls := del.snapshot()
		if len(calls) != 1 {
			t.Fatalf("Deliver called %d times after the first snapshot; want 1", len(calls))
		}
		if got := calls[0].at.Sub(setAt); got != DefaultMinDebounce {
			t.Errorf("delivered %v after the change; want after DefaultMinDebounce (%v)", got, DefaultMinDebounce)
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
		del := &fakeDeliverer{}
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
		del := &fakeDeliverer{live: "last good", fail: func(_ int, cfg string) error {
			if cfg == badCfg {
				return fmt.Errorf("%w: nginx: [emerg] invalid number of arguments", ErrCheckFailed)
			}
			return nil
		}}
		h := start(t, tmpl, del)

		h.src.set(bad)
		advance(time.Second)
		if _, calls := del.snapshot(); len(calls) != 1 {
			t.Fatalf("Deliver called %d times for the bad config; want 1", len(calls))
		}
		// The same bytes again, by a change signal, a Kick, or waiting:
		// nginx said no to them once, so they are not delivered again.
		h.src.set(bad)
		advance(time.Second)
		h.ctrl.Kick()
		advance(time.Minute)
		live, calls := del.snapshot()
		if len(calls) != 1 {
			t.Errorf("Deliver called %d times; want the rejected bytes delivered once only", len(calls))
		}
		if live != "last good" {
			t.Errorf("live = %q; want the last good config", live)
		}
		if o := h.observed(); len(o) != 1 || !errors.Is(o[0].Err, ErrCheckFailed) {
			t.Errorf("outcomes = %+v; want one ErrCheckFailed", o)
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
		del := &fakeDeliverer{fail: func(n int, _ string) error {
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
		if o := h.observed(); len(o) != 1 || !o[0].Changed {
			t.Errorf("outcomes = %+v; want one changed outcome (transient failures are not observed)", o)
		}
	})
}

func TestControllerNoProxy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tmpl, err := Parse("list.tmpl", listTemplate)
		if err != nil {
			t.Fatal(err)
		}
		del := &fakeDeliverer{}
		h := start(t, tmpl, del)
		h.setProxy(false)
		snap := backends(t, 1, 3)
		h.src.set(snap)
		advance(time.Minute)
		if _, calls := del.snapshot(); len(calls) != 0 {
			t.Fatalf("Deliver called %d times without a proxy; want 0", len(calls))
		}
		if n := h.proxyCalls(); n != 1 {
			t.Errorf("Proxy called %d times; want 1 (no polling for the proxy)", n)
		}
		// The proxy appears; nothing happens until someone says so.
		h.setProxy(true)
		advance(time.Minute)
		if _, calls := del.snapshot(); len(calls) != 0 {
			t.Fatalf("Deliver called %d times before Kick; want 0", len(calls))
		}
		h.ctrl.Kick()
		advance(time.Second)
		live, calls := del.snapshot()
		if len(calls) != 1 || calls[0].id != "proxy-1" {
			t.Fatalf("deliveries after Kick = %+v; want one to proxy-1", calls)
		}
		if w := want(t, tmpl, snap); live != w {
			t.Errorf("live = %q; want %q", live, w)
		}
		// A Kick with nothing new delivers the same bytes: the Deliverer
		// finds them live and reports no change.
		h.ctrl.Kick()
		advance(time.Second)
		if _, calls := del.snapshot(); len(calls) != 2 {
			t.Errorf("deliveries after a second Kick = %d; want 2", len(calls))
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
		del := &fakeDeliverer{live: "last good"}
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
		if n := h.proxyCalls(); n != 0 {
			t.Errorf("Proxy called %d times; want 0 when nothing rendered", n)
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
		before func(t *testing.T, src *fakeSource, del *fakeDeliverer)
	}{
		{name: "idle"},
		{name: "while debouncing", before: func(t *testing.T, src *fakeSource, _ *fakeDeliverer) {
			src.set(backends(t, 1, 1))
			advance(time.Millisecond)
		}},
		{name: "while waiting to retry", before: func(t *testing.T, src *fakeSource, del *fakeDeliverer) {
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
				del := &fakeDeliverer{fail: func(int, string) error { return errors.New("transient") }}
				ctrl := NewController(ControllerConfig{
					Template: tmpl, Source: src, Deliverer: del,
					Proxy:  func(context.Context) (string, error) { return "proxy-1", nil },
					Logger: zerolog.Nop(),
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
