//go:build integration

package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/upstreamd/upstreamd/admin"
	upcluster "github.com/upstreamd/upstreamd/cluster"
	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/integration/internal/cluster"
	"github.com/upstreamd/upstreamd/integration/internal/load"
	"github.com/upstreamd/upstreamd/store"
)

// clusterTTL is the daemons' lease TTL in the cluster tests: how long a
// dead host's keys, slots and leadership outlive it.
const clusterTTL = 3 * time.Second

// seedCluster is the seed's topology on nested engines: three hosts, a
// daemon on each (advertise = "host", proxy on the elected leader), a
// 3-member etcd, one Apache per host.
type seedCluster struct {
	t       *testing.T
	c       *cluster.Cluster
	project string
	etcd    *store.Client
	engines map[string]*containers.Client // host name → its engine
}

func newSeedCluster(t *testing.T) *seedCluster {
	t.Helper()
	c := newCluster(t, cluster.Config{Name: "uc-seed-" + randomHex(3), Hosts: 3, EtcdMembers: 3,
		Images: []string{"upstreamd/apache:latest", "upstreamd/nginx:latest"}})
	sc := &seedCluster{t: t, c: c, project: "seed" + randomHex(3), engines: map[string]*containers.Client{}}
	etcd, err := store.New(store.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zerolog.Nop()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = etcd.Close() })
	sc.etcd = etcd
	for _, h := range c.Hosts {
		dc, err := containers.New(containers.Config{Host: h.DockerHost, Logger: zerolog.Nop()})
		require.NoError(t, err)
		t.Cleanup(func() { _ = dc.Close() })
		sc.engines[h.Name] = dc
		require.NoError(t, h.CopyFile(t.Context(), binPath, cluster.DaemonBinary, 0o755))
		require.NoError(t, h.WriteFile(t.Context(), "/etc/upstreamd/upstreamd.toml", []byte(sc.spec(h, h.Name))))
	}
	// The daemons' logs, when the test failed (or UPSTREAMD_TEST_LOGS is
	// set): a line per t.Logf, each naming its host, so that an excerpt
	// of the output keeps what it keeps of them whole.
	t.Cleanup(func() {
		if !t.Failed() && os.Getenv("UPSTREAMD_TEST_LOGS") == "" {
			return
		}
		for _, h := range c.Hosts {
			logs, err := h.DaemonLogs(context.Background())
			if err != nil {
				t.Logf("%s: %v", h.Name, err)
			}
			for _, line := range strings.Split(tail(strings.TrimSpace(logs), 150), "\n") {
				t.Logf("%s: %s", h.Name, line)
			}
		}
	})
	return sc
}

// spec is the daemon's spec on host h, as node.
func (sc *seedCluster) spec(h *cluster.Host, node string) string {
	eps, _ := json.Marshal(sc.c.Endpoints())
	return fmt.Sprintf(`project = %q
node = %q
[etcd]
endpoints = %s
lease_ttl = %q
[network]
advertise = "host"
node_address = %q
[proxy]
placement = "leader"
publish = "0.0.0.0:8080"
[[service]]
name = "apache"
image = "upstreamd/apache:latest"
replicas = 3
stop_grace = "2s"
[service.health]
interval = "1s"
timeout = "500ms"
`, sc.project, node, eps, clusterTTL, h.Addr)
}

func (sc *seedCluster) startDaemon(h *cluster.Host) {
	sc.t.Helper()
	require.NoError(sc.t, h.StartDaemon(sc.t.Context(), []string{"run", "--log-format", "console"}, nil))
}

// leader returns the node that leads and the proxy address it announces.
func (sc *seedCluster) leader() (upcluster.Leader, error) {
	kv, ok, err := sc.etcd.Leader(sc.t.Context(), store.LeaderPrefix(sc.project))
	if err != nil {
		return upcluster.Leader{}, err
	}
	if !ok {
		return upcluster.Leader{}, errors.New("no leader")
	}
	var l upcluster.Leader
	return l, json.Unmarshal(kv.Value, &l)
}

