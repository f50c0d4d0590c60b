package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/store"
)

// Slot is the value of a slot key.
type Slot struct {
	Node string `json:"node"`
}

// slotStore is etcd as placement writes it.
type slotStore interface {
	Claim(ctx context.Context, key, value string, lease int64) (held bool, holder store.KV, err error)
	Unclaim(ctx context.Context, key, value string, lease int64) (deleted bool, err error)
}

var _ slotStore = (*store.Client)(nil)

// placementConfig configures a Placement.
type placementConfig struct {
	Store   slotStore
	Project string
	// Node is this node's name, Digest the hash of its spec.
	Node   string
	Digest string
	// Services are the spec's; HostAddresses says the node advertises
	// addresses other hosts reach.
	Services      []Service
	HostAddresses bool
	Leases        leases
	// Overrides returns the replica overrides by service, and false while
	// they were never read.
	Overrides func() (map[string]int, bool)
	Logger    zerolog.Logger
}

// Placement spreads each service's replicas over the project's live nodes:
// replicas count the cluster, and each is a slot in etcd that one node
// claims under its lease (at most the service's MaxPerNode per node). A
// pass (Step) compares the slots this node holds with its fair share of
// them, claims free ones or gives extra ones up; the reconciler then runs
// as many backends as this node holds slots (Share). A slot given up is
// drained first: it stays claimed until this node runs no more backends
// than it keeps (Settle), so that the node taking it over never makes the
// service run short. A node that dies loses its lease and with it its
// slots, which the others claim: fleet's rescheduling, done by etcd.
//
// The copies of the nodes and slots come from two store.Watches (applyNodes,
// applySlots); a pass never waits on a read.
type Placement struct {
	cfg placementConfig
	log zerolog.Logger

	mu         sync.Mutex
	nodes      map[string]string // engine claim key → its live node
	slots      map[string]string // slot key → holder node
	gotNodes   bool
	gotSlots   bool
	loaded     chan struct{}     // closed once both copies were read
	releasing  map[string]bool   // keys of slots this node gives up once drained
	markedWith int64             // the lease releasing was marked under
	share      map[string]int    // service → backends this node is to run (its share)
	placed     bool              // share was computed once
	short      map[string]int    // service → replicas no node can take (max_per_node)
	said       map[string]int    // what was said of short, to say changes once
	differ     map[string]string // node → the other spec digest said of it
	saidBridge bool              // warned that container addresses do not cross hosts
}

func newPlacement(cfg placementConfig) *Placement {
	return &Placement{cfg: cfg, log: cfg.Logger, nodes: map[string]string{}, slots: map[string]string{},
		releasing: map[string]bool{}, share: map[string]int{}, short: map[string]int{}, said: map[string]int{},
		loaded: make(chan struct{}), differ: map[string]string{}}
}

// Loaded is closed once the nodes and the slots were read from etcd.
func (p *Placement) Loaded() <-chan struct{} { return p.loaded }

// markLoaded closes loaded once both copies were read. The caller holds mu.
func (p *Placement) markLoaded() {
	if !p.gotNodes || !p.gotSlots {
		return
	}
	select {
	case <-p.loaded:
	default:
		close(p.loaded)
	}
}

// applyNodes brings the copy of the live nodes to u, a store.Watch of
// the engine claims (store.EnginesPrefix): a daemon is a live node once it holds
// both its node name and its engine. Its node name alone is not enough: a
// second daemon refused for the engine holds its name for a moment. It
// reports whether the copy changed.
func (p *Placement) applyNodes(u store.Update) (changed bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	before := maps.Clone(p.nodes)
	p.nodes = applyCopy(p.nodes, u, func(kv store.KV) (string, bool) {
		a, ok := parseAnnouncement(kv.Value)
		if !ok {
			p.log.Warn().Str("key", kv.Key).Msg("engine claimed with an unreadable announcement; not counting it as a node")
			return "", false
		}
		if a.Spec != "" && a.Spec != p.cfg.Digest && p.differ[a.Node] != a.Spec {
			p.differ[a.Node] = a.Spec
			p.log.Warn().Str("node", a.Node).Str("its_spec", a.Spec).Str("this_spec", p.cfg.Digest).
				Msgf("node %s runs another spec than this node (its hash %s, this one %s); each node places replicas by its own spec: give every node the same file (node names and addresses aside)", a.Node, a.Spec, p.cfg.Digest)
		}
		return a.Node, true
	})
	p.gotNodes = true
	p.markLoaded()
	p.sayUnreachable()
	return !maps.Equal(before, p.nodes)
}

// sayUnreachable warns, once, when this node advertises container
// addresses while other nodes share the project: their proxies cannot
// reach addresses on this host's bridge network. The caller holds mu.
func (p *Placement) sayUnreachable() {
	if p.cfg.HostAddresses || p.saidBridge {
		return
	}
	for _, n := range p.nodes {
		if n != p.cfg.Node {
			p.saidBridge = true
			p.log.Warn().Str("other_node", n).Msg("another node runs this project, but this node registers its backends at their addresses on its own bridge network, which other hosts cannot reach: set network.advertise = \"host\" and network.node_address on every node of a cluster")
			return
		}
	}
}

