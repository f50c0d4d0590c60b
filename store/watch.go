package store

import (
	"context"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v4"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// WatchPrefix calls changed after every change under prefix, and once after
// each (re)connection, since changes may have been missed meanwhile. It
// reconnects with backoff and returns nil when ctx ends.
func (c *Client) WatchPrefix(ctx context.Context, prefix string, changed func()) error {
	bo := backoff.NewExponentialBackOff(backoff.WithInitialInterval(200*time.Millisecond),
		backoff.WithMaxInterval(10*time.Second), backoff.WithMaxElapsedTime(0))
	for ctx.Err() == nil {
		err := c.watchOnce(ctx, prefix, func() { bo.Reset(); changed() })
		if ctx.Err() != nil {
			return nil
		}
		d := bo.NextBackOff()
		c.log.Debug().Err(err).Str("prefix", prefix).Dur("retry_in", d).Msg("etcd watch ended; reconnecting")
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
	}
	return nil
}

func (c *Client) watchOnce(ctx context.Context, prefix string, changed func()) error {
	_, rev, err := c.List(ctx, prefix)
	if err != nil {
		return err
	}
	changed()
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	cli, err := c.etcd(ctx)
	if err != nil {
		return err
	}
	for wr := range cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
		if err := wr.Err(); err != nil {
			return fmt.Errorf("watch %s: %w", prefix, err)
		}
		if len(wr.Events) > 0 {
			changed()
		}
	}
	return fmt.Errorf("watch %s: channel closed", prefix)
}
