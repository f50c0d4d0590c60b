package certs

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/store"
)

// TestACMERetriesStayUnderTheCAsLimit: a host whose orders keep failing is
// tried at most 5 times in any hour (Let's Encrypt's limit of failed
// validations per host and hour) by the whole project, here two nodes
// that may both order (placement = "every"), for a day. The CA is a
// directory nothing answers at.
func TestACMERetriesStayUnderTheCAsLimit(t *testing.T) {
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	now := start
	clock := func() time.Time { return now }
	etcd := newFakeEtcd()
	var tries []time.Time
	var managers []*Manager
	for _, node := range []string{"a", "b"} {
		k := NewCache(nil, "p", zerolog.Nop())
		k.now = clock
		etcd.feed(k)
		m := NewManager(ManagerConfig{Project: "p", Node: node, Hosts: []string{"a.example"},
			Directory: "http://127.0.0.1:1/directory", Store: etcd, Cache: k, Logger: zerolog.Nop(),
			Observe: func(_ string, err error) {
				if err != nil {
					tries = append(tries, now)
				}
			}})
		m.now = clock
		managers = append(managers, m)
	}
	for ; now.Before(start.Add(24 * time.Hour)); now = now.Add(time.Minute) {
		for _, m := range managers {
			if due, _ := m.due(); len(due) > 0 {
				m.orderUnderLock(context.Background(), due)
			}
		}
	}
	if len(tries) < 5 {
		t.Fatalf("%d tries in a day: %v; want it tried again and again", len(tries), tries)
	}
	for i, at := range tries {
		n := 0
		for _, other := range tries[i:] {
			if other.Sub(at) < time.Hour {
				n++
			}
		}
		if n > 5 {
			t.Fatalf("%d tries within the hour from %s (%d tries in all, the first at %s); want at most 5",
				n, at.Sub(start), len(tries), tries[0].Sub(start))
		}
	}
	t.Logf("%d tries in a day, the first at %s, the last at %s", len(tries), tries[0].Sub(start), tries[len(tries)-1].Sub(start))
}

// TestFailuresAreTheProjects: a failed order is kept in etcd, so every
// node backs off by it and shows the same next try; the next failure,
// from whichever node, doubles the wait; an order that goes through
// clears it.
func TestFailuresAreTheProjects(t *testing.T) {
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	now := start
	clock := func() time.Time { return now }
	etcd := newFakeEtcd()
	var answer error // what the CA says to the next order
	good := record(t, SourceACME, []string{"a.example"}, start.Add(-time.Hour), start.Add(90*24*time.Hour))
	nodes := map[string]*Manager{}
	for _, node := range []string{"a", "b"} {
		k := NewCache(nil, "p", zerolog.Nop())
		k.now = clock
		etcd.feed(k)
		m := NewManager(ManagerConfig{Project: "p", Node: node, Hosts: []string{"a.example"}, Store: etcd, Cache: k, Logger: zerolog.Nop()})
		m.now = clock
		m.connect = func(context.Context, int64) (obtainFunc, error) {
			return func(context.Context, string) ([]byte, []byte, error) {
				if answer != nil {
					return nil, nil, answer
				}
				return []byte(good.Cert), []byte(good.Key), nil
			}, nil
		}
		nodes[node] = m
	}
	order := func(node string) {
		t.Helper()
		due, _ := nodes[node].due()
		if len(due) == 0 {
			t.Fatalf("%s at %s: nothing due", node, now.Sub(start))
		}
		nodes[node].orderUnderLock(context.Background(), due)
	}
	want := func(count int, next time.Duration, node, err string) {
		t.Helper()
		for name, m := range nodes {
			got, ok := m.Failing()["a.example"]
			if !ok || got.Count != count || !got.Next.Equal(start.Add(next)) || got.Node != node || got.Err != err {
				t.Errorf("%s shows %+v (%v), want %d failures, next try at %s, by %s: %s", name, got, ok, count, next, node, err)
			}
			if due, _ := m.due(); len(due) != 0 {
				t.Errorf("%s: due = %q before the next try", name, due)
			}
		}
	}

	answer = errors.New("the CA said no")
	order("a")
	want(1, 15*time.Minute, "a", "order: the CA said no")
	if _, ok, _ := etcd.Get(context.Background(), store.ACMEFailureKey("p", "a.example")); !ok {
		t.Errorf("no failure in etcd under %s", store.ACMEFailureKey("p", "a.example"))
	}

	now = start.Add(15 * time.Minute)
	answer = errors.New("still no")
	order("b") // the other node: the count goes on
	want(2, 45*time.Minute, "b", "order: still no")

	now = start.Add(45 * time.Minute)
	answer = nil
	order("a")
	for name, m := range nodes {
		if got := m.Failing(); len(got) != 0 {
			t.Errorf("%s still shows %+v after the order went through", name, got)
		}
	}
	if kv, ok, _ := etcd.Get(context.Background(), store.ACMEFailureKey("p", "a.example")); ok {
		t.Errorf("the failure stays in etcd: %s", kv.Value)
	}
}

