// Package cluster is how the daemons of one project agree through etcd:
// several hosts, one daemon per Docker engine, no coordinator but etcd.
//
// A Member is this daemon in its project's cluster and joins the parts,
// each a runnable of its own: the node holds the one lease every key of
// the daemon lives under, and with it its node name and its claim on its
// Docker engine (a daemon whose names are taken does not start); the
// overrides are the replica counts `upstreamd scale` wrote; the placement
// spreads each service's replicas over the live nodes as slots claimed
// under the nodes' leases, and says how many backends this node runs (its
// share); with the proxy placed on a leader, the elector makes this node a
// candidate to run the project's one proxy, and the leader publishes what
// its nginx serves so that every node drains against it. State reads the
// whole picture once, for `upstreamd status` and the admin API.
//
// Every key is built by store (store/keys.go); every etcd call goes
// through store. The single-host reconciler (orchestrator) runs a Member
// and asks it how many backends to run and whether to run the proxy.
package cluster

import (
	"context"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/upstreamd/upstreamd/internal/events"
	"github.com/upstreamd/upstreamd/store"
)

// Store is etcd as a Member uses it (a *store.Client).
type Store interface {
	nodeStore
	slotStore
	electionStore
	servedStore
	Watch(ctx context.Context, prefix string, handle func(store.Update)) error
}

var _ Store = (*store.Client)(nil)

// Service is what the cluster knows of a service of the spec.
type Service struct {
	Name string
	// Replicas counts the cluster (the spec's; an override replaces it).
	Replicas int
	// MaxPerNode bounds the replicas one node runs; zero: unlimited.
	MaxPerNode int
}

// MemberConfig configures a Member.
type MemberConfig struct {
	Store   Store
	Project string
	// Self is this daemon's announcement (its Spec hash included); the
	// node fills in Engine.
	Self Announcement
	// Engine returns the Docker engine's ID.
	Engine func(ctx context.Context) (string, error)
	// Unreachable reports an error that says only that etcd or the engine
	// could not be reached (the daemon says that itself, once); nil:
	// store.IsUnreachable.
	Unreachable func(error) bool
	// TTL is the node's lease's: how long this daemon's keys outlive it.
	TTL time.Duration
	// Services are the spec's, in order.
	Services []Service
	// HostAddresses: backends are advertised at the node's address, which
	// other hosts reach (network.advertise = "host").
	HostAddresses bool
	// ElectProxy: the project runs one proxy, on the node etcd elects
	// (proxy.placement = "leader"); ProxyAddress is its public address,
	// announced while this node leads.
	ElectProxy   bool
	ProxyAddress string
	// Served is this node's nginx's pools, published while it leads, and
	// Mirror where the leader's are mirrored; with ElectProxy, nil: not
	// published (or mirrored).
	Served servedSet
	Mirror servedMirror
	// Changed is called when what a reconcile pass reads of the cluster
	// changed: the overrides, the nodes or slots, the lead.
	Changed func()
	Events  *events.Journal
	Logger  zerolog.Logger
}

// Member is this daemon in its project's cluster: its node, the replica
// overrides, the placement, and with ElectProxy the election and what the
// leader's nginx serves. Start runs every part.
type Member struct {
	cfg       MemberConfig
	node      *Node
	overrides *Overrides
	placement *Placement
	elector   *Elector // nil unless ElectProxy
	loaded    chan struct{}
}

// NewMember wires a Member.
func NewMember(cfg MemberConfig) *Member {
	if cfg.Unreachable == nil {
		cfg.Unreachable = store.IsUnreachable
	}
	if cfg.Changed == nil {
		cfg.Changed = func() {}
	}
	m := &Member{cfg: cfg, loaded: make(chan struct{})}
	m.node = newNode(nodeConfig{
		Store: cfg.Store, Project: cfg.Project, Engine: cfg.Engine, Self: cfg.Self, TTL: cfg.TTL,
		Unreachable: cfg.Unreachable, Events: cfg.Events,
		Logger: cfg.Logger.With().Str("component", "node").Logger(),
	})
	m.overrides = newOverrides(cfg.Project, cfg.Services, cfg.Changed, cfg.Logger.With().Str("component", "reconcile").Logger())
	m.placement = newPlacement(placementConfig{
		Store: cfg.Store, Project: cfg.Project, Node: cfg.Self.Node, Digest: cfg.Self.Spec,
		Services: cfg.Services, HostAddresses: cfg.HostAddresses, Leases: m.node, Overrides: m.overrides.Counts,
		Logger: cfg.Logger.With().Str("component", "placement").Logger(),
	})
	if cfg.ElectProxy {
		m.elector = newElector(electorConfig{
			Store: cfg.Store, Leases: m.node, Project: cfg.Project,
			Self:    Leader{Node: cfg.Self.Node, Address: cfg.ProxyAddress},
			Changed: cfg.Changed, Events: cfg.Events,
			Logger: cfg.Logger.With().Str("component", "election").Logger(),
		})
	}
	return m
}

// Node is this daemon's node: its lease, and whether it holds its names.
func (m *Member) Node() *Node { return m.node }

// Placement places the replicas and says this node's share.
func (m *Member) Placement() *Placement { return m.placement }

// Loaded is closed once the overrides, the nodes and the slots were read
// from etcd: until then nobody knows how many backends this node runs.
func (m *Member) Loaded() <-chan struct{} { return m.loaded }

// RunsProxy says what this node does about the project's proxy: run one
// on each node (no election), or as the election says.
func (m *Member) RunsProxy() ProxyDuty {
	if m.elector == nil {
		return ProxyRun
	}
	return m.elector.RunsProxy()
}

// Start runs every part until ctx ends. It returns an error matching
// ErrTaken when another live daemon holds this daemon's names.
func (m *Member) Start(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	project := m.cfg.Project
	g.Go(func() error { return m.node.Start(ctx) })
	g.Go(func() error { return m.cfg.Store.Watch(ctx, store.OverridesPrefix(project), m.overrides.apply) })
	g.Go(func() error {
		return m.cfg.Store.Watch(ctx, store.EnginesPrefix(project), m.changedIf(m.placement.applyNodes))
	})
	g.Go(func() error {
		return m.cfg.Store.Watch(ctx, store.SlotsPrefix(project), m.changedIf(m.placement.applySlots))
	})
	g.Go(func() error {
		for _, loaded := range []<-chan struct{}{m.overrides.Loaded(), m.placement.Loaded()} {
			select {
			case <-ctx.Done():
				return nil
			case <-loaded:
			}
		}
		close(m.loaded)
		return nil
	})
	if m.elector != nil {
		g.Go(func() error { return m.elector.Start(ctx) })
		if m.cfg.Served != nil && m.cfg.Mirror != nil {
			s := &served{node: m.cfg.Self.Node, project: project, store: m.cfg.Store, leases: m.node, elector: m.elector,
				log: m.cfg.Logger.With().Str("component", "served").Logger()}
			g.Go(func() error { return s.publish(ctx, m.cfg.Served) })
			g.Go(func() error { return m.cfg.Store.Watch(ctx, store.ServedKey(project), s.mirror(m.cfg.Mirror)) })
		}
	}
	return g.Wait()
}

// changedIf returns a watch handler that applies an update and calls
// Changed when it changed something.
func (m *Member) changedIf(apply func(store.Update) bool) func(store.Update) {
	return func(u store.Update) {
		if apply(u) {
			m.cfg.Changed()
		}
	}
}
