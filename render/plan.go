package render

import "github.com/upstreamd/upstreamd/nginx"

// proxyState is everything the Controller knows of the proxy it delivers
// to. It is made in one place, newProxyState, whenever the proxy changes.
type proxyState struct {
	// proxy is the container, and session what is known of its files.
	proxy   nginx.Proxy
	session session
	// rejected is the hash of the last rendered config nginx -t rejected
	// here; those bytes are not delivered again.
	rejected string
	// poolsAPI: the config live here is known to have the pools API (a push
	// went through, or a dynamic config of ours was confirmed running).
	poolsAPI bool
	// pushed is the pools last pushed to the nginx running here (as
	// candidate.pools); liveHash is the hash of the config confirmed
	// running here.
	pushed   string
	liveHash string
}

// newProxyState returns the state of proxy p, with session its new
// Session. A proxy restarted in place (same container as prev, another
// Generation) keeps its files: the config nginx rejected there and whether
// the live config has the pools API carry over. What its nginx runs, and
// every cache of the old session, does not: the pools are pushed and the
// config confirmed again.
func newProxyState(p nginx.Proxy, s session, prev proxyState) proxyState {
	next := proxyState{proxy: p, session: s}
	if prev.proxy.ID == p.ID {
		next.rejected, next.poolsAPI = prev.rejected, prev.poolsAPI
	}
	return next
}

// candidate is what one pass wants nginx to serve, derived purely from a
// View.
type candidate struct {
	view     View
	revision int64
	config   []byte // the rendered template plus upstreamd's trailer (Finish)
	hash     string // Hash of the rendered template: what the status server answers
	pools    string // PoolsBody at version 0, so equal pools compare equal; empty when not dynamic
}

// body is the pools body to push.
func (c candidate) body() []byte { return PoolsBody(c.revision, c.view) }

// step is one thing a pass does to the proxy.
type step int

const (
	// stepTryPush pushes the pools first, so that a config that names a
	// new service finds its pool; when the live config has no pools API
	// yet, the push waits for stepPush.
	stepTryPush step = iota + 1
	// stepDeliver stages, checks, swaps and reloads the config; it does
	// nothing when the bytes are live already.
	stepDeliver
	// stepConfirm records the config as running, once nginx answers with
	// its hash when the status server can be asked.
	stepConfirm
	// stepPush pushes the pools unless stepTryPush did.
	stepPush
)

func (s step) String() string {
	switch s {
	case stepTryPush:
		return "try-push"
	case stepDeliver:
		return "deliver"
	case stepConfirm:
		return "confirm"
	case stepPush:
		return "push"
	default:
		return "step?"
	}
}

// plan returns the steps that make nginx serve c, given st. It does no I/O.
//
// A config nginx rejected is not delivered again; while it stands, the
// pools still flow to the last good config when that one is known to have
// the pools API. Otherwise the pools go first (or, without the pools API
// live, after the new config is confirmed), then the config, confirmed
// unless it is the one known to run.
func plan(st proxyState, c candidate) []step {
	dynamic, hasStatus := c.pools != "", st.session.HasStatus()
	needPush := dynamic && c.pools != st.pushed
	if c.hash == st.rejected {
		if needPush && hasStatus && st.poolsAPI {
			return []step{stepPush}
		}
		return nil
	}
	var steps []step
	if needPush && hasStatus {
		steps = append(steps, stepTryPush)
	}
	steps = append(steps, stepDeliver)
	if c.hash != st.liveHash {
		steps = append(steps, stepConfirm)
	}
	if needPush {
		steps = append(steps, stepPush)
	}
	return steps
}
