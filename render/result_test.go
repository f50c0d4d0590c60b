package render

import (
	"errors"
	"fmt"
	"testing"

	"github.com/upstreamd/upstreamd/nginx"
)

// TestPassResult: every pass comes to exactly one result, failures on the
// way to the proxy included; the metrics count it and the history records
// it as it is.
func TestPassResult(t *testing.T) {
	tests := []struct {
		name string
		o    Outcome
		want Result
	}{
		{name: "reload", o: Outcome{Changed: true, Pushed: true}, want: ResultReload},
		{name: "reload without a push", o: Outcome{Changed: true}, want: ResultReload},
		{name: "push", o: Outcome{Pushed: true}, want: ResultPush},
		{name: "nothing to do", o: Outcome{}, want: ResultUnchanged},
		{name: "nginx -t said no", o: Outcome{Err: &nginx.CheckError{Message: "bad"}}, want: ResultRejected},
		{name: "nginx -t said no, pools pushed", o: Outcome{Pushed: true, Err: &nginx.CheckError{Message: "bad"}}, want: ResultRejected},
		{name: "would empty a pool", o: Outcome{Err: fmt.Errorf("%w of apache", ErrWouldEmpty)}, want: ResultRefused},
		{name: "would empty a pool, the others pushed", o: Outcome{Pushed: true, Err: errors.Join(fmt.Errorf("%w of a", ErrWouldEmpty), fmt.Errorf("%w of b", ErrWouldEmpty))}, want: ResultRefused},
		{name: "no proxy yet", o: Outcome{Err: fmt.Errorf("%w: no running proxy", ErrNotReady)}, want: ResultWaiting},
		{name: "template failed", o: Outcome{Err: &RenderError{Template: "t", Err: errors.New("x")}}, want: ResultError},
		{name: "push refused", o: Outcome{Err: errors.New("push pools to 10.0.0.2:8099: status 403")}, want: ResultError},
		{name: "exec failed", o: Outcome{Err: errors.New("deliver config: exec: container not running")}, want: ResultError},
		{name: "HUP failed", o: Outcome{Changed: true, Err: errors.New("deliver config: reload: timeout")}, want: ResultError},
		{name: "reload not confirmed", o: Outcome{Changed: true, Err: errors.New("nginx did not run config 1 within 5s")}, want: ResultError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := resultOf(tt.o); got != tt.want {
				t.Errorf("resultOf(%+v) = %q; want %q", tt.o, got, tt.want)
			}
		})
	}
}
