// Package loop is how every long-running component of upstreamd runs its
// work, in the spirit of controller-runtime's reconcile loop: triggers
// come in, a pass runs, and what the pass returns says when to run the
// next one. Triggers only wake the loop (several collapse into one, and a
// pass covers every trigger before it); the pass reads the state afresh.
// A failed pass is run again after a backoff (or at the next trigger,
// whichever comes first); the first failure of a run is logged loud, the
// rest quietly, and the end of the run once.
//
// A pass may also be a session that lasts while it works (a watch, an
// event stream, a lease held): it calls Working once it works, which ends
// the run of failures before it, and returns when the session ends.
package loop

import (
	"context"
	"errors"
	"reflect"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/internal/retry"
	"github.com/upstreamd/upstreamd/internal/wake"
)

// Result says when to run the next pass without a trigger.
type Result struct {
	// Again asks for the next pass at once.
	Again bool
	// After, when non-zero, asks for the next pass after this long.
	After time.Duration
}

// Pass is one run of a loop's work. An error means it failed: it is run
// again after a backoff; an error made by Stop ends the loop.
type Pass func(ctx context.Context) (Result, error)

// Stop returns an error that ends the loop: Run returns err, unlogged (a
// failure no retry can mend, such as a node name another daemon holds).
func Stop(err error) error { return stopError{err} }

type stopError struct{ err error }

func (e stopError) Error() string { return e.err.Error() }
func (e stopError) Unwrap() error { return e.err }

// stopped returns the error Stop wrapped in err, if it did.
func stopped(err error) (error, bool) {
	var s stopError
	if errors.As(err, &s) {
		return s.err, true
	}
	return nil, false
}

// Debounce gathers triggers that follow one another: a pass asked for
// within Min of the end of the last one (and the first pass) waits until
// no trigger came for Min, and at most Max. A trigger after a quiet spell
// runs a pass at once.
type Debounce struct {
	Min, Max time.Duration
}

// Config configures a Loop.
type Config struct {
	// Triggers ask for a pass (a wake.Signal's or a wake.Fanout
	// subscription's channel: never closed).
	Triggers []<-chan struct{}
	// Resync, when non-zero, runs a pass this often even without a
	// trigger: a safety net.
	Resync time.Duration
	// Debounce, when its Min is non-zero, gathers triggers before a pass.
	Debounce Debounce
	// Initial and Max bound the backoff after failures: the first wait is
	// about Initial, and the waits grow up to Max.
	Initial, Max time.Duration
	// Log gets the loop's lines: Failed for a failed pass, at Level for
	// the first of a run and at debug for the rest, and Recovered (""
	// for none) at info when a pass works after a run of failures that
	// was logged at Level.
	Log       zerolog.Logger
	Failed    string
	Level     zerolog.Level
	Recovered string
	// Said, when set, reports a failure that someone else says, or the
	// pass said itself: it is logged at debug, and the next failure that
	// is not said is the loud one.
	Said func(error) bool
}

// Loop runs passes. Its methods may be called from any goroutine.
type Loop struct {
	cfg   Config
	wake  wake.Signal
	flush chan chan error

	mu   sync.Mutex
	bo   *retry.Backoff
	pass int  // passes started, counted from 1
	loud bool // a failure of the run under way was logged at Level
}

// New returns a Loop; Run runs it.
func New(cfg Config) *Loop {
	return &Loop{cfg: cfg, wake: wake.New(), flush: make(chan chan error), bo: retry.New(cfg.Initial, cfg.Max)}
}

// Wake asks for a pass, as a trigger does.
func (l *Loop) Wake() { l.wake.Wake() }

