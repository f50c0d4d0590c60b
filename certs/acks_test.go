package certs

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/store"
)

const (
	testToken = "tok_0123456789abcdef"
	testAuth  = testToken + ".thumbprint_0123456789"
)

// TestPresentWaitsForEveryProxy: with placement = "every", the orderer
// tells the CA to validate only once every live node's proxy serves the
// answer (each node acknowledges it in etcd); a node that leaves is no
// longer waited for; one that never acknowledges is named in the error.
// Time is synctest's.
func TestPresentWaitsForEveryProxy(t *testing.T) {
	for _, tt := range []struct {
		name string
		acks []string // the nodes that acknowledge, in order
		left string   // a node that leaves after the acknowledgements
		err  string   // "": Present returns nil
	}{
		{name: "every node acknowledges", acks: []string{"b", "c"}},
		{name: "one never does", acks: []string{"b"}, err: "the proxies of c do not serve the answer of ACME token " + testToken + " for a.example"},
		{name: "the one that does not leaves", acks: []string{"c"}, left: "b"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				etcd := newFakeEtcd()
				k := NewCache(nil, "p", zerolog.Nop())
				etcd.feed(k)
				var mu sync.Mutex
				live := []string{"a", "b", "c"}
				m := NewManager(ManagerConfig{Project: "p", Node: "a", Hosts: []string{"a.example"}, Store: etcd, Cache: k,
					Responder: fakeResponder{},
					ProxyNodes: func(context.Context) ([]string, error) {
						mu.Lock()
						defer mu.Unlock()
						return live, nil
					},
					Logger: zerolog.Nop()})
				done := make(chan error, 1)
				go func() { done <- (&provider{m: m, lease: 7}).Present(t.Context(), "a.example", testToken, testAuth) }()
				synctest.Wait()
				for _, node := range tt.acks {
					select {
					case err := <-done:
						t.Fatalf("Present returned (%v) before %s acknowledged", err, node)
					default:
					}
					if _, err := etcd.Put(t.Context(), store.ACMEAckKey("p", testToken, node), node, 7); err != nil {
						t.Fatal(err)
					}
					synctest.Wait()
				}
				if tt.left != "" {
					mu.Lock()
					live = slices.DeleteFunc(slices.Clone(live), func(n string) bool { return n == tt.left })
					mu.Unlock()
					time.Sleep(time.Second) // the next look at the nodes
					synctest.Wait()
				}
				if tt.err != "" {
					time.Sleep(answerWait)
					synctest.Wait()
				}
				select {
				case err := <-done:
					if tt.err == "" && err != nil {
						t.Errorf("Present: %v", err)
					}
					if tt.err != "" && (!errors.Is(err, ErrNotConfirmed) || !strings.Contains(err.Error(), tt.err)) {
						t.Errorf("Present: %v, want ErrNotConfirmed with %q", err, tt.err)
					}
				default:
					t.Error("Present has not returned")
				}
				if got, _, _ := etcd.Get(t.Context(), store.ACMEChallengeKey("p", testToken)); got.Lease != 7 {
					t.Errorf("the challenge is under lease %d, want the lock's (7)", got.Lease)
				}
			})
		})
	}
}

// TestAckerAcknowledgesWhatTheProxyServes: each answer this node's proxy
// serves is acknowledged once, under the challenge's lease; one without a
// lease (no orderer's) or not served is not.
func TestAckerAcknowledgesWhatTheProxyServes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		etcd := newFakeEtcd()
		k := NewCache(nil, "p", zerolog.Nop())
		etcd.feed(k)
		const (
			never    = "tok_nevernevernever"
			unleased = "tok_unleasedunleased"
		)
		served := make(chan struct{})
		var mu sync.Mutex
		asked := map[string]int{}
		a := NewAcker(AckerConfig{Project: "p", Node: "b", Cache: k, Store: etcd, Logger: zerolog.Nop(),
			Responder: fakeResponder{serves: func(ctx context.Context, token string) error {
				mu.Lock()
				asked[token]++
				mu.Unlock()
				if token == never {
					<-ctx.Done()
					return ctx.Err()
				}
				select {
				case <-served:
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			}}})
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- a.Start(ctx) }()
		for token, lease := range map[string]int64{testToken: 9, never: 9, unleased: 0} {
			if _, err := etcd.Put(ctx, store.ACMEChallengeKey("p", token), token+".thumbprint_0123456789", lease); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()
		if _, ok, _ := etcd.Get(ctx, store.ACMEAckKey("p", testToken, "b")); ok {
			t.Error("acknowledged before the proxy serves the answer")
		}
		close(served)
		synctest.Wait()
		if kv, ok, _ := etcd.Get(ctx, store.ACMEAckKey("p", testToken, "b")); !ok || kv.Lease != 9 {
			t.Errorf("acknowledgement %v under lease %d, want one under the challenge's (9)", ok, kv.Lease)
		}
		time.Sleep(answerWait)
		synctest.Wait()
		for _, token := range []string{never, unleased} {
			if _, ok, _ := etcd.Get(ctx, store.ACMEAckKey("p", token, "b")); ok {
				t.Errorf("%s acknowledged", token)
			}
		}
		// More changes: nothing is checked twice.
		if _, err := etcd.Put(ctx, store.CertHostKey("p", "x"), "{}", 0); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		mu.Lock()
		if want := map[string]int{testToken: 1, never: 1}; !maps.Equal(asked, want) {
			t.Errorf("asked the proxy %v, want %v", asked, want)
		}
		mu.Unlock()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Start returned %v", err)
		}
	})
}

// TestCacheReadsAcks: acknowledgements from etcd are untrusted input: a
// key that is not <token>/<node> is left out; a deleted one goes.
func TestCacheReadsAcks(t *testing.T) {
	etcd := newFakeEtcd()
	k := NewCache(nil, "p", zerolog.Nop())
	etcd.feed(k)
	ctx := context.Background()
	for _, key := range []string{
		store.ACMEAckKey("p", testToken, "b"), store.ACMEAckKey("p", testToken, "c"),
		store.ACMEAckKey("p", testToken, "Not A Node"), store.ACMEAckKey("p", "../../x", "b"), store.ACMEAcksPrefix("p") + testToken,
	} {
		if _, err := etcd.Put(ctx, key, "", 7); err != nil {
			t.Fatal(err)
		}
	}
	if got := k.Acked(testToken); !slices.Equal(got, []string{"b", "c"}) {
		t.Errorf("Acked = %q, want b and c", got)
	}
	if _, err := etcd.Delete(ctx, store.ACMEAckKey("p", testToken, "c")); err != nil {
		t.Fatal(err)
	}
	if got := k.Acked(testToken); !slices.Equal(got, []string{"b"}) {
		t.Errorf("after a deletion: Acked = %q, want b", got)
	}
}
