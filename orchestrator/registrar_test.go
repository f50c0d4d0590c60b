package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/internal/events"
	"github.com/upstreamd/upstreamd/store"
	"github.com/upstreamd/upstreamd/store/storetest"
)

const (
	testNode    = "n1"
	testProject = "p1"
)

func regTarget(id, name, service, ip string, port int) Target {
	return Target{
		ID: id + strings.Repeat("0", 64-len(id)), Name: name, Service: service,
		Addr: fmt.Sprintf("%s:%d", ip, port), IP: ip, Port: port,
	}
}

var (
	tA = regTarget("aaaaaaaaaaaa", "up-apache-aaaaaa", "apache", "172.18.0.2", 80)
	tB = regTarget("bbbbbbbbbbbb", "up-web-bbbbbb", "web", "172.18.0.3", 8080)
	tC = regTarget("cccccccccccc", "up-apache-cccccc", "apache", "172.18.0.4", 80)

	keyA = "/services/apache/172.18.0.2:80"
	keyB = "/services/web/172.18.0.3:8080"
	keyC = "/services/apache/172.18.0.4:80"
	// The value format is part of the contract (the seed's secretary
	// fields plus container, node and project), so it is spelled out once.
	valA = `{"host":"up-apache-aaaaaa","ipv4_addr":"172.18.0.2","port":80,"container":"aaaaaaaaaaaa","node":"n1","project":"p1"}`
	valB = `{"host":"up-web-bbbbbb","ipv4_addr":"172.18.0.3","port":8080,"container":"bbbbbbbbbbbb","node":"n1","project":"p1"}`
	valC = `{"host":"up-apache-cccccc","ipv4_addr":"172.18.0.4","port":80,"container":"cccccccccccc","node":"n1","project":"p1"}`
)

func otherNodeVal(node string) string {
	return store.Registration{Host: "elsewhere", IPv4: "172.18.0.9", Port: 80, Container: "999999999999", Node: node, Project: testProject}.Encode()
}

// otherProjectVal is a key of this node's name in another project, or in
// none (an older upstreamd's, or another tool's).
func otherProjectVal(project string) string {
	return store.Registration{Host: "elsewhere", IPv4: "172.18.0.9", Port: 80, Container: "999999999999", Node: testNode, Project: project}.Encode()
}

// newTestRegistrar returns a registrar writing to reg under lease 1 of a
// fakeLeases, which testLeases returns.
func newTestRegistrar(reg *storetest.Etcd, hv *fakeHealthView, resync time.Duration) *registrar {
	return newRegistrar(registrarConfig{
		Store:         reg,
		Leases:        storetest.NewLeases(),
		Registrations: reg,
		Health:        hv,
		Prefix:        "/services",
		Node:          testNode,
		Project:       testProject,
		Services:      []string{"apache", "web"},
		Resync:        resync,
		Logger:        zerolog.Nop(),
	})
}

func diffKV(got, want map[string]storetest.Value) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if g, ok := got[k]; !ok {
			fmt.Fprintf(&b, "\n  missing %s (want %q lease %d)", k, want[k].Value, want[k].Lease)
		} else if g != want[k] {
			fmt.Fprintf(&b, "\n  %s: got %q lease %d, want %q lease %d", k, g.Value, g.Lease, want[k].Value, want[k].Lease)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[k]; !ok {
			fmt.Fprintf(&b, "\n  unexpected %s = %q lease %d", k, got[k].Value, got[k].Lease)
		}
	}
	return b.String()
}

