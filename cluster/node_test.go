package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/store"
	"github.com/upstreamd/upstreamd/store/storetest"
)

// newTestNode returns node n1 of project up on engine-1, with a 5 s TTL.
func newTestNode(reg *storetest.Etcd) *Node {
	return newNode(nodeConfig{
		Store:       reg,
		Project:     "up",
		Engine:      func(context.Context) (string, error) { return "engine-1", nil },
		Self:        Announcement{Node: "n1", Host: "host-a", PID: 42, Version: "v1"},
		TTL:         5 * time.Second,
		Unreachable: store.IsUnreachable,
		Logger:      zerolog.Nop(),
	})
}

const (
	nodeKey   = "/upstreamd/up/nodes/n1"
	engineKey = "/upstreamd/up/engines/engine-1"
)

// startNode runs n.Start until the returned stop, which returns Start's
// error. Call it inside synctest.Test.
func startNode(t *testing.T, n *Node) (stop func() error, done <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	ch := make(chan error, 1)
	go func() { ch <- n.Start(ctx) }()
	return func() error { cancel(); return <-ch }, ch
}

func TestNodeClaims(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := storetest.New(nil)
		n := newTestNode(reg)
		stop, _ := startNode(t, n)
		synctest.Wait()
		select {
		case <-n.Claimed():
		default:
			t.Fatal("Claimed not closed")
		}
		l := n.Lease()
		if l == nil {
			t.Fatal("no lease after the claim")
		}
		kv := reg.Keys()
		var a Announcement
		if err := json.Unmarshal([]byte(kv[nodeKey].Value), &a); err != nil || kv[nodeKey].Lease != l.ID {
			t.Fatalf("%s = %+v (%v); want the announcement under lease %d", nodeKey, kv[nodeKey], err, l.ID)
		}
		if a.Node != "n1" || a.Engine != "engine-1" || a.Host != "host-a" || a.PID != 42 || a.Version != "v1" {
			t.Errorf("announcement %+v; want node n1 on engine-1 from host-a, pid 42, v1", a)
		}
		if got := kv[engineKey]; got != kv[nodeKey] {
			t.Errorf("%s = %+v; want the announcement under lease %d", engineKey, got, l.ID)
		}
		// Stopping revokes the lease with a context that outlives the
		// cancel: every key of the node goes at once.
		if err := stop(); err != nil {
			t.Errorf("Start = %v; want nil", err)
		}
		reg.Lock()
		revoked, revokeErr := slices.Clone(reg.Revoked), slices.Clone(reg.RevokeErrs)
		reg.Unlock()
		if !slices.Equal(revoked, []int64{l.ID}) || revokeErr[0] != nil {
			t.Errorf("revoked %v (ctx errors %v); want [%d] with a live context", revoked, revokeErr, l.ID)
		}
		if got := reg.Keys(); len(got) != 0 {
			t.Errorf("keys left after stopping: %v", got)
		}
	})
}

func TestNodeTaken(t *testing.T) {
	tests := []struct {
		name    string
		key     string
		gone    time.Duration // the holder's keys go after this long; 0: never (alive)
		wantErr string
	}{
		{name: "node name held by a live daemon", key: nodeKey, wantErr: `node name "n1"`},
		{name: "engine held by a live daemon of the project", key: engineKey, wantErr: "this Docker engine (engine-1)"},
		{name: "node name of a daemon that crashed", key: nodeKey, gone: 4100 * time.Millisecond},
		{name: "engine of a daemon that crashed", key: engineKey, gone: 4100 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				reg := storetest.New(nil)
				holder := `{"node":"n1","host":"host-b","pid":7}`
				reg.HoldWith(tt.key, holder, 99, 5*time.Second)
				if tt.gone > 0 {
					time.AfterFunc(tt.gone, func() { reg.Remove(tt.key) })
				}
				n := newTestNode(reg)
				stop, done := startNode(t, n)
				advance(3 * time.Second)
				select {
				case <-n.Claimed():
					t.Fatal("claimed while another daemon may still hold the name")
				default:
				}
				if tt.wantErr == "" {
					advance(tt.gone - 3*time.Second) // the holder's keys go
					select {
					case <-n.Claimed():
					default:
						t.Fatal("not claimed as the crashed daemon's keys expired (a watch of the key says so)")
					}
					if err := stop(); err != nil {
						t.Errorf("Start = %v; want nil", err)
					}
					return
				}
				advance(10 * time.Second) // past the holder's TTL
				var err error
				select {
				case err = <-done:
				default:
					t.Fatal("Start still running; want ErrTaken after the holder's TTL")
				}
				if !errors.Is(err, ErrTaken) {
					t.Fatalf("Start = %v; want ErrTaken", err)
				}
				for _, want := range []string{tt.wantErr, "host-b", "another node name"} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q; want it to say %q", err, want)
					}
				}
				for k, v := range reg.Keys() {
					if v.Lease != 99 {
						t.Errorf("key %s left under this daemon's lease %d", k, v.Lease)
					}
				}
			})
		})
	}
}

