//go:build integration && bench

package integration

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	upcluster "github.com/upstreamd/upstreamd/cluster"
	"github.com/upstreamd/upstreamd/integration/internal/load"
	"github.com/upstreamd/upstreamd/store"
)

// clusterRow is one line of the cluster bench.
type clusterRow struct {
	Scenario string    `json:"scenario"`
	Runs     []float64 `json:"runs_ms,omitempty"`
	P50      float64   `json:"p50_ms,omitempty"`
	P99      float64   `json:"p99_ms,omitempty"`
	Note     string    `json:"note,omitempty"`
}

func (r *clusterRow) summarize() {
	s := append([]float64(nil), r.Runs...)
	sort.Float64s(s)
	if len(s) > 0 {
		r.P50 = s[len(s)/2]
		r.P99 = s[int(0.99*float64(len(s)-1)+0.5)]
	}
}

// TestBenchCluster is the cluster part of `make bench`: the seed's three
// hosts on nested engines (lease_ttl 3 s, connect_timeout 100 ms), under a
// keep-alive load at the leader's proxy: a host lost (its backend out of
// the leader's pools, then replaced and served), the leader's host lost
// (a new proxy serving at the address etcd names), each 5 times; then an
// idle minute (etcd revisions written, the daemons' RSS). Writes
// BENCH_CLUSTER_OUT (default bench-cluster.json at the repository root).
func TestBenchCluster(t *testing.T) {
	const runs = 5
	sc := newSeedCluster(t)
	for _, h := range sc.c.Hosts {
		sc.startDaemon(h)
	}
	l := sc.waitSpread(3*time.Minute, 3)

	pool := clusterRow{Scenario: "host SIGKILLed: its backend out of the leader's nginx pools"}
	replaced := clusterRow{Scenario: "host SIGKILLed: a replacement in the leader's nginx pools"}
	var failed, requests, slow int
	var p99s, maxes []float64
	for i := range runs {
		victim := sc.nonLeader(l)
		if i%2 == 1 {
			victim = sc.otherThan(l.Node, victim.Name)
		}
		run := load.Start(t.Context(), load.Config{Addr: l.Address, Workers: 4, Duration: 2 * time.Minute, Timeout: 5 * time.Second})
		t0 := time.Now()
		require.NoError(t, victim.Kill(t.Context()))
		onVictim := func(addrs []string) int {
			n := 0
			for _, a := range addrs {
				if strings.HasPrefix(a, victim.Addr+":") {
					n++
				}
			}
			return n
		}
		eventuallyFast(t, 30*time.Second, "the dead host's backend out of the leader's pools", func() error {
			addrs, err := sc.servedAddrs()
			if err == nil && onVictim(addrs) > 0 {
				err = fmt.Errorf("still served: %v", addrs)
			}
			return err
		})
		pool.Runs = append(pool.Runs, ms(time.Since(t0)))
		eventuallyFast(t, 60*time.Second, "a replacement in the leader's pools", func() error {
			addrs, err := sc.servedAddrs()
			if err == nil && (len(addrs) != 3 || onVictim(addrs) > 0) {
				err = fmt.Errorf("served: %v", addrs)
			}
			return err
		})
		replaced.Runs = append(replaced.Runs, ms(time.Since(t0)))
		res := run.Stop()
		failed += res.Failed()
		requests += res.Requests
		p99s = append(p99s, ms(res.Percentile(99)))
		maxes = append(maxes, ms(res.Percentile(100)))
		for _, s := range res.Samples {
			if s.Latency >= 100*time.Millisecond { // waited out a connect timeout
				slow++
			}
		}
		require.NoError(t, victim.Start(t.Context()))
		sc.startDaemon(victim)
		l = sc.waitSpread(90*time.Second, 3)
	}
	pool.Note = fmt.Sprintf("load meanwhile: %d requests, %d failed; p99 latency per run %v ms, max %v ms; %.2f%% of requests took ≥ 100 ms (a connect timeout)",
		requests, failed, p99s, maxes, 100*float64(slow)/float64(max(requests, 1)))

	leader := clusterRow{Scenario: "leader's host SIGKILLed: the new leader's proxy serving"}
	for range runs {
		dead := sc.host(l.Node)
		t0 := time.Now()
		require.NoError(t, dead.Kill(t.Context()))
		eventuallyFast(t, 60*time.Second, "a new leader serves", func() error {
			next, err := sc.leader()
			if err != nil || next.Node == dead.Name {
				return fmt.Errorf("leader %v: %w", next, err)
			}
			_, err = served(next.Address, 1)
			return err
		})
		leader.Runs = append(leader.Runs, ms(time.Since(t0)))
		require.NoError(t, dead.Start(t.Context()))
		sc.startDaemon(dead)
		l = sc.waitSpread(90*time.Second, 3)
	}

	_, before, err := sc.etcd.List(t.Context(), "/")
	require.NoError(t, err)
	waitFor(t, time.Minute)
	_, after, err := sc.etcd.List(t.Context(), "/")
	require.NoError(t, err)
	var rss []string
	for _, h := range sc.c.Hosts {
		res, err := h.Exec(t.Context(), []string{"sh", "-c", "ps -o rss= -p $(cat /run/upstreamd.pid)"})
		require.NoError(t, err)
		kb, _ := strconv.Atoi(strings.TrimSpace(string(res.Stdout)))
		rss = append(rss, fmt.Sprintf("%s %.0f MB", h.Name[len(h.Name)-1:], float64(kb)/1024))
	}
	idle := clusterRow{Scenario: "idle 3-node cluster, 1 minute", Note: fmt.Sprintf("%d etcd revisions written (lease keep-alives write none); daemon RSS: %s", after-before, strings.Join(rss, ", "))}

	rows := []*clusterRow{&pool, &replaced, &leader, &idle}
	for _, r := range rows {
		r.summarize()
		if len(r.Runs) > 0 {
			t.Logf("%-60s p50 %6.0f ms  p99 %6.0f ms  runs %v", r.Scenario, r.P50, r.P99, r.Runs)
		}
		if r.Note != "" {
			t.Logf("%-60s %s", "", r.Note)
		}
	}
	out := os.Getenv("BENCH_CLUSTER_OUT")
	if out == "" {
		out = filepath.Join("..", "bench-cluster.json")
	}
	data, err := json.MarshalIndent(rows, "", "  ")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(out, data, 0o644))
	require.NoError(t, sc.stopDaemons())
}

// servedAddrs is what the leader's nginx serves for apache, as it
// published it after its last push.
func (sc *seedCluster) servedAddrs() ([]string, error) {
	kv, _, err := sc.etcd.List(sc.t.Context(), store.ServedKey(sc.project))
	if err != nil {
		return nil, err
	}
	if len(kv) == 0 {
		return nil, errors.New("no record of what the leader's nginx serves")
	}
	var sp upcluster.ServedPools
	if err := json.Unmarshal(kv[0].Value, &sp); err != nil {
		return nil, err
	}
	return sp.Pools["apache"], nil
}
