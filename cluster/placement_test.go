package cluster

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/store"
	"github.com/upstreamd/upstreamd/store/storetest"
)

func TestFairShares(t *testing.T) {
	for _, tc := range []struct {
		name       string
		replicas   int
		live       []string
		held       map[string]int
		maxPerNode int
		want       map[string]int
		short      int
	}{
		{"one node takes all", 3, []string{"a"}, nil, 0, map[string]int{"a": 3}, 0},
		{"even", 3, []string{"c", "a", "b"}, nil, 0, map[string]int{"a": 1, "b": 1, "c": 1}, 0},
		{"uneven: by name when nothing is held", 4, []string{"b", "a", "c"}, nil, 0, map[string]int{"a": 2, "b": 1, "c": 1}, 0},
		{"uneven: the extra stays where it is", 4, []string{"a", "b", "c"}, map[string]int{"c": 2, "a": 1, "b": 1}, 0, map[string]int{"a": 1, "b": 1, "c": 2}, 0},
		{"a joiner takes its share", 3, []string{"a", "b", "c"}, map[string]int{"a": 2, "b": 1}, 0, map[string]int{"a": 1, "b": 1, "c": 1}, 0},
		{"conflicts: one per node, too few nodes", 3, []string{"a", "b"}, nil, 1, map[string]int{"a": 1, "b": 1}, 1},
		{"a cap shifts the rest", 5, []string{"a", "b", "c"}, nil, 2, map[string]int{"a": 2, "b": 2, "c": 1}, 0},
		{"cap above the even split changes nothing", 6, []string{"a", "b"}, nil, 5, map[string]int{"a": 3, "b": 3}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, short := fairShares(tc.replicas, tc.live, tc.held, tc.maxPerNode)
			for _, n := range tc.live {
				if got[n] != tc.want[n] {
					t.Errorf("share of %s = %d, want %d (all: %v)", n, got[n], tc.want[n], got)
				}
			}
			if short != tc.short {
				t.Errorf("short = %d, want %d", short, tc.short)
			}
		})
	}
}

// slotEtcd is etcd's slot and node keys for several placements: every
// write is seen by all of them at once (as their watches would).
type slotEtcd struct {
	mu      sync.Mutex
	kv      map[string]storetest.Value
	members []*Placement
	nodes   []string
}

func newSlotEtcd() *slotEtcd { return &slotEtcd{kv: map[string]storetest.Value{}} }

func (e *slotEtcd) Claim(_ context.Context, key, value string, lease int64) (bool, store.KV, error) {
	e.mu.Lock()
	if v, ok := e.kv[key]; ok {
		e.mu.Unlock()
		return false, store.KV{Key: key, Value: []byte(v.Value), Lease: v.Lease}, nil
	}
	e.kv[key] = storetest.Value{Value: value, Lease: lease}
	e.mu.Unlock()
	e.publish()
	return true, store.KV{}, nil
}

// Unclaim deletes key only while it holds value under lease.
func (e *slotEtcd) Unclaim(_ context.Context, key, value string, lease int64) (bool, error) {
	e.mu.Lock()
	if v, ok := e.kv[key]; !ok || v.Value != value || v.Lease != lease {
		e.mu.Unlock()
		return false, nil
	}
	delete(e.kv, key)
	e.mu.Unlock()
	e.publish()
	return true, nil
}

// holders returns slot key → the node holding it.
func (e *slotEtcd) holders() map[string]string {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := map[string]string{}
	for k, v := range e.kv {
		var s Slot
		_ = json.Unmarshal([]byte(v.Value), &s)
		out[k] = s.Node
	}
	return out
}

// publish hands every member the whole copy.
func (e *slotEtcd) publish() {
	e.mu.Lock()
	slots := store.Update{Reset: true}
	for _, k := range slices.Sorted(maps.Keys(e.kv)) {
		slots.KVs = append(slots.KVs, store.KV{Key: k, Value: []byte(e.kv[k].Value), Lease: e.kv[k].Lease})
	}
	nodes := store.Update{Reset: true}
	for _, n := range e.nodes {
		nodes.KVs = append(nodes.KVs, store.KV{Key: store.EngineKey("p", "engine-"+n), Value: []byte(`{"node":"` + n + `"}`)})
	}
	members := slices.Clone(e.members)
	e.mu.Unlock()
	for _, p := range members {
		p.applyNodes(nodes)
		p.applySlots(slots)
	}
}

