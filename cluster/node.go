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

// ErrTaken: another live daemon holds this daemon's node name, or runs the
// same project on the same Docker engine. The daemon must not start: two
// daemons would rewrite each other's keys and containers.
var ErrTaken = errors.New("taken by another live daemon")

// nodeStore is etcd as the node uses it.
type nodeStore interface {
	Grant(ctx context.Context, ttl time.Duration) (*store.Lease, error)
	Resume(ctx context.Context, lease int64) (*store.Lease, error)
	Revoke(ctx context.Context, l *store.Lease) error
	Claim(ctx context.Context, key, value string, lease int64) (held bool, holder store.KV, err error)
	LeaseGranted(ctx context.Context, lease int64) (ttl time.Duration, ok bool, err error)
	Watch(ctx context.Context, prefix string, handle func(store.Update)) error
}

var _ nodeStore = (*store.Client)(nil)

// leases hands out the lease every key of the node lives under (a *Node).
type leases interface {
	// Lease returns the current lease; nil while there is none.
	Lease() *store.Lease
	// Subscribe receives after each new lease.
	Subscribe() <-chan struct{}
	// Lost reports a lease etcd no longer knows.
	Lost(l *store.Lease)
}

var _ leases = (*Node)(nil)

// Announcement is what a daemon says of itself under store.NodesPrefix
// (and store.EnginesPrefix).
type Announcement struct {
	Node string `json:"node"`
	Host string `json:"host"` // the machine's host name
	// Address is network.node_address: where other hosts reach this one
	// (empty on a single host).
	Address string    `json:"address,omitempty"`
	PID     int       `json:"pid"`
	Version string    `json:"version"`
	Engine  string    `json:"engine"` // the Docker engine's ID
	Started time.Time `json:"started"`
	// Spec is a hash of the spec the daemon runs, what is node-specific
	// left out: every node of a project should show the same.
	Spec string `json:"spec,omitempty"`
}

// nodeConfig configures a node.
type nodeConfig struct {
	Store   nodeStore
	Project string
	// Engine returns the Docker engine's ID.
	Engine func(ctx context.Context) (string, error)
	// Self is this daemon's announcement; Engine is filled in.
	Self Announcement
	// TTL is the lease's: how long this daemon's keys outlive it.
	TTL time.Duration
	// Unreachable reports an error that says only that etcd or the engine
	// could not be reached.
	Unreachable func(error) bool
	Events      *events.Journal
	Logger      zerolog.Logger
}

// Node is this daemon in etcd: it holds the one lease every key of the
// daemon lives under, and with it its node name and its project's claim on
// its Docker engine. Nothing else may start before it holds them (Claimed);
// a daemon whose names are taken does not start at all (ErrTaken). It is a
// runnable: it claims again when the lease is lost, under the same lease
// when etcd still holds it (its keep-alive lapsed while every etcd member
// was away: etcd gives each lease its TTL again when it comes back, and
// every key of the node stands), else under a new one; and it revokes the
// lease when it stops, so the daemon's keys go at once.
type Node struct {
	cfg     nodeConfig
	log     zerolog.Logger
	changed wake.Fanout // a new lease
	lost    wake.Signal
	claimed chan struct{}

	mu    sync.Mutex
	lease *store.Lease
}

func newNode(cfg nodeConfig) *Node {
	return &Node{cfg: cfg, log: cfg.Logger, lost: wake.New(), claimed: make(chan struct{})}
}

// Claimed is closed once the node holds its names for the first time.
func (n *Node) Claimed() <-chan struct{} { return n.claimed }

// Lease returns the lease keys are to be written under; nil while none.
func (n *Node) Lease() *store.Lease {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.lease
}

// Subscribe returns a channel that receives after each new lease.
func (n *Node) Subscribe() <-chan struct{} { return n.changed.Subscribe() }

// Lost reports that etcd no longer knows l (a write under it failed): a
// new one is granted.
func (n *Node) Lost(l *store.Lease) {
	if n.Lease() == l {
		n.lost.Wake()
	}
}

// Start claims the node's names, then keeps them until ctx ends. It returns
// an error matching ErrTaken when another daemon holds them. While etcd or
// Docker cannot be reached, it claims again with backoff, which stays under
// half the TTL: etcd, back after an outage, keeps a lease whose keep-alive
// lapsed for about a TTL, and the node resumes it.
func (n *Node) Start(ctx context.Context) error {
	l := loop.New(loop.Config{
		Initial: 200 * time.Millisecond, Max: min(5*time.Second, max(n.cfg.TTL/2, 200*time.Millisecond)),
		Log: n.log, Level: zerolog.WarnLevel,
		Failed: fmt.Sprintf("waiting for etcd and the docker engine to claim node %q of project %q; no container is touched until then",
			n.cfg.Self.Node, n.cfg.Project),
		Said: n.cfg.Unreachable, // the daemon says so
	})
	var prev *store.Lease // to resume: its keep-alive lapsed
	return l.Run(ctx, func(ctx context.Context) (loop.Result, error) {
		lease, err := n.claim(ctx, &prev)
		switch {
		case errors.Is(err, ErrTaken):
			return loop.Result{}, loop.Stop(err)
		case err != nil:
			return loop.Result{}, err
		}
		prev = n.hold(ctx, lease)
		return loop.Result{Again: true}, nil // claim again
	})
}

