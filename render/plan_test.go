package render

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/upstreamd/upstreamd/nginx"
)

// statusOnly is a Session that answers whether the status server can be
// reached, all plan asks; it must not be used for anything else.
type statusOnly bool

func (s statusOnly) HasStatus() bool { return bool(s) }
func (statusOnly) Admin() string     { return "" }
func (statusOnly) Deliver(context.Context, []byte) (bool, error) {
	panic("plan delivered")
}
func (statusOnly) WriteFiles(context.Context, map[string][]byte) error { panic("plan wrote files") }
func (statusOnly) WritePublicFiles(context.Context, map[string][]byte) error {
	panic("plan wrote files")
}
func (statusOnly) Prune(context.Context, []string, map[string]bool) ([]string, error) {
	panic("plan pruned")
}
func (statusOnly) PushPools(context.Context, []byte) error { panic("plan pushed") }
func (statusOnly) WaitConfig(context.Context, string) (time.Duration, error) {
	panic("plan confirmed")
}

func TestPlan(t *testing.T) {
	const pools, newPools = "0\napache 10.0.0.1:80\n", "0\napache 10.0.0.2:80\n"
	tests := []struct {
		name     string
		state    proxyState // session: set from status
		noStatus bool
		cand     candidate
		want     []step
	}{
		{name: "static, first pass", cand: candidate{hash: "h1"}, want: []step{stepDeliver, stepConfirm}},
		{name: "static, config confirmed running", state: proxyState{liveHash: "h1"}, cand: candidate{hash: "h1"}, want: []step{stepDeliver}},
		{name: "static, new config", state: proxyState{liveHash: "h1"}, cand: candidate{hash: "h2"}, want: []step{stepDeliver, stepConfirm}},
		{name: "static, rejected config again", state: proxyState{rejected: "h2", liveHash: "h1"}, cand: candidate{hash: "h2"}, want: nil},
		{name: "dynamic, first pass", cand: candidate{hash: "h1", pools: pools}, want: []step{stepTryPush, stepDeliver, stepConfirm, stepPush}},
		{name: "dynamic, nothing changed", state: proxyState{liveHash: "h1", pushed: pools, poolsAPI: true},
			cand: candidate{hash: "h1", pools: pools}, want: []step{stepDeliver}},
		{name: "dynamic, membership changed", state: proxyState{liveHash: "h1", pushed: pools, poolsAPI: true},
			cand: candidate{hash: "h1", pools: newPools}, want: []step{stepTryPush, stepDeliver, stepPush}},
		{name: "dynamic, config and membership changed", state: proxyState{liveHash: "h1", pushed: pools, poolsAPI: true},
			cand: candidate{hash: "h2", pools: newPools}, want: []step{stepTryPush, stepDeliver, stepConfirm, stepPush}},
		{name: "dynamic, no status server address: push after the config, and fail there", noStatus: true,
			cand: candidate{hash: "h1", pools: pools}, want: []step{stepDeliver, stepConfirm, stepPush}},
		{name: "dynamic, rejected config, pools API live: pools still flow", state: proxyState{rejected: "h2", pushed: pools, poolsAPI: true},
			cand: candidate{hash: "h2", pools: newPools}, want: []step{stepPush}},
		{name: "dynamic, rejected config, pools unchanged", state: proxyState{rejected: "h2", pushed: pools, poolsAPI: true},
			cand: candidate{hash: "h2", pools: pools}, want: nil},
		{name: "dynamic, rejected config, no pools API live", state: proxyState{rejected: "h2"},
			cand: candidate{hash: "h2", pools: newPools}, want: nil},
		{name: "dynamic, rejected config, no status server address", noStatus: true, state: proxyState{rejected: "h2", poolsAPI: true},
			cand: candidate{hash: "h2", pools: newPools}, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := tt.state
			st.session = statusOnly(!tt.noStatus)
			if got := plan(st, tt.cand); !slices.Equal(got, tt.want) {
				t.Errorf("plan = %v; want %v", got, tt.want)
			}
		})
	}
}

func TestNewProxyState(t *testing.T) {
	prev := proxyState{proxy: nginx.Proxy{ID: "a", IP: "10.0.0.2", Generation: 1}, rejected: "h2", poolsAPI: true, pushed: "p", liveHash: "h1"}
	tests := []struct {
		name string
		p    nginx.Proxy
		want proxyState
	}{
		{name: "restarted in place: its files carry over", p: nginx.Proxy{ID: "a", IP: "10.0.0.2", Generation: 2},
			want: proxyState{proxy: nginx.Proxy{ID: "a", IP: "10.0.0.2", Generation: 2}, rejected: "h2", poolsAPI: true}},
		{name: "another container: nothing carries over", p: nginx.Proxy{ID: "b", IP: "10.0.0.3", Generation: 3},
			want: proxyState{proxy: nginx.Proxy{ID: "b", IP: "10.0.0.3", Generation: 3}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := newProxyState(tt.p, nil, prev)
			if got != tt.want {
				t.Errorf("newProxyState = %+v; want %+v", got, tt.want)
			}
		})
	}
}
