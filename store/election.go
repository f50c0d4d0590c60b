package store

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Campaign stands value for election under prefix with lease (the
// caller's, kept alive by the caller) and returns once it leads, or with
// ctx's error; created is the revision that created the candidacy's key.
// Leadership lasts as long as the lease: when the lease ends, so does the
// candidacy, and etcd's next candidate leads. A campaign under a lease
// whose key still stands (a lease resumed after etcd came back) takes that
// key up again, with its place in the line. A campaign ended by ctx
// withdraws its candidacy. This is etcd's own election
// (client/v3/concurrency): the leader is the candidate whose key is
// oldest.
func (c *Client) Campaign(ctx context.Context, prefix, value string, lease int64) (created int64, err error) {
	cli, err := c.etcd(ctx)
	if err != nil {
		return 0, err
	}
	s, err := concurrency.NewSession(cli, concurrency.WithLease(clientv3.LeaseID(lease)), concurrency.WithContext(ctx))
	if err != nil {
		return 0, fmt.Errorf("etcd election %s: %w", prefix, err)
	}
	// Orphan, never Close: Close would revoke the lease, which is the
	// node's and holds every other key of it. The caller keeps it alive.
	defer s.Orphan()
	e := concurrency.NewElection(s, prefix)
	if err := e.Campaign(ctx, value); err != nil {
		if isLeaseNotFound(err) {
			return 0, fmt.Errorf("etcd election %s: %w", prefix, ErrLeaseLost)
		}
		return 0, fmt.Errorf("etcd election %s: %w", prefix, err)
	}
	return e.Rev(), nil
}

// Leader returns the candidate that leads the election under prefix (the
// oldest key); ok is false when there is none.
func (c *Client) Leader(ctx context.Context, prefix string) (kv KV, ok bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	cli, err := c.etcd(ctx)
	if err != nil {
		return KV{}, false, err
	}
	resp, err := cli.Get(ctx, prefix, clientv3.WithFirstCreate()...)
	if err != nil {
		return KV{}, false, fmt.Errorf("etcd leader of %s: %w", prefix, err)
	}
	if len(resp.Kvs) == 0 {
		return KV{}, false, nil
	}
	return kvOf(resp.Kvs[0]), true, nil
}

// Lock takes the etcd mutex at key (client/v3/concurrency) under a lease
// of its own with ttl, kept alive while held, and returns once it holds
// it, or with ctx's error. unlock releases it and revokes the lease; the
// lease is returned for keys that must vanish with the holder (they do
// when its process dies, after ttl).
func (c *Client) Lock(ctx context.Context, key string, ttl time.Duration) (lease int64, unlock func(), err error) {
	cli, err := c.etcd(ctx)
	if err != nil {
		return 0, nil, err
	}
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(max(int(ttl.Seconds()), 1)), concurrency.WithContext(ctx))
	if err != nil {
		return 0, nil, fmt.Errorf("etcd lock %s: %w", key, err)
	}
	m := concurrency.NewMutex(s, key)
	if err := m.Lock(ctx); err != nil {
		_ = s.Close()
		return 0, nil, fmt.Errorf("etcd lock %s: %w", key, err)
	}
	return int64(s.Lease()), func() {
		ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
		defer cancel()
		_ = m.Unlock(ctx)
		_ = s.Close()
	}, nil
}