// TestFailuresReadBack: a failure record in etcd is untrusted input: one
// that is not a failure is left out, its reason is made printable, and
// no next try is further away than RetryMax.
func TestFailuresReadBack(t *testing.T) {
	now := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	etcd := newFakeEtcd()
	k := NewCache(nil, "p", zerolog.Nop())
	etcd.feed(k)
	m := NewManager(ManagerConfig{Project: "p", Node: "a", Hosts: []string{"far.example", "bad.example", "zero.example", "badnode.example"},
		Store: etcd, Cache: k, Logger: zerolog.Nop()})
	m.now = func() time.Time { return now }
	ctx := context.Background()
	put := func(host, value string) {
		if _, err := etcd.Put(ctx, store.ACMEFailureKey("p", host), value, 0); err != nil {
			t.Fatal(err)
		}
	}
	put("far.example", Failure{Count: 3, Next: now.Add(100 * 365 * 24 * time.Hour), Err: "no\x1b[31m\nway", At: now}.Encode())
	put("bad.example", `{"count":"many"}`)
	put("zero.example", Failure{Count: 0, Next: now.Add(time.Hour), At: now}.Encode())
	put("badnode.example", Failure{Count: 1, Next: now.Add(time.Minute), Node: "Not A Node", At: now}.Encode())
	put("x/../far.example", Failure{Count: 1, Next: now.Add(time.Hour), At: now}.Encode())
	got := m.Failing()
	if len(got) != 1 {
		t.Errorf("Failing() = %+v, want far.example only", got)
	}
	f := got["far.example"]
	if want := now.Add(m.cfg.RetryMax); !f.Next.Equal(want) {
		t.Errorf("far.example: next try %s, want %s (RetryMax away)", f.Next, want)
	}
	if f.Err != "no [31m way" {
		t.Errorf("far.example: reason %q, want it without control characters", f.Err)
	}
	due, next := m.due()
	if !slices.Equal(due, []string{"bad.example", "zero.example", "badnode.example"}) || !next.Equal(now.Add(idleCheck)) {
		t.Errorf("due = %q, next in %s; want the three whose records are left out now, far.example not within the hour", due, next.Sub(now))
	}
}

// TestManagerStoresOverWhatItRead: the certificate an order brings is
// written only over what the orderer read before ordering: one an
// operator imported under the host's name meanwhile is kept; a `certs
// renew` meanwhile (an ACME record) is replaced by the new certificate.
func TestManagerStoresOverWhatItRead(t *testing.T) {
	now := time.Now()
	issued := record(t, SourceACME, []string{"a.example"}, now.Add(-time.Minute), now.Add(90*24*time.Hour))
	imported := record(t, SourceImport, []string{"a.example"}, now.Add(-time.Hour), now.Add(30*24*time.Hour))
	renewed := record(t, SourceACME, []string{"a.example"}, now.Add(-time.Hour), now.Add(30*24*time.Hour))
	renewed.RenewAt = now
	for _, tt := range []struct {
		name      string
		meanwhile Record
		want      Record // in etcd afterwards
		wantName  string
	}{
		{"imported meanwhile", imported, imported, "the imported one"},
		{"renew asked meanwhile", renewed, issued, "the new one"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			etcd := newFakeEtcd()
			k := NewCache(nil, "p", zerolog.Nop())
			etcd.feed(k)
			m := NewManager(ManagerConfig{Project: "p", Node: "a", Hosts: []string{"a.example"}, Store: etcd, Cache: k, Logger: zerolog.Nop()})
			m.connect = func(context.Context, int64) (obtainFunc, error) {
				return func(ctx context.Context, _ string) ([]byte, []byte, error) {
					_, err := etcd.Put(ctx, store.CertHostKey("p", "a.example"), tt.meanwhile.Encode(), 0)
					return []byte(issued.Cert), []byte(issued.Key), err
				}, nil
			}
			m.orderUnderLock(context.Background(), []string{"a.example"})
			kv, _, _ := etcd.Get(context.Background(), store.CertHostKey("p", "a.example"))
			got, err := Decode(kv.Value)
			if err != nil || got.Cert != tt.want.Cert {
				t.Errorf("etcd holds a certificate of source %q (%v), want %s", got.Source, err, tt.wantName)
			}
			if f := m.Failing(); len(f) != 0 {
				t.Errorf("Failing() = %+v after an order that went through", f)
			}
		})
	}
}
