// Package storetest is an in-memory etcd with the methods of a
// store.Client (and the watched copy of the registrations a store.Cache
// keeps), and a lease holder, for the unit tests of the packages that use
// etcd through small interfaces of their own: the consumer declares the
// interface, the test hands it these. etcd's own client is never faked:
// store is tested against the real thing in integration/.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/upstreamd/upstreamd/store"
)

// Value is a key's value and the lease it was written under (0: none).
type Value struct {
	Value string
	Lease int64
}

// Etcd is an in-memory etcd: keys with values and leases, leases whose
// Done the test closes, and the watched copy of the registrations
// (Snapshot, Subscribe), which sees every write at once unless Quiet. As
// in etcd, every write makes a revision, but the watched copy is at the
// revision of the last change under /services, and a deletion that finds
// no key writes nothing and answers 0 (store.Delete's contract). Watch
// hands over what is under its prefix once.
//
// The exported fields are the test's knobs and records: set them before
// the code under test runs, or under Lock.
type Etcd struct {
	sync.Mutex
	// Quiet: hand edits (Remove) reach no subscriber, a missed watch
	// event.
	Quiet bool
	// Ghosts are keys the watched copy still shows though etcd deleted
	// them: an expiry the watch has not brought yet.
	Ghosts map[string]Value
	// GrantErrs, ResumeErrs, ClaimErrs and ListErrs count the calls that
	// fail (etcd unreachable); ReadFails the Snapshot calls that find
	// nothing loaded yet; PutErrs are returned by successive Puts, then
	// nil.
	GrantErrs, ResumeErrs, ClaimErrs, ListErrs, ReadFails int
	PutErrs                                               []error
	// What was done: the keys put and deleted, the leases revoked (with
	// the ctx.Err() each Revoke saw), the times of the Snapshot calls.
	Puts, Deletes []string
	Revoked       []int64
	RevokeErrs    []error
	Reads         []time.Time

	kv        map[string]Value
	created   map[string]int64 // the revision that created each key
	rev       int64
	watched   int64 // the revision of the last change under /services/
	subs      []chan struct{}
	leases    map[int64]chan struct{}
	ttls      map[int64]time.Duration
	kept      map[int64]bool // expired leases etcd still holds (Resume takes them up)
	nextLease int64
	grants    int
}

// New returns an Etcd holding initial.
func New(initial map[string]Value) *Etcd {
	kv := maps.Clone(initial)
	if kv == nil {
		kv = map[string]Value{}
	}
	created := map[string]int64{}
	for k := range kv {
		created[k] = 1
	}
	return &Etcd{kv: kv, created: created, leases: map[int64]chan struct{}{}, ttls: map[int64]time.Duration{}, kept: map[int64]bool{},
		rev: 1, watched: 1}
}

// errUnavailable is what a call told to fail answers.
var errUnavailable = errors.New("fake etcd: unavailable")

// Grant grants a lease, numbered from 1.
func (f *Etcd) Grant(_ context.Context, ttl time.Duration) (*store.Lease, error) {
	f.Lock()
	defer f.Unlock()
	if f.GrantErrs > 0 {
		f.GrantErrs--
		return nil, errUnavailable
	}
	f.grants++
	f.nextLease++
	f.ttls[f.nextLease] = ttl
	done := make(chan struct{})
	f.leases[f.nextLease] = done
	return &store.Lease{ID: f.nextLease, Done: done}, nil
}

// Resume takes up a lease etcd kept (Keep), with a new Done.
func (f *Etcd) Resume(_ context.Context, id int64) (*store.Lease, error) {
	f.Lock()
	defer f.Unlock()
	if f.ResumeErrs > 0 {
		f.ResumeErrs--
		return nil, errUnavailable
	}
	if !f.kept[id] {
		return nil, fmt.Errorf("fake etcd: lease %d: %w", id, store.ErrLeaseLost)
	}
	delete(f.kept, id)
	done := make(chan struct{})
	f.leases[id] = done
	return &store.Lease{ID: id, Done: done}, nil
}

// Keep makes etcd hold lease id when its keep-alive lapses (Expire): all
// of etcd was away, and gave every lease its TTL again when it came back.
func (f *Etcd) Keep(id int64) {
	f.Lock()
	defer f.Unlock()
	f.kept[id] = true
}

// written bumps the revision for a write of key ("": of keys anywhere)
// and tells the subscribers; the caller holds the lock.
func (f *Etcd) written(key string) int64 {
	f.rev++
	if key == "" || strings.HasPrefix(key, "/services/") {
		f.watched = f.rev
	}
	for _, ch := range f.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	return f.rev
}

// set writes key; the caller holds the lock and calls written. A new key
// is created at the revision written makes.
func (f *Etcd) set(key string, v Value) {
	if _, ok := f.kv[key]; !ok {
		f.created[key] = f.rev + 1
	}
	f.kv[key] = v
}

