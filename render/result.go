package render

import (
	"errors"

	"github.com/upstreamd/upstreamd/nginx"
)

// Result is what a render pass came to: the Controller decides it once,
// and the metrics and the history read it as it is. The values are the
// result label of upstreamd_render_passes_total.
type Result string

// The results of a pass.
const (
	// ResultReload: a new config went live (new pools may have been
	// pushed as well).
	ResultReload Result = "reload"
	// ResultPush: new pools went to the balancer without a reload.
	ResultPush Result = "push"
	// ResultUnchanged: nginx had it all already.
	ResultUnchanged Result = "unchanged"
	// ResultRejected: nginx -t refused the config (Err is an
	// *nginx.CheckError); the last good config stays live.
	ResultRejected Result = "rejected"
	// ResultRefused: the registrations would empty a pool this node finds
	// healthy (Err matches ErrWouldEmpty); that pool was kept, the other
	// pools may have gone through.
	ResultRefused Result = "refused"
	// ResultWaiting: no registrations read or no proxy running yet (Err
	// matches ErrNotReady).
	ResultWaiting Result = "waiting"
	// ResultError: the template failed (a *RenderError), or the proxy
	// could not be reached, refused a push, a delivery or a HUP, or did
	// not confirm a reload.
	ResultError Result = "error"
)

// Results lists every Result.
func Results() []Result {
	return []Result{ResultReload, ResultPush, ResultUnchanged, ResultRejected, ResultRefused, ResultWaiting, ResultError}
}

// resultOf is what a pass that ended as o came to.
func resultOf(o Outcome) Result {
	switch {
	case errors.Is(o.Err, nginx.ErrCheckFailed):
		return ResultRejected
	case errors.Is(o.Err, ErrNotReady):
		return ResultWaiting
	case errors.Is(o.Err, ErrWouldEmpty):
		return ResultRefused
	case o.Err != nil:
		return ResultError
	case o.Changed:
		return ResultReload
	case o.Pushed:
		return ResultPush
	default:
		return ResultUnchanged
	}
}
