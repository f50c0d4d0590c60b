package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/internal/events"
	"github.com/upstreamd/upstreamd/internal/retry"
	"github.com/upstreamd/upstreamd/internal/wake"
	"github.com/upstreamd/upstreamd/store"
)

// LeaderPrefix is the election of the node that runs the project's proxy
// when proxy.placement is "leader": /upstreamd/<project>/leader/<lease>
// = a Leader, the oldest key leading.
func LeaderPrefix(project string) string { return "/upstreamd/" + project + "/leader" }

// Leader is what the elected node says of itself: where clients, a DNS
// updater or `upstreamd status` find the proxy.
type Leader struct {
	Node string `json:"node"`
	// Address is the proxy's public address (host:port).
	Address string `json:"address"`
}

// electionStore is etcd as the elector uses it.
type electionStore interface {
	Campaign(ctx context.Context, prefix, value string, lease int64) error
}

var _ electionStore = (*store.Client)(nil)

// electorConfig configures an elector.
type electorConfig struct {
	Store   electionStore
	Leases  leases
	Project string
	Self    Leader
	// Changed is called when this node starts or stops leading.
	Changed func()
	Events  *events.Journal
	Logger  zerolog.Logger
}

// elector makes this node a candidate to run the project's one proxy,
// under the node's lease: it leads until that lease ends (the host died,
// or etcd was out of reach for a whole TTL), and then stops leading at
// once, on its own, while etcd's next candidate takes over. A new lease
// makes it a candidate again.
type elector struct {
	cfg electorConfig
	log zerolog.Logger

	mu      sync.Mutex
	leading bool
	changed wake.Fanout
}

func newElector(cfg electorConfig) *elector {
	if cfg.Changed == nil {
		cfg.Changed = func() {}
	}
	return &elector{cfg: cfg, log: cfg.Logger}
}

// Leading reports whether this node leads now.
func (e *elector) Leading() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.leading
}

func (e *elector) set(leading bool) {
	e.mu.Lock()
	was := e.leading
	e.leading = leading
	e.mu.Unlock()
	if was != leading {
		e.changed.Wake()
		e.cfg.Changed()
	}
}

// Start campaigns under each lease the node holds, until ctx ends.
func (e *elector) Start(ctx context.Context) error {
	value, err := json.Marshal(e.cfg.Self)
	if err != nil {
		return fmt.Errorf("leader announcement: %w", err)
	}
	newLease := e.cfg.Leases.Subscribe()
	bo := retry.New(200*time.Millisecond, 5*time.Second)
	for {
		l := e.cfg.Leases.Lease()
		if l == nil {
			select {
			case <-ctx.Done():
				return nil
			case <-newLease:
				continue
			}
		}
		err := e.lead(ctx, l, string(value), newLease)
		if ctx.Err() != nil {
			e.set(false)
			return nil
		}
		if err == nil {
			bo.Succeeded()
			continue
		}
		if errors.Is(err, store.ErrLeaseLost) {
			e.cfg.Leases.Lost(l)
		}
		d, first := bo.Failed()
		ev := e.log.Debug()
		if first {
			ev = e.log.Warn()
		}
		ev.Err(err).Stringer("retry_in", d).Msg("proxy election failed; standing again")
		if !retry.Wait(ctx, d) {
			return nil
		}
	}
}

// lead campaigns under l, then leads until l ends or the node takes a new
// lease; it returns nil when leadership (or the candidacy) ended that way.
func (e *elector) lead(ctx context.Context, l *store.Lease, value string, newLease <-chan struct{}) error {
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-l.Done:
		case <-newLease:
		case <-lctx.Done():
		}
		cancel()
	}()
	if err := e.cfg.Store.Campaign(lctx, LeaderPrefix(e.cfg.Project), value, l.ID); err != nil {
		if lctx.Err() != nil && ctx.Err() == nil {
			return nil // the lease ended while campaigning: stand again
		}
		return err
	}
	e.log.Info().Str("node", e.cfg.Self.Node).Str("address", e.cfg.Self.Address).Str("lease", fmt.Sprintf("%x", l.ID)).
		Msg("elected: this node runs the project's proxy")
	e.cfg.Events.Record(events.Event{Kind: events.LeaderChanged, Message: fmt.Sprintf("node %s elected: it runs the project's proxy", e.cfg.Self.Node)})
	e.set(true)
	<-lctx.Done()
	if ctx.Err() == nil {
		e.log.Warn().Str("lease", fmt.Sprintf("%x", l.ID)).
			Msg("leadership lost with this node's lease (etcd out of reach, or the lease expired): stopping the proxy here; another node takes over")
		e.cfg.Events.Record(events.Event{Kind: events.LeaderChanged, Message: fmt.Sprintf("node %s lost the lead with its lease: its proxy stops, another node takes over", e.cfg.Self.Node)})
	}
	e.set(false)
	return nil
}