// join adds a node's placement.
func (e *slotEtcd) join(name string, spec []Service, ov map[string]int) *Placement {
	p := newPlacement(placementConfig{
		Store: e, Services: spec, Node: name, Project: "p",
		Leases:    &fixedLease{l: &store.Lease{ID: int64(len(e.members) + 1)}},
		Overrides: func() (map[string]int, bool) { return ov, true },
		Logger:    zerolog.Nop(),
	})
	e.mu.Lock()
	e.members = append(e.members, p)
	e.nodes = append(e.nodes, name)
	e.mu.Unlock()
	e.publish()
	return p
}

// die removes a node and every slot it held (its lease expired).
func (e *slotEtcd) die(name string) {
	e.mu.Lock()
	for k, v := range e.kv {
		if v.Value == `{"node":"`+name+`"}` {
			delete(e.kv, k)
		}
	}
	e.nodes = slices.DeleteFunc(e.nodes, func(n string) bool { return n == name })
	e.members = slices.DeleteFunc(e.members, func(p *Placement) bool { return p.cfg.Node == name })
	e.mu.Unlock()
	e.publish()
}

// expire ends p's lease: etcd drops its keys and its node, which the
// others see; p keeps what it had until it takes the new lease id (back).
func (e *slotEtcd) expire(p *Placement, id int64) (back func()) {
	old := p.cfg.Leases.Lease().ID
	e.mu.Lock()
	for k, v := range e.kv {
		if v.Lease == old {
			delete(e.kv, k)
		}
	}
	e.nodes = slices.DeleteFunc(e.nodes, func(n string) bool { return n == p.cfg.Node })
	e.members = slices.DeleteFunc(e.members, func(m *Placement) bool { return m == p })
	e.mu.Unlock()
	e.publish()
	p.cfg.Leases.(*fixedLease).l = nil
	return func() {
		p.cfg.Leases.(*fixedLease).l = &store.Lease{ID: id}
		e.mu.Lock()
		e.members = append(e.members, p)
		e.nodes = append(e.nodes, p.cfg.Node)
		e.mu.Unlock()
		e.publish()
	}
}

type fixedLease struct{ l *store.Lease }

func (f *fixedLease) Lease() *store.Lease        { return f.l }
func (f *fixedLease) Subscribe() <-chan struct{} { return nil }
func (f *fixedLease) Lost(*store.Lease)          {}

// settleAll runs passes on every member until nothing changes; running is
// what each node runs (as the reconciler would after the pass: it runs
// what Local says once its drains are done).
func settleAll(t *testing.T, e *slotEtcd) map[string]int {
	t.Helper()
	ctx := t.Context()
	var last map[string]int
	for range 10 {
		now := map[string]int{}
		for _, p := range slices.Clone(e.members) {
			if err := p.Step(ctx); err != nil {
				t.Fatal(err)
			}
			local, ok := p.Share()
			if !ok {
				t.Fatalf("%s: not placed after a step", p.cfg.Node)
			}
			if err := p.Settle(ctx, local); err != nil { // drained at once
				t.Fatal(err)
			}
			now[p.cfg.Node] = local["apache"]
		}
		if maps.Equal(now, last) {
			return now
		}
		last = now
	}
	t.Fatalf("placement does not settle: %v", last)
	return nil
}

func clusterSpec(replicas, maxPerNode int) []Service {
	return []Service{{Name: "apache", Replicas: replicas, MaxPerNode: maxPerNode}}
}

