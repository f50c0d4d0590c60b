//go:build integration

package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/upstreamd/upstreamd/integration/internal/load"
)

// startLoad drives nginx with keep-alive GETs until stopped (bounded to
// 3 minutes); the cleanup stops it if the test did not.
func (s *stack) startLoad() *load.Runner {
	r := load.Start(s.t.Context(), load.Config{Addr: s.publish, Workers: 8, Duration: 3 * time.Minute})
	s.t.Cleanup(func() { r.Stop() })
	return r
}

// waitRequests waits until the load has sent n more requests, so that an
// action happens under load and its aftermath is measured too.
func waitRequests(t *testing.T, r *load.Runner, n int) {
	t.Helper()
	from := r.Result().Requests
	eventually(t, time.Minute, fmt.Sprintf("%d more requests", n), func() error {
		if got := r.Result().Requests - from; got < n {
			return fmt.Errorf("%d requests so far", got)
		}
		return nil
	})
}

// requireNoFailures fails the test when any request failed, listing when
// and how.
func requireNoFailures(t *testing.T, res load.Result) {
	t.Helper()
	t.Logf("load: %s", res)
	if res.Failed() == 0 {
		require.Positive(t, res.OK, "the load generator sent nothing")
		return
	}
	var lines []string
	for _, s := range res.Samples {
		if s.Err != "" || s.Status < 200 || s.Status > 299 {
			lines = append(lines, fmt.Sprintf("%s status=%d err=%q after %s", s.At.Format("15:04:05.000"), s.Status, s.Err, s.Latency))
		}
		if len(lines) == 20 {
			break
		}
	}
	t.Fatalf("%d of %d requests failed:\n%s", res.Failed(), res.Requests, strings.Join(lines, "\n"))
}

// reloads counts the nginx reloads the daemon logged.
func reloads(logs string) int { return strings.Count(logs, "nginx reloaded with new config") }

// TestScaleUnderLoad: scaling 3 → 6 → 3 under keep-alive load fails no
// request and reloads nginx never: pools change through the Lua balancer,
// and the removed backends are drained before they stop.
func TestScaleUnderLoad(t *testing.T) {
	s := newStack(t)
	d := s.startDaemon()
	s.waitConverged(3, 90*time.Second)
	before := reloads(d.Logs())
	r := s.startLoad()
	waitRequests(t, r, 500)

	out, err := s.cli("scale", "apache", "6")
	require.NoError(t, err, out)
	s.waitConverged(6, 90*time.Second)
	out, err = s.cli("scale", "apache", "3")
	require.NoError(t, err, out)
	s.waitConverged(3, 90*time.Second)
	require.Contains(t, d.Logs(), "backend drained and removed")
	waitRequests(t, r, 500)

	requireNoFailures(t, r.Stop())
	require.Equal(t, before, reloads(d.Logs()), "pool changes must not reload nginx")
}

// TestKillUnderLoad: SIGKILL of a backend under keep-alive load fails no
// GET: nginx retries the request on the next backend, and the dead one
// leaves the pool at once.
func TestKillUnderLoad(t *testing.T) {
	s := newStack(t)
	s.startDaemon()
	s.waitConverged(3, 90*time.Second)
	r := s.startLoad()
	waitRequests(t, r, 500)

	victim := s.backends()[0]
	require.NoError(t, s.docker.Signal(t.Context(), victim.ID, "KILL"))
	after := s.waitConverged(3, 60*time.Second)
	require.NotContains(t, after, victim.Name)
	waitRequests(t, r, 500)

	requireNoFailures(t, r.Stop())
}

// TestRollingUpdateUnderLoad: a changed backend spec (picked up by a
// restarted daemon) replaces the backends one at a time; no request fails
// and the pool never empties, not even while the daemon restarts.
func TestRollingUpdateUnderLoad(t *testing.T) {
	s := newStack(t)
	d := s.startDaemon()
	old := s.waitConverged(3, 90*time.Second)
	oldHash := s.backends()[0].SpecHash
	r := s.startLoad()
	waitRequests(t, r, 500)

	require.NoError(t, d.Stop(20*time.Second))
	s.opts.serviceTOML += `env = ["RELEASE=2"]` + "\n"
	s.writeConfig()
	d2 := s.startDaemon()

	// Watch nginx's pool all along: never fewer than 3 backends.
	minServed := make(chan int, 1)
	stopWatch := make(chan struct{})
	go func() {
		least := 3
		for {
			select {
			case <-stopWatch:
				minServed <- least
				return
			case <-time.After(20 * time.Millisecond):
			}
			if pool, err := s.nginxPool("apache"); err == nil {
				least = min(least, len(pool))
			}
		}
	}()
	eventually(t, 3*time.Minute, "every backend runs the new spec", func() error {
		bs := s.backends()
		for _, b := range bs {
			if b.SpecHash == oldHash {
				return fmt.Errorf("%s still has the old spec", b.Name)
			}
		}
		if len(bs) != 3 {
			return fmt.Errorf("%d backends running", len(bs))
		}
		return nil
	})
	now := s.waitConverged(3, 60*time.Second)
	for _, h := range now {
		require.NotContains(t, old, h)
	}
	require.Equal(t, 3, strings.Count(d2.Logs(), "rolling update: starting a new backend"), "one at a time, three times")
	close(stopWatch)
	require.GreaterOrEqual(t, <-minServed, 3, "nginx served fewer backends than replicas during the update")
	waitRequests(t, r, 500)

	requireNoFailures(t, r.Stop())
}