// Flush asks for a pass now and returns its error; Run must be running.
func (l *Loop) Flush(ctx context.Context) error {
	reply := make(chan error, 1)
	select {
	case l.flush <- reply:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Working says that the pass under way works (a session that started):
// the run of failures before it is over.
func (l *Loop) Working() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.succeededLocked()
}

// Run runs a pass at once, then whenever a trigger, the resync, the
// pass's Result or the backoff asks, until ctx ends; it returns nil then,
// or the error a pass gave Stop.
func (l *Loop) Run(ctx context.Context, pass Pass) error {
	var resync <-chan time.Time
	if l.cfg.Resync > 0 {
		t := time.NewTicker(l.cfg.Resync)
		defer t.Stop()
		resync = t.C
	}
	var next *time.Timer // the Result's or the backoff's
	defer func() {
		if next != nil {
			next.Stop()
		}
	}()
	var reply chan error
	var ended time.Time // when the last pass ended
	for first := true; ; first = false {
		if !first {
			var ok bool
			if reply, ok = l.await(ctx, resync, next); !ok {
				return nil
			}
		}
		if l.cfg.Debounce.Min > 0 && (first || time.Since(ended) < l.cfg.Debounce.Min) && !l.debounce(ctx) {
			return nil
		}
		l.drain() // a pass covers every trigger before it
		res, err := l.run(ctx, pass)
		ended = time.Now()
		if reply != nil {
			reply <- err
			reply = nil
		}
		if ctx.Err() != nil {
			return nil
		}
		if err, ok := stopped(err); ok {
			return err
		}
		if next != nil {
			next.Stop()
		}
		next = l.after(res, err)
	}
}

// receive waits for one of chans, Wake or a trigger, and returns the index
// in chans of the one that came and what it brought; an index past chans
// is Wake or a trigger. A nil channel never comes.
func (l *Loop) receive(chans ...reflect.Value) (int, reflect.Value) {
	cases := make([]reflect.SelectCase, 0, len(chans)+1+len(l.cfg.Triggers))
	for _, c := range chans {
		cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: c})
	}
	cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(l.wake.C())})
	for _, t := range l.cfg.Triggers {
		cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(t)})
	}
	i, v, _ := reflect.Select(cases)
	return i, v
}

// drain takes every pending wake-up and trigger.
func (l *Loop) drain() {
	for _, c := range append([]<-chan struct{}{l.wake.C()}, l.cfg.Triggers...) {
		select {
		case <-c:
		default:
		}
	}
}

// await waits for what asks for the next pass; it returns the reply
// channel of a Flush, and false when ctx ended.
func (l *Loop) await(ctx context.Context, resync <-chan time.Time, next *time.Timer) (chan error, bool) {
	var due <-chan time.Time
	if next != nil {
		due = next.C
	}
	i, v := l.receive(reflect.ValueOf(ctx.Done()), reflect.ValueOf(l.flush), reflect.ValueOf(resync), reflect.ValueOf(due))
	switch i {
	case 0:
		return nil, false
	case 1:
		return v.Interface().(chan error), true
	}
	return nil, true
}

// debounce waits until no trigger came for Debounce.Min, or Debounce.Max
// passed; it reports false when ctx ended.
func (l *Loop) debounce(ctx context.Context) bool {
	deadline := time.NewTimer(max(l.cfg.Debounce.Max, l.cfg.Debounce.Min))
	defer deadline.Stop()
	quiet := time.NewTimer(l.cfg.Debounce.Min)
	defer quiet.Stop()
	for {
		switch i, _ := l.receive(reflect.ValueOf(ctx.Done()), reflect.ValueOf(deadline.C), reflect.ValueOf(quiet.C)); i {
		case 0:
			return false
		case 1, 2:
			return true
		}
		quiet.Reset(l.cfg.Debounce.Min)
	}
}

// run runs one pass and logs how it went.
func (l *Loop) run(ctx context.Context, pass Pass) (Result, error) {
	l.mu.Lock()
	l.pass++
	l.mu.Unlock()
	res, err := pass(ctx)
	if _, stop := stopped(err); ctx.Err() != nil || stop {
		return res, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err == nil {
		l.succeededLocked()
	}
	return res, err
}

// after logs a failed pass and returns the timer of the next pass the
// backoff or the Result asks for; nil when none.
func (l *Loop) after(res Result, err error) *time.Timer {
	switch {
	case err != nil:
		return time.NewTimer(l.failed(err))
	case res.Again:
		return time.NewTimer(0)
	case res.After > 0:
		return time.NewTimer(res.After)
	}
	return nil
}

// failed records a failed pass, logs it (at Level the first of the run
// that nobody else said, else at debug), and returns the backoff's wait.
// A session that worked before it failed started a new run of failures.
func (l *Loop) failed(err error) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	wait, _ := l.bo.Failed()
	ev := l.cfg.Log.Debug()
	if !l.loud && (l.cfg.Said == nil || !l.cfg.Said(err)) {
		ev = l.cfg.Log.WithLevel(l.cfg.Level)
		l.loud = true
	}
	ev.Err(err).Int("pass", l.pass).Stringer("retry_in", wait).Msg(l.cfg.Failed)
	return wait
}

// succeededLocked ends a run of failures, and logs its end when its
// first failure was logged loud. The caller holds mu.
func (l *Loop) succeededLocked() {
	if l.bo.Succeeded() && l.loud && l.cfg.Recovered != "" {
		l.cfg.Log.Info().Int("pass", l.pass).Msg(l.cfg.Recovered)
	}
	l.loud = false
}
