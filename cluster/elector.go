package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/internal/events"
	"github.com/upstreamd/upstreamd/internal/loop"
	"github.com/upstreamd/upstreamd/internal/wake"
	"github.com/upstreamd/upstreamd/store"
)

// Leader is what the elected node says of itself: where clients, a DNS
// updater or `upstreamd status` find the proxy.
type Leader struct {
	Node string `json:"node"`
	// Address is the proxy's public address (host:port).
	Address string `json:"address"`
}

// ProxyDuty is what a node does about the project's proxy with
// proxy.placement = "leader".
type ProxyDuty int

const (
	// ProxyNone: another node leads; remove any proxy here.
	ProxyNone ProxyDuty = iota
	// ProxyKeep: who leads is not known yet (the daemon just started);
	// keep a proxy that runs here, create none.
	ProxyKeep
	// ProxyRun: this node runs the project's proxy.
	ProxyRun
)

// electionStore is etcd as the elector uses it.
type electionStore interface {
	Campaign(ctx context.Context, prefix, value string, lease int64) (created int64, err error)
	Watch(ctx context.Context, prefix string, handle func(store.Update)) error
}

var _ electionStore = (*store.Client)(nil)

// electorConfig configures an elector.
type electorConfig struct {
	Store   electionStore
	Leases  leases
	Project string
	Self    Leader
	// Changed is called when this node starts or stops leading, or stops
	// keeping its proxy.
	Changed func()
	Events  *events.Journal
	Logger  zerolog.Logger
}

// Elector makes this node a candidate to run the project's one proxy,
// under the node's lease: it leads until that lease ends (the host died,
// or etcd was out of reach for a whole TTL), while etcd's next candidate
// takes over. A new lease makes it a candidate again.
//
// A leader that loses its lease keeps its proxy (RunsProxy) until it sees
// in etcd that another node leads: with etcd away nobody can be elected,
// and removing the one proxy would leave the project without a front door
// until etcd returns. It sees that in a watch of the election: the oldest
// key, created after the one it led with, naming another node. Elected
// again meanwhile, it goes on with the same proxy.
type Elector struct {
	cfg electorConfig
	log zerolog.Logger

	mu      sync.Mutex
	leading bool
	// kept: this node led, lost its lease, and has not seen another node
	// lead since.
	kept bool
	// settled: this run of the daemon led, or saw another node lead;
	// until then a proxy found running here is kept (ProxyKeep).
	settled bool
	// created is the create revision of the key this node last led with.
	created int64
	// keys are the election's candidates, as last watched.
	keys    map[string]store.KV
	changed wake.Fanout
}

func newElector(cfg electorConfig) *Elector {
	if cfg.Changed == nil {
		cfg.Changed = func() {}
	}
	return &Elector{cfg: cfg, log: cfg.Logger, keys: map[string]store.KV{}}
}

// Leading reports whether this node leads now.
func (e *Elector) Leading() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.leading
}

// RunsProxy says what this node does about the project's proxy: run it
// while it leads, or led and has not seen another node lead since; keep
// one it finds running until this run of the daemon either leads or sees
// another node lead (a restarted leader's daemon); else run none.
func (e *Elector) RunsProxy() ProxyDuty {
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case e.leading || e.kept:
		return ProxyRun
	case !e.settled:
		return ProxyKeep
	}
	return ProxyNone
}

// update changes the state under mu with fn and tells the watchers when
// it changed.
func (e *Elector) update(fn func()) {
	e.mu.Lock()
	leading, kept, settled := e.leading, e.kept, e.settled
	fn()
	same := leading == e.leading && kept == e.kept && settled == e.settled
	e.mu.Unlock()
	if !same {
		e.changed.Wake()
		e.cfg.Changed()
	}
}

// elected records that this node leads with its key created at revision
// created.
func (e *Elector) elected(created int64) {
	var again bool
	e.update(func() { again, e.leading, e.kept, e.settled, e.created = e.kept, true, false, true, created })
	node := e.cfg.Self.Node
	if again {
		e.log.Info().Str("node", node).Str("address", e.cfg.Self.Address).
			Msg("elected again: the proxy kept since the lead was lost goes on serving")
		e.cfg.Events.Record(events.Event{Kind: events.LeaderChanged, Message: fmt.Sprintf("node %s elected again: its proxy, kept meanwhile, goes on", node)})
		return
	}
	e.log.Info().Str("node", node).Str("address", e.cfg.Self.Address).Msg("elected: this node runs the project's proxy")
	e.cfg.Events.Record(events.Event{Kind: events.LeaderChanged, Message: fmt.Sprintf("node %s elected: it runs the project's proxy", node)})
}