// TestRegistrarSync runs one sync over a table of etcd contents and health
// snapshots. The sync grants lease 1; keys left by an earlier daemon run
// carry lease 7.
func TestRegistrarSync(t *testing.T) {
	const old = 7
	otherSvcKey := "/services/other/172.18.0.8:80"
	invalidKey := "/services/apache/not an address"
	tests := []struct {
		name             string
		initial          map[string]storetest.Value
		healthy, pending []Target
		want             map[string]storetest.Value
		wantPuts         int
		wantDeletes      []string
	}{
		{
			name:     "healthy backends are put under the lease as registration JSON",
			healthy:  []Target{tA, tB},
			want:     map[string]storetest.Value{keyA: {Value: valA, Lease: 1}, keyB: {Value: valB, Lease: 1}},
			wantPuts: 2,
		},
		{
			name:        "a key of this node whose backend is not healthy is deleted",
			initial:     map[string]storetest.Value{keyA: {Value: valA, Lease: old}, keyC: {Value: valC, Lease: old}},
			healthy:     []Target{tA},
			want:        map[string]storetest.Value{keyA: {Value: valA, Lease: 1}},
			wantPuts:    1,
			wantDeletes: []string{keyC},
		},
		{
			name:    "a pending backend's key is left alone",
			initial: map[string]storetest.Value{keyC: {Value: valC, Lease: old}},
			pending: []Target{tC},
			want:    map[string]storetest.Value{keyC: {Value: valC, Lease: old}},
		},
		{
			name:    "a pending backend without a key is not put",
			pending: []Target{tC},
			want:    map[string]storetest.Value{},
		},
		{
			name:    "keys of other nodes are never deleted",
			initial: map[string]storetest.Value{keyC: {Value: otherNodeVal("n2"), Lease: 9}},
			want:    map[string]storetest.Value{keyC: {Value: otherNodeVal("n2"), Lease: 9}},
		},
		{
			name:    "keys of this node's name in another project are never deleted",
			initial: map[string]storetest.Value{keyC: {Value: otherProjectVal("p2"), Lease: 9}},
			want:    map[string]storetest.Value{keyC: {Value: otherProjectVal("p2"), Lease: 9}},
		},
		{
			name:        "a key of this node without a project (an older upstreamd's) is this node's",
			initial:     map[string]storetest.Value{keyA: {Value: otherProjectVal(""), Lease: old}, keyC: {Value: otherProjectVal(""), Lease: old}},
			healthy:     []Target{tA},
			want:        map[string]storetest.Value{keyA: {Value: valA, Lease: 1}},
			wantPuts:    1,
			wantDeletes: []string{keyC},
		},
		{
			name:    "keys of services not in Services are never touched",
			initial: map[string]storetest.Value{otherSvcKey: {Value: otherNodeVal(testNode), Lease: old}},
			want:    map[string]storetest.Value{otherSvcKey: {Value: otherNodeVal(testNode), Lease: old}},
		},
		{
			name:    "an invalid key is left alone",
			initial: map[string]storetest.Value{invalidKey: {Value: "garbage", Lease: old}},
			want:    map[string]storetest.Value{invalidKey: {Value: "garbage", Lease: old}},
		},
		{
			name:     "a right value under an earlier lease is put again under this one",
			initial:  map[string]storetest.Value{keyA: {Value: valA, Lease: old}},
			healthy:  []Target{tA},
			want:     map[string]storetest.Value{keyA: {Value: valA, Lease: 1}},
			wantPuts: 1,
		},
		{
			name:     "a wrong value is rewritten",
			initial:  map[string]storetest.Value{keyA: {Value: strings.Replace(valA, "up-apache-aaaaaa", "stale", 1), Lease: 1}},
			healthy:  []Target{tA},
			want:     map[string]storetest.Value{keyA: {Value: valA, Lease: 1}},
			wantPuts: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := storetest.New(tt.initial)
			hv := &fakeHealthView{}
			hv.set(tt.healthy, tt.pending)
			r := newTestRegistrar(reg, hv, 0)
			if err := r.sync(t.Context()); err != nil {
				t.Fatalf("sync: %v", err)
			}
			if d := diffKV(reg.Keys(), tt.want); d != "" {
				t.Errorf("etcd after sync differs:%s", d)
			}
			reg.Lock()
			puts, deletes := len(reg.Puts), slices.Clone(reg.Deletes)
			reg.Unlock()
			if puts != tt.wantPuts {
				t.Errorf("%d puts, want %d", puts, tt.wantPuts)
			}
			if !slices.Equal(deletes, tt.wantDeletes) {
				t.Errorf("deleted %v, want %v", deletes, tt.wantDeletes)
			}
		})
	}
}

func TestRegistrarSyncIsIdempotent(t *testing.T) {
	reg := storetest.New(nil)
	hv := &fakeHealthView{}
	hv.set([]Target{tA, tB}, nil)
	r := newTestRegistrar(reg, hv, 0)
	for i := range 3 {
		if err := r.sync(t.Context()); err != nil {
			t.Fatalf("sync %d: %v", i, err)
		}
	}
	got := reg.Counts()
	if got.Puts != 2 || got.Deletes != 0 {
		t.Errorf("after 3 syncs: %d puts, %d deletes; want 2 and 0 (keys already right are not rewritten)", got.Puts, got.Deletes)
	}
}

// testLeases returns the fakeLeases of a registrar made by
// newTestRegistrar.
func testLeases(r *registrar) *storetest.Leases { return r.cfg.Leases.(*storetest.Leases) }

