package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/upstreamd/upstreamd/certs"
	"github.com/upstreamd/upstreamd/store"
)

// fakeKV is etcd for the certs commands: values with the revision of
// their last write. between, when set, runs once after the first Get:
// another writer acting between a command's read and its write.
type fakeKV struct {
	rev     int64
	kv      map[string]store.KV
	between func(f *fakeKV)
}

func (f *fakeKV) Get(_ context.Context, key string) (store.KV, bool, error) {
	kv, ok := f.kv[key]
	if b := f.between; b != nil {
		f.between = nil
		defer b(f)
	}
	return kv, ok, nil
}

func (f *fakeKV) Put(_ context.Context, key, value string, _ int64) (int64, error) {
	f.rev++
	f.kv[key] = store.KV{Key: key, Value: []byte(value), ModRevision: f.rev}
	return f.rev, nil
}

func (f *fakeKV) PutIfUnchanged(ctx context.Context, key, value string, modRev int64) (bool, error) {
	if f.kv[key].ModRevision != modRev {
		return false, nil
	}
	_, err := f.Put(ctx, key, value, 0)
	return true, err
}

// TestRenewCert: `certs renew` marks an ACME certificate due without ever
// replacing a newer value written between its read and its write.
func TestRenewCert(t *testing.T) {
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	key := store.CertHostKey("p", "a.example")
	old := certs.Record{Cert: "old cert", Key: "old key", Source: certs.SourceACME, RenewAt: at.Add(30 * 24 * time.Hour), Node: "n1"}
	newer := certs.Record{Cert: "new cert", Key: "new key", Source: certs.SourceACME, RenewAt: at.Add(60 * 24 * time.Hour), Node: "n2", Stored: at}
	for _, tt := range []struct {
		name    string
		between func(f *fakeKV)
		want    certs.Record // in etcd afterwards
		out     string
		err     string
	}{
		{name: "marked", want: withRenewAt(old, at), out: "a.example: due for renewal now"},
		{name: "the orderer stores a new certificate in between: it stays, unmarked",
			between: func(f *fakeKV) { _, _ = f.Put(context.Background(), key, newer.Encode(), 0) },
			want:    newer, out: "a.example: a new certificate was stored meanwhile (by n2"},
		{name: "another renew in between: marked on the value it wrote",
			between: func(f *fakeKV) {
				_, _ = f.Put(context.Background(), key, withRenewAt(old, at.Add(-time.Minute)).Encode(), 0)
			},
			want: withRenewAt(old, at), out: "a.example: due for renewal now"},
		{name: "removed in between",
			between: func(f *fakeKV) { delete(f.kv, key) },
			err:     "no certificate a.example in etcd"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeKV{kv: map[string]store.KV{}, between: tt.between}
			_, _ = f.Put(context.Background(), key, old.Encode(), 0)
			out, err := renewCert(context.Background(), f, "p", "a.example", at)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want one containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(out, tt.out) {
				t.Errorf("said %q, want %q…", out, tt.out)
			}
			if got := string(f.kv[key].Value); got != tt.want.Encode() {
				t.Errorf("etcd holds %s\nwant %s", got, tt.want.Encode())
			}
		})
	}
}

func withRenewAt(r certs.Record, at time.Time) certs.Record {
	r.RenewAt = at
	return r
}