// hold makes l the node's lease until it is lost, or ctx ends (then it
// revokes it). It returns the lease to resume when etcd may still hold it
// (its keep-alive lapsed), else nil.
func (n *Node) hold(ctx context.Context, l *store.Lease) (prev *store.Lease) {
	// A Lost of the lease before, come after it was let go, is not this
	// lease's: forget it.
	select {
	case <-n.lost.C():
	default:
	}
	n.setLease(l)
	select {
	case <-n.claimed:
	default:
		close(n.claimed)
	}
	select {
	case <-ctx.Done():
		n.revoke(ctx, l)
		return nil
	case <-l.Done:
		prev = l
		n.log.Warn().Str("lease", fmt.Sprintf("%x", l.ID)).
			Msg("etcd lease lost; claiming this node again, under the same lease if etcd still holds it when it answers")
	case <-n.lost.C():
		n.log.Warn().Str("lease", fmt.Sprintf("%x", l.ID)).Msg("etcd no longer knows this node's lease; claiming this node again")
	}
	n.cfg.Events.Record(events.Event{Kind: events.LeaseLost,
		Message: fmt.Sprintf("etcd lease of node %s lost (etcd out of reach, or it expired): its keys go with it unless etcd still holds it when it answers", n.cfg.Self.Node)})
	l.Release()
	n.setLease(nil)
	return prev
}

func (n *Node) setLease(l *store.Lease) {
	n.mu.Lock()
	n.lease = l
	n.mu.Unlock()
	if l != nil {
		n.changed.Wake()
	}
}

func (n *Node) revoke(ctx context.Context, l *store.Lease) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
	defer cancel()
	if err := n.cfg.Store.Revoke(rctx, l); err != nil {
		n.log.Warn().Err(err).Msg("revoke lease at shutdown; keys expire with its TTL instead")
		return
	}
	n.log.Info().Str("lease", fmt.Sprintf("%x", l.ID)).Msg("lease revoked; this node's registrations are gone")
}

// claim takes a lease (resuming *prev when etcd still holds it, and
// forgetting it when not) and claims the node name and the engine under
// it. A name held by a daemon that is gone (its lease is not kept alive) is
// awaited until etcd drops it, for at most its TTL.
func (n *Node) claim(ctx context.Context, prev **store.Lease) (*store.Lease, error) {
	engine, err := n.cfg.Engine(ctx)
	if err != nil {
		return nil, err
	}
	self := n.cfg.Self
	self.Engine = engine
	value, err := json.Marshal(self)
	if err != nil {
		return nil, fmt.Errorf("announce node: %w", err)
	}
	l, err := n.takeLease(ctx, prev)
	if err != nil {
		return nil, err
	}
	claims := []struct{ key, value, what string }{
		{store.NodeKey(n.cfg.Project, self.Node), string(value), fmt.Sprintf("node name %q", self.Node)},
		{store.EngineKey(n.cfg.Project, engine), string(value), "this Docker engine (" + engine + ")"},
	}
	for _, c := range claims {
		if err := n.await(ctx, c.key, c.value, c.what, l); err != nil {
			if *prev != nil {
				l.Release() // resumed: its keys are the node's, kept for the next try
			} else {
				n.revoke(ctx, l)
			}
			return nil, err
		}
	}
	n.log.Info().Str("node", self.Node).Str("engine", engine).Str("lease", fmt.Sprintf("%x", l.ID)).
		Msgf("claimed node %q of project %q", self.Node, n.cfg.Project)
	return l, nil
}

// takeLease resumes *prev when etcd still holds it, or grants a new lease
// (then *prev is forgotten).
func (n *Node) takeLease(ctx context.Context, prev **store.Lease) (*store.Lease, error) {
	if *prev != nil {
		l, err := n.cfg.Store.Resume(ctx, (*prev).ID)
		if !errors.Is(err, store.ErrLeaseLost) {
			return l, err // resumed, or etcd did not answer: try again
		}
		*prev = nil
	}
	return n.cfg.Store.Grant(ctx, n.cfg.TTL)
}

// await claims key, waiting while its holder's lease may still run out:
// a daemon that crashed leaves its keys until its TTL expires. A watch of
// the key says when it goes.
func (n *Node) await(ctx context.Context, key, value, what string, l *store.Lease) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	changed := wake.New()
	go func() { _ = n.cfg.Store.Watch(wctx, key, func(store.Update) { changed.Wake() }) }()
	var deadline *time.Timer // from the first time it is found held
	defer func() {
		if deadline != nil {
			deadline.Stop()
		}
	}()
	for expired := false; ; {
		held, holder, err := n.cfg.Store.Claim(ctx, key, value, l.ID)
		switch {
		case err != nil:
			return err
		case held, holder.Lease == l.ID && holder.Key != "": // claimed under a lease resumed
			return nil
		case holder.Key == "": // gone between the compare and the get
			continue
		case holder.Lease == 0:
			return fmt.Errorf("project %q: %s: %w: %s, written without a lease (by hand?); delete %s",
				n.cfg.Project, what, ErrTaken, holder.Value, key)
		case expired:
			return fmt.Errorf("project %q: %s: %w: %s. Stop that daemon, or give this one another node name (node = \"...\" in the spec) or another project",
				n.cfg.Project, what, ErrTaken, holder.Value)
		}
		if deadline == nil {
			ttl, ok, err := n.cfg.Store.LeaseGranted(ctx, holder.Lease)
			if err != nil {
				return err
			}
			if !ok {
				continue // the holder's lease just ended
			}
			deadline = time.NewTimer(ttl + time.Second)
			n.log.Warn().Str("key", key).Stringer("up_to", ttl+time.Second).
				Msgf("%s is held (by %s); waiting to see whether its daemon is gone", what, holder.Value)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			expired = true // one more try
		case <-changed.C():
		}
	}
}
