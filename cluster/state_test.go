package cluster

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/upstreamd/upstreamd/store"
	"github.com/upstreamd/upstreamd/store/storetest"
)

// jsonOf is v as JSON.
func jsonOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestReadState: the whole cluster in one reading, each key parsed the way
// the daemons parse it; what does not parse is shown as such (an override
// the daemons ignore is left out).
func TestReadState(t *testing.T) {
	ctx := context.Background()
	etcd := storetest.New(nil)
	put := func(key, value string) {
		t.Helper()
		if _, err := etcd.Put(ctx, key, value, 0); err != nil {
			t.Fatal(err)
		}
	}
	put(store.OverrideKey("p", "apache"), "5")
	put(store.OverrideKey("p", "web"), "lots")
	put(store.NodeKey("p", "a"), jsonOf(t, Announcement{Node: "a", Host: "host-a"}))
	put(store.NodeKey("p", "b"), "{not json")
	put(store.SlotKey("p", "apache", 0), jsonOf(t, Slot{Node: "a"}))
	put(store.SlotKey("p", "apache", 1), jsonOf(t, Slot{Node: "a"}))
	put(store.SlotKey("p", "web", 0), `{"node":""}`)
	put(store.LeaderPrefix("p")+"1", jsonOf(t, Leader{Node: "a", Address: "10.0.0.1:80"}))
	put(store.LeaderPrefix("p")+"2", jsonOf(t, Leader{Node: "b", Address: "10.0.0.2:80"}))
	put(store.ServedKey("p"), jsonOf(t, ServedPools{Node: "a", Pools: map[string][]string{"apache": {"10.0.0.1:8001"}}}))
	put(store.OverrideKey("other", "apache"), "7") // another project's

	st, err := ReadState(ctx, etcd, "p")
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]int{"apache": 5}; !maps.Equal(st.Overrides, want) {
		t.Errorf("Overrides = %v, want %v", st.Overrides, want)
	}
	var names []string
	for _, a := range st.Nodes {
		names = append(names, a.Node)
	}
	if want := []string{"a", "b (unreadable announcement)"}; !slices.Equal(names, want) {
		t.Errorf("Nodes = %v, want %v", names, want)
	}
	if got := st.Slots["a"]["apache"]; got != 2 || st.Slots["?"]["web"] != 1 {
		t.Errorf("Slots = %v, want a holding 2 of apache and ? 1 of web", st.Slots)
	}
	if want := map[string]int{"apache": 2, "web": 1}; !maps.Equal(st.Placed, want) {
		t.Errorf("Placed = %v, want %v", st.Placed, want)
	}
	if st.Leader == nil || *st.Leader != (Leader{Node: "a", Address: "10.0.0.1:80"}) {
		t.Errorf("Leader = %+v, want the oldest candidate, a", st.Leader)
	}
	if st.Served == nil || st.Served.Node != "a" || !slices.Equal(st.Served.Pools["apache"], []string{"10.0.0.1:8001"}) {
		t.Errorf("Served = %+v, want what a published", st.Served)
	}

	empty, err := ReadState(ctx, storetest.New(nil), "p")
	if err != nil || empty.Leader != nil || empty.Served != nil || len(empty.Nodes) != 0 {
		t.Errorf("an empty etcd: %+v, %v; want nothing and no error", empty, err)
	}

	etcd.Lock()
	etcd.ListErrs = 1
	etcd.Unlock()
	if _, err := ReadState(ctx, etcd, "p"); err == nil {
		t.Error("no error while etcd fails")
	}
}

// TestReadStateLeaderUnreadable: a leader key that does not parse is
// shown as one, never as no leader.
func TestReadStateLeaderUnreadable(t *testing.T) {
	ctx := context.Background()
	etcd := storetest.New(nil)
	if _, err := etcd.Put(ctx, store.LeaderPrefix("p")+"1", "garbage", 0); err != nil {
		t.Fatal(err)
	}
	st, err := ReadState(ctx, etcd, "p")
	if err != nil {
		t.Fatal(err)
	}
	if want := "? (unreadable: " + store.LeaderPrefix("p") + "1)"; st.Leader == nil || st.Leader.Node != want {
		t.Errorf("Leader = %+v, want node %q", st.Leader, want)
	}
}

// TestLiveNodes: the names of the announced nodes; a key that is no node
// name is none.
func TestLiveNodes(t *testing.T) {
	ctx := context.Background()
	etcd := storetest.New(map[string]storetest.Value{
		store.NodeKey("p", "a"):          {Value: "{}"},
		store.NodeKey("p", "b"):          {Value: "{}"},
		store.NodeKey("p", "Not A Node"): {Value: "{}"},
		store.NodeKey("q", "c"):          {Value: "{}"},
	})
	got, err := LiveNodes(ctx, etcd, "p")
	if err != nil || !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("LiveNodes = %v, %v; want [a b]", got, err)
	}
}

// TestStateCache: the status page asks after every event; etcd is read at
// most once a second.
func TestStateCache(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := t.Context()
		etcd := storetest.New(nil)
		var c StateCache
		if st, err := c.Read(ctx, etcd, "p"); err != nil || len(st.Overrides) != 0 {
			t.Fatalf("first read: %+v, %v", st, err)
		}
		if _, err := etcd.Put(ctx, store.OverrideKey("p", "apache"), "4", 0); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)
		if st, _ := c.Read(ctx, etcd, "p"); len(st.Overrides) != 0 {
			t.Errorf("read again within a second: %v, want what was kept", st.Overrides)
		}
		time.Sleep(600 * time.Millisecond)
		if st, _ := c.Read(ctx, etcd, "p"); st.Overrides["apache"] != 4 {
			t.Errorf("a second later: %v, want the override read", st.Overrides)
		}
	})
}
