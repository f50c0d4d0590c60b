package cluster

import (
	"context"
	"encoding/json"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/internal/loop"
	"github.com/upstreamd/upstreamd/store"
)

// ServedPools is the value of store.ServedKey: what the nginx of the node
// that runs the project's one proxy serves, published under its lease so
// that every node drains its backends against the nginx that sends to
// them.
type ServedPools struct {
	Node  string              `json:"node"`
	Pools map[string][]string `json:"pools"` // service → addresses nginx sends to
}

// servedSet is the local nginx's pools (a render.Served): the leader
// publishes them.
type servedSet interface {
	// Subscribe returns a channel that receives after each change.
	Subscribe() <-chan struct{}
	// Set returns service → addresses; nil while nothing is known.
	Set() map[string][]string
}

// servedMirror is another node's nginx, as it published its pools (a
// render.Served fed by Mirror).
type servedMirror interface {
	Mirror(set map[string][]string)
}

// servedStore is etcd as the publisher writes it.
type servedStore interface {
	Put(ctx context.Context, key, value string, lease int64) (revision int64, err error)
}

var _ servedStore = (*store.Client)(nil)

// served publishes what this node's nginx serves while it leads, and
// mirrors what the leader's serves.
type served struct {
	node, project string
	store         servedStore
	leases        leases
	elector       *Elector
	log           zerolog.Logger
}

// publish writes the local nginx's pools to store.ServedKey whenever they
// change while this node leads (once per change: an idle cluster writes
// nothing), under the node's lease: one that comes wakes it.
func (s *served) publish(ctx context.Context, local servedSet) error {
	l := loop.New(loop.Config{
		Triggers: []<-chan struct{}{local.Subscribe(), s.elector.changed.Subscribe(), s.leases.Subscribe()},
		Initial:  200 * time.Millisecond, Max: 5 * time.Second,
		Log: s.log, Failed: "publishing what nginx serves; retrying", Level: zerolog.DebugLevel,
	})
	last := "" // what was published last while leading
	return l.Run(ctx, func(ctx context.Context) (loop.Result, error) {
		set := local.Set()
		switch {
		case !s.elector.Leading():
			last = "" // published again on leading again
			return loop.Result{}, nil
		case set == nil:
			return loop.Result{}, nil
		}
		b, _ := json.Marshal(ServedPools{Node: s.node, Pools: set}) // plain data
		v, lease := string(b), s.leases.Lease()
		if v == last || lease == nil {
			return loop.Result{}, nil
		}
		if _, err := s.store.Put(ctx, store.ServedKey(s.project), v, lease.ID); err != nil {
			return loop.Result{}, err
		}
		last = v
		return loop.Result{}, nil
	})
}

// mirror returns the handler of a store.Watch of store.ServedKey that
// keeps m at what the leader's nginx serves. A key that goes (its node's
// lease ended) leaves the mirror as it was: that nginx may serve those
// pools still (a leader that loses its lease keeps its proxy until etcd
// names another leader), so drains go on waiting for what it said until
// the next leader publishes, or their timeout. No key at the first reading
// is nothing served: drains do not wait for a leader that never published.
func (s *served) mirror(m servedMirror) func(store.Update) {
	seen := false
	return func(u store.Update) {
		var cur *ServedPools
		for _, kv := range u.KVs {
			var sp ServedPools
			if err := json.Unmarshal(kv.Value, &sp); err != nil {
				s.log.Warn().Err(err).Str("key", kv.Key).Msg("unreadable record of what the leader's nginx serves; taking it as nothing")
				sp = ServedPools{}
			}
			cur = &sp
		}
		switch {
		case cur != nil:
			seen = true
			m.Mirror(cur.Pools)
		case u.Reset && !seen:
			m.Mirror(nil)
		}
	}
}