// applySlots brings the copy of the slots to u (a store.Watch of
// store.SlotsPrefix) and reports whether it changed (this node's own claims come
// back as no change: Step recorded them). A slot whose value does not
// parse is held by nobody known: it is not free either (someone wrote it),
// and it is logged.
func (p *Placement) applySlots(u store.Update) (changed bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	before := maps.Clone(p.slots)
	p.slots = applyCopy(p.slots, u, func(kv store.KV) (string, bool) {
		node, ok := parseSlot(kv.Value)
		if !ok {
			p.log.Warn().Str("key", kv.Key).Msg("slot held by an unreadable value; leaving it alone")
			return "?", true
		}
		return node, true
	})
	p.gotSlots = true
	p.markLoaded()
	return !maps.Equal(before, p.slots)
}

// applyCopy brings m, key → node, to u; node parses a written key (false:
// leave it out).
func applyCopy(m map[string]string, u store.Update, node func(store.KV) (string, bool)) map[string]string {
	if u.Reset {
		m = map[string]string{}
	}
	for _, k := range u.Deleted {
		delete(m, k)
	}
	for _, kv := range u.KVs {
		if n, ok := node(kv); ok {
			m[kv.Key] = n
		} else {
			delete(m, kv.Key)
		}
	}
	return m
}

// Share returns how many backends of each service this node is to run,
// and false until the first Step placed them.
func (p *Placement) Share() (map[string]int, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.placed {
		return nil, false
	}
	out := make(map[string]int, len(p.share))
	for k, v := range p.share {
		out[k] = v
	}
	return out, true
}

// Short returns, by service, the replicas no live node may take (each
// holds max_per_node already); empty when every replica is placed.
func (p *Placement) Short() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]int, len(p.short))
	for k, v := range p.short {
		out[k] = v
	}
	return out
}

// Step places this node's share of every service: it claims free slots up
// to its share and marks extra ones for release. Without the replica
// overrides, the copies of nodes and slots, or a lease, it changes nothing
// (what runs keeps running). It returns the first etcd error; the slots
// it could claim are claimed.
func (p *Placement) Step(ctx context.Context) error {
	ov, ok := p.cfg.Overrides()
	lease := p.cfg.Leases.Lease()
	p.mu.Lock()
	ready := ok && p.gotNodes && p.gotSlots && lease != nil
	p.mu.Unlock()
	if !ready {
		return nil
	}
	p.forgetMarks(lease)
	live := p.liveNodes()
	var errs []error
	for _, svc := range p.cfg.Services {
		errs = append(errs, p.stepService(ctx, svc, svc.replicas(ov), live, lease))
	}
	p.mu.Lock()
	p.placed = true
	p.mu.Unlock()
	return errors.Join(errs...)
}

// liveNodes returns the names of the live nodes, this one included (its
// claim is under the lease the step holds, whether or not the watch has
// shown it yet).
func (p *Placement) liveNodes() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	live := make([]string, 0, len(p.nodes)+1)
	seen := map[string]bool{}
	for _, n := range p.nodes {
		if !seen[n] {
			seen[n] = true
			live = append(live, n)
		}
	}
	if !seen[p.cfg.Node] {
		live = append(live, p.cfg.Node)
	}
	return live
}

func (p *Placement) stepService(ctx context.Context, svc Service, replicas int, live []string, lease *store.Lease) error {
	me := p.cfg.Node
	p.mu.Lock()
	prefix := store.ServiceSlotsPrefix(p.cfg.Project, svc.Name)
	held := map[string]int{} // node → slots it holds below replicas
	var mine, free []int
	occupied := map[int]bool{}
	for key, node := range p.slots {
		i, ok := slotIndex(prefix, key)
		if !ok {
			continue
		}
		if node == me && !p.releasing[key] && i >= replicas {
			p.releasing[key] = true // scaled down: drained, then given up
		}
		if i >= replicas {
			continue
		}
		occupied[i] = true
		held[node]++
		if node == me && !p.releasing[key] {
			mine = append(mine, i)
		}
	}
	for i := range replicas {
		if !occupied[i] {
			free = append(free, i)
		}
	}
	shares, short := fairShares(replicas, live, held, svc.MaxPerNode)
	share := shares[me]
	sort.Ints(mine)
	// Give up the highest slots beyond the share: they are drained first.
	for len(mine) > share {
		key := store.SlotKey(p.cfg.Project, svc.Name, mine[len(mine)-1])
		p.releasing[key] = true
		mine = mine[:len(mine)-1]
		p.log.Info().Str("service", svc.Name).Str("slot", key).Int("share", share).
			Msg("giving a slot up to another node: its backend is drained first")
	}
	p.setShort(svc.Name, short, replicas, len(live), svc.MaxPerNode)
	p.mu.Unlock()

	var err error
	value, _ := json.Marshal(Slot{Node: me})
	for _, i := range free {
		if len(mine) >= share {
			break
		}
		key := store.SlotKey(p.cfg.Project, svc.Name, i)
		got, _, cerr := p.cfg.Store.Claim(ctx, key, string(value), lease.ID)
		if cerr != nil {
			if errors.Is(cerr, store.ErrLeaseLost) {
				p.cfg.Leases.Lost(lease)
			}
			err = cerr
			break
		}
		if got {
			mine = append(mine, i)
			p.mu.Lock()
			p.slots[key] = me // the watch confirms it
			p.mu.Unlock()
		}
	}
	p.mu.Lock()
	p.share[svc.Name] = len(mine)
	p.mu.Unlock()
	return err
}

