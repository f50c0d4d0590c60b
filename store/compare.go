package store

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// DeleteIfValue deletes key only if it still holds value, in one
// transaction: what was read and judged stale is deleted, never what
// someone wrote over it since. deleted is false when key holds something
// else or does not exist.
func (c *Client) DeleteIfValue(ctx context.Context, key, value string) (deleted bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	cli, err := c.etcd(ctx)
	if err != nil {
		return false, err
	}
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Value(key), "=", value)).
		Then(clientv3.OpDelete(key)).
		Commit()
	if err != nil {
		return false, fmt.Errorf("etcd delete %s if unchanged: %w", key, err)
	}
	return resp.Succeeded, nil
}
