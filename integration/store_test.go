//go:build integration

package integration

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/upstreamd/upstreamd/integration/internal/etcd"
	"github.com/upstreamd/upstreamd/store"
)

// etcdClients starts an etcd container and returns n clients of it.
func etcdClients(t *testing.T, n int) []*store.Client {
	t.Helper()
	ec, err := runEtcd(t, 0)
	require.NoError(t, err)
	clients := make([]*store.Client, n)
	for i := range clients {
		clients[i] = storeClient(t, ec, 0)
	}
	return clients
}

// storeClient returns a store.Client of ec, with timeout per request (zero:
// the default), closed when the test ends.
func storeClient(t *testing.T, ec *etcd.Container, timeout time.Duration) *store.Client {
	t.Helper()
	url, err := ec.Endpoint(t.Context())
	require.NoError(t, err)
	c, err := store.New(store.Config{Endpoints: []string{url}, Timeout: timeout, Logger: zerolog.Nop()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// TestStoreDeleteRevision pins store.Delete's contract on a real etcd: the
// revision it returns for a key it deleted is the one a watch of the key
// shows, and a key that did not exist answers 0, since etcd writes no
// revision then (the registrar waits for its watch to reach what it
// wrote: a current revision answered for nothing would make it wait
// forever).
func TestStoreDeleteRevision(t *testing.T) {
	c := etcdClients(t, 1)[0]
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	updates := make(chan store.Update, 16)
	go func() { _ = c.Watch(ctx, "/watched/", func(u store.Update) { updates <- u }) }()
	require.True(t, (<-updates).Reset, "the watch starts with a listing")

	_, err := c.Put(ctx, "/watched/a", "1", 0)
	require.NoError(t, err)
	require.Len(t, (<-updates).KVs, 1)
	_, err = c.Put(ctx, "/elsewhere/b", "2", 0) // a revision the watch does not see
	require.NoError(t, err)

	rev, err := c.Delete(ctx, "/watched/missing")
	require.NoError(t, err)
	require.Zero(t, rev, "deleting a key that does not exist writes no revision")

	rev, err = c.Delete(ctx, "/watched/a")
	require.NoError(t, err)
	u := <-updates
	require.Equal(t, []string{"/watched/a"}, u.Deleted)
	require.Equal(t, u.Revision, rev, "the deletion's revision is the one its watch shows")
}

// TestStoreLock: the ACME lock on a real etcd. A second holder waits until
// the first unlocks; a key put under the holder's lease (a challenge
// answer) goes with the unlock.
func TestStoreLock(t *testing.T) {
	clients := etcdClients(t, 2)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	lease, unlock, err := clients[0].Lock(ctx, "/locks/acme", 5*time.Second)
	require.NoError(t, err)
	_, err = clients[0].Put(ctx, "/answers/token", "auth", lease)
	require.NoError(t, err)
	// Another node's acknowledgement of the answer goes under the same
	// lease: it needs no cleanup.
	_, err = clients[1].Put(ctx, "/answers/acks/token/b", "b", lease)
	require.NoError(t, err)

	second := make(chan error, 1)
	go func() {
		_, unlock2, err := clients[1].Lock(ctx, "/locks/acme", 5*time.Second)
		if err == nil {
			defer unlock2()
		}
		second <- err
	}()
	// The second waits while the first holds it; the first's lease
	// carries the answer.
	waitCtx, waitCancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer waitCancel()
	select {
	case err := <-second:
		t.Fatalf("a second holder got the lock while the first held it (err %v)", err)
	case <-waitCtx.Done():
	}
	_, ok, err := clients[1].Get(ctx, "/answers/token")
	require.NoError(t, err)
	require.True(t, ok)

	unlock()
	require.NoError(t, <-second, "the second holder gets the lock once the first unlocks")
	_, ok, err = clients[1].Get(ctx, "/answers/token")
	require.NoError(t, err)
	require.False(t, ok, "the key under the holder's lease went with the unlock")
	_, ok, err = clients[1].Get(ctx, "/answers/acks/token/b")
	require.NoError(t, err)
	require.False(t, ok, "another client's key under the holder's lease went with the unlock")
}

// TestStorePutIfUnchanged: the write of a read-modify-write on a real
// etcd (upstreamd certs renew, the ACME orderer) goes through only while
// the key is as it was read, so it never replaces a newer value.
func TestStorePutIfUnchanged(t *testing.T) {
	c := etcdClients(t, 1)[0]
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	ok, err := c.PutIfUnchanged(ctx, "/certs/a", "first", 0)
	require.NoError(t, err)
	require.True(t, ok, "0: written when the key does not exist")
	ok, err = c.PutIfUnchanged(ctx, "/certs/a", "again", 0)
	require.NoError(t, err)
	require.False(t, ok, "0: not written over an existing key")

	read, found, err := c.Get(ctx, "/certs/a")
	require.NoError(t, err)
	require.True(t, found)
	require.NotZero(t, read.ModRevision)
	_, err = c.Put(ctx, "/certs/a", "newer", 0) // someone else's write in between
	require.NoError(t, err)
	ok, err = c.PutIfUnchanged(ctx, "/certs/a", "stale", read.ModRevision)
	require.NoError(t, err)
	require.False(t, ok, "the key changed since it was read")
	now, _, err := c.Get(ctx, "/certs/a")
	require.NoError(t, err)
	require.Equal(t, "newer", string(now.Value), "the newer value stays")

	ok, err = c.PutIfUnchanged(ctx, "/certs/a", "renewed", now.ModRevision)
	require.NoError(t, err)
	require.True(t, ok, "written while unchanged since the read")
	kvs, _, err := c.List(ctx, "/certs/")
	require.NoError(t, err)
	require.Len(t, kvs, 1)
	require.Equal(t, "renewed", string(kvs[0].Value))
	require.Greater(t, kvs[0].ModRevision, now.ModRevision, "List gives the revision of the last write")
}

// TestStoreDeleteIfValue: store.DeleteIfValue on a real etcd deletes a key
// only while it holds the value read, and not a missing key.
func TestStoreDeleteIfValue(t *testing.T) {
	c := etcdClients(t, 1)[0]
	ctx := t.Context()

	_, err := c.Put(ctx, "/certs/a", "read", 0)
	require.NoError(t, err)
	_, err = c.Put(ctx, "/certs/a", "written since", 0)
	require.NoError(t, err)
	deleted, err := c.DeleteIfValue(ctx, "/certs/a", "read")
	require.NoError(t, err)
	require.False(t, deleted, "a key written over since it was read is deleted")
	_, ok, err := c.Get(ctx, "/certs/a")
	require.NoError(t, err)
	require.True(t, ok)

	deleted, err = c.DeleteIfValue(ctx, "/certs/a", "written since")
	require.NoError(t, err)
	require.True(t, deleted)
	_, ok, err = c.Get(ctx, "/certs/a")
	require.NoError(t, err)
	require.False(t, ok)

	deleted, err = c.DeleteIfValue(ctx, "/certs/missing", "")
	require.NoError(t, err)
	require.False(t, deleted, "a missing key compares equal to the empty value")
}

// TestStoreUnclaim: store.Unclaim on a real etcd deletes a key only while
// it holds the caller's claim, value and lease both (placement gives up a
// slot that way: one claimed by another node since is that node's).
func TestStoreUnclaim(t *testing.T) {
	ec, err := runEtcd(t, 0)
	require.NoError(t, err)
	c := storeClient(t, ec, 0)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	mine, err := c.Grant(ctx, 10*time.Second)
	require.NoError(t, err)
	theirs, err := c.Grant(ctx, 10*time.Second)
	require.NoError(t, err)

	const key = "/slots/apache/2"
	held, _, err := c.Claim(ctx, key, `{"node":"a"}`, mine.ID)
	require.NoError(t, err)
	require.True(t, held)
	for _, tc := range []struct {
		name  string
		value string
		lease int64
	}{
		{"another value", `{"node":"b"}`, mine.ID},
		{"another lease", `{"node":"a"}`, theirs.ID},
	} {
		deleted, err := c.Unclaim(ctx, key, tc.value, tc.lease)
		require.NoError(t, err, tc.name)
		require.False(t, deleted, "%s: deleted", tc.name)
		_, ok, err := c.Get(ctx, key)
		require.NoError(t, err)
		require.True(t, ok, "%s: the key went", tc.name)
	}
	deleted, err := c.Unclaim(ctx, key, `{"node":"a"}`, mine.ID)
	require.NoError(t, err)
	require.True(t, deleted, "this caller's own claim")
	_, ok, err := c.Get(ctx, key)
	require.NoError(t, err)
	require.False(t, ok)

	// Claimed by another since: left alone.
	held, _, err = c.Claim(ctx, key, `{"node":"b"}`, theirs.ID)
	require.NoError(t, err)
	require.True(t, held)
	deleted, err = c.Unclaim(ctx, key, `{"node":"a"}`, mine.ID)
	require.NoError(t, err)
	require.False(t, deleted, "another node's claim deleted")
	kv, ok, err := c.Get(ctx, key)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, theirs.ID, kv.Lease)
	deleted, err = c.Unclaim(ctx, "/slots/apache/9", `{"node":"a"}`, mine.ID)
	require.NoError(t, err)
	require.False(t, deleted, "a key that does not exist")
}

// TestStoreResume: a lease whose keep-alive lapsed while etcd was stopped
// for longer than its TTL lives on when etcd comes back (its new leader
// gives every lease its TTL again): store.Resume keeps it alive again and
// every key under it stands. A lease etcd no longer knows is ErrLeaseLost.
func TestStoreResume(t *testing.T) {
	ec, err := runEtcd(t, freePort(t)) // a fixed port: etcd is started again
	require.NoError(t, err)
	c := storeClient(t, ec, 2*time.Second)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	const ttl = 2 * time.Second
	l, err := c.Grant(ctx, ttl)
	require.NoError(t, err)
	_, err = c.Put(ctx, "/nodes/a", "a", l.ID)
	require.NoError(t, err)

	stop := 10 * time.Second
	require.NoError(t, ec.Stop(ctx, &stop))
	select {
	case <-l.Done:
	case <-time.After(3 * ttl):
		t.Fatal("the keep-alive did not lapse with etcd stopped")
	}
	l.Release()
	_, err = c.Resume(ctx, l.ID)
	require.Error(t, err, "resumed with etcd stopped")
	require.NotErrorIs(t, err, store.ErrLeaseLost, "etcd away is not a lost lease")
	require.NoError(t, ec.Start(ctx))

	var again *store.Lease
	eventually(t, 30*time.Second, "the lease resumed", func() error {
		again, err = c.Resume(ctx, l.ID)
		return err
	})
	require.Equal(t, l.ID, again.ID)
	time.Sleep(2 * ttl) // kept alive past its TTL
	kv, ok, err := c.Get(ctx, "/nodes/a")
	require.NoError(t, err)
	require.True(t, ok, "the key under the resumed lease went")
	require.Equal(t, l.ID, kv.Lease)

	require.NoError(t, c.Revoke(ctx, again))
	_, err = c.Resume(ctx, l.ID)
	require.ErrorIs(t, err, store.ErrLeaseLost)
}
