package cluster

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/store"
	"github.com/upstreamd/upstreamd/store/storetest"
)

// proxyModel is what the reconciler does with RunsProxy, reduced to the
// one proxy: ProxyRun starts one when none runs, ProxyKeep keeps the one
// that runs and starts none, ProxyNone removes it. Proxies are numbered
// from 1 as they are created; 0 is none.
type proxyModel struct{ running, created int }

func (m *proxyModel) pass(d ProxyDuty) {
	switch d {
	case ProxyRun:
		if m.running == 0 {
			m.created++
			m.running = m.created
		}
	case ProxyNone:
		m.running = 0
	}
}

// fakeElection is etcd's election as the elector uses it: each Campaign
// wins with the create revision the test sends on wins (or waits for its
// ctx), and the test shows the watched keys through show.
type fakeElection struct {
	wins chan int64

	mu     sync.Mutex
	handle func(store.Update)
}

var _ electionStore = (*fakeElection)(nil)

func (f *fakeElection) Campaign(ctx context.Context, _, _ string, _ int64) (int64, error) {
	select {
	case rev := <-f.wins:
		return rev, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

func (f *fakeElection) Watch(ctx context.Context, _ string, handle func(store.Update)) error {
	f.mu.Lock()
	f.handle = handle
	f.mu.Unlock()
	<-ctx.Done()
	return nil
}

// show hands the watch the election's keys: node → create revision.
func (f *fakeElection) show(keys map[string]int64) {
	u := store.Update{Reset: true}
	for node, rev := range keys {
		v, _ := json.Marshal(Leader{Node: node, Address: node + ":8080"})
		u.KVs = append(u.KVs, store.KV{Key: store.LeaderPrefix("up") + node, Value: v, Created: rev})
	}
	f.mu.Lock()
	handle := f.handle
	f.mu.Unlock()
	handle(u)
}

// TestElectorKeepsItsProxy walks the leader's proxy through a lost lease:
// with nobody else seen leading it keeps running (the same container), an
// election won again goes on with it, and only another node seen leading
// in etcd (a key newer than the one this node led with) removes it.
func TestElectorKeepsItsProxy(t *testing.T) {
	type env struct {
		el     *fakeElection
		leases *storetest.Leases
	}
	win := func(rev int64) func(env) { return func(e env) { e.el.wins <- rev } }
	lose := func(e env) { e.leases.Expire() }
	lease := func(id int64) func(env) { return func(e env) { e.leases.Set(id) } }
	show := func(keys map[string]int64) func(env) { return func(e env) { e.el.show(keys) } }
	for _, tc := range []struct {
		name         string
		steps        []func(env)
		leading      bool
		proxy        bool // the proxy created while leading still runs
		proxyCreates int
	}{
		{name: "leading", steps: nil, leading: true, proxy: true, proxyCreates: 1},
		{name: "lease lost, no other leader seen: kept",
			steps: []func(env){lose, show(map[string]int64{"self": 5})}, proxy: true, proxyCreates: 1},
		{name: "lease lost, etcd names nobody (every key expired): kept",
			steps: []func(env){lose, show(nil)}, proxy: true, proxyCreates: 1},
		{name: "lease lost, then another node seen leading: given up",
			steps: []func(env){lose, show(map[string]int64{"b": 9})}, proxy: false, proxyCreates: 1},
		{name: "lease lost, a lagging copy names the previous leader: kept",
			steps: []func(env){lose, show(map[string]int64{"b": 3})}, proxy: true, proxyCreates: 1},
		{name: "lease lost, this node's own newer candidacy first: kept",
			steps: []func(env){lose, show(map[string]int64{"self": 9, "b": 10})}, proxy: true, proxyCreates: 1},
		{name: "another node seen leading before the lease was lost: stopped at once",
			steps: []func(env){show(map[string]int64{"b": 9}), lose}, proxy: false, proxyCreates: 1},
		{name: "elected again under a new lease: the same container",
			steps: []func(env){lose, lease(2), win(11)}, leading: true, proxy: true, proxyCreates: 1},
		{name: "elected again, then the election moves on: given up",
			steps: []func(env){lose, lease(2), win(11), lose, show(map[string]int64{"b": 12})}, proxy: false, proxyCreates: 1},
		{name: "given up, then elected again: a new proxy",
			steps: []func(env){lose, show(map[string]int64{"b": 9}), lease(2), win(12)}, leading: true, proxy: false, proxyCreates: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				e := env{el: &fakeElection{wins: make(chan int64, 1)}, leases: storetest.NewLeases()}
				e.leases.Set(1)
				<-e.leases.Subscribe() // this lease is not news to the elector
				el := newElector(electorConfig{Store: e.el, Leases: e.leases, Project: "up", Self: Leader{Node: "self", Address: "self:8080"},
					Logger: zerolog.Nop()})
				var proxy proxyModel
				go func() { _ = el.Start(ctx) }()
				e.el.wins <- 5
				synctest.Wait()
				if !el.Leading() {
					t.Fatal("not leading after winning")
				}
				proxy.pass(el.RunsProxy())
				if proxy.running != 1 {
					t.Fatalf("proxy %d runs while leading, want the first", proxy.running)
				}
				for _, step := range tc.steps {
					step(e)
					synctest.Wait()
					proxy.pass(el.RunsProxy())
				}
				if got := el.Leading(); got != tc.leading {
					t.Errorf("Leading() = %v, want %v", got, tc.leading)
				}
				if kept := proxy.running == 1; kept != tc.proxy {
					t.Errorf("the first proxy runs: %v, want %v (proxy now: %d)", kept, tc.proxy, proxy.running)
				}
				if want := tc.leading || tc.proxy; (proxy.running != 0) != want {
					t.Errorf("proxy %d runs, want one only while leading or kept (%v)", proxy.running, want)
				}
				if proxy.created != tc.proxyCreates {
					t.Errorf("%d proxies created, want %d", proxy.created, tc.proxyCreates)
				}
			})
		})
	}
}

