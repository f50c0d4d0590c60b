package orchestrator

import (
	"context"
	"encoding/json"
	"time"

	"github.com/upstreamd/upstreamd/store"
)

// ServedPools is the value of ServedKey.
type ServedPools struct {
	Node  string              `json:"node"`
	Pools map[string][]string `json:"pools"` // service → addresses nginx sends to
}

// servedSet is the local nginx's pools (a render.Served): the leader
// publishes them.
type servedSet interface {
	pool
	Set() map[string][]string
}

// servedMirror is another node's nginx, as it published its pools (a
// render.Served fed by Mirror).
type servedMirror interface {
	pool
	Mirror(set map[string][]string)
}

// publishServed writes the local nginx's pools to ServedKey whenever they
// change while this node leads (once per change: an idle cluster writes
// nothing).
func (o *Orchestrator) publishServed(ctx context.Context, local servedSet) error {
	leading := o.elector.changed.Subscribe()
	last := ""
	var again <-chan time.Time
	for {
		changed := local.Changed()
		again = nil
		switch set := local.Set(); {
		case !o.elector.Leading():
			last = "" // published again on leading again
		case set != nil:
			b, _ := json.Marshal(ServedPools{Node: o.cfg.Spec.Node, Pools: set}) // plain data
			if v := string(b); v != last {
				if l := o.node.Lease(); l == nil {
					again = time.After(200 * time.Millisecond)
				} else if _, err := o.cfg.Store.Put(ctx, store.ServedKey(o.cfg.Spec.Project), v, l.ID); err != nil {
					o.log.Debug().Err(err).Msg("publishing what nginx serves; retrying")
					again = time.After(200 * time.Millisecond)
				} else {
					last = v
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-leading:
		case <-again:
		}
	}
}

// mirrorServed keeps mirror at what the leader's nginx serves. A key
// that goes (its node's lease ended) leaves the mirror as it was: that
// nginx may serve those pools still (a leader that loses its lease keeps
// its proxy until etcd names another leader), so drains go on waiting for
// what it said until the next leader publishes, or their timeout. No key
// at the first reading is nothing served: drains do not wait for a leader
// that never published.
func (o *Orchestrator) mirrorServed(mirror servedMirror) func(store.Update) {
	seen := false
	return func(u store.Update) {
		var cur *ServedPools
		for _, kv := range u.KVs {
			var sp ServedPools
			if err := json.Unmarshal(kv.Value, &sp); err != nil {
				o.log.Warn().Err(err).Str("key", kv.Key).Msg("unreadable record of what the leader's nginx serves; taking it as nothing")
				sp = ServedPools{}
			}
			cur = &sp
		}
		switch {
		case cur != nil:
			seen = true
			mirror.Mirror(cur.Pools)
		case u.Reset && !seen:
			mirror.Mirror(nil)
		}
	}
}