func TestRegistrarPutLeaseLost(t *testing.T) {
	reg := storetest.New(nil)
	reg.PutErrs = []error{fmt.Errorf("etcd put %s: %w", keyA, store.ErrLeaseLost)}
	hv := &fakeHealthView{}
	hv.set([]Target{tA}, nil)
	r := newTestRegistrar(reg, hv, 0)

	err := r.sync(t.Context())
	if !errors.Is(err, store.ErrLeaseLost) {
		t.Fatalf("first sync: got %v, want an error matching store.ErrLeaseLost", err)
	}
	// The node is told, and claims again under a new lease.
	if got := testLeases(r).LostIDs(); !slices.Equal(got, []int64{1}) {
		t.Errorf("leases reported lost: %v; want [1]", got)
	}
	testLeases(r).Set(2)
	if err := r.sync(t.Context()); err != nil {
		t.Fatalf("second sync: %v", err)
	}
	if d := diffKV(reg.Keys(), map[string]storetest.Value{keyA: {Value: valA, Lease: 2}}); d != "" {
		t.Errorf("etcd after the second sync differs:%s", d)
	}
}

func TestRegistrarNoLeaseYet(t *testing.T) {
	reg := storetest.New(nil)
	hv := &fakeHealthView{}
	hv.set([]Target{tA}, nil)
	r := newTestRegistrar(reg, hv, 0)
	testLeases(r).Expire()
	if err := r.sync(t.Context()); !errors.Is(err, errNoLease) {
		t.Errorf("sync without a lease = %v; want errNoLease", err)
	}
	if got := reg.Counts(); got.Puts != 0 {
		t.Errorf("%d puts without a lease; want 0", got.Puts)
	}
}

func startRegistrar(t *testing.T, r *registrar) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- r.Start(ctx) }()
	synctest.Wait()
	return func() error {
		cancel()
		return <-done
	}
}

// checkStop stops a Registrar started by startRegistrar and checks that
// Start returned nil.
func checkStop(t *testing.T, stop func() error) {
	t.Helper()
	if err := stop(); err != nil {
		t.Errorf("Start returned %v, want nil", err)
	}
}