// setShort records and says (once per change) how many replicas of service
// cannot be placed. The caller holds mu.
func (p *Placement) setShort(service string, short, replicas, nodes, maxPerNode int) {
	if short == 0 {
		delete(p.short, service)
	} else {
		p.short[service] = short
	}
	if p.said[service] == short {
		return
	}
	p.said[service] = short
	if short == 0 {
		p.log.Info().Str("service", service).Int("replicas", replicas).Msg("every replica is placed")
		return
	}
	p.log.Warn().Str("service", service).Int("replicas", replicas).Int("unplaced", short).Int("nodes", nodes).Int("max_per_node", maxPerNode).
		Msgf("cannot place %d of %d replicas of %s: %d live node(s) × max_per_node %d; running what can be placed",
			short, replicas, service, nodes, maxPerNode)
}

// forgetMarks forgets the slots marked for release under another lease
// than lease: they went with it, and a slot of the same key claimed since
// is a new claim, not one to give up.
func (p *Placement) forgetMarks(lease *store.Lease) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if lease.ID == p.markedWith {
		return
	}
	if len(p.releasing) > 0 {
		p.log.Info().Int("slots", len(p.releasing)).Str("lease", fmt.Sprintf("%x", lease.ID)).
			Msg("the slots marked for release went with the lease they were held under; forgetting the marks")
	}
	p.releasing, p.markedWith = map[string]bool{}, lease.ID
}

// Settle gives up the slots marked for release once this node runs no
// more backends of their service than it keeps (running counts the
// backends of each service that still run, draining ones included). Each
// is deleted only while it holds this node's claim, under its lease: a
// slot that went with an earlier lease, and was claimed since by another
// node, is that node's.
func (p *Placement) Settle(ctx context.Context, running map[string]int) error {
	lease := p.cfg.Leases.Lease()
	if lease == nil {
		return nil // marks are settled under the lease they were made with
	}
	p.forgetMarks(lease)
	value, _ := json.Marshal(Slot{Node: p.cfg.Node})
	p.mu.Lock()
	var keys []string
	for key := range p.releasing {
		svc := serviceOfSlot(store.SlotsPrefix(p.cfg.Project), key)
		if running[svc] <= p.share[svc] {
			keys = append(keys, key)
		}
	}
	p.mu.Unlock()
	var errs []error
	for _, key := range keys {
		deleted, err := p.cfg.Store.Unclaim(ctx, key, string(value), lease.ID)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		p.mu.Lock()
		delete(p.releasing, key)
		if deleted {
			delete(p.slots, key)
		}
		p.mu.Unlock()
		if deleted {
			p.log.Info().Str("slot", key).Msg("slot given up")
		} else {
			p.log.Info().Str("slot", key).Msg("slot to give up no longer holds this node's claim; leaving it to its holder")
		}
	}
	return errors.Join(errs...)
}

// slotIndex parses key as <prefix><i>.
func slotIndex(prefix, key string) (int, bool) {
	rest, ok := strings.CutPrefix(key, prefix)
	if !ok {
		return 0, false
	}
	i, err := strconv.Atoi(rest)
	return i, err == nil && i >= 0 && strconv.Itoa(i) == rest
}

// serviceOfSlot returns the service of a slot key.
func serviceOfSlot(prefix, key string) string {
	svc, _, _ := strings.Cut(strings.TrimPrefix(key, prefix), "/")
	return svc
}

// fairShares spreads replicas over the live nodes as evenly as maxPerNode
// (0: unlimited) allows, and returns each node's share and how many
// replicas no node may take. Where the split is uneven, the extra
// replicas go to the nodes that hold the most already (then by name), so
// that a node that keeps its slots is never asked to move one. Every node
// computes the same answer from the same copy of etcd.
func fairShares(replicas int, live []string, held map[string]int, maxPerNode int) (map[string]int, int) {
	order := append([]string(nil), live...)
	sort.Slice(order, func(i, j int) bool {
		if held[order[i]] != held[order[j]] {
			return held[order[i]] > held[order[j]]
		}
		return order[i] < order[j]
	})
	shares := make(map[string]int, len(order))
	room := func(n string) int {
		if maxPerNode <= 0 {
			return replicas
		}
		return maxPerNode - shares[n]
	}
	left := replicas
	for left > 0 {
		var open []string
		for _, n := range order {
			if room(n) > 0 {
				open = append(open, n)
			}
		}
		if len(open) == 0 {
			break
		}
		per, extra := left/len(open), left%len(open)
		for i, n := range open {
			give := per
			if i < extra {
				give++
			}
			give = min(give, room(n))
			shares[n] += give
			left -= give
		}
	}
	return shares, left
}
