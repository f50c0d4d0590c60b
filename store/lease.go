package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/upstreamd/upstreamd/internal/retry"
)

func isLeaseNotFound(err error) bool {
	return errors.Is(err, rpctypes.ErrLeaseNotFound) || errors.Is(rpctypes.Error(err), rpctypes.ErrLeaseNotFound)
}

// Lease is a granted etcd lease kept alive in the background.
type Lease struct {
	ID int64
	// Done is closed when the lease can no longer be kept alive: it expired,
	// was revoked, or the keep-alive stream ended for good. Grant a new one.
	Done <-chan struct{}
	stop context.CancelFunc
}

// Grant creates a lease of ttl and keeps it alive until ctx ends or Revoke.
func (c *Client) Grant(ctx context.Context, ttl time.Duration) (*Lease, error) {
	gctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	secs := int64((ttl + time.Second - 1) / time.Second)
	cli, err := c.etcd(gctx)
	if err != nil {
		return nil, err
	}
	resp, err := cli.Grant(gctx, secs)
	if err != nil {
		return nil, fmt.Errorf("etcd grant lease of %ds: %w", secs, err)
	}
	l, err := c.keep(ctx, cli, resp.ID)
	if err != nil {
		return nil, err
	}
	c.log.Info().Str("lease", fmt.Sprintf("%x", resp.ID)).Int64("ttl_s", secs).Msg("etcd lease granted")
	return l, nil
}

// Resume keeps lease id alive again, until ctx ends or Revoke, when etcd
// still holds it: a lease whose keep-alive lapsed while every etcd member
// was away lives on when etcd comes back (its new leader gives every lease
// its TTL again), and with it every key under it. It returns an error
// matching ErrLeaseLost when etcd no longer knows the lease.
func (c *Client) Resume(ctx context.Context, id int64) (*Lease, error) {
	qctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	cli, err := c.etcd(qctx)
	if err != nil {
		return nil, err
	}
	resp, err := cli.TimeToLive(qctx, clientv3.LeaseID(id))
	switch {
	case err != nil && !isLeaseNotFound(err):
		return nil, fmt.Errorf("etcd lease %x: %w", id, err)
	case err != nil || resp.TTL <= 0:
		return nil, fmt.Errorf("etcd lease %x: %w", id, ErrLeaseLost)
	}
	l, err := c.keep(ctx, cli, clientv3.LeaseID(id))
	if err != nil {
		return nil, err
	}
	c.log.Info().Str("lease", fmt.Sprintf("%x", id)).Int64("ttl_left_s", resp.TTL).Msg("etcd lease resumed: etcd kept it while out of reach")
	return l, nil
}

// keep keeps lease id alive until ctx ends or the Lease is released.
func (c *Client) keep(ctx context.Context, cli *clientv3.Client, id clientv3.LeaseID) (*Lease, error) {
	kctx, stop := context.WithCancel(ctx)
	ch, err := cli.KeepAlive(kctx, id)
	if err != nil {
		stop()
		return nil, fmt.Errorf("etcd keep lease %x alive: %w", id, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			for range ch { // drained; closes when the lease is gone or kctx ends
			}
			if kctx.Err() != nil {
				return
			}
			// The client closes it also when no answer came for a TTL (the
			// member under the stream died, say): ask etcd whether the
			// lease lives, and keep it alive again if it does.
			if ch = c.keepAgain(kctx, cli, id); ch == nil {
				return
			}
		}
	}()
	return &Lease{ID: int64(id), Done: done, stop: stop}, nil
}

