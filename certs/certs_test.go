package certs

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/store"
)

// pair makes a self-signed certificate for names valid from notBefore to
// notAfter, and its key, as PEM.
func pair(t *testing.T, names []string, notBefore, notAfter time.Time) (certPEM, keyPEM string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "test"},
		DNSNames: names, NotBefore: notBefore, NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
}

func record(t *testing.T, source string, names []string, notBefore, notAfter time.Time) Record {
	c, k := pair(t, names, notBefore, notAfter)
	return Record{Cert: c, Key: k, Source: source}
}

func TestParse(t *testing.T) {
	now := time.Now()
	good := record(t, SourceACME, []string{"a.example"}, now.Add(-time.Hour), now.Add(90*24*time.Hour))
	other := record(t, SourceACME, []string{"b.example"}, now.Add(-time.Hour), now.Add(time.Hour))
	for _, tt := range []struct {
		name  string
		value string
		want  string // error text; "": valid
	}{
		{"valid", good.Encode(), ""},
		{"not JSON", "-----BEGIN CERTIFICATE-----", "not a certificate record"},
		{"key of another", Record{Cert: good.Cert, Key: other.Key}.Encode(), "private key does not match public key"},
		{"expired", record(t, SourceImport, []string{"a.example"}, now.Add(-2*time.Hour), now.Add(-time.Hour)).Encode(), "expired on "},
		{"not yet valid", record(t, SourceImport, []string{"a.example"}, now.Add(time.Hour), now.Add(2*time.Hour)).Encode(), "not valid before "},
		// A CA whose clock is a little ahead: valid (the order keeps it).
		{"valid within the skew", record(t, SourceACME, []string{"a.example"}, now.Add(Skew-time.Second), now.Add(time.Hour)).Encode(), ""},
		{"no names", record(t, SourceImport, nil, now.Add(-time.Hour), now.Add(time.Hour)).Encode(), "names no host"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse(store.CertHostKey("p", "a.example"), []byte(tt.value), now)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if c.Name != "a.example" || !slices.Equal(c.Names(), []string{"a.example"}) || c.Source != SourceACME {
					t.Errorf("parsed %q %q %q", c.Name, c.Names(), c.Source)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestRenewAt(t *testing.T) {
	from := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	leaf := &x509.Certificate{NotBefore: from, NotAfter: from.Add(90 * 24 * time.Hour)}
	if got, want := RenewAt(leaf), from.Add(60*24*time.Hour); !got.Equal(want) {
		t.Errorf("RenewAt = %s, want %s (two thirds of 90 days)", got, want)
	}
}

// TestCacheChecksWhatItReads: certificates and challenge answers from etcd
// are untrusted input; what cannot be served is left out.
func TestCacheChecksWhatItReads(t *testing.T) {
	now := time.Now()
	k := NewCache(nil, "p", zerolog.Nop())
	good := record(t, SourceACME, []string{"a.example"}, now.Add(-time.Hour), now.Add(time.Hour))
	expired := record(t, SourceImport, []string{"b.example"}, now.Add(-2*time.Hour), now.Add(-time.Hour))
	token := "tok_0123456789abcdef"
	k.apply(store.Update{Reset: true, Revision: 5, KVs: []store.KV{
		{Key: store.CertHostKey("p", "a.example"), Value: []byte(good.Encode())},
		{Key: store.CertHostKey("p", "b.example"), Value: []byte(expired.Encode())},
		{Key: store.ACMEAccountKey("p"), Value: []byte(`{"key":"secret"}`)},
		{Key: store.ACMEChallengeKey("p", token), Value: []byte(token + ".thumbprint_0123456789")},
		{Key: store.ACMEChallengesPrefix("p") + "../../etc/passwd", Value: []byte("x")},
		{Key: store.ACMEChallengesPrefix("p") + "tok_fedcba9876543210", Value: []byte("<script>")},
	}})
	if rev, ok := k.Loaded(); !ok || rev != 5 {
		t.Fatalf("Loaded() = %d, %v", rev, ok)
	}
	if got := k.Certs(); len(got) != 1 || got[0].Name != "a.example" {
		t.Errorf("Certs() = %v, want a.example only", got)
	}
	if got := k.Challenges(); len(got) != 1 || got[token] != token+".thumbprint_0123456789" {
		t.Errorf("Challenges() = %v, want the one well-formed answer", got)
	}
	// A later write that breaks a certificate drops it; a deletion too.
	k.apply(store.Update{Revision: 6, KVs: []store.KV{{Key: store.CertHostKey("p", "a.example"), Value: []byte("{}")}},
		Deleted: []string{store.ACMEChallengeKey("p", token)}})
	if len(k.Certs()) != 0 || len(k.Challenges()) != 0 {
		t.Errorf("after the update: %d certs, %d challenges; want none", len(k.Certs()), len(k.Challenges()))
	}
}

// fakeStore is the Manager's etcd, in memory.
type fakeStore struct{ kv map[string]string }

func (f *fakeStore) Get(_ context.Context, key string) (store.KV, bool, error) {
	v, ok := f.kv[key]
	return store.KV{Key: key, Value: []byte(v)}, ok, nil
}

func (f *fakeStore) Put(_ context.Context, key, value string, _ int64) (int64, error) {
	f.kv[key] = value
	return 1, nil
}

// PutIfUnchanged writes: fakeStore keeps no revisions.
func (f *fakeStore) PutIfUnchanged(ctx context.Context, key, value string, _ int64) (bool, error) {
	_, err := f.Put(ctx, key, value, 0)
	return true, err
}

func (f *fakeStore) Delete(_ context.Context, key string) (int64, error) {
	delete(f.kv, key)
	return 1, nil
}

func (f *fakeStore) Lock(context.Context, string, time.Duration) (int64, func(), error) {
	return 0, nil, errors.New("locked by a test")
}

// TestManagerDue: what is ordered when: a host without a certificate at
// once, one with an ACME certificate at its renewal time, one an imported
// certificate covers never, and one whose order failed after its backoff.
func TestManagerDue(t *testing.T) {
	now := time.Now()
	k := NewCache(nil, "p", zerolog.Nop())
	fresh := record(t, SourceACME, []string{"fresh.example"}, now.Add(-time.Hour), now.Add(89*24*time.Hour))
	fresh.RenewAt = now.Add(59 * 24 * time.Hour)
	renew := record(t, SourceACME, []string{"renew.example"}, now.Add(-time.Hour), now.Add(89*24*time.Hour))
	renew.RenewAt = now.Add(-time.Second) // upstreamd certs renew
	own := record(t, SourceImport, []string{"*.own.example"}, now.Add(-time.Hour), now.Add(24*time.Hour))
	k.apply(store.Update{Reset: true, Revision: 1, KVs: []store.KV{
		{Key: store.CertHostKey("p", "fresh.example"), Value: []byte(fresh.Encode())},
		{Key: store.CertHostKey("p", "renew.example"), Value: []byte(renew.Encode())},
		{Key: store.CertHostKey("p", "own"), Value: []byte(own.Encode())},
	}})
	var observed []string
	m := NewManager(ManagerConfig{Project: "p", Hosts: []string{"new.example", "fresh.example", "renew.example", "www.own.example"},
		Store: &fakeStore{kv: map[string]string{}}, Cache: k, Logger: zerolog.Nop(),
		Observe: func(host string, err error) { observed = append(observed, host+": "+err.Error()) }})
	m.now = func() time.Time { return now }
	due, next := m.due()
	if !slices.Equal(due, []string{"new.example", "renew.example"}) {
		t.Errorf("due = %q, want new.example and renew.example", due)
	}
	if !next.Equal(now.Add(idleCheck)) {
		t.Errorf("next = %s, want the idle check (fresh.example renews in 59 days)", next.Sub(now))
	}

	// A host that could not be looked at in etcd (here: the lock) is
	// retried after a backoff of its own, seconds: the CA was not asked.
	m.orderUnderLock(context.Background(), due)
	if len(observed) != 2 || !strings.Contains(observed[0], "take the ACME lock: locked by a test") {
		t.Errorf("observed %q", observed)
	}
	due, next = m.due()
	if len(due) != 0 {
		t.Errorf("due right after the failure: %q", due)
	}
	if d := next.Sub(now); d < 2*time.Second || d > 10*time.Second {
		t.Errorf("next try in %s, want about 5s", d)
	}
	m.now = func() time.Time { return now.Add(10 * time.Second) }
	if due, _ = m.due(); !slices.Equal(due, []string{"new.example", "renew.example"}) {
		t.Errorf("due after the backoff = %q", due)
	}
}

// lockingStore is a fakeStore whose lock is free.
type lockingStore struct{ fakeStore }

func (f *lockingStore) Lock(context.Context, string, time.Duration) (int64, func(), error) {
	return 7, func() {}, nil
}

// TestManagerReadsAgainUnderTheLock: a host another node ordered while
// this one waited for the lock is not ordered again, though this node's
// watch has not shown it yet.
func TestManagerReadsAgainUnderTheLock(t *testing.T) {
	now := time.Now()
	k := NewCache(nil, "p", zerolog.Nop())
	k.apply(store.Update{Reset: true, Revision: 1}) // nothing seen yet
	theirs := record(t, SourceACME, []string{"a.example"}, now.Add(-time.Minute), now.Add(90*24*time.Hour))
	theirs.RenewAt = now.Add(60 * 24 * time.Hour)
	st := &lockingStore{fakeStore{kv: map[string]string{store.CertHostKey("p", "a.example"): theirs.Encode()}}}
	var observed []string
	m := NewManager(ManagerConfig{Project: "p", Hosts: []string{"a.example"}, Store: st, Cache: k,
		Directory: "https://ca.invalid/dir", Logger: zerolog.Nop(),
		Observe: func(host string, err error) { observed = append(observed, fmt.Sprint(host, err)) }})
	due, _ := m.due()
	if !slices.Equal(due, []string{"a.example"}) {
		t.Fatalf("due = %q before the watch shows the other node's certificate", due)
	}
	if m.orderUnderLock(context.Background(), due) {
		t.Error("orderUnderLock reports it acted")
	}
	if len(observed) != 0 {
		t.Errorf("ordered again (or failed): %q", observed)
	}
	if got := st.kv[store.CertHostKey("p", "a.example")]; got != theirs.Encode() {
		t.Error("the other node's certificate was replaced")
	}
}

// blockingStore's lock waits for its context, as etcd's does while another
// node holds it.
type blockingStore struct{ fakeStore }

func (f *blockingStore) Lock(ctx context.Context, _ string, _ time.Duration) (int64, func(), error) {
	<-ctx.Done()
	return 0, nil, ctx.Err()
}

// TestManagerStops: Start returns once its context ends, also while it
// waits for the lock.
func TestManagerStops(t *testing.T) {
	k := NewCache(nil, "p", zerolog.Nop())
	k.apply(store.Update{Reset: true, Revision: 1})
	m := NewManager(ManagerConfig{Project: "p", Hosts: []string{"a.example"}, Store: &blockingStore{fakeStore{kv: map[string]string{}}},
		Cache: k, Logger: zerolog.Nop(), Responder: fakeResponder{}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Start(ctx) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Start returned %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Start did not return after its context ended")
	}
}
