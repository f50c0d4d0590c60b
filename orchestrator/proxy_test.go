package orchestrator

import (
	"testing"
	"testing/synctest"

	"github.com/upstreamd/upstreamd/cluster"
	"github.com/upstreamd/upstreamd/containers"
)

// TestReconcileProxyDuty: what a pass does about the proxy as the cluster
// says (cluster.Member.RunsProxy): run one (creating it when none runs),
// keep one that runs as it is and create none, or remove it; a proxy run
// again after it was removed is a new container.
func TestReconcileProxyDuty(t *testing.T) {
	for _, tc := range []struct {
		name    string
		duties  []cluster.ProxyDuty // one per pass
		first   bool                // the first proxy created still runs
		running int                 // proxies running at the end
		created int                 // proxies created in all
	}{
		{name: "run", duties: []cluster.ProxyDuty{cluster.ProxyRun, cluster.ProxyRun}, first: true, running: 1, created: 1},
		{name: "keep what runs", duties: []cluster.ProxyDuty{cluster.ProxyRun, cluster.ProxyKeep, cluster.ProxyKeep}, first: true, running: 1, created: 1},
		{name: "keep: none created", duties: []cluster.ProxyDuty{cluster.ProxyKeep}, running: 0, created: 0},
		{name: "none: removed", duties: []cluster.ProxyDuty{cluster.ProxyRun, cluster.ProxyNone}, running: 0, created: 1},
		{name: "none, then run: a new proxy", duties: []cluster.ProxyDuty{cluster.ProxyRun, cluster.ProxyNone, cluster.ProxyRun}, running: 1, created: 2},
		{name: "kept, then run: the same proxy", duties: []cluster.ProxyDuty{cluster.ProxyRun, cluster.ProxyKeep, cluster.ProxyRun}, first: true, running: 1, created: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newRecEnv(t, testSpec())
				var duty cluster.ProxyDuty
				e.rec.cfg.RunProxy = func() cluster.ProxyDuty { return duty }
				var first string
				for _, duty = range tc.duties {
					e.reconcile(t)
					if p := e.docker.withRole(containers.RoleProxy, ""); first == "" && len(p) == 1 {
						first = p[0].ID
					}
				}
				proxies := running(e.docker.withRole(containers.RoleProxy, ""))
				if len(proxies) != tc.running {
					t.Errorf("%d proxies running, want %d", len(proxies), tc.running)
				}
				if kept := len(proxies) == 1 && proxies[0].ID == first; kept != tc.first {
					t.Errorf("the first proxy runs: %v, want %v", kept, tc.first)
				}
				created := 0
				for _, cs := range e.docker.recorded().creates {
					if cs.Labels[containers.LabelRole] == string(containers.RoleProxy) {
						created++
					}
				}
				if created != tc.created {
					t.Errorf("%d proxies created, want %d", created, tc.created)
				}
				if p := e.proxy.get(); (p.ID != "") != (tc.running == 1) {
					t.Errorf("published proxy %q, want one only while one runs", p.ID)
				}
			})
		})
	}
}
