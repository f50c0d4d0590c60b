package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/render"
	"github.com/upstreamd/upstreamd/store"
	"github.com/upstreamd/upstreamd/store/storetest"
)

// TestServedPublishedAndMirrored: the leader writes what its nginx serves
// to etcd once per change (never while it does not lead), and a mirror fed
// from that key answers drains as the leader's nginx would. No key at the
// first reading is nothing served; a key that goes (its leader's lease
// ended: that nginx may serve on, kept) leaves the mirror as it was.
func TestServedPublishedAndMirrored(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		reg := storetest.New(nil)
		local, mirror := render.NewServed(), render.NewServed()
		lease, err := reg.Grant(ctx, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		leases := &fixedLease{l: lease}
		el := newElector(electorConfig{Store: &fakeElection{}, Leases: leases, Project: "up", Self: Leader{Node: "n1"}, Logger: zerolog.Nop()})
		s := &served{node: "n1", project: "up", store: reg, leases: leases, elector: el, log: zerolog.Nop()}
		go func() { _ = s.publish(ctx, local) }()

		local.Mirror(map[string][]string{"apache": {"10.0.0.1:80"}})
		synctest.Wait()
		if got := reg.Keys()[store.ServedKey("up")]; got.Value != "" {
			t.Fatalf("published %q while not leading", got.Value)
		}

		el.elected(1)
		synctest.Wait()
		key := store.ServedKey("up")
		kv := reg.Keys()[key]
		var sp ServedPools
		if err := json.Unmarshal([]byte(kv.Value), &sp); err != nil {
			t.Fatalf("published %q: %v", kv.Value, err)
		}
		if sp.Node != "n1" || !slices.Equal(sp.Pools["apache"], []string{"10.0.0.1:80"}) || kv.Lease != lease.ID {
			t.Fatalf("published %+v under lease %d, want apache 10.0.0.1:80 of n1 under %d", sp, kv.Lease, lease.ID)
		}
		puts := reg.Counts().Puts
		local.Mirror(map[string][]string{"apache": {"10.0.0.1:80"}}) // the same pools again
		synctest.Wait()
		if got := reg.Counts().Puts; got != puts {
			t.Fatalf("%d writes for unchanged pools", got-puts)
		}

		first := render.NewServed()
		s.mirror(first)(store.Update{Reset: true})
		select {
		case <-first.Known():
		default:
			t.Fatal("no key at the first reading: the mirror knows nothing yet; want nothing served")
		}

		apply := s.mirror(mirror)
		apply(store.Update{Reset: true, KVs: []store.KV{{Key: key, Value: []byte(kv.Value)}}})
		if !mirror.Serves("apache", "10.0.0.1:80") {
			t.Fatalf("mirror serves %v", mirror.Set())
		}
		apply(store.Update{Deleted: []string{key}})
		apply(store.Update{Reset: true}) // listed again after etcd came back: no key
		if !mirror.Serves("apache", "10.0.0.1:80") {
			t.Fatalf("after the key went: mirror serves %v, want what the leader said last", mirror.Set())
		}
		apply(store.Update{KVs: []store.KV{{Key: key, Value: []byte("{not json")}}})
		if got := mirror.Set(); len(slices.Collect(maps.Keys(got))) != 0 {
			t.Fatalf("an unreadable key: mirror serves %v, want nothing", got)
		}
	})
}

// TestServedWaitsForLease: a leader without a lease (etcd out of reach)
// publishes as soon as it holds one again, woken by the node rather than
// by a timer; a write that fails is tried again with backoff.
func TestServedWaitsForLease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		reg := storetest.New(nil)
		leases := storetest.NewLeases()
		leases.Expire() // no lease
		local := render.NewServed()
		el := newElector(electorConfig{Store: &fakeElection{}, Leases: leases, Project: "up", Self: Leader{Node: "n1"}, Logger: zerolog.Nop()})
		s := &served{node: "n1", project: "up", store: reg, leases: leases, elector: el, log: zerolog.Nop()}
		go func() { _ = s.publish(ctx, local) }()
		el.elected(1)
		local.Mirror(map[string][]string{"apache": {"10.0.0.1:80"}})
		advance(time.Minute)
		if got := reg.Counts().Puts; got != 0 {
			t.Fatalf("%d writes without a lease", got)
		}
		reg.Lock()
		reg.PutErrs = []error{errors.New("etcd unreachable")}
		reg.Unlock()
		leases.Set(2)
		synctest.Wait()
		reg.Lock()
		tried := len(reg.PutErrs) == 0
		reg.Unlock()
		if !tried {
			t.Fatal("no write tried as the lease came")
		}
		if got := reg.Keys()[store.ServedKey("up")]; got.Value != "" {
			t.Fatalf("published %q through a write that failed", got.Value)
		}
		advance(time.Second) // the backoff
		if got := reg.Keys()[store.ServedKey("up")]; got.Lease != 2 {
			t.Fatalf("published %+v; want the pools under lease 2 once the write goes through", got)
		}
	})
}