func (sc *seedCluster) host(name string) *cluster.Host {
	for _, h := range sc.c.Hosts {
		if h.Name == name {
			return h
		}
	}
	sc.t.Fatalf("no host %s", name)
	return nil
}

// running returns, by host, the project's running containers of role
// (hosts whose engine does not answer are left out).
func (sc *seedCluster) running(role containers.Role) map[string][]containers.Container {
	out := map[string][]containers.Container{}
	for name, dc := range sc.engines {
		ctx, cancel := context.WithTimeout(sc.t.Context(), 500*time.Millisecond) // a dead host's engine hangs
		list, err := dc.List(ctx, sc.project)
		cancel()
		if err != nil {
			continue
		}
		for _, c := range list {
			if c.Role == role && c.State == containers.StateRunning {
				out[name] = append(out[name], c)
			}
		}
	}
	return out
}

// served asks the front door n times and returns the backends that
// answered (their host names), or the first failure.
func served(addr string, n int) (map[string]int, error) {
	res := load.Run(context.Background(), load.Config{Addr: addr, Workers: 1, MaxRequests: n, Duration: 10 * time.Second, Timeout: 2 * time.Second})
	if res.Failed() > 0 || res.Requests < n {
		return nil, fmt.Errorf("%d of %d requests to %s failed: %v", res.Failed(), res.Requests, addr, res.ErrorKind)
	}
	return res.ByHost, nil
}

// waitSpread waits until the leader's proxy serves 3 backends, one per
// live host, and returns the leader.
func (sc *seedCluster) waitSpread(timeout time.Duration, hosts int) upcluster.Leader {
	sc.t.Helper()
	var l upcluster.Leader
	eventually(sc.t, timeout, fmt.Sprintf("3 backends over %d hosts, served by the leader's proxy", hosts), func() error {
		var err error
		if l, err = sc.leader(); err != nil {
			return err
		}
		per := sc.running(containers.RoleBackend)
		total := 0
		for name, cs := range per {
			total += len(cs)
			if hosts == 3 && len(cs) != 1 {
				return fmt.Errorf("%s runs %d backends, want 1", name, len(cs))
			}
		}
		if total != 3 || len(per) != hosts {
			return fmt.Errorf("backends by host: %v", countBy(per))
		}
		keys, _, err := sc.etcd.List(sc.t.Context(), "/services/apache/")
		if err != nil {
			return err
		}
		if len(keys) != 3 {
			return fmt.Errorf("%d registrations, want 3", len(keys))
		}
		by, err := served(l.Address, 9)
		if err != nil {
			return err
		}
		if len(by) != 3 {
			return fmt.Errorf("the proxy at %s served %v, want 3 backends", l.Address, by)
		}
		return nil
	})
	return l
}

func countBy(per map[string][]containers.Container) map[string]int {
	out := map[string]int{}
	for k, v := range per {
		out[k] = len(v)
	}
	return out
}

