package cluster

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"time"

	"github.com/upstreamd/upstreamd/store"
)

// State is a project's cluster as etcd holds it, read at one moment: what
// `upstreamd status` prints and the admin API answers. What a key holds
// is untrusted: a value that does not parse is shown as such, never
// dropped silently, except an override, which the daemons ignore too.
type State struct {
	// Overrides are the valid replica overrides, by service.
	Overrides map[string]int
	// Nodes are the live nodes' announcements, by name; one that does
	// not parse has only its Node, named "<key> (unreadable announcement)".
	Nodes []Announcement
	// Slots counts the slots each node holds, by node and service (a slot
	// whose value does not parse is held by "?"); Placed counts them by
	// service.
	Slots  map[string]map[string]int
	Placed map[string]int
	// Leader is the node the election names to run the project's proxy;
	// nil while none is elected (or proxy.placement is "every").
	Leader *Leader
	// Served is what the leader's nginx serves, as the leader published
	// it; nil when nothing is published.
	Served *ServedPools
}

// StateStore is etcd as ReadState reads it (a *store.Client).
type StateStore interface {
	List(ctx context.Context, prefix string) ([]store.KV, int64, error)
	Get(ctx context.Context, key string) (kv store.KV, ok bool, err error)
	Leader(ctx context.Context, prefix string) (kv store.KV, ok bool, err error)
}

var _ StateStore = (*store.Client)(nil)

// ReadState reads project's cluster from etcd: the overrides, the nodes,
// the slots, the leader and what it serves. It returns what it read up to
// the first error, and that error.
func ReadState(ctx context.Context, etcd StateStore, project string) (State, error) {
	st := State{Overrides: map[string]int{}, Slots: map[string]map[string]int{}, Placed: map[string]int{}}
	reads := []func(context.Context, StateStore, string) error{st.readOverrides, st.readNodes, st.readLeader, st.readSlots, st.readServed}
	for _, read := range reads {
		if err := read(ctx, etcd, project); err != nil {
			return st, err
		}
	}
	return st, nil
}

func (st *State) readOverrides(ctx context.Context, etcd StateStore, project string) error {
	prefix := store.OverridesPrefix(project)
	kvs, _, err := etcd.List(ctx, prefix)
	if err != nil {
		return err
	}
	for _, kv := range kvs {
		if n, err := ParseReplicas(string(kv.Value)); err == nil {
			st.Overrides[strings.TrimPrefix(kv.Key, prefix)] = n
		}
	}
	return nil
}

func (st *State) readNodes(ctx context.Context, etcd StateStore, project string) error {
	kvs, _, err := etcd.List(ctx, store.NodesPrefix(project))
	if err != nil {
		return err
	}
	for _, kv := range kvs {
		a, ok := parseAnnouncement(kv.Value)
		if !ok {
			a.Node = strings.TrimPrefix(kv.Key, store.NodesPrefix(project)) + " (unreadable announcement)"
		}
		st.Nodes = append(st.Nodes, a)
	}
	return nil
}

func (st *State) readLeader(ctx context.Context, etcd StateStore, project string) error {
	kv, ok, err := etcd.Leader(ctx, store.LeaderPrefix(project))
	if err != nil || !ok {
		return err
	}
	l, ok := parseLeader(kv.Value)
	if !ok {
		l.Node = "? (unreadable: " + kv.Key + ")"
	}
	st.Leader = &l
	return nil
}

func (st *State) readSlots(ctx context.Context, etcd StateStore, project string) error {
	kvs, _, err := etcd.List(ctx, store.SlotsPrefix(project))
	if err != nil {
		return err
	}
	for _, kv := range kvs {
		node, ok := parseSlot(kv.Value)
		if !ok {
			node = "?"
		}
		svc := serviceOfSlot(store.SlotsPrefix(project), kv.Key)
		if st.Slots[node] == nil {
			st.Slots[node] = map[string]int{}
		}
		st.Slots[node][svc]++
		st.Placed[svc]++
	}
	return nil
}

func (st *State) readServed(ctx context.Context, etcd StateStore, project string) error {
	kv, ok, err := etcd.Get(ctx, store.ServedKey(project))
	if err != nil || !ok {
		return err
	}
	var sp ServedPools
	if json.Unmarshal(kv.Value, &sp) == nil {
		st.Served = &sp
	}
	return nil
}

// parseAnnouncement reads a node's announcement; false when it does not
// parse or names no node.
func parseAnnouncement(value []byte) (Announcement, bool) {
	var a Announcement
	err := json.Unmarshal(value, &a)
	return a, err == nil && a.Node != ""
}

// parseLeader reads an election key's candidate; false when it does not
// parse or names no node.
func parseLeader(value []byte) (Leader, bool) {
	var l Leader
	err := json.Unmarshal(value, &l)
	return l, err == nil && l.Node != ""
}

// parseSlot returns the node a slot's value names; false when it does not
// parse or names none.
func parseSlot(value []byte) (string, bool) {
	var s Slot
	err := json.Unmarshal(value, &s)
	return s.Node, err == nil && s.Node != ""
}

// LiveNodes lists the names of the nodes announced in etcd (under their
// leases: the live ones); a key that is not a node name is none.
func LiveNodes(ctx context.Context, etcd StateStore, project string) ([]string, error) {
	kvs, _, err := etcd.List(ctx, store.NodesPrefix(project))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, kv := range kvs {
		if name := strings.TrimPrefix(kv.Key, store.NodesPrefix(project)); store.ValidName(name) == nil {
			out = append(out, name)
		}
	}
	return out, nil
}

// StateCache keeps the State it read for a second: the admin page asks
// for it after every event. The zero value is ready.
type StateCache struct {
	mu    sync.Mutex
	at    time.Time
	state State
	err   error
}

// stateFor is how long a StateCache keeps what it read, and bounds a read.
const stateFor = time.Second

// Read returns the State read at most a second ago, or reads it again.
func (c *StateCache) Read(ctx context.Context, etcd StateStore, project string) (State, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.at) < stateFor {
		return c.state, c.err
	}
	rctx, cancel := context.WithTimeout(ctx, stateFor)
	defer cancel()
	c.state, c.err = ReadState(rctx, etcd, project)
	c.at = time.Now()
	return c.state, c.err
}