// keepAgain keeps lease id alive again when etcd still has it; nil when it
// is gone or etcd did not say within a second (a whole TTL without an
// answer: etcd most likely let it expire too, and waiting longer would only
// keep a cut-off node acting as if it held it).
func (c *Client) keepAgain(ctx context.Context, cli *clientv3.Client, id clientv3.LeaseID) <-chan *clientv3.LeaseKeepAliveResponse {
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		qctx, cancel := context.WithDeadline(ctx, deadline)
		resp, err := cli.TimeToLive(qctx, id)
		cancel()
		switch {
		case err == nil && resp.TTL > 0:
			ch, err := cli.KeepAlive(ctx, id)
			if err != nil {
				return nil
			}
			c.log.Info().Str("lease", fmt.Sprintf("%x", int64(id))).Int64("ttl_left_s", resp.TTL).
				Msg("etcd lease keep-alive resumed after a gap (an etcd member went away?)")
			return ch
		case err == nil || isLeaseNotFound(err):
			return nil // gone
		}
		if !retry.Wait(ctx, 100*time.Millisecond) {
			return nil
		}
	}
	return nil
}

// Revoke stops the keep-alive and revokes the lease, deleting every key
// attached to it.
func (c *Client) Revoke(ctx context.Context, l *Lease) error {
	l.Release()
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	cli, err := c.etcd(ctx)
	if err != nil {
		return err
	}
	if _, err := cli.Revoke(ctx, clientv3.LeaseID(l.ID)); err != nil && !isLeaseNotFound(err) {
		return fmt.Errorf("etcd revoke lease %x: %w", l.ID, err)
	}
	return nil
}

// Release stops keeping the lease alive without revoking it; its keys live
// until the TTL runs out. Call it for a lease whose Done closed, too, to free
// its keep-alive.
func (l *Lease) Release() {
	if l.stop != nil {
		l.stop()
	}
}

// Claim puts key=value under lease, but only if key does not exist: the
// way a daemon takes a name. held is false when someone else holds key;
// holder is then what it holds it with (value and lease).
func (c *Client) Claim(ctx context.Context, key, value string, lease int64) (held bool, holder KV, err error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	cli, err := c.etcd(ctx)
	if err != nil {
		return false, KV{}, err
	}
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, value, clientv3.WithLease(clientv3.LeaseID(lease)))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		if isLeaseNotFound(err) {
			return false, KV{}, fmt.Errorf("etcd claim %s: %w", key, ErrLeaseLost)
		}
		return false, KV{}, fmt.Errorf("etcd claim %s: %w", key, err)
	}
	if resp.Succeeded {
		return true, KV{}, nil
	}
	for _, r := range resp.Responses {
		for _, kv := range r.GetResponseRange().Kvs {
			return false, kvOf(kv), nil
		}
	}
	return false, KV{}, nil // deleted between the compare and the get: try again
}

// Unclaim deletes key only while it holds value under lease (a claim
// this caller made), in one transaction: a key someone else claimed since
// is left alone. deleted is false when key did not hold that claim.
func (c *Client) Unclaim(ctx context.Context, key, value string, lease int64) (deleted bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	cli, err := c.etcd(ctx)
	if err != nil {
		return false, err
	}
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Value(key), "=", value), clientv3.Compare(clientv3.LeaseValue(key), "=", lease)).
		Then(clientv3.OpDelete(key)).
		Commit()
	if err != nil {
		return false, fmt.Errorf("etcd unclaim %s: %w", key, err)
	}
	return resp.Succeeded, nil
}

// LeaseGranted returns the TTL lease was granted with; ok is false when
// the lease does not exist (any more).
func (c *Client) LeaseGranted(ctx context.Context, lease int64) (ttl time.Duration, ok bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	cli, err := c.etcd(ctx)
	if err != nil {
		return 0, false, err
	}
	resp, err := cli.TimeToLive(ctx, clientv3.LeaseID(lease))
	if err != nil {
		if isLeaseNotFound(err) {
			return 0, false, nil
		}
		return 0, false, fmt.Errorf("etcd lease %x: %w", lease, err)
	}
	if resp.TTL < 0 {
		return 0, false, nil
	}
	return time.Duration(resp.GrantedTTL) * time.Second, true, nil
}
