package certs

import (
	"context"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/upstreamd/upstreamd/store"
)

// fakeWatch is etcd's watch as the Cache reads it: one listing, then
// nothing until ctx ends.
// fakeResponder is this node's proxy: it runs, and serves every answer at
// once unless serves says otherwise.
type fakeResponder struct {
	serves func(ctx context.Context, token string) error
}

var _ Responder = fakeResponder{}

func (fakeResponder) Running() bool                     { return true }
func (fakeResponder) SubscribeRunning() <-chan struct{} { return nil }

func (f fakeResponder) ServesAnswer(ctx context.Context, _, token, _ string) error {
	if f.serves == nil {
		return nil
	}
	return f.serves(ctx, token)
}

type fakeWatch struct{ first store.Update }

func (f fakeWatch) Watch(ctx context.Context, _ string, handle func(store.Update)) error {
	handle(f.first)
	<-ctx.Done()
	return nil
}

// fakeEtcd is etcd as the Manager and the Cache use it, in memory: each
// write reaches every watch before the write returns. Its lock is free
// unless lockErr is set.
type fakeEtcd struct {
	mu      sync.Mutex
	rev     int64
	kv      map[string]store.KV
	watches map[int]fakeWatcher
	next    int
	lockErr error
}

type fakeWatcher struct {
	prefix string
	handle func(store.Update)
}

func newFakeEtcd() *fakeEtcd {
	return &fakeEtcd{kv: map[string]store.KV{}, watches: map[int]fakeWatcher{}}
}

func (f *fakeEtcd) Get(_ context.Context, key string) (store.KV, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	kv, ok := f.kv[key]
	return kv, ok, nil
}

func (f *fakeEtcd) Put(_ context.Context, key, value string, lease int64) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.put(key, value, lease)
	return f.rev, nil
}

func (f *fakeEtcd) PutIfUnchanged(_ context.Context, key, value string, modRev int64) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.kv[key].ModRevision != modRev {
		return false, nil
	}
	f.put(key, value, 0)
	return true, nil
}

// put writes and tells the watches; f.mu is held.
func (f *fakeEtcd) put(key, value string, lease int64) {
	f.rev++
	kv := store.KV{Key: key, Value: []byte(value), Lease: lease, ModRevision: f.rev}
	f.kv[key] = kv
	f.notify(key, store.Update{Revision: f.rev, KVs: []store.KV{kv}})
}

func (f *fakeEtcd) Delete(_ context.Context, key string) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.kv[key]; !ok {
		return 0, nil
	}
	f.rev++
	delete(f.kv, key)
	f.notify(key, store.Update{Revision: f.rev, Deleted: []string{key}})
	return f.rev, nil
}

func (f *fakeEtcd) List(_ context.Context, prefix string) ([]store.KV, int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []store.KV
	for k, kv := range f.kv {
		if strings.HasPrefix(k, prefix) {
			out = append(out, kv)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, f.rev, nil
}

func (f *fakeEtcd) DeleteIfValue(_ context.Context, key, value string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	kv, ok := f.kv[key]
	if !ok || string(kv.Value) != value {
		return false, nil
	}
	f.rev++
	delete(f.kv, key)
	f.notify(key, store.Update{Revision: f.rev, Deleted: []string{key}})
	return true, nil
}

// notify hands u to the watches of key; f.mu is held.
func (f *fakeEtcd) notify(key string, u store.Update) {
	for _, w := range f.watches {
		if strings.HasPrefix(key, w.prefix) {
			w.handle(u)
		}
	}
}

func (f *fakeEtcd) Lock(context.Context, string, time.Duration) (int64, func(), error) {
	if f.lockErr != nil {
		return 0, nil, f.lockErr
	}
	return 7, func() {}, nil
}

// Watch lists prefix, then hands over every write under it until ctx ends.
func (f *fakeEtcd) Watch(ctx context.Context, prefix string, handle func(store.Update)) error {
	id := f.watch(prefix, handle)
	<-ctx.Done()
	f.mu.Lock()
	delete(f.watches, id)
	f.mu.Unlock()
	return nil
}

func (f *fakeEtcd) watch(prefix string, handle func(store.Update)) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	u := store.Update{Reset: true, Revision: f.rev}
	for _, kv := range f.kv {
		if strings.HasPrefix(kv.Key, prefix) {
			u.KVs = append(u.KVs, kv)
		}
	}
	handle(u)
	f.next++
	f.watches[f.next] = fakeWatcher{prefix, handle}
	return f.next
}

// feed makes k follow f as Cache.Start would, without a goroutine: for
// tests that move the clock themselves.
func (f *fakeEtcd) feed(k *Cache) {
	k.cli = f
	f.watch(store.CertsPrefix(k.project), k.apply)
}