// TestPlacementSpreadsAndReschedules walks the seed's cluster: three
// replicas, one per node; a node dies and its replica is placed on a
// survivor only when max_per_node allows; a node joins and takes its share
// back from the node that had two.
func TestPlacementSpreadsAndReschedules(t *testing.T) {
	e := newSlotEtcd()
	spec := clusterSpec(3, 0)
	a := e.join("a", spec, nil)
	if got := settleAll(t, e); got["a"] != 3 {
		t.Fatalf("alone, a runs %d, want 3", got["a"])
	}
	e.join("b", spec, nil)
	e.join("c", spec, nil)
	if got := settleAll(t, e); !maps.Equal(got, map[string]int{"a": 1, "b": 1, "c": 1}) {
		t.Fatalf("after two joins: %v, want one each", got)
	}
	if len(e.kv) != 3 {
		t.Fatalf("%d slot keys, want 3: %v", len(e.kv), e.kv)
	}
	e.die("b")
	if got := settleAll(t, e); got["a"]+got["c"] != 3 {
		t.Fatalf("after b died: %v, want 3 between a and c", got)
	}
	e.join("b", spec, nil)
	if got := settleAll(t, e); !maps.Equal(got, map[string]int{"a": 1, "b": 1, "c": 1}) {
		t.Fatalf("after b came back: %v, want one each", got)
	}
	_ = a
}

// TestPlacementConflicts: with max_per_node = 1 (fleet's Conflicts=), a
// dead node's replica waits for a node to place it on, and the shortfall
// is reported.
func TestPlacementConflicts(t *testing.T) {
	e := newSlotEtcd()
	spec := clusterSpec(3, 1)
	a := e.join("a", spec, nil)
	e.join("b", spec, nil)
	e.join("c", spec, nil)
	if got := settleAll(t, e); !maps.Equal(got, map[string]int{"a": 1, "b": 1, "c": 1}) {
		t.Fatalf("%v, want one each", got)
	}
	e.die("c")
	if got := settleAll(t, e); !maps.Equal(got, map[string]int{"a": 1, "b": 1}) {
		t.Fatalf("after c died: %v, want a and b one each", got)
	}
	if got := a.Short(); got["apache"] != 1 {
		t.Fatalf("short = %v, want apache: 1", got)
	}
	e.join("d", spec, nil)
	if got := settleAll(t, e); !maps.Equal(got, map[string]int{"a": 1, "b": 1, "d": 1}) {
		t.Fatalf("after d joined: %v, want one each", got)
	}
	if got := a.Short(); len(got) != 0 {
		t.Fatalf("short = %v, want none", got)
	}
}

// TestPlacementDrainsBeforeGivingUp: a slot given up stays claimed while
// the node still runs more backends than it keeps, so the joiner cannot
// start its backend before the old one is drained... and scaling down
// releases the slots above the new count the same way.
func TestPlacementDrainsBeforeGivingUp(t *testing.T) {
	e := newSlotEtcd()
	spec := clusterSpec(2, 0)
	a := e.join("a", spec, nil)
	settleAll(t, e)
	b := e.join("b", spec, nil)
	ctx := t.Context()
	if err := a.Step(ctx); err != nil {
		t.Fatal(err)
	}
	if local, _ := a.Share(); local["apache"] != 1 {
		t.Fatalf("a keeps %d, want 1", local["apache"])
	}
	if err := a.Settle(ctx, map[string]int{"apache": 2}); err != nil { // still draining
		t.Fatal(err)
	}
	if err := b.Step(ctx); err != nil {
		t.Fatal(err)
	}
	if local, _ := b.Share(); local["apache"] != 0 {
		t.Fatalf("b runs %d while a still drains, want 0", local["apache"])
	}
	if err := a.Settle(ctx, map[string]int{"apache": 1}); err != nil { // drained
		t.Fatal(err)
	}
	if err := b.Step(ctx); err != nil {
		t.Fatal(err)
	}
	if local, _ := b.Share(); local["apache"] != 1 {
		t.Fatalf("b runs %d once a drained, want 1", local["apache"])
	}

	// Scale the cluster down to 1 (an override): the node holding slot 1
	// gives it up.
	ov := map[string]int{"apache": 1}
	for _, p := range []*Placement{a, b} {
		p.cfg.Overrides = func() (map[string]int, bool) { return ov, true }
	}
	got := settleAll(t, e)
	if got["a"]+got["b"] != 1 || len(e.kv) != 1 {
		t.Fatalf("after scaling to 1: %v, slots %v", got, e.kv)
	}
}

