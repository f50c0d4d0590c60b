package loop

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/rs/zerolog"
)

var errDown = errors.New("down")

// script is a Pass that answers, pass after pass, what the test scripted
// (then nil), and records when each pass started.
type script struct {
	mu      sync.Mutex
	answers []answer
	starts  []time.Duration // since begin
	begin   time.Time
}

type answer struct {
	res Result
	err error
}

func newScript(answers ...answer) *script {
	return &script{answers: answers, begin: time.Now()}
}

func (s *script) pass(context.Context) (Result, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.starts = append(s.starts, time.Since(s.begin))
	if len(s.answers) == 0 {
		return Result{}, nil
	}
	a := s.answers[0]
	s.answers = s.answers[1:]
	return a.res, a.err
}

func (s *script) passes() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.starts)
}

// logLines is what a zerolog.Logger wrote: "level message" per line.
type logLines struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logLines) lines(t *testing.T) []string {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, line := range strings.Split(strings.TrimSpace(l.buf.String()), "\n") {
		if line == "" {
			continue
		}
		var m struct{ Level, Message string }
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, m.Level+" "+m.Message)
	}
	return out
}

// start runs a Loop of cfg over s until the test ends; done receives
// Run's error.
func start(t *testing.T, cfg Config, s *script) (l *Loop, stop func(), done <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	l = New(cfg)
	ch := make(chan error, 1)
	go func() { ch <- l.Run(ctx, s.pass) }()
	synctest.Wait()
	return l, cancel, ch
}

// advance moves the bubble's clock on by d and lets everything run.
func advance(d time.Duration) {
	time.Sleep(d)
	synctest.Wait()
}

func ms(ds ...int) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = time.Duration(d) * time.Millisecond
	}
	return out
}

func TestTriggers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		trigger := make(chan struct{}, 1)
		s := newScript()
		l, stop, done := start(t, Config{Triggers: []<-chan struct{}{trigger}, Initial: 100 * time.Millisecond, Max: time.Second}, s)
		if got := len(s.passes()); got != 1 {
			t.Fatalf("%d passes at start; want 1, at once", got)
		}
		advance(time.Hour)
		if got := len(s.passes()); got != 1 {
			t.Fatalf("%d passes after an hour without a trigger; want still 1", got)
		}
		trigger <- struct{}{}
		synctest.Wait()
		l.Wake()
		l.Wake()
		synctest.Wait()
		if got := len(s.passes()); got != 3 {
			t.Fatalf("%d passes after a trigger and two wakes; want 3 (the wakes collapse)", got)
		}
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run = %v; want nil once ctx ended", err)
		}
	})
}

// TestPendingTrigger: a trigger that came before the loop started is
// covered by its first pass.
func TestPendingTrigger(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		trigger := make(chan struct{}, 1)
		trigger <- struct{}{}
		s := newScript()
		_, stop, _ := start(t, Config{Triggers: []<-chan struct{}{trigger}, Initial: time.Second, Max: time.Minute}, s)
		defer stop()
		advance(time.Minute)
		if got := len(s.passes()); got != 1 {
			t.Errorf("%d passes; want 1", got)
		}
	})
}

// TestBackoff: failed passes run again after a growing wait, until one
// works; the first failure of the run is loud, the rest quiet, and the
// recovery said once. A trigger while waiting runs the pass at once.
func TestBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var logs logLines
		s := newScript(answer{err: errDown}, answer{err: errDown}, answer{err: errDown})
		_, stop, _ := start(t, Config{Initial: 200 * time.Millisecond, Max: 10 * time.Second,
			Log: zerolog.New(&logs), Failed: "pass failed", Level: zerolog.ErrorLevel, Recovered: "pass recovered"}, s)
		defer stop()
		advance(5 * time.Second)
		got := s.passes()
		if len(got) != 4 {
			t.Fatalf("passes at %v; want 4 (3 failures, then a success)", got)
		}
		for i, want := range ms(200, 300, 450) { // each ±50 % jitter
			if gap := got[i+1] - got[i]; gap < want/2 || gap > want*3/2 {
				t.Errorf("retry %d after %s; want %s ±50%%", i+1, gap, want)
			}
		}
		want := []string{"error pass failed", "debug pass failed", "debug pass failed", "info pass recovered"}
		if l := logs.lines(t); !slices.Equal(l, want) {
			t.Errorf("logged %q; want %q", l, want)
		}
	})
}

func TestTriggerDuringBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newScript(answer{err: errDown})
		l, stop, _ := start(t, Config{Initial: time.Minute, Max: time.Hour}, s)
		defer stop()
		advance(time.Second)
		l.Wake()
		synctest.Wait()
		if got := s.passes(); !slices.Equal(got, []time.Duration{0, time.Second}) {
			t.Errorf("passes at %v; want [0 1s]: the trigger does not wait for the backoff", got)
		}
	})
}

// TestLogging: which failures are loud, and when a recovery is said.
func TestLogging(t *testing.T) {
	errSaid := fmt.Errorf("unreachable: %w", errDown)
	for _, tc := range []struct {
		name    string
		answers []answer
		level   zerolog.Level
		want    []string
	}{
		{name: "one failure", answers: []answer{{err: errDown}}, level: zerolog.WarnLevel,
			want: []string{"warn failed", "info recovered"}},
		{name: "two runs of failures", answers: []answer{{err: errDown}, {err: errDown}, {res: Result{Again: true}}, {err: errDown}}, level: zerolog.ErrorLevel,
			want: []string{"error failed", "debug failed", "info recovered", "error failed", "info recovered"}},
		{name: "said by someone else: quiet, and no recovery said", answers: []answer{{err: errSaid}, {err: errSaid}}, level: zerolog.ErrorLevel,
			want: []string{"debug failed", "debug failed"}},
		{name: "said, then not: the first not said is loud", answers: []answer{{err: errSaid}, {err: errDown}, {err: errSaid}}, level: zerolog.ErrorLevel,
			want: []string{"debug failed", "error failed", "debug failed", "info recovered"}},
		{name: "quiet level", answers: []answer{{err: errDown}}, level: zerolog.DebugLevel,
			want: []string{"debug failed", "info recovered"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var logs logLines
				s := newScript(tc.answers...)
				_, stop, _ := start(t, Config{Initial: 100 * time.Millisecond, Max: time.Second,
					Log: zerolog.New(&logs), Failed: "failed", Level: tc.level, Recovered: "recovered",
					Said: func(err error) bool { return errors.Is(err, errSaid) }}, s)
				defer stop()
				advance(time.Minute)
				if got := logs.lines(t); !slices.Equal(got, tc.want) {
					t.Errorf("logged %q; want %q", got, tc.want)
				}
			})
		})
	}
}

// TestResult: a pass asks for the next one at once, or after a while;
// the resync runs one anyway.
func TestResult(t *testing.T) {
	for _, tc := range []struct {
		name    string
		answers []answer
		resync  time.Duration
		want    []time.Duration
	}{
		{name: "nothing asked", answers: nil, want: ms(0)},
		{name: "again", answers: []answer{{res: Result{Again: true}}, {res: Result{Again: true}}}, want: ms(0, 0, 0)},
		{name: "after", answers: []answer{{res: Result{After: time.Second}}}, want: ms(0, 1000)},
		{name: "resync", resync: 30 * time.Second, want: ms(0, 30000, 60000)},
		{name: "after, and a resync meanwhile", answers: []answer{{res: Result{After: 40 * time.Second}}}, resync: 30 * time.Second,
			want: ms(0, 30000, 60000)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s := newScript(tc.answers...)
				_, stop, _ := start(t, Config{Resync: tc.resync, Initial: time.Second, Max: time.Minute}, s)
				defer stop()
				advance(65 * time.Second)
				if got := s.passes(); !slices.Equal(got, tc.want) {
					t.Errorf("passes at %v; want %v", got, tc.want)
				}
			})
		})
	}
}