// kvOf is key as etcd answers it; the caller holds the lock.
func (f *Etcd) kvOf(key string) store.KV {
	v := f.kv[key]
	return store.KV{Key: key, Value: []byte(v.Value), Lease: v.Lease, Created: f.created[key]}
}

// List returns what is under prefix, by key, and the revision.
func (f *Etcd) List(_ context.Context, prefix string) ([]store.KV, int64, error) {
	f.Lock()
	defer f.Unlock()
	if f.ListErrs > 0 {
		f.ListErrs--
		return nil, 0, errUnavailable
	}
	var out []store.KV
	for _, k := range slices.Sorted(maps.Keys(f.kv)) {
		if strings.HasPrefix(k, prefix) {
			out = append(out, f.kvOf(k))
		}
	}
	return out, f.rev, nil
}

// Get returns key; ok is false when it does not exist.
func (f *Etcd) Get(_ context.Context, key string) (store.KV, bool, error) {
	f.Lock()
	defer f.Unlock()
	if _, ok := f.kv[key]; !ok {
		return store.KV{}, false, nil
	}
	return f.kvOf(key), true, nil
}

// Leader returns the oldest key under prefix (the first created).
func (f *Etcd) Leader(_ context.Context, prefix string) (store.KV, bool, error) {
	f.Lock()
	defer f.Unlock()
	var oldest store.KV
	for _, k := range slices.Sorted(maps.Keys(f.kv)) {
		if strings.HasPrefix(k, prefix) && (oldest.Key == "" || f.created[k] < oldest.Created) {
			oldest = f.kvOf(k)
		}
	}
	return oldest, oldest.Key != "", nil
}

// Revoke deletes the lease's keys, as etcd does.
func (f *Etcd) Revoke(ctx context.Context, l *store.Lease) error {
	f.Lock()
	defer f.Unlock()
	f.Revoked = append(f.Revoked, l.ID)
	f.RevokeErrs = append(f.RevokeErrs, ctx.Err())
	if ctx.Err() != nil {
		return ctx.Err()
	}
	for k, v := range f.kv {
		if v.Lease == l.ID {
			delete(f.kv, k)
		}
	}
	f.written("")
	return nil
}

// Put writes key under lease.
func (f *Etcd) Put(_ context.Context, key, value string, lease int64) (int64, error) {
	f.Lock()
	defer f.Unlock()
	if len(f.PutErrs) > 0 {
		err := f.PutErrs[0]
		f.PutErrs = f.PutErrs[1:]
		if err != nil {
			return 0, err
		}
	}
	f.Puts = append(f.Puts, key)
	f.set(key, Value{Value: value, Lease: lease})
	return f.written(key), nil
}

// Delete deletes key.
func (f *Etcd) Delete(_ context.Context, key string) (int64, error) {
	f.Lock()
	defer f.Unlock()
	f.Deletes = append(f.Deletes, key)
	if _, ok := f.kv[key]; !ok {
		return 0, nil
	}
	delete(f.kv, key)
	return f.written(key), nil
}

// Unclaim deletes key while it holds value under lease.
func (f *Etcd) Unclaim(_ context.Context, key, value string, lease int64) (bool, error) {
	f.Lock()
	defer f.Unlock()
	if v, ok := f.kv[key]; !ok || v.Value != value || v.Lease != lease {
		return false, nil
	}
	f.Deletes = append(f.Deletes, key)
	delete(f.kv, key)
	f.written(key)
	return true, nil
}

// Claim puts key under lease unless it exists.
func (f *Etcd) Claim(_ context.Context, key, value string, lease int64) (bool, store.KV, error) {
	f.Lock()
	defer f.Unlock()
	if f.ClaimErrs > 0 {
		f.ClaimErrs--
		return false, store.KV{}, errUnavailable
	}
	if v, ok := f.kv[key]; ok {
		return false, store.KV{Key: key, Value: []byte(v.Value), Lease: v.Lease}, nil
	}
	f.set(key, Value{Value: value, Lease: lease})
	f.written(key)
	return true, store.KV{}, nil
}

// LeaseGranted answers the TTL a lease was granted with (a lease of
// another daemon with the TTL HoldWith set).
func (f *Etcd) LeaseGranted(_ context.Context, lease int64) (time.Duration, bool, error) {
	f.Lock()
	defer f.Unlock()
	ttl, ok := f.ttls[lease]
	return ttl, ok, nil
}

// HoldWith sets key as held by another daemon under lease (alive, with
// ttl).
func (f *Etcd) HoldWith(key, value string, lease int64, ttl time.Duration) {
	f.Lock()
	defer f.Unlock()
	f.set(key, Value{Value: value, Lease: lease})
	f.ttls[lease] = ttl
}

