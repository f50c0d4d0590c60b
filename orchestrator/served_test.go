package orchestrator

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/render"
	"github.com/upstreamd/upstreamd/store"
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
		reg := newFakeRegistry(nil)
		local, mirror := render.NewServed(), render.NewServed()
		spec := testSpec()
		o := New(Config{Spec: spec, Docker: newFakeDocker(), Store: reg, Registrations: reg, Pool: local, Mirror: mirror,
			ProxyPlacement: PlacementLeader, Logger: zerolog.Nop()})
		lease, err := reg.Grant(ctx, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		o.node.setLease(lease)
		go func() { _ = o.publishServed(ctx, local) }()

		local.Mirror(map[string][]string{"apache": {"10.0.0.1:80"}})
		synctest.Wait()
		if got := reg.snapshot()[store.ServedKey(spec.Project)]; got.value != "" {
			t.Fatalf("published %q while not leading", got.value)
		}

		o.elector.elected(1)
		synctest.Wait()
		key := store.ServedKey(spec.Project)
		kv := reg.snapshot()[key]
		var sp ServedPools
		if err := json.Unmarshal([]byte(kv.value), &sp); err != nil {
			t.Fatalf("published %q: %v", kv.value, err)
		}
		if sp.Node != spec.Node || !slices.Equal(sp.Pools["apache"], []string{"10.0.0.1:80"}) || kv.lease != lease.ID {
			t.Fatalf("published %+v under lease %d, want apache 10.0.0.1:80 of %s under %d", sp, kv.lease, spec.Node, lease.ID)
		}
		puts := len(reg.puts)
		local.Mirror(map[string][]string{"apache": {"10.0.0.1:80"}}) // the same pools again
		synctest.Wait()
		if len(reg.puts) != puts {
			t.Fatalf("%d writes for unchanged pools", len(reg.puts)-puts)
		}

		first := render.NewServed()
		o.mirrorServed(first)(store.Update{Reset: true})
		select {
		case <-first.Known():
		default:
			t.Fatal("no key at the first reading: the mirror knows nothing yet; want nothing served")
		}

		apply := o.mirrorServed(mirror)
		apply(store.Update{Reset: true, KVs: []store.KV{{Key: key, Value: []byte(kv.value)}}})
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