func TestRegistrarStart(t *testing.T) {
	t.Run("wakes collapse into one sync", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			reg := storetest.New(nil)
			hv := &fakeHealthView{}
			hv.set([]Target{tA}, nil)
			r := newTestRegistrar(reg, hv, 0)
			r.Wake()
			r.Wake()
			r.Wake()
			stop := startRegistrar(t, r)
			defer func() { checkStop(t, stop) }()
			// One sync writes the key; the watch's echo of that write
			// wakes one more, which finds everything right.
			if got := reg.Counts(); got.Reads != 2 || got.Puts != 1 {
				t.Errorf("after 3 wakes: %d reads, %d puts; want 2 and 1 (one sync)", got.Reads, got.Puts)
			}
			r.Wake()
			synctest.Wait()
			if got := reg.Counts(); got.Reads != 3 || got.Puts != 1 {
				t.Errorf("after another wake: %d reads, %d puts; want 3 and 1", got.Reads, got.Puts)
			}
		})
	})

	t.Run("a new lease puts every key again under it", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			reg := storetest.New(nil)
			hv := &fakeHealthView{}
			hv.set([]Target{tA, tB, tC}, nil)
			r := newTestRegistrar(reg, hv, 0)
			r.Wake()
			stop := startRegistrar(t, r)
			defer func() { checkStop(t, stop) }()
			if d := diffKV(reg.Keys(), map[string]storetest.Value{keyA: {Value: valA, Lease: 1}, keyB: {Value: valB, Lease: 1}, keyC: {Value: valC, Lease: 1}}); d != "" {
				t.Fatalf("setup: etcd differs:%s", d)
			}
			testLeases(r).Set(2)
			synctest.Wait()
			if d := diffKV(reg.Keys(), map[string]storetest.Value{keyA: {Value: valA, Lease: 2}, keyB: {Value: valB, Lease: 2}, keyC: {Value: valC, Lease: 2}}); d != "" {
				t.Errorf("etcd after a new lease differs:%s", d)
			}
		})
	})

	t.Run("a failing sync is retried with backoff", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			reg := storetest.New(nil)
			reg.ReadFails = 2 // the registrations are not read yet
			hv := &fakeHealthView{}
			hv.set([]Target{tA}, nil)
			r := newTestRegistrar(reg, hv, 0)
			r.Wake()
			stop := startRegistrar(t, r)
			defer func() { checkStop(t, stop) }()
			if got := reg.Counts().Reads; got != 1 {
				t.Fatalf("%d reads at once, want 1 (no busy retry)", got)
			}
			advance(49 * time.Millisecond) // below the first backoff's jitter range
			if got := reg.Counts().Reads; got != 1 {
				t.Errorf("%d reads after 49ms, want 1", got)
			}
			advance(2 * time.Second)
			if d := diffKV(reg.Keys(), map[string]storetest.Value{keyA: {Value: valA, Lease: 1}}); d != "" {
				t.Errorf("etcd after recovery differs:%s", d)
			}
			reg.Lock()
			calls := slices.Clone(reg.Reads)
			reg.Unlock()
			// Reads: nothing loaded twice, the sync that works, and the
			// one its write's echo wakes.
			if len(calls) != 4 {
				t.Fatalf("%d reads, want 4", len(calls))
			}
			// 100 ms then 150 ms, each ±50 % jitter.
			for i, want := range []time.Duration{100 * time.Millisecond, 150 * time.Millisecond} {
				gap := calls[i+1].Sub(calls[i])
				if gap < want/2 || gap > want*3/2 {
					t.Errorf("retry %d after %s, want %s ±50%%", i+1, gap, want)
				}
			}
			reads := reg.Counts().Reads
			advance(20 * time.Second) // below the 30 s resync
			if got := reg.Counts().Reads; got != reads {
				t.Errorf("%d reads after recovery without a trigger, want %d", got, reads)
			}
		})
	})

	t.Run("a key deleted by hand is put back at once", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			reg := storetest.New(nil)
			hv := &fakeHealthView{}
			hv.set([]Target{tA}, nil)
			r := newTestRegistrar(reg, hv, 10*time.Second)
			r.Wake()
			stop := startRegistrar(t, r)
			defer func() { checkStop(t, stop) }()
			reg.Remove(keyA)
			synctest.Wait()
			if d := diffKV(reg.Keys(), map[string]storetest.Value{keyA: {Value: valA, Lease: 1}}); d != "" {
				t.Errorf("etcd after the deletion differs:%s", d)
			}
		})
	})

	t.Run("resync repairs a deletion the watch missed", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			reg := storetest.New(nil)
			reg.Quiet = true
			hv := &fakeHealthView{}
			hv.set([]Target{tA}, nil)
			r := newTestRegistrar(reg, hv, 10*time.Second)
			r.Wake()
			stop := startRegistrar(t, r)
			defer func() { checkStop(t, stop) }()
			reg.Remove(keyA)
			advance(9 * time.Second)
			if _, ok := reg.Keys()[keyA]; ok {
				t.Fatalf("key back before the resync period")
			}
			advance(time.Second)
			if d := diffKV(reg.Keys(), map[string]storetest.Value{keyA: {Value: valA, Lease: 1}}); d != "" {
				t.Errorf("etcd after resync differs:%s", d)
			}
		})
	})

}

// TestRegistrarNeverFights: what this node would write must pass its own
// validation and must not take a key another node holds; either way the
// key is left alone, said once, and a later sync writes nothing.
func TestRegistrarNeverFights(t *testing.T) {
	underscore := regTarget("dddddddddddd", "my_project-my_svc-dddddd", "apache", "172.18.0.5", 80)
	loopback := regTarget("eeeeeeeeeeee", "up-apache-eeeeee", "apache", "127.0.0.1", 80)
	tests := []struct {
		name     string
		initial  map[string]storetest.Value
		healthy  []Target
		want     map[string]storetest.Value
		wantPuts int
		wantSaid int // warnings in 3 syncs
	}{
		{
			name:    "a container name with underscores registers under a valid host name",
			healthy: []Target{underscore},
			want: map[string]storetest.Value{"/services/apache/172.18.0.5:80": {Value: store.Registration{
				Host: "my-project-my-svc-dddddd", IPv4: "172.18.0.5", Port: 80, Container: "dddddddddddd", Node: testNode, Project: testProject}.Encode(), Lease: 1}},
			wantPuts: 1,
		},
		{
			name:     "an address its own validation refuses is not written",
			healthy:  []Target{loopback, tA},
			want:     map[string]storetest.Value{keyA: {Value: valA, Lease: 1}},
			wantPuts: 1, // tA only
			wantSaid: 1,
		},
		{
			name:     "a key another node holds is left to it",
			initial:  map[string]storetest.Value{keyA: {Value: otherNodeVal("n2"), Lease: 9}},
			healthy:  []Target{tA, tC},
			want:     map[string]storetest.Value{keyA: {Value: otherNodeVal("n2"), Lease: 9}, keyC: {Value: valC, Lease: 1}},
			wantPuts: 1,
			wantSaid: 1,
		},
		{
			// Two projects on one etcd, each with a daemon of this node
			// name: neither takes the other's key.
			name:     "a key of this node's name in another project is left to it",
			initial:  map[string]storetest.Value{keyA: {Value: otherProjectVal("p2"), Lease: 9}},
			healthy:  []Target{tA, tC},
			want:     map[string]storetest.Value{keyA: {Value: otherProjectVal("p2"), Lease: 9}, keyC: {Value: valC, Lease: 1}},
			wantPuts: 1,
			wantSaid: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := storetest.New(tt.initial)
			hv := &fakeHealthView{}
			hv.set(tt.healthy, nil)
			r := newTestRegistrar(reg, hv, 0)
			var logs strings.Builder
			r.log = zerolog.New(&logs)
			for i := range 3 {
				if err := r.sync(t.Context()); err != nil {
					t.Fatalf("sync %d: %v", i, err)
				}
			}
			if got := strings.Count(logs.String(), `"level":"warn"`); got != tt.wantSaid {
				t.Errorf("%d warnings in 3 syncs; want %d:\n%s", got, tt.wantSaid, logs.String())
			}
			if d := diffKV(reg.Keys(), tt.want); d != "" {
				t.Errorf("etcd after 3 syncs differs:%s", d)
			}
			if got := reg.Counts(); got.Puts != tt.wantPuts || got.Deletes != 0 {
				t.Errorf("%d puts, %d deletes in 3 syncs; want %d and 0 (nothing written again)", got.Puts, got.Deletes, tt.wantPuts)
			}
		})
	}
}

