//go:build integration

package integration

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/upstreamd/upstreamd/internal/events"
)

// wsStack is a stack of upstreamd/wsecho backends with static pools, so
// that every pool change is an nginx reload.
func wsStack(t *testing.T, grace string, env string) *stack {
	return newStack(t, withReplicas(1), withProxyTOML("dynamic = false"), withImage("upstreamd/wsecho:latest", grace),
		withServiceTOML(fmt.Sprintf("port = 8080\nenv = [%q]\n", env)))
}

// echo sends msg on c and returns the answer.
func echo(ctx context.Context, c *websocket.Conn, msg string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		return "", err
	}
	_, got, err := c.Read(ctx)
	return string(got), err
}

// TestWebSocket: a WebSocket through the proxy to a backend survives a
// pool change and the nginx reload it brings, and the rolling update
// that drains its backend: the connection lives on after the backend left
// the pool, and ends only when the engine stops the backend, not before
// its stop_grace.
func TestWebSocket(t *testing.T) {
	const grace = 4 * time.Second
	s := wsStack(t, grace.String(), "GENERATION=1")
	d := s.startDaemon()
	first := s.waitConverged(1, 90*time.Second)

	ctx := t.Context()
	c, resp, err := websocket.Dial(ctx, "ws://"+s.publish+"/ws", nil)
	require.NoError(t, err)
	if resp.Body != nil {
		_ = resp.Body.Close()
	}
	defer func() { _ = c.CloseNow() }()
	got, err := echo(ctx, c, "one")
	require.NoError(t, err)
	require.Equal(t, first[0]+": one", got, "the echo comes from the one backend")

	// A pool change: with static pools, a reload.
	out, err := s.cli("scale", "apache", "2")
	require.NoError(t, err, out)
	s.waitConverged(2, 90*time.Second)
	got, err = echo(ctx, c, "two")
	require.NoError(t, err, "the WebSocket after a pool change and a reload")
	require.Equal(t, first[0]+": two", got)

	// A new spec: the rolling update drains every backend, this one too.
	since, err := s.adminEvents(0)
	require.NoError(t, err)
	require.NoError(t, d.Stop(20*time.Second))
	s.opts.serviceTOML = strings.Replace(s.opts.serviceTOML, "GENERATION=1", "GENERATION=2", 1)
	s.writeConfig()
	s.startDaemon()
	var draining time.Time
	eventually(t, 90*time.Second, "the WebSocket's backend drains", func() error {
		evs, err := s.adminEvents(0)
		if err != nil {
			return err
		}
		for _, e := range evs {
			if e.Kind == events.Draining && e.Container == first[0] {
				draining = e.Time
				return nil
			}
		}
		return fmt.Errorf("no draining event for %s (%d events, %d before)", first[0], len(evs), len(since))
	})
	got, err = echo(ctx, c, "three")
	require.NoError(t, err, "the WebSocket once its backend drains")
	require.Equal(t, first[0]+": three", got)

	// It ends when the engine stops the backend: after its stop grace.
	var closed time.Time
	for closed.IsZero() {
		if _, err := echo(ctx, c, "again"); err != nil {
			if !errors.Is(err, context.DeadlineExceeded) {
				closed = time.Now()
			}
		}
		if time.Since(draining) > 60*time.Second {
			t.Fatal("the drained backend's WebSocket is still open after a minute")
		}
	}
	t.Logf("the WebSocket closed %s after its backend started draining (stop_grace %s)", closed.Sub(draining).Round(time.Millisecond), grace)
	require.GreaterOrEqual(t, closed.Sub(draining), grace, "the WebSocket was cut before the backend's stop_grace")
	s.waitConverged(2, 90*time.Second)
}