// lost records that this node's lead ended with its lease l: it keeps its
// proxy unless etcd already showed another node leading.
func (e *Elector) lost(l *store.Lease) {
	var other string
	e.update(func() {
		other = e.another()
		e.leading, e.kept = false, other == ""
	})
	node, lease := e.cfg.Self.Node, fmt.Sprintf("%x", l.ID)
	if other != "" {
		e.log.Warn().Str("lease", lease).Str("leader", other).
			Msgf("leadership lost with this node's lease; node %s leads now: stopping the proxy here", other)
		e.cfg.Events.Record(events.Event{Kind: events.LeaderChanged, Message: fmt.Sprintf("node %s lost the lead with its lease; node %s leads: its proxy stops", node, other)})
		return
	}
	e.log.Warn().Str("lease", lease).
		Msg("leadership lost with this node's lease (etcd out of reach, or the lease expired): keeping the proxy serving the pools it has until etcd names another leader")
	e.cfg.Events.Record(events.Event{Kind: events.LeaderChanged, Message: fmt.Sprintf("node %s lost the lead with its lease: its proxy keeps serving until etcd names another leader", node)})
}

// observe brings the copy of the election's keys to u (a store.Watch of
// the election) and gives up a kept proxy once another node leads.
func (e *Elector) observe(u store.Update) {
	var other string
	var wasKept bool
	e.update(func() {
		wasKept = e.kept
		if u.Reset {
			e.keys = map[string]store.KV{}
		}
		for _, k := range u.Deleted {
			delete(e.keys, k)
		}
		for _, kv := range u.KVs {
			e.keys[kv.Key] = kv
		}
		if e.kept || !e.settled {
			other = e.another()
			e.kept = e.kept && other == ""
			e.settled = e.settled || other != ""
		}
	})
	switch {
	case other != "" && !wasKept:
		e.log.Info().Str("leader", other).Msgf("node %s leads the project's proxy", other)
	case other != "":
		e.log.Warn().Str("leader", other).Msgf("etcd names node %s leader: giving up the proxy kept since this node lost the lead", other)
		e.cfg.Events.Record(events.Event{Kind: events.LeaderChanged,
			Message: fmt.Sprintf("node %s gives its proxy up: node %s leads", e.cfg.Self.Node, other)})
	}
}

// another returns the node that leads according to the copy of the keys
// when it is not this one, "" otherwise. Only a key created after the one
// this node led with counts: an older one is a copy that lags. The caller
// holds mu.
func (e *Elector) another() string {
	var oldest store.KV
	for _, kv := range e.keys {
		if oldest.Key == "" || kv.Created < oldest.Created {
			oldest = kv
		}
	}
	if oldest.Key == "" || oldest.Created <= e.created {
		return ""
	}
	l, ok := parseLeader(oldest.Value)
	if !ok {
		return oldest.Key + " (unreadable)"
	}
	if l.Node == e.cfg.Self.Node {
		return "" // this node's own candidacy, under a newer lease
	}
	return l.Node
}

// Start campaigns under each lease the node holds, and watches the
// election, until ctx ends. A failed campaign is tried again with backoff,
// or as soon as the node holds a new lease.
func (e *Elector) Start(ctx context.Context) error {
	value, err := json.Marshal(e.cfg.Self)
	if err != nil {
		return fmt.Errorf("leader announcement: %w", err)
	}
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		_ = e.cfg.Store.Watch(ctx, store.LeaderPrefix(e.cfg.Project), e.observe) // nil once ctx ends
	}()
	defer func() { <-watched }()
	l := loop.New(loop.Config{
		Triggers: []<-chan struct{}{e.cfg.Leases.Subscribe()},
		Initial:  200 * time.Millisecond, Max: 5 * time.Second,
		Log: e.log, Failed: "proxy election failed; standing again", Level: zerolog.WarnLevel,
	})
	return l.Run(ctx, func(ctx context.Context) (loop.Result, error) {
		lease := e.cfg.Leases.Lease()
		if lease == nil {
			return loop.Result{}, nil // the next lease wakes the loop
		}
		err := e.lead(ctx, lease, string(value))
		if errors.Is(err, store.ErrLeaseLost) {
			e.cfg.Leases.Lost(lease)
		}
		return loop.Result{}, err
	})
}

// lead campaigns under l, then leads until l ends; it returns nil when
// leadership (or the candidacy) ended that way. (The node lets a lease go
// before it takes the next one, which wakes Start.)
func (e *Elector) lead(ctx context.Context, l *store.Lease, value string) error {
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-l.Done:
		case <-lctx.Done():
		}
		cancel()
	}()
	created, err := e.cfg.Store.Campaign(lctx, store.ElectionName(e.cfg.Project), value, l.ID)
	if err != nil {
		if lctx.Err() != nil && ctx.Err() == nil {
			return nil // the lease ended while campaigning: stand again
		}
		return err
	}
	e.log.Debug().Str("lease", fmt.Sprintf("%x", l.ID)).Int64("created", created).Msg("campaign won")
	e.elected(created)
	<-lctx.Done()
	if ctx.Err() == nil {
		e.lost(l)
	}
	return nil
}
