package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/upstreamd/upstreamd/internal/loop"
)

// Update is one step of Watch: after each (re)load, everything under the
// prefix; then each batch of changes.
type Update struct {
	// Reset: KVs is everything under the prefix, and whatever was known
	// before is to be dropped.
	Reset bool
	// KVs are the keys written (every key, on a Reset); Deleted are the
	// keys deleted.
	KVs     []KV
	Deleted []string
	// Revision is the etcd revision the update brings a copy to.
	Revision int64
}

// Watch keeps handle informed of every key under prefix until ctx ends:
// it lists the prefix and hands everything over (a Reset), then watches
// from the next revision and hands over each batch of changes. After a
// failure (etcd unreachable, no leader, a compacted revision) it lists
// again, with backoff, so nothing is missed: the next Reset replaces it
// all. It logs once when it starts failing and once when it recovers, and
// returns nil when ctx ends. handle runs on Watch's goroutine.
func (c *Client) Watch(ctx context.Context, prefix string, handle func(Update)) error {
	listed := false // ever: until then, an unreachable etcd is the daemon's to say
	l := loop.New(loop.Config{
		Initial: 100 * time.Millisecond, Max: 5 * time.Second,
		Log:    c.log.With().Str("prefix", prefix).Logger(),
		Failed: "etcd watch failed; keeping what was read and retrying with backoff", Level: zerolog.ErrorLevel,
		Recovered: "etcd watch recovered",
		Said:      func(err error) bool { return !listed && IsUnreachable(err) },
	})
	return l.Run(ctx, func(ctx context.Context) (loop.Result, error) {
		return loop.Result{}, c.listAndWatch(ctx, prefix, handle, func() {
			l.Working()
			listed = true
		})
	})
}

// listAndWatch lists prefix, hands it over, calls listed, then hands over
// the watch's changes until the watch fails. It always returns an error
// (or nil once ctx ended).
func (c *Client) listAndWatch(ctx context.Context, prefix string, handle func(Update), listed func()) error {
	kvs, rev, err := c.List(ctx, prefix)
	if err != nil {
		return err
	}
	handle(Update{Reset: true, KVs: kvs, Revision: rev})
	listed()
	cli, err := c.etcd(ctx)
	if err != nil {
		return err
	}
	// Without a leader the watch would wait silently; make it fail instead.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for wr := range cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
		if err := wr.Err(); err != nil {
			if wr.CompactRevision != 0 {
				return fmt.Errorf("watch %s: compacted at %d: %w", prefix, wr.CompactRevision, err)
			}
			return fmt.Errorf("watch %s: %w", prefix, err)
		}
		if len(wr.Events) == 0 {
			continue
		}
		u := Update{Revision: wr.Header.Revision}
		for _, ev := range wr.Events {
			switch ev.Type {
			case clientv3.EventTypeDelete:
				u.Deleted = append(u.Deleted, string(ev.Kv.Key))
			case clientv3.EventTypePut:
				u.KVs = append(u.KVs, kvOf(ev.Kv))
			}
		}
		handle(u)
	}
	if ctx.Err() != nil {
		return nil
	}
	return errors.New("watch " + prefix + ": channel closed")
}
