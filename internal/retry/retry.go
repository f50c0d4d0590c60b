// Package retry is how every long-running loop of upstreamd waits after a
// failure: an exponential backoff (cenkalti/backoff) bounded by a context,
// that tells its caller when a run of failures starts and when it ends, so
// each loop logs one line when something breaks and one when it recovers,
// not one per attempt.
//
// A loop holds one Backoff. It calls Failed after an attempt failed and
// waits for the duration returned (Wait, or a timer in its own select),
// and Succeeded after an attempt worked. Until wraps the common case of
// calling one function until it succeeds.
package retry

import (
	"context"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Backoff tracks one loop's run of failures. It is not safe for concurrent
// use: it belongs to the goroutine that runs the loop.
type Backoff struct {
	bo      *backoff.ExponentialBackOff
	failing bool
}

// New returns a Backoff whose first wait is about initial and whose waits
// grow up to maxWait; it never gives up.
func New(initial, maxWait time.Duration) *Backoff {
	// Options, not field assignments: the constructor computes the first
	// interval, so a field set afterwards would only count after a Reset.
	return &Backoff{bo: backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(initial),
		backoff.WithMaxInterval(maxWait),
		backoff.WithMaxElapsedTime(0),
	)}
}

// Failed records a failed attempt and returns how long to wait before the
// next one; first is true for the first failure after a success (or ever):
// the one to log loudly.
func (b *Backoff) Failed() (wait time.Duration, first bool) {
	first = !b.failing
	b.failing = true
	return b.bo.NextBackOff(), first
}

// Succeeded records a successful attempt: the next failure waits the
// initial interval again. recovered is true when it ends a run of failures.
func (b *Backoff) Succeeded() (recovered bool) {
	recovered = b.failing
	b.failing = false
	b.bo.Reset()
	return recovered
}

// Wait waits d, or until ctx ends; it reports false when ctx ended.
func Wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Until calls attempt until it returns nil or ctx ends (never after),
// waiting with b
// between attempts. failed, when set, is told about each failure with the
// wait that follows and whether it is the first of the run. It returns
// nil after a success and ctx.Err() when ctx ended first.
func Until(ctx context.Context, b *Backoff, attempt func(context.Context) error,
	failed func(err error, wait time.Duration, first bool)) error {
	for {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		err := attempt(ctx)
		if err == nil {
			b.Succeeded()
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		wait, first := b.Failed()
		if failed != nil {
			failed(err, wait, first)
		}
		if !Wait(ctx, wait) {
			return ctx.Err()
		}
	}
}