// TestRegistrarDeleteOfGoneKey: a backend's key expired with a lost lease
// while the watch had not shown it yet, so the registrar deleted a key etcd
// no longer held; meanwhile other keys (slots, another node's) were
// written. That deletion wrote nothing, and must not make the registrar
// wait for a revision its watch of /services will never reach: before,
// the next healthy backend was never registered (found by TestCluster in
// CI: a host cut off from etcd came back with 2 of 3 backends registered).
func TestRegistrarDeleteOfGoneKey(t *testing.T) {
	reg := storetest.New(nil)
	reg.Ghosts = map[string]storetest.Value{keyA: {Value: valA, Lease: 1}}                                   // expired in etcd, still in the copy
	if _, _, err := reg.Claim(t.Context(), "/upstreamd/p1/slots/apache/0", `{"node":"n2"}`, 9); err != nil { // another node's write
		t.Fatal(err)
	}
	hv := &fakeHealthView{}
	r := newTestRegistrar(reg, hv, 0)
	if err := r.sync(t.Context()); err != nil {
		t.Fatalf("sync with the unhealthy backend's key gone: %v", err)
	}
	if got := reg.Counts(); got.Deletes != 1 {
		t.Fatalf("%d deletes; want 1 (the copy still shows the key)", got.Deletes)
	}
	reg.Lock()
	reg.Ghosts = nil // the watch brings the expiry, at its older revision
	reg.Unlock()

	hv.set([]Target{tC}, nil) // the replacement is healthy
	if err := r.sync(t.Context()); err != nil {
		t.Fatalf("sync with a healthy replacement: %v", err)
	}
	if d := diffKV(reg.Keys(), map[string]storetest.Value{keyC: {Value: valC, Lease: 1}, "/upstreamd/p1/slots/apache/0": {Value: `{"node":"n2"}`, Lease: 9}}); d != "" {
		t.Errorf("etcd after the replacement turned healthy differs:%s", d)
	}
}

// TestRegistrarRecordsEvents: each key written or deleted is an event
// naming the container and the service, for the admin API's feed.
func TestRegistrarRecordsEvents(t *testing.T) {
	reg := storetest.New(map[string]storetest.Value{keyC: {Value: valC, Lease: 1}})
	hv := &fakeHealthView{}
	hv.set([]Target{tA}, nil)
	r := newTestRegistrar(reg, hv, 0)
	j := events.New(0)
	r.cfg.Events = j
	if err := r.sync(t.Context()); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range j.Last(0) {
		got = append(got, fmt.Sprintf("%s %s %s %s", e.Kind, e.Service, e.Container, e.Addr))
	}
	want := []string{"deregistered apache up-apache-cccccc 172.18.0.4:80", "registered apache up-apache-aaaaaa 172.18.0.2:80"}
	if !slices.Equal(got, want) {
		t.Errorf("events %q; want %q", got, want)
	}
}
