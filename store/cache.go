package store

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Snapshot is the validated content of a prefix at one revision.
type Snapshot struct {
	// Entries are sorted by key.
	Entries []Entry
	// Revision is the etcd revision the snapshot reflects.
	Revision int64
}

// Cache keeps a validated copy of every registration under a prefix: one
// Get, then a Watch from the next revision. Invalid keys and values are
// left out and logged once per change. After a failure it reloads with
// backoff; until the first load succeeds it has no snapshot, so callers
// never mistake "etcd unreachable" for "no backends".
type Cache struct {
	cli    *Client
	prefix string
	log    zerolog.Logger

	mu      sync.Mutex
	entries map[string]Entry
	rev     int64
	loaded  bool

	changed chan struct{}
}

// NewCache returns a cache of the registrations under prefix (the keys
// under KeysPrefix(prefix)); Start fills it.
func (c *Client) NewCache(prefix string, log zerolog.Logger) *Cache {
	return &Cache{
		cli:     c,
		prefix:  KeysPrefix(prefix),
		log:     log,
		entries: map[string]Entry{},
		changed: make(chan struct{}, 1),
	}
}

// Changed receives a value after the snapshot changed; several changes may
// collapse into one.
func (k *Cache) Changed() <-chan struct{} { return k.changed }

// Snapshot returns the current content; ok is false until the first load.
func (k *Cache) Snapshot() (snap Snapshot, ok bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.loaded {
		return Snapshot{}, false
	}
	snap = Snapshot{Entries: make([]Entry, 0, len(k.entries)), Revision: k.rev}
	for _, e := range k.entries {
		snap.Entries = append(snap.Entries, e)
	}
	sort.Slice(snap.Entries, func(i, j int) bool { return snap.Entries[i].Key < snap.Entries[j].Key })
	return snap, true
}

func (k *Cache) notify() {
	select {
	case k.changed <- struct{}{}:
	default:
	}
}

// Start loads and watches until ctx ends. It returns nil on cancellation.
func (k *Cache) Start(ctx context.Context) error {
	bo := backoff.NewExponentialBackOff(backoff.WithInitialInterval(100*time.Millisecond),
		backoff.WithMaxInterval(5*time.Second), backoff.WithMaxElapsedTime(0))
	failing := false
	for ctx.Err() == nil {
		err := k.loadAndWatch(ctx, func() {
			if failing {
				k.log.Info().Str("prefix", k.prefix).Msg("etcd watch recovered")
				failing = false
			}
			bo.Reset()
		})
		if ctx.Err() != nil {
			return nil
		}
		if err == nil { // watch ended cleanly: reload at once
			continue
		}
		if !failing {
			k.log.Error().Err(err).Str("prefix", k.prefix).Msg("etcd watch failed; keeping the last snapshot and retrying with backoff")
			failing = true
		} else {
			k.log.Debug().Err(err).Msg("etcd watch still failing")
		}
		t := time.NewTimer(bo.NextBackOff())
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
	return nil
}

// loadAndWatch loads the prefix, calls loaded, then applies the watch until
// it fails.
func (k *Cache) loadAndWatch(ctx context.Context, loaded func()) error {
	kvs, rev, err := k.cli.List(ctx, k.prefix)
	if err != nil {
		return err
	}
	entries := make(map[string]Entry, len(kvs))
	for _, kv := range kvs {
		if e, ok := k.parse(kv.Key, kv.Value, kv.Lease); ok {
			entries[kv.Key] = e
		}
	}
	k.mu.Lock()
	k.entries, k.rev, k.loaded = entries, rev, true
	k.mu.Unlock()
	k.notify()
	loaded()
	k.log.Debug().Str("prefix", k.prefix).Int("keys", len(entries)).Int64("revision", rev).Msg("etcd snapshot loaded")

	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	cli, err := k.cli.etcd(ctx)
	if err != nil {
		return err
	}
	wch := cli.Watch(wctx, k.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	for wr := range wch {
		if err := wr.Err(); err != nil {
			if wr.CompactRevision != 0 {
				return fmt.Errorf("watch %s: compacted at %d: %w", k.prefix, wr.CompactRevision, err)
			}
			return fmt.Errorf("watch %s: %w", k.prefix, err)
		}
		if len(wr.Events) == 0 {
			continue
		}
		k.mu.Lock()
		for _, ev := range wr.Events {
			key := string(ev.Kv.Key)
			switch ev.Type {
			case clientv3.EventTypeDelete:
				delete(k.entries, key)
			case clientv3.EventTypePut:
				if e, ok := k.parse(key, ev.Kv.Value, ev.Kv.Lease); ok {
					k.entries[key] = e
				} else {
					delete(k.entries, key)
				}
			}
		}
		k.rev = wr.Header.Revision
		k.mu.Unlock()
		k.notify()
	}
	if ctx.Err() != nil {
		return nil
	}
	return errors.New("watch channel closed")
}

func (k *Cache) parse(key string, value []byte, lease int64) (Entry, bool) {
	e, err := ParseEntry(k.prefix, key, value)
	if err != nil {
		// Logged once per write: a key is parsed again only when it changes.
		k.log.Warn().Str("key", clip(key)).Err(err).Msg("skipping invalid registration")
		return Entry{}, false
	}
	e.Lease = lease
	return e, true
}