// TestPlacementWaitsForEtcd: before the copies were read, or without a
// lease, a step places nothing and Local says so (the reconciler then
// keeps what runs).
func TestPlacementWaitsForEtcd(t *testing.T) {
	e := newSlotEtcd()
	p := newPlacement(placementConfig{Store: e, Services: clusterSpec(3, 0), Node: "a", Project: "p",
		Leases: &fixedLease{}, Overrides: func() (map[string]int, bool) { return nil, true }, Logger: zerolog.Nop()})
	if err := p.Step(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, ok := p.Share(); ok {
		t.Fatal("placed without a copy of etcd")
	}
	p.applyNodes(store.Update{Reset: true})
	p.applySlots(store.Update{Reset: true})
	if err := p.Step(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, ok := p.Share(); ok {
		t.Fatal("placed without a lease")
	}
	if len(e.kv) != 0 {
		t.Fatalf("claimed without a lease: %v", e.kv)
	}
}

// TestPlacementSaysWhichNodeDiffers: a node announcing another spec hash
// is named once (not at every update), and placement goes on.
func TestPlacementSaysWhichNodeDiffers(t *testing.T) {
	var logs strings.Builder
	spec := clusterSpec(3, 0)
	p := newPlacement(placementConfig{Store: newSlotEtcd(), Services: spec, Node: "a", Digest: "0123456789aa", Project: "p",
		Leases: &fixedLease{l: &store.Lease{ID: 1}}, Overrides: func() (map[string]int, bool) { return nil, true },
		Logger: zerolog.New(&logs)})
	same, _ := json.Marshal(Announcement{Node: "b", Spec: "0123456789aa"})
	other, _ := json.Marshal(Announcement{Node: "c", Spec: "0123456789ab"})
	u := store.Update{Reset: true, KVs: []store.KV{{Key: store.EngineKey("p", "e1"), Value: same}, {Key: store.EngineKey("p", "e2"), Value: other}}}
	p.applyNodes(u)
	p.applyNodes(u)
	if n := strings.Count(logs.String(), "runs another spec"); n != 1 {
		t.Fatalf("said %d times, want once:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "node c runs another spec") || strings.Contains(logs.String(), "node b runs") {
		t.Fatalf("names the wrong node:\n%s", logs.String())
	}
	if len(p.nodes) != 2 {
		t.Fatalf("nodes %v, want both counted", p.nodes)
	}
}

// TestPlacementWarnsOfBridgeAddresses: a node advertising container
// addresses in a project other nodes share is told, once, that the other
// hosts cannot reach them; with advertise = "host" nothing is said.
func TestPlacementWarnsOfBridgeAddresses(t *testing.T) {
	for _, advertise := range []string{"container", "host"} {
		var logs strings.Builder
		spec := clusterSpec(3, 0)
		p := newPlacement(placementConfig{Store: newSlotEtcd(), Services: spec, HostAddresses: advertise == "host", Node: "a", Project: "p",
			Leases: &fixedLease{l: &store.Lease{ID: 1}}, Overrides: func() (map[string]int, bool) { return nil, true },
			Logger: zerolog.New(&logs)})
		a, _ := json.Marshal(Announcement{Node: "a"})
		b, _ := json.Marshal(Announcement{Node: "b"})
		p.applyNodes(store.Update{Reset: true, KVs: []store.KV{{Key: store.EngineKey("p", "e1"), Value: a}}})
		if strings.Contains(logs.String(), "cannot reach") {
			t.Fatalf("%s: warned while alone:\n%s", advertise, logs.String())
		}
		u := store.Update{KVs: []store.KV{{Key: store.EngineKey("p", "e2"), Value: b}}}
		p.applyNodes(u)
		p.applyNodes(u)
		want := 0
		if advertise == "container" {
			want = 1
		}
		if n := strings.Count(logs.String(), "cannot reach"); n != want {
			t.Fatalf("%s: warned %d times, want %d:\n%s", advertise, n, want, logs.String())
		}
	}
}

// TestPlacementReleasesOnlyItsOwnClaim: a slot marked for release is
// deleted only while it holds this node's claim (value and lease), and
// the marks go with the lease they were made under. Before, a node that
// marked slots, lost its lease while the others claimed everything, and
// then drained, deleted the others' slots; and a node that claimed its
// marked slot again under a new lease took it for one to give up.
func TestPlacementReleasesOnlyItsOwnClaim(t *testing.T) {
	ctx := t.Context()
	t.Run("the others claimed it meanwhile", func(t *testing.T) {
		e := newSlotEtcd()
		spec := clusterSpec(3, 0)
		a := e.join("a", spec, nil)
		settleAll(t, e) // a holds 0, 1, 2
		b := e.join("b", spec, nil)
		c := e.join("c", spec, nil)
		if err := a.Step(ctx); err != nil { // marks 1 and 2: a's share is 1
			t.Fatal(err)
		}
		back := e.expire(a, 10)
		for _, p := range []*Placement{b, c} {
			if err := p.Step(ctx); err != nil {
				t.Fatal(err)
			}
		}
		want := e.holders()
		if len(want) != 3 || slices.Contains(slices.Collect(maps.Values(want)), "a") {
			t.Fatalf("b and c should hold the three slots: %v", want)
		}
		back()
		if err := a.Step(ctx); err != nil {
			t.Fatal(err)
		}
		if err := a.Settle(ctx, map[string]int{"apache": 0}); err != nil { // drained
			t.Fatal(err)
		}
		if got := e.holders(); !maps.Equal(got, want) {
			t.Fatalf("after a settled: slots %v, want b's and c's untouched %v", got, want)
		}
	})
	t.Run("claimed again under a new lease", func(t *testing.T) {
		e := newSlotEtcd()
		spec := clusterSpec(2, 0)
		a := e.join("a", spec, nil)
		settleAll(t, e) // a holds 0 and 1
		b := e.join("b", spec, nil)
		if err := a.Step(ctx); err != nil { // marks 1
			t.Fatal(err)
		}
		back := e.expire(a, 10)
		back()
		if err := b.Step(ctx); err != nil { // b takes 0
			t.Fatal(err)
		}
		if err := a.Step(ctx); err != nil { // a takes 1, its share, under lease 10
			t.Fatal(err)
		}
		if err := a.Settle(ctx, map[string]int{"apache": 1}); err != nil {
			t.Fatal(err)
		}
		if got := e.kv[store.SlotKey("p", "apache", 1)]; got.Lease != 10 {
			t.Fatalf("slot 1 is %+v after a settled, want a's claim under lease 10: it is not one to give up", got)
		}
		if err := a.Step(ctx); err != nil {
			t.Fatal(err)
		}
		if local, _ := a.Share(); local["apache"] != 1 {
			t.Fatalf("a runs %d, want 1", local["apache"])
		}
	})
	t.Run("someone else's claim under the same lease ID", func(t *testing.T) {
		e := newSlotEtcd()
		spec := clusterSpec(2, 0)
		a := e.join("a", spec, nil)
		settleAll(t, e)
		b := e.join("b", spec, nil)
		if err := a.Step(ctx); err != nil { // marks 1
			t.Fatal(err)
		}
		key := store.SlotKey("p", "apache", 1)
		e.mu.Lock()
		e.kv[key] = storetest.Value{Value: `{"node":"b"}`, Lease: b.cfg.Leases.Lease().ID} // deleted by hand, and b claimed it
		e.mu.Unlock()
		e.publish()
		if err := a.Settle(ctx, map[string]int{"apache": 1}); err != nil {
			t.Fatal(err)
		}
		if got := e.holders()[key]; got != "b" {
			t.Fatalf("slot 1 held by %q after a settled, want b", got)
		}
	})
}