// Subscribe returns a channel that receives after each write.
func (f *Etcd) Subscribe() <-chan struct{} {
	f.Lock()
	defer f.Unlock()
	ch := make(chan struct{}, 1)
	f.subs = append(f.subs, ch)
	return ch
}

// Snapshot is the watched copy: the valid registrations under /services.
func (f *Etcd) Snapshot() (store.Snapshot, bool) {
	f.Lock()
	defer f.Unlock()
	f.Reads = append(f.Reads, time.Now())
	if f.ReadFails > 0 {
		f.ReadFails--
		return store.Snapshot{}, false
	}
	snap := store.Snapshot{Revision: f.watched}
	shown := maps.Clone(f.kv)
	maps.Copy(shown, f.Ghosts)
	for _, k := range slices.Sorted(maps.Keys(shown)) {
		e, err := store.ParseEntry("/services", k, []byte(shown[k].Value))
		if err != nil {
			continue
		}
		e.Lease = shown[k].Lease
		snap.Entries = append(snap.Entries, e)
	}
	return snap, true
}

// Watch hands over what is under prefix, then again after each write
// that changed it (a Reset each time), until ctx ends.
func (f *Etcd) Watch(ctx context.Context, prefix string, handle func(store.Update)) error {
	changed := f.Subscribe()
	var last []store.KV
	for first := true; ; first = false {
		f.Lock()
		u := store.Update{Reset: true, Revision: f.rev}
		for _, k := range slices.Sorted(maps.Keys(f.kv)) {
			if strings.HasPrefix(k, prefix) {
				u.KVs = append(u.KVs, f.kvOf(k))
			}
		}
		f.Unlock()
		if first || !slices.EqualFunc(u.KVs, last, sameKV) {
			handle(u)
			last = u.KVs
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

func sameKV(a, b store.KV) bool {
	return a.Key == b.Key && string(a.Value) == string(b.Value) && a.Lease == b.Lease && a.Created == b.Created
}

// Campaign wins at once: a cluster of one.
func (f *Etcd) Campaign(context.Context, string, string, int64) (int64, error) { return 1, nil }

// Expire closes a lease's Done, as a lost keep-alive does. Its keys stay,
// the worst case: only their lease ID shows they must be written again.
func (f *Etcd) Expire(id int64) {
	f.Lock()
	defer f.Unlock()
	close(f.leases[id])
}

// Keys returns every key with its value.
func (f *Etcd) Keys() map[string]Value {
	f.Lock()
	defer f.Unlock()
	return maps.Clone(f.kv)
}

// Remove deletes a key by hand.
func (f *Etcd) Remove(key string) {
	f.Lock()
	defer f.Unlock()
	delete(f.kv, key)
	if f.Quiet {
		f.rev++
		return
	}
	f.written(key)
}

// Counts are how many calls of each kind were made.
type Counts struct {
	Grants, Puts, Deletes, Reads int
	Revoked                      []int64
}

// Counts returns how many calls of each kind were made.
func (f *Etcd) Counts() Counts {
	f.Lock()
	defer f.Unlock()
	return Counts{Grants: f.grants, Puts: len(f.Puts), Deletes: len(f.Deletes), Reads: len(f.Reads),
		Revoked: slices.Clone(f.Revoked)}
}

// Leases hands out a lease the test sets, starting with lease 1, as a
// node does (Lease, Subscribe, Lost).
type Leases struct {
	mu      sync.Mutex
	lease   *store.Lease
	done    chan struct{} // the lease's Done, when Set made it
	changed chan struct{}
	lost    []int64
}

// NewLeases returns Leases holding lease 1.
func NewLeases() *Leases {
	return &Leases{lease: &store.Lease{ID: 1}, changed: make(chan struct{}, 1)}
}

// Lease returns the lease; nil while there is none.
func (l *Leases) Lease() *store.Lease {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lease
}

// Subscribe returns the channel that receives after each Set.
func (l *Leases) Subscribe() <-chan struct{} { return l.changed }

// Lost records that the code under test found lease lost.
func (l *Leases) Lost(lease *store.Lease) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lost = append(l.lost, lease.ID)
}

// Set makes id the lease, as the node does after a loss.
func (l *Leases) Set(id int64) {
	l.mu.Lock()
	l.done = make(chan struct{})
	l.lease = &store.Lease{ID: id, Done: l.done}
	l.mu.Unlock()
	select {
	case l.changed <- struct{}{}:
	default:
	}
}

// Expire ends the lease, as a keep-alive that lapsed: no lease until Set.
func (l *Leases) Expire() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done != nil {
		close(l.done)
	}
	l.lease, l.done = nil, nil
}

// LostIDs returns the leases reported lost.
func (l *Leases) LostIDs() []int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.lost)
}