// TestDebounce: the first pass and a pass asked for right after another
// wait for a quiet spell (bounded); a trigger after a quiet spell runs
// one at once.
func TestDebounce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newScript()
		l, stop, _ := start(t, Config{Debounce: Debounce{Min: 20 * time.Millisecond, Max: 250 * time.Millisecond},
			Initial: time.Second, Max: time.Minute}, s)
		defer stop()
		advance(time.Second)
		if got := s.passes(); !slices.Equal(got, ms(20)) {
			t.Fatalf("first pass at %v; want after 20ms of quiet", got)
		}
		l.Wake() // after a quiet spell: at once
		synctest.Wait()
		// a burst right after: gathered, at most 250 ms
		for range 30 {
			l.Wake()
			advance(10 * time.Millisecond)
		}
		advance(time.Second)
		// The burst from 1 s to 1.29 s: bounded at 1.25 s, then 20 ms after
		// its last trigger.
		if got := s.passes(); !slices.Equal(got, ms(20, 1000, 1250, 1310)) {
			t.Errorf("passes at %v; want [20ms 1s 1.25s 1.31s]: one at once, the burst in two", got)
		}
	})
}

func TestFlush(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newScript(answer{}, answer{err: errDown})
		l, stop, _ := start(t, Config{Initial: time.Hour, Max: time.Hour}, s)
		defer stop()
		if err := l.Flush(t.Context()); !errors.Is(err, errDown) {
			t.Errorf("Flush = %v; want the pass's error", err)
		}
		if err := l.Flush(t.Context()); err != nil {
			t.Errorf("Flush = %v; want nil", err)
		}
		if got := len(s.passes()); got != 3 {
			t.Errorf("%d passes; want 3: one at start, one per Flush", got)
		}
	})
}

// TestWorking: a session that works ends the run of failures before it,
// and its end is a new failure, logged loud again.
func TestWorking(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var logs logLines
		var l *Loop
		sessions := 0
		pass := func(ctx context.Context) (Result, error) {
			sessions++
			if sessions == 1 {
				return Result{}, errDown // could not start
			}
			l.Working()
			select { // the session works for a minute
			case <-ctx.Done():
			case <-time.After(time.Minute):
			}
			return Result{}, errDown
		}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		l = New(Config{Initial: 100 * time.Millisecond, Max: time.Second,
			Log: zerolog.New(&logs), Failed: "broke", Level: zerolog.WarnLevel, Recovered: "works again"})
		go func() { _ = l.Run(ctx, pass) }()
		advance(90 * time.Second)
		want := []string{"warn broke", "info works again", "warn broke", "info works again"}
		if got := logs.lines(t); !slices.Equal(got, want) {
			t.Errorf("logged %q; want %q", got, want)
		}
	})
}

func TestStop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var logs logLines
		s := newScript(answer{err: errDown}, answer{err: Stop(errDown)})
		_, stop, done := start(t, Config{Initial: 100 * time.Millisecond, Max: time.Second,
			Log: zerolog.New(&logs), Failed: "failed", Level: zerolog.ErrorLevel}, s)
		defer stop()
		advance(time.Minute)
		select {
		case err := <-done:
			if err != errDown { //nolint:errorlint // Run returns the very error given to Stop, unwrapped
				t.Errorf("Run = %v; want the error given to Stop", err)
			}
		default:
			t.Fatal("Run goes on after Stop")
		}
		if got := len(s.passes()); got != 2 {
			t.Errorf("%d passes; want 2", got)
		}
		if got := logs.lines(t); !slices.Equal(got, []string{"error failed"}) {
			t.Errorf("logged %q; want only the failure before Stop", got)
		}
	})
}
