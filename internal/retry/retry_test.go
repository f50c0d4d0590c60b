package retry

import (
	"context"
	"errors"
	"slices"
	"testing"
	"testing/synctest"
	"time"
)

func TestBackoffRuns(t *testing.T) {
	b := New(100*time.Millisecond, 400*time.Millisecond)
	var firsts []bool
	var waits []time.Duration
	for range 4 {
		w, first := b.Failed()
		firsts = append(firsts, first)
		waits = append(waits, w)
	}
	if want := []bool{true, false, false, false}; !slices.Equal(firsts, want) {
		t.Errorf("first flags = %v, want %v", firsts, want)
	}
	for i, w := range waits {
		if w <= 0 || w > 600*time.Millisecond { // 400 ms plus the library's ±50% jitter
			t.Errorf("wait %d = %s, want in (0, 600ms]", i, w)
		}
	}
	if !b.Succeeded() {
		t.Error("Succeeded after failures: recovered = false, want true")
	}
	if b.Succeeded() {
		t.Error("Succeeded twice: recovered = true, want false")
	}
	if _, first := b.Failed(); !first {
		t.Error("a failure after a success is not reported as the first of a run")
	}
}

func TestUntil(t *testing.T) {
	errDown := errors.New("down")
	tests := []struct {
		name      string
		failures  int
		cancelAt  int // cancel the context at this attempt; 0: never
		wantErr   error
		wantCalls int
		wantFirst int // failures reported as first of a run
	}{
		{name: "succeeds at once", wantCalls: 1},
		{name: "succeeds after three failures", failures: 3, wantCalls: 4, wantFirst: 1},
		{name: "context ends while failing", failures: 100, cancelAt: 3, wantErr: context.Canceled, wantCalls: 3, wantFirst: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				calls, firsts := 0, 0
				err := Until(ctx, New(10*time.Millisecond, time.Second), func(context.Context) error {
					calls++
					if calls == tc.cancelAt {
						cancel()
					}
					if calls <= tc.failures {
						return errDown
					}
					return nil
				}, func(err error, wait time.Duration, first bool) {
					if !errors.Is(err, errDown) || wait <= 0 {
						t.Errorf("failed(%v, %s): want errDown and a positive wait", err, wait)
					}
					if first {
						firsts++
					}
				})
				if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
					t.Errorf("Until = %v, want %v", err, tc.wantErr)
				}
				if calls != tc.wantCalls {
					t.Errorf("attempts = %d, want %d", calls, tc.wantCalls)
				}
				if firsts != tc.wantFirst {
					t.Errorf("failures reported as first = %d, want %d", firsts, tc.wantFirst)
				}
			})
		})
	}
}

func TestWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		if !Wait(t.Context(), time.Second) {
			t.Fatal("Wait = false with a live context")
		}
		if got := time.Since(start); got != time.Second {
			t.Errorf("waited %s, want 1s", got)
		}
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if Wait(ctx, time.Hour) {
			t.Error("Wait = true with a cancelled context")
		}
	})
}
