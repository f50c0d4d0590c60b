package store

import (
	"context"
	"sort"
	"sync"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/internal/wake"
)

// Snapshot is the validated content of a prefix at one revision.
type Snapshot struct {
	// Entries are sorted by key.
	Entries []Entry
	// Revision is the etcd revision the snapshot reflects.
	Revision int64
}

// Cache keeps a validated copy of every registration under a prefix,
// through Watch. Invalid keys and values are left out and logged once per
// write. Until the first load succeeds it has no snapshot, so callers
// never mistake "etcd unreachable" for "no backends". One Cache serves
// every reader of the registrations in a process.
type Cache struct {
	cli    *Client
	prefix string
	log    zerolog.Logger

	changed wake.Fanout

	mu      sync.Mutex
	entries map[string]Entry
	rev     int64
	loaded  bool
}

// NewCache returns a cache of the registrations under prefix (the keys
// under KeysPrefix(prefix)); Start fills it.
func (c *Client) NewCache(prefix string, log zerolog.Logger) *Cache {
	return &Cache{cli: c, prefix: KeysPrefix(prefix), log: log, entries: map[string]Entry{}}
}

// Start loads and watches until ctx ends. It returns nil on cancellation.
func (k *Cache) Start(ctx context.Context) error {
	return k.cli.Watch(ctx, k.prefix, k.apply)
}

// Subscribe returns a channel that receives a value after the snapshot
// changed (and after each reload); several changes may collapse into one.
func (k *Cache) Subscribe() <-chan struct{} { return k.changed.Subscribe() }

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

// apply brings the copy to an Update from Watch and tells the subscribers.
func (k *Cache) apply(u Update) {
	k.mu.Lock()
	if u.Reset {
		k.entries = make(map[string]Entry, len(u.KVs))
	}
	for _, key := range u.Deleted {
		delete(k.entries, key)
	}
	for _, kv := range u.KVs {
		// Parsed once per write, so an invalid key is logged once per write.
		if e, ok := k.parse(kv); ok {
			k.entries[kv.Key] = e
		} else {
			delete(k.entries, kv.Key)
		}
	}
	k.rev, k.loaded = u.Revision, true
	k.mu.Unlock()
	if u.Reset {
		k.log.Debug().Str("prefix", k.prefix).Int("keys", len(u.KVs)).Int64("revision", u.Revision).Msg("etcd snapshot loaded")
	}
	k.changed.Wake()
}

func (k *Cache) parse(kv KV) (Entry, bool) {
	e, err := ParseEntry(k.prefix, kv.Key, kv.Value)
	if err != nil {
		k.log.Warn().Str("key", clip(kv.Key)).Err(err).Msg("skipping invalid registration")
		return Entry{}, false
	}
	e.Lease = kv.Lease
	return e, true
}

// ReadSnapshot reads the registrations under prefix once, validated as a
// Cache's would be (invalid entries are logged and left out): for the
// one-shot commands.
func (c *Client) ReadSnapshot(ctx context.Context, prefix string, log zerolog.Logger) (Snapshot, error) {
	k := c.NewCache(prefix, log)
	kvs, rev, err := c.List(ctx, k.prefix)
	if err != nil {
		return Snapshot{}, err
	}
	k.apply(Update{Reset: true, KVs: kvs, Revision: rev})
	snap, _ := k.Snapshot()
	return snap, nil
}