// TestElectorRestartKeepsFoundProxy: a daemon that starts (again) on the
// node that ran the project's proxy keeps that proxy serving, as it is,
// until it either leads (the same container goes on) or sees another node
// lead in etcd (then it goes); a node that finds no proxy creates none
// before it leads.
func TestElectorRestartKeepsFoundProxy(t *testing.T) {
	for _, tc := range []struct {
		name         string
		found        bool // a proxy ran here before the restart
		then         func(f *fakeElection)
		leading      bool
		proxy        bool // the proxy found still runs
		proxyCreates int  // after the restart
	}{
		{name: "nothing known yet: kept", found: true, then: func(*fakeElection) {}, proxy: true},
		{name: "its own key of before the restart leads: kept", found: true,
			then: func(f *fakeElection) { f.show(map[string]int64{"self": 3, "b": 4}) }, proxy: true},
		{name: "elected: the same container", found: true, then: func(f *fakeElection) { f.wins <- 9 }, leading: true, proxy: true},
		{name: "another node leads: removed", found: true,
			then: func(f *fakeElection) { f.show(map[string]int64{"b": 4, "self": 9}) }, proxy: false},
		{name: "no proxy found: none created before leading", then: func(*fakeElection) {}, proxy: false},
		{name: "no proxy found, elected: created", then: func(f *fakeElection) { f.wins <- 9 }, leading: true, proxyCreates: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				var proxy proxyModel
				if tc.found { // the daemon's run before: it led
					proxy.pass(ProxyRun)
				}
				found, before := proxy.running, proxy.created
				f := &fakeElection{wins: make(chan int64, 1)}
				leases := storetest.NewLeases()
				leases.Set(1)
				el := newElector(electorConfig{Store: f, Leases: leases, Project: "up", Self: Leader{Node: "self", Address: "self:8080"},
					Logger: zerolog.Nop()})
				go func() { _ = el.Start(ctx) }()
				synctest.Wait()
				proxy.pass(el.RunsProxy())
				if proxy.running != found {
					t.Fatalf("first pass after the restart: proxy %d runs, want the one found (%d)", proxy.running, found)
				}
				tc.then(f)
				synctest.Wait()
				proxy.pass(el.RunsProxy())
				if got := el.Leading(); got != tc.leading {
					t.Errorf("Leading() = %v, want %v", got, tc.leading)
				}
				if kept := found != 0 && proxy.running == found; kept != tc.proxy {
					t.Errorf("the proxy found runs: %v, want %v (proxy now: %d)", kept, tc.proxy, proxy.running)
				}
				if created := proxy.created - before; created != tc.proxyCreates {
					t.Errorf("%d proxies created after the restart, want %d", created, tc.proxyCreates)
				}
			})
		})
	}
}