func tail(s string, lines int) string {
	l := strings.Split(s, "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

// TestCluster is the seed's cluster on three nested Docker engines, one
// scenario after another on the same cluster (each leaves it as it found
// it: three hosts, one backend each, one proxy): spread, a host killed
// under load and coming back, each etcd member killed under load, every
// etcd member killed at once under load, a reused node name, the leader
// cut off from etcd, the leader's host killed.
func TestCluster(t *testing.T) {
	sc := newSeedCluster(t)
	for _, h := range sc.c.Hosts {
		sc.startDaemon(h)
	}
	l := sc.waitSpread(3*time.Minute, 3)
	t.Logf("leader %s, proxy at %s", l.Node, l.Address)

	t.Run("one proxy, on the leader", func(t *testing.T) {
		proxies := sc.running(containers.RoleProxy)
		require.Len(t, proxies, 1, "proxies by host: %v", countBy(proxies))
		require.Len(t, proxies[l.Node], 1, "the proxy runs on the leader %s: %v", l.Node, countBy(proxies))
		res, err := sc.host(l.Node).Exec(t.Context(), []string{cluster.DaemonBinary, "status"})
		require.NoError(t, err)
		out := res.Output()
		require.Contains(t, out, fmt.Sprintf("PROXY: on the leader, node %s, at %s", l.Node, l.Address))
		for _, h := range sc.c.Hosts {
			require.Regexp(t, h.Name+`\s+\S+\s+`+regexp.QuoteMeta(h.Addr)+`\s+\S+\s+\S+\s+apache:1`, out)
		}
		// A non-leader's own view, from its admin listener: every node,
		// the leader and its address, no proxy of its own.
		other := sc.nonLeader(l)
		res, err = other.Exec(t.Context(), []string{cluster.DaemonBinary, "status", "--json"})
		require.NoError(t, err)
		require.Zero(t, res.ExitCode, res.Output())
		var st admin.Status
		require.NoError(t, json.Unmarshal(res.Stdout, &st), res.Output())
		require.Len(t, st.Nodes, 3, "nodes in %s's status", other.Name)
		require.NotNil(t, st.Leader)
		require.Equal(t, l, upcluster.Leader{Node: st.Leader.Node, Address: st.Leader.Address})
		require.False(t, st.Proxy.Running, "%s runs no proxy", other.Name)
		require.Len(t, st.Services, 1)
		require.Len(t, st.Services[0].Registered, 3, "every node's registrations")
		require.Len(t, st.Services[0].Backends, 1, "%s probes its own backend", other.Name)
	})

	t.Run("an idle cluster writes nothing to etcd", func(t *testing.T) {
		_, before, err := sc.etcd.List(t.Context(), "/")
		require.NoError(t, err)
		time.Sleep(5 * time.Second) // a span of idleness is what is measured
		_, after, err := sc.etcd.List(t.Context(), "/")
		require.NoError(t, err)
		require.Equal(t, before, after, "3 idle daemons wrote %d etcd revisions in 5 s", after-before)
	})

	t.Run("a host killed under load", func(t *testing.T) {
		victim := sc.nonLeader(l)
		run := load.Start(t.Context(), load.Config{Addr: l.Address, Workers: 4, Duration: 2 * time.Minute, Timeout: 5 * time.Second})
		killed := time.Now()
		require.NoError(t, victim.Kill(t.Context()))
		eventually(t, 30*time.Second, "the dead host's backend deregistered", func() error {
			keys, _, err := sc.etcd.List(t.Context(), "/services/apache/")
			if err != nil {
				return err
			}
			for _, kv := range keys {
				if strings.Contains(kv.Key, "/"+victim.Addr+":") {
					return fmt.Errorf("%s still registered", kv.Key)
				}
			}
			return nil
		})
		gone := time.Since(killed)
		sc.waitSpread(60*time.Second, 2)
		replaced := time.Since(killed)
		res := run.Stop()
		t.Logf("host %s killed: out of etcd after %s, replaced and served after %s; load: %s", victim.Name, gone.Round(time.Millisecond), replaced.Round(time.Millisecond), res)
		require.Zero(t, res.Failed(), "failed requests while a host died: %v", res.ErrorKind)

		// The host comes back: its daemon takes its share again (the
		// node holding two drains one first), no request fails.
		require.NoError(t, victim.Start(t.Context()))
		run = load.Start(t.Context(), load.Config{Addr: l.Address, Workers: 4, Duration: 2 * time.Minute, Timeout: 5 * time.Second})
		sc.startDaemon(victim)
		sc.waitSpread(90*time.Second, 3)
		res = run.Stop()
		t.Logf("host %s back: load %s", victim.Name, res)
		require.Zero(t, res.Failed(), "failed requests while a host came back: %v", res.ErrorKind)
	})

	t.Run("each etcd member killed under load", func(t *testing.T) {
		// One member at a time, every one of them: whichever member a
		// daemon's lease keep-alive runs through dies once. A SIGKILLed
		// member sends no reset; the client must move on before the 3 s
		// lease runs out, or the leader would lose the lead.
		for i, m := range sc.c.Etcd {
			run := load.Start(t.Context(), load.Config{Addr: l.Address, Workers: 4, Duration: time.Minute, Timeout: 5 * time.Second})
			require.NoError(t, m.Kill(t.Context()))
			if i == 0 {
				// The cluster keeps working without it: a backend killed
				// now is replaced and served.
				victim := sc.running(containers.RoleBackend)[sc.nonLeader(l).Name][0]
				require.NoError(t, sc.engines[sc.nonLeader(l).Name].Signal(t.Context(), victim.ID, "KILL"))
				eventually(t, 60*time.Second, "the killed backend replaced with a member down", func() error {
					for _, cs := range sc.running(containers.RoleBackend) {
						for _, c := range cs {
							if c.ID == victim.ID {
								return errors.New("still running")
							}
						}
					}
					return nil
				})
				sc.waitSpread(60*time.Second, 3)
			}
			time.Sleep(2 * clusterTTL) // a lease lost to the dead member would show within this span
			res := run.Stop()
			t.Logf("etcd member %s killed: load %s", m.Name, res)
			require.Zero(t, res.Failed(), "failed requests with etcd member %s down: %v", m.Name, res.ErrorKind)
			next, err := sc.leader()
			require.NoError(t, err)
			require.Equal(t, l, next, "the leader changed while etcd member %s was down", m.Name)
			require.NoError(t, m.Start(t.Context()))
		}
	})

	t.Run("every etcd member killed under load", func(t *testing.T) {
		// etcd gone for 4 × lease_ttl: every lease lapses and nobody can
		// be elected. The leader's proxy must keep serving the pools it
		// has, and once etcd is back there is one proxy, at the address
		// etcd names.
		was := l
		before := sc.running(containers.RoleProxy)[was.Node]
		require.Len(t, before, 1, "the leader %s runs one proxy", was.Node)
		run := load.Start(t.Context(), load.Config{Addr: was.Address, Workers: 4, Duration: 3 * time.Minute, Timeout: 5 * time.Second})
		for _, m := range sc.c.Etcd {
			require.NoError(t, m.Kill(t.Context()))
		}
		killed := time.Now()
		time.Sleep(4 * clusterTTL) // the outage's length is what is tested
		require.NoError(t, sc.c.StartEtcd(t.Context()))
		back := time.Now()
		var next upcluster.Leader
		eventually(t, 60*time.Second, "one proxy in the cluster, at the address etcd names", func() error {
			var err error
			if next, err = sc.leader(); err != nil {
				return err
			}
			if proxies := sc.running(containers.RoleProxy); len(proxies) != 1 || len(proxies[next.Node]) != 1 {
				return fmt.Errorf("%s leads; proxies by host: %v", next.Node, countBy(proxies))
			}
			_, err = served(next.Address, 3)
			return err
		})
		settled := time.Since(back)
		l = sc.waitSpread(90*time.Second, 3)
		res := run.Stop()
		after := sc.running(containers.RoleProxy)[l.Node]
		t.Logf("etcd down %s; one proxy %s after it came back: %s leads (before: %s), proxy %s (before: %s); load at %s: %s",
			back.Sub(killed).Round(time.Millisecond), settled.Round(time.Millisecond), l.Node, was.Node,
			containers.ShortID(after[0].ID), containers.ShortID(before[0].ID), was.Address, res)
		require.Zero(t, res.Failed(), "failed requests while etcd was down and came back: %v", res.ErrorKind)
	})

	t.Run("a node name in use refuses", func(t *testing.T) {
		other := sc.nonLeader(l)
		holder := sc.otherThan(other.Name)
		require.NoError(t, other.WriteFile(t.Context(), "/etc/upstreamd/reused.toml", []byte(sc.spec(other, holder.Name))))
		ctx, cancel := context.WithTimeout(t.Context(), 45*time.Second)
		defer cancel()
		res, err := other.Exec(ctx, []string{cluster.DaemonBinary, "run", "--config", "/etc/upstreamd/reused.toml", "--log-format", "console"})
		require.NoError(t, err)
		require.NotZero(t, res.ExitCode, "a second daemon named %s started: %s", holder.Name, res.Output())
		require.Contains(t, res.Output(), fmt.Sprintf("node name %q", holder.Name))
		require.Contains(t, res.Output(), "taken by another live daemon")
		sc.waitSpread(30*time.Second, 3)
	})

	t.Run("the leader cut off from etcd", func(t *testing.T) {
		cut := sc.host(l.Node)
		require.NoError(t, cut.Disconnect(t.Context()))
		var next upcluster.Leader
		eventually(t, 30*time.Second, "another node leads and serves", func() error {
			var err error
			if next, err = sc.leader(); err != nil {
				return err
			}
			if next.Node == cut.Name {
				return fmt.Errorf("%s still leads", cut.Name)
			}
			_, err = served(next.Address, 3)
			return err
		})
		// Cut off, the old leader cannot tell its own outage from etcd's:
		// it keeps its proxy until it sees etcd name another leader.
		cutProxy := func() (string, error) {
			res, err := cut.Exec(t.Context(), []string{"docker", "ps", "-q", "--filter", "label=io.upstreamd.role=proxy", "--filter", "label=io.upstreamd.project=" + sc.project})
			return strings.TrimSpace(string(res.Stdout)), err
		}
		id, err := cutProxy()
		require.NoError(t, err)
		require.NotEmpty(t, id, "the cut-off leader removed its proxy before it saw another leader")
		require.NoError(t, cut.Reconnect(t.Context()))
		eventually(t, 30*time.Second, "the old leader gave its proxy up once it saw the new one", func() error {
			id, err := cutProxy()
			if err == nil && id != "" {
				err = fmt.Errorf("proxy still runs on %s: %s", cut.Name, id)
			}
			return err
		})
		l = sc.waitSpread(90*time.Second, 3)
		proxies := sc.running(containers.RoleProxy)
		require.Len(t, proxies, 1, "one proxy in the cluster once %s is back: %v", cut.Name, countBy(proxies))
		require.Len(t, proxies[l.Node], 1, "the proxy runs on the leader %s: %v", l.Node, countBy(proxies))
	})

	t.Run("the leader's host killed", func(t *testing.T) {
		dead := sc.host(l.Node)
		killed := time.Now()
		require.NoError(t, dead.Kill(t.Context()))
		var failed, tries int
		var next upcluster.Leader
		eventually(t, 60*time.Second, "a new leader serves at the address etcd names", func() error {
			tries++
			var err error
			if next, err = sc.leader(); err != nil || next.Node == dead.Name {
				failed++
				return fmt.Errorf("leader %v: %w", next, err)
			}
			if _, err = served(next.Address, 1); err != nil {
				failed++
			}
			return err
		})
		t.Logf("leader %s killed: %s leads and serves at %s after %s (%d of %d checks failed meanwhile)",
			dead.Name, next.Node, next.Address, time.Since(killed).Round(time.Millisecond), failed, tries)
		require.NoError(t, dead.Start(t.Context()))
		sc.startDaemon(dead)
		l = sc.waitSpread(90*time.Second, 3)
	})

	require.NoError(t, sc.stopDaemons())
}

// nonLeader returns a host that does not lead.
func (sc *seedCluster) nonLeader(l upcluster.Leader) *cluster.Host { return sc.otherThan(l.Node) }

// otherThan returns the first host named none of names.
func (sc *seedCluster) otherThan(names ...string) *cluster.Host {
	for _, h := range sc.c.Hosts {
		if !slices.Contains(names, h.Name) {
			return h
		}
	}
	sc.t.Fatal("one host only")
	return nil
}

// stopDaemons stops every daemon with SIGTERM (they revoke their leases).
func (sc *seedCluster) stopDaemons() error {
	var errs []error
	for _, h := range sc.c.Hosts {
		if _, err := h.StopDaemon(sc.t.Context(), syscall.SIGTERM); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
