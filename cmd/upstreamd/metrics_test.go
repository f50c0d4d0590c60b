package main

import (
	"errors"
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/upstreamd/upstreamd/nginx"
	"github.com/upstreamd/upstreamd/render"
)

// TestMetricsObserve: every pass the renderer reports counts once, under
// the result that says what happened, failures on the way to the proxy
// included.
func TestMetricsObserve(t *testing.T) {
	tests := []struct {
		name string
		o    render.Outcome
		want string
	}{
		{name: "reload", o: render.Outcome{Changed: true, Pushed: true}, want: "reload"},
		{name: "push", o: render.Outcome{Pushed: true}, want: "push"},
		{name: "nothing to do", o: render.Outcome{}, want: "unchanged"},
		{name: "nginx -t said no", o: render.Outcome{Err: fmt.Errorf("%w: bad", nginx.ErrCheckFailed)}, want: "rejected"},
		{name: "would empty a pool", o: render.Outcome{Err: fmt.Errorf("%w of apache", render.ErrWouldEmpty)}, want: "refused"},
		{name: "no proxy yet", o: render.Outcome{Err: fmt.Errorf("%w: no running proxy", render.ErrNotReady)}, want: "waiting"},
		{name: "template failed", o: render.Outcome{Err: &render.RenderError{Template: "t", Err: errors.New("x")}}, want: "error"},
		{name: "push refused", o: render.Outcome{Err: errors.New("push pools to 10.0.0.2:8099: status 403")}, want: "error"},
		{name: "exec failed", o: render.Outcome{Err: errors.New("deliver config: exec: container not running")}, want: "error"},
		{name: "HUP failed", o: render.Outcome{Changed: true, Err: errors.New("deliver config: reload: timeout")}, want: "error"},
		{name: "reload not confirmed", o: render.Outcome{Changed: true, Err: errors.New("nginx did not run config 1 within 5s")}, want: "error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMetrics()
			m.observe(tt.o)
			for _, r := range []string{"reload", "push", "unchanged", "rejected", "refused", "waiting", "error"} {
				want := 0.0
				if r == tt.want {
					want = 1
				}
				if got := testutil.ToFloat64(m.passes.WithLabelValues(r)); got != want {
					t.Errorf("render_passes_total{result=%q} = %v; want %v", r, got, want)
				}
			}
		})
	}
}