// TestNodeLeaseLost: a lease whose keep-alive lapsed is claimed again.
// When etcd dropped it (an outage of this node longer than the TTL), under
// a new lease. When etcd kept it (every member was away: its new leader
// gives every lease its TTL again), the node takes it up again once etcd
// answers, and every key under it stands, rather than granting a new
// lease and waiting for its own old keys to expire.
func TestNodeLeaseLost(t *testing.T) {
	for _, tc := range []struct {
		name string
		kept bool
	}{
		{"etcd dropped it and its keys: a new lease", false},
		{"etcd kept it: taken up again, its keys standing", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				reg := storetest.New(nil)
				n := newTestNode(reg)
				changed := n.Subscribe()
				stop, _ := startNode(t, n)
				defer func() { _ = stop() }()
				synctest.Wait()
				<-changed
				first := n.Lease()
				before := reg.Keys()
				if tc.kept {
					reg.Keep(first.ID)
					reg.ResumeErrs = 2 // etcd still away for two tries
				} else {
					reg.Remove(nodeKey)
					reg.Remove(engineKey)
				}
				reg.Expire(first.ID)
				synctest.Wait()
				advance(5 * time.Second)
				second := n.Lease()
				select {
				case <-changed:
				default:
					t.Error("no notification of the lease")
				}
				kv := reg.Keys()
				switch {
				case second == nil:
					t.Fatalf("no lease after losing %d", first.ID)
				case tc.kept && (second.ID != first.ID || reg.Counts().Grants != 1):
					t.Errorf("lease %d after %d grants; want %d taken up again", second.ID, reg.Counts().Grants, first.ID)
				case tc.kept && !maps.Equal(kv, before):
					t.Errorf("keys %v; want them as they were, %v", kv, before)
				case !tc.kept && second.ID == first.ID:
					t.Errorf("lease %d after losing it; want a new one", second.ID)
				case !tc.kept && (kv[nodeKey].Lease != second.ID || kv[engineKey].Lease != second.ID):
					t.Errorf("keys %v; want both under the new lease %d", kv, second.ID)
				}
			})
		})
	}
}

func TestNodeWaitsForEtcd(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := storetest.New(nil)
		reg.GrantErrs = 3
		n := newTestNode(reg)
		stop, _ := startNode(t, n)
		defer func() { _ = stop() }()
		synctest.Wait()
		select {
		case <-n.Claimed():
			t.Fatal("claimed while etcd is unreachable")
		default:
		}
		advance(5 * time.Second)
		select {
		case <-n.Claimed():
		default:
			t.Fatal("not claimed once etcd answers")
		}
	})
}

// TestNodeStaleLost: a write under the lease failed because etcd no longer
// knew it (Lost) in the moment between its keep-alive ending (Done) and
// the node letting it go. That wake-up belongs to the old lease: the node
// claims again once, not twice. Before, it dropped the new lease too, and
// the daemon's keys lapsed a second time. (The moment is too short to hit
// from outside: the test leaves the wake-up pending by hand.)
func TestNodeStaleLost(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := storetest.New(nil)
		n := newTestNode(reg)
		n.lost.Wake() // left over from a lease before this one
		stop, _ := startNode(t, n)
		defer func() { _ = stop() }()
		synctest.Wait()
		time.Sleep(time.Minute) // what is pending has acted by now
		synctest.Wait()
		if got := reg.Counts().Grants; got != 1 {
			t.Fatalf("%d leases granted; want 1: a wake-up of an earlier lease dropped this one", got)
		}
		if n.Lease() == nil {
			t.Fatal("no lease")
		}
	})
}
