package certs

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/store"
)

// ackStore is etcd as the Acker writes it (a *store.Client).
type ackStore interface {
	Put(ctx context.Context, key, value string, lease int64) (int64, error)
}

var _ ackStore = (*store.Client)(nil)

// answerer is this node's proxy as the Acker asks it (a Responder).
type answerer interface {
	ServesAnswer(ctx context.Context, host, token, keyAuth string) error
}

var _ answerer = Responder(nil)

// AckerConfig configures an Acker.
type AckerConfig struct {
	Project, Node string
	// Cache is the project's challenges, as this node's proxy serves them.
	Cache *Cache
	Store ackStore
	// Responder is this node's proxy, asked whether it serves each
	// answer (for any host).
	Responder answerer
	Logger    zerolog.Logger
}

// Acker acknowledges in etcd each HTTP-01 answer this node's proxy serves
// (store.ACMEAckKey, under the challenge's lease), once: with placement = "every"
// the CA may reach any node's proxy, and the orderer waits for every live
// node's acknowledgement before it tells the CA to validate.
type Acker struct {
	cfg AckerConfig
	log zerolog.Logger
}

// NewAcker returns an Acker; Start runs it.
func NewAcker(cfg AckerConfig) *Acker { return &Acker{cfg: cfg, log: cfg.Logger} }

// maxChecks bounds the answers checked at once.
const maxChecks = 16

// ackResult is how the check of one answer ended.
type ackResult struct {
	c   Challenge
	err error
}

// Start runs until ctx ends; it returns nil then. Each answer is checked
// once, in a goroutine of its own (the check waits for a render pass);
// what it ended with is kept until the challenge is gone.
func (a *Acker) Start(ctx context.Context) error {
	changed := a.cfg.Cache.Subscribe()
	results := make(chan ackResult)
	var wg sync.WaitGroup
	defer wg.Wait()
	checking := map[Challenge]bool{} // false: checked
	running := 0
	for {
		pending := a.cfg.Cache.Pending()
		for _, c := range pending {
			if _, seen := checking[c]; seen || c.Lease == 0 || running >= maxChecks {
				continue // a challenge without a lease is none of an orderer's
			}
			checking[c] = true
			running++
			wg.Go(func() {
				r := ackResult{c: c, err: a.ack(ctx, c)}
				select {
				case results <- r:
				case <-ctx.Done():
				}
			})
		}
		for c, busy := range checking {
			if !busy && !slices.Contains(pending, c) {
				delete(checking, c)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case r := <-results:
			checking[r.c] = false
			running--
			if r.err != nil && ctx.Err() == nil {
				a.log.Warn().Err(r.err).Str("token", r.c.Token).
					Msg("ACME: not acknowledging the challenge answer: the orderer will name this node")
			}
		}
	}
}

// ack waits until this node's proxy serves c's answer, then says so in
// etcd under c's lease.
func (a *Acker) ack(ctx context.Context, c Challenge) error {
	ctx, cancel := context.WithTimeout(ctx, answerWait)
	defer cancel()
	if err := a.cfg.Responder.ServesAnswer(ctx, "", c.Token, c.Auth); err != nil {
		return err
	}
	_, err := a.cfg.Store.Put(ctx, store.ACMEAckKey(a.cfg.Project, c.Token, a.cfg.Node), a.cfg.Node, c.Lease)
	if errors.Is(err, store.ErrLeaseLost) {
		return nil // the challenge is over
	}
	if err != nil {
		return fmt.Errorf("acknowledge the answer in etcd: %w", err)
	}
	a.log.Debug().Str("token", c.Token).Msg("ACME: this node's proxy serves the challenge answer; acknowledged")
	return nil
}

// ErrNotConfirmed: a proxy the CA may reach did not confirm in time that
// it serves a challenge's answer; the CA was not asked to validate.
var ErrNotConfirmed = errors.New("not confirmed by every proxy")

// confirmed returns once every node ProxyNodes lists but this one has
// acknowledged the answer of token (for host), or with an error matching
// ErrNotConfirmed that names those that did not when ctx ends.
func (m *Manager) confirmed(ctx context.Context, host, token string) error {
	if m.cfg.ProxyNodes == nil {
		return nil
	}
	tick := time.NewTicker(time.Second) // nodes come and go
	defer tick.Stop()
	var missing []string
	var listErr error
	for {
		nodes, err := m.cfg.ProxyNodes(ctx)
		if listErr = err; err == nil {
			acked := m.cfg.Cache.Acked(token)
			missing = slices.DeleteFunc(slices.Clone(nodes), func(n string) bool { return n == m.cfg.Node || slices.Contains(acked, n) })
			if len(missing) == 0 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			if missing == nil {
				return fmt.Errorf("%w: list the nodes for the answer of ACME token %s: %w", ErrNotConfirmed, token, errors.Join(listErr, ctx.Err()))
			}
			return fmt.Errorf("%w: the proxies of %s do not serve the answer of ACME token %s for %s (placement = \"every\": the CA may reach any node): %w",
				ErrNotConfirmed, strings.Join(missing, ", "), token, host, ctx.Err())
		case <-m.acks:
		case <-tick.C:
		}
	}
}
