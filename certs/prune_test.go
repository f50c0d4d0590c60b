package certs

import (
	"context"
	"maps"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/store"
)

func (f *fakeStore) List(_ context.Context, prefix string) ([]store.KV, int64, error) {
	var out []store.KV
	for _, k := range slices.Sorted(maps.Keys(f.kv)) {
		if strings.HasPrefix(k, prefix) {
			out = append(out, store.KV{Key: k, Value: []byte(f.kv[k])})
		}
	}
	return out, 1, nil
}

func (f *fakeStore) DeleteIfValue(_ context.Context, key, value string) (bool, error) {
	if v, ok := f.kv[key]; !ok || v != value {
		return false, nil
	}
	delete(f.kv, key)
	return true, nil
}

// orphanRecords are a project's certificates: ACME ones of a host in
// acme.hosts (a.example) and of hosts no longer there (gone.example, and
// old.example, expired), an imported one (own.example), and a value that
// is no record.
func orphanRecords(t *testing.T) map[string]string {
	now := time.Now()
	acme := func(host string, notAfter time.Time) string {
		r := record(t, SourceACME, []string{host}, now.Add(-time.Hour), notAfter)
		r.RenewAt = now.Add(30 * 24 * time.Hour)
		return r.Encode()
	}
	return map[string]string{
		store.CertHostKey("p", "a.example"):    acme("a.example", now.Add(90*24*time.Hour)),
		store.CertHostKey("p", "gone.example"): acme("gone.example", now.Add(90*24*time.Hour)),
		store.CertHostKey("p", "old.example"):  acme("old.example", now.Add(-time.Minute)),
		store.CertHostKey("p", "own.example"):  record(t, SourceImport, []string{"own.example"}, now.Add(-time.Hour), now.Add(time.Hour)).Encode(),
		store.CertHostKey("p", "garbage"):      "not a record",
	}
}

// cacheOf returns a Cache loaded with kv.
func cacheOf(kv map[string]string) *Cache {
	k := NewCache(nil, "p", zerolog.Nop())
	u := store.Update{Reset: true, Revision: 1}
	for key, v := range kv {
		u.KVs = append(u.KVs, store.KV{Key: key, Value: []byte(v)})
	}
	k.apply(u)
	return k
}

// TestCacheServed: an ACME certificate is served only for a host of
// acme.hosts; an imported one always.
func TestCacheServed(t *testing.T) {
	k := cacheOf(orphanRecords(t))
	names := func(cs []Cert) []string {
		var out []string
		for _, c := range cs {
			out = append(out, c.Name)
		}
		return out
	}
	for _, tt := range []struct {
		name  string
		hosts []string
		want  []string
	}{
		{"a.example in acme.hosts", []string{"a.example", "b.example"}, []string{"a.example", "own.example"}},
		{"no [acme]", nil, []string{"own.example"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := names(k.Served(tt.hosts)); !slices.Equal(got, tt.want) {
				t.Errorf("Served(%q) = %q; want %q", tt.hosts, got, tt.want)
			}
		})
	}
}

// TestManagerDeletesOrphans: with nothing to order, a Manager that finds
// an ACME certificate of a host no longer in acme.hosts takes the lock and
// deletes it from etcd, and the expired one the cache does not show; an
// imported certificate, and what is no record, stay.
func TestManagerDeletesOrphans(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		kv := orphanRecords(t)
		st := &lockingStore{fakeStore{kv: maps.Clone(kv)}}
		m := NewManager(ManagerConfig{Project: "p", Hosts: []string{"a.example"}, Store: st, Cache: cacheOf(kv),
			Logger: zerolog.Nop(), Responder: fakeResponder{}})
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- m.Start(ctx) }()
		synctest.Wait() // idle: nothing due
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		want := []string{store.CertHostKey("p", "a.example"), store.CertHostKey("p", "garbage"), store.CertHostKey("p", "own.example")}
		if got := slices.Sorted(maps.Keys(st.kv)); !slices.Equal(got, want) {
			t.Errorf("etcd holds %q; want %q", got, want)
		}
	})
}

// racingStore is a lockingStore where `certs import` of gone.example lands
// between the listing and the delete.
type racingStore struct {
	lockingStore
	imported string
}

func (f *racingStore) List(ctx context.Context, prefix string) ([]store.KV, int64, error) {
	kvs, rev, err := f.fakeStore.List(ctx, prefix)
	f.kv[store.CertHostKey("p", "gone.example")] = f.imported
	return kvs, rev, err
}

// TestDeleteOrphansComparesValue: a certificate written over the orphan
// after it was read is not deleted.
func TestDeleteOrphansComparesValue(t *testing.T) {
	kv := orphanRecords(t)
	now := time.Now()
	st := &racingStore{lockingStore: lockingStore{fakeStore{kv: maps.Clone(kv)}},
		imported: record(t, SourceImport, []string{"gone.example"}, now.Add(-time.Hour), now.Add(time.Hour)).Encode()}
	m := NewManager(ManagerConfig{Project: "p", Hosts: []string{"a.example"}, Store: st, Cache: cacheOf(kv), Logger: zerolog.Nop()})
	m.deleteOrphans(t.Context())
	if got := st.kv[store.CertHostKey("p", "gone.example")]; got != st.imported {
		t.Error("the certificate imported after the listing was deleted")
	}
	if _, ok := st.kv[store.CertHostKey("p", "old.example")]; ok {
		t.Error("the expired orphan was not deleted")
	}
}
