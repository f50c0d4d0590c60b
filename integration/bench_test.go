//go:build integration && bench

package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/integration/internal/daemon"
	"github.com/upstreamd/upstreamd/integration/internal/load"
	"github.com/upstreamd/upstreamd/store"
)

// TestBench is `make bench`: the real stack (3 Apache, nginx, etcd, the
// daemon) under a bounded keep-alive load, through the scenarios of the
// convergence issue. It prints a table and writes JSON (BENCH_OUT, default
// bench-results.json at the repository root). Numbers are measured from
// outside the daemon: convergence is the time from the action to nginx
// answering with the new pool (its pools API, or the config hash for
// reloads).
func TestBench(t *testing.T) {
	b := &bench{t: t}
	defer b.report()

	metricsPort := freePort(t)
	// "big" and "burst" are services of the spec with one backend each, so
	// that their pools are pushed; nothing routes to them, so the fake
	// servers the scenarios register there receive no request.
	s := newStack(t,
		withHealth("/healthz", "2s", 2, 2),
		withExtraTOML(fmt.Sprintf("[admin]\nlisten = \"127.0.0.1:%d\"", metricsPort)),
		withExtraTOML("[[service]]\nname = \"big\"\nimage = \"upstreamd/apache:latest\"\nreplicas = 1"),
		withExtraTOML("[[service]]\nname = \"burst\"\nimage = \"upstreamd/apache:latest\"\nreplicas = 1"))
	s.opts.timeout = "1s"
	s.writeConfig()
	b.metrics = fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort)
	d := s.startDaemon()
	b.daemon = d
	s.waitConverged(3, 90*time.Second)
	b.s = s

	t.Run("steady", func(t *testing.T) {
		b.run("steady state, 10 s", func(r *result) {
			waitFor(t, 10*time.Second)
		})
	})
	t.Run("kill", func(t *testing.T) {
		b.run("SIGKILL one backend (x10)", func(r *result) {
			for i := 0; i < 10; i++ {
				s.waitConverged(3, 90*time.Second)
				victim := s.backends()[i%3]
				addr := net.JoinHostPort(victim.IPs[s.project], "80")
				t0 := time.Now()
				require.NoError(t, s.docker.Signal(t.Context(), victim.ID, "KILL"))
				r.converged(b.waitPool(t0, func(p map[string]bool) bool { return !p[addr] }))
				waitFor(t, time.Second) // the requests in flight at the kill are over
				r.slowest(t0, time.Now())
			}
			s.waitConverged(3, 90*time.Second)
		})
	})
	t.Run("pause", func(t *testing.T) {
		b.run("docker pause one backend (x3): gone within interval x fall + 300 ms = 4.3 s", func(r *result) {
			for i := 0; i < 3; i++ {
				s.waitConverged(3, 90*time.Second)
				victim := s.backends()[i%3]
				addr := net.JoinHostPort(victim.IPs[s.project], "80")
				t0 := time.Now()
				require.NoError(t, s.docker.Pause(t.Context(), victim.ID))
				r.converged(b.waitPool(t0, func(p map[string]bool) bool { return !p[addr] }))
				require.NoError(t, s.docker.Unpause(t.Context(), victim.ID))
			}
			s.waitConverged(3, 90*time.Second)
		})
	})
	t.Run("scale-up", func(t *testing.T) {
		b.run("scale 3 -> 6", func(r *result) { r.converged(b.scale(6)) })
	})
	t.Run("scale-down", func(t *testing.T) {
		b.run("scale 6 -> 3 (drained)", func(r *result) { r.converged(b.scale(3)) })
	})
	t.Run("first-answer", func(t *testing.T) {
		b.run("new backend: container start -> first answer at the front door (x5)", func(r *result) {
			for i := 0; i < 5; i++ {
				b.firstAnswerOfNew(r, 4)
				b.scale(3)
			}
		})
	})
	t.Run("scale-up-20", func(t *testing.T) {
		b.run("scale 3 -> 20", func(r *result) {
			r.converged(b.scale(20))
			b.scale(3)
		})
	})
	t.Run("engine-floor", func(t *testing.T) {
		// What the engine alone takes, under the same load: the floor of a
		// scale-up, which no daemon can beat.
		b.run("engine alone: create + start 3 Apache containers at once, until each answers", func(r *result) {
			r.converged(engineFloor(t, s, 3))
		})
		b.run("engine alone: the same for 17", func(r *result) {
			r.converged(engineFloor(t, s, 17))
		})
	})
	t.Run("burst", func(t *testing.T) {
		b.run("100 registration changes in 1 s (dynamic: pushes, no reload)", func(r *result) {
			burst(t, s)
		})
	})
	t.Run("dynamic-1000", func(t *testing.T) {
		b.run("1,000 servers in a pool, dynamic (pushed, no reload)", func(r *result) {
			putMany(t, s, "big", 1000)
			for i := 0; i < 5; i++ {
				addr := fmt.Sprintf("10.253.100.%d:80", i+1)
				t0 := time.Now()
				putFake(t, s, "big", addr)
				r.converged(b.waitPoolOf("big", t0, func(p map[string]bool) bool { return p[addr] }))
			}
			deletePrefix(t, s, "big")
		})
	})
	t.Run("rss-100", func(t *testing.T) {
		b.run("100 backends: daemon RSS", func(r *result) {
			out, err := s.cli("scale", "apache", "100")
			require.NoError(t, err, out)
			eventually(t, 10*time.Minute, "100 backends registered", func() error {
				if n := len(s.keys()); n != 100 {
					return fmt.Errorf("%d registered", n)
				}
				return nil
			})
			waitFor(t, 5*time.Second) // a few probe rounds
			rss, err := d.RSS()
			require.NoError(t, err)
			r.RSSBytes = rss
			out, err = s.cli("scale", "apache", "3")
			require.NoError(t, err, out)
			s.waitConverged(3, 10*time.Minute)
		})
	})
	t.Run("rolling", func(t *testing.T) {
		b.run("rolling update of 3 backends (daemon restarted with a new spec)", func(r *result) {
			oldHash := s.backends()[0].SpecHash
			t0 := time.Now()
			require.NoError(t, d.Stop(20*time.Second))
			s.opts.serviceTOML += `env = ["RELEASE=2"]` + "\n"
			s.writeConfig()
			d = s.startDaemon()
			b.daemon = d
			r.countersReset = true // a new daemon counts from zero
			eventually(t, 5*time.Minute, "every backend replaced", func() error {
				bs := s.backends()
				if len(bs) != 3 {
					return fmt.Errorf("%d backends", len(bs))
				}
				for _, c := range bs {
					if c.SpecHash == oldHash {
						return fmt.Errorf("%s not replaced", c.Name)
					}
				}
				if p, err := b.pool("apache"); err != nil || len(p) != 3 {
					return fmt.Errorf("pool %v: %w", p, err)
				}
				return nil
			})
			r.converged(time.Since(t0))
		})
	})

	// Backends that listen only 5 s after they start, in a stack of their
	// own: served as soon as they answer.
	t.Run("slow-starter", func(t *testing.T) {
		s3 := newStack(t, withReplicas(1), withHealth("/healthz", "2s", 2, 2),
			withServiceTOML(`env = ["START_DELAY=5"]`),
			withExtraTOML(fmt.Sprintf("[admin]\nlisten = \"127.0.0.1:%d\"", freePort(t))))
		d3 := s3.startDaemon()
		s3.waitConverged(1, 90*time.Second)
		b3 := &bench{t: t, s: s3, daemon: d3, metrics: metricsURL(s3)}
		b3.run("new backend listening 5 s after start: container start -> first answer (x3)", func(r *result) {
			for i := 0; i < 3; i++ {
				b3.firstAnswerOfNew(r, 2)
				b3.scale(1)
			}
		})
		b.results = append(b.results, b3.results...)
	})

	// A template of one's own lists its servers: every change reloads.
	t.Run("static-1000", func(t *testing.T) {
		s2 := newStack(t, withTemplate(staticTemplate),
			withExtraTOML(fmt.Sprintf("[admin]\nlisten = \"127.0.0.1:%d\"", freePort(t))))
		d2 := s2.startDaemon()
		s2.waitConverged(3, 90*time.Second)
		b2 := &bench{t: t, s: s2, daemon: d2, metrics: metricsURL(s2)}
		putMany(t, s2, "big", 1000)
		eventually(t, time.Minute, "1,000 servers live", func() error {
			h, err := b2.configHash()
			if err != nil {
				return err
			}
			cfg, err := s2.docker.ReadFile(t.Context(), s2.proxy().ID, "/etc/nginx/conf.d/upstreamd.conf")
			if err != nil {
				return err
			}
			if n := strings.Count(string(cfg), "10.253."); n != 1000 {
				return fmt.Errorf("%d servers in the live config (hash %s)", n, h)
			}
			return nil
		})
		reload1000 := func(from int) func(r *result) {
			return func(r *result) {
				for i := 0; i < 5; i++ {
					before, err := b2.configHash()
					require.NoError(t, err)
					t0 := time.Now()
					putFake(t, s2, "big", fmt.Sprintf("10.253.200.%d:80", from+i))
					r.converged(b2.waitHashChange(t0, before))
				}
			}
		}
		b2.runWith("1,000 servers, static template: render + nginx -t + reload (x5), idle", 0, reload1000(1))
		b2.run("1,000 servers, static template: render + nginx -t + reload (x5), under load", reload1000(11))
		deletePrefix(t, s2, "big")
		b2.run("100 registration changes in 1 s, static template (every change is a reload)", func(r *result) {
			burst(t, s2)
		})
		b.results = append(b.results, b2.results...)
	})
}

type bench struct {
	t       *testing.T
	s       *stack
	daemon  *daemon.Process
	metrics string
	results []*result
}

type result struct {
	Name            string   `json:"name"`
	Seconds         float64  `json:"seconds"`
	Requests        int      `json:"requests"`
	Non2xx          int      `json:"non_2xx"`
	TransportErrors int      `json:"transport_errors"`
	ErrorKinds      []string `json:"error_kinds,omitempty"`
	LatencyP50Ms    float64  `json:"latency_p50_ms"`
	LatencyP99Ms    float64  `json:"latency_p99_ms"`
	LatencyMaxMs    float64  `json:"latency_max_ms"`
	// SlowestMs is, per action, the slowest request in flight around it.
	SlowestMs []float64 `json:"slowest_ms,omitempty"`
	// FirstAnswerMs is, per new backend, from its container's start to
	// its first answer at the front door.
	FirstAnswerMs []float64 `json:"first_answer_ms,omitempty"`
	ConvergenceMs []float64 `json:"convergence_ms,omitempty"`
	ConvP50Ms     float64   `json:"convergence_p50_ms"`
	ConvP99Ms     float64   `json:"convergence_p99_ms"`
	ConvMaxMs     float64   `json:"convergence_max_ms"`
	Reloads       int       `json:"reloads"`
	Pushes        int       `json:"pool_pushes"`
	RSSBytes      int64     `json:"daemon_rss_bytes"`

	countersReset bool
	load          *load.Runner
}

// slowest records the slowest request sent from before t0 until until.
func (r *result) slowest(t0, until time.Time) {
	var worst time.Duration
	for _, smp := range r.load.Result().Samples {
		if smp.At.After(t0.Add(-time.Second)) && smp.At.Before(until) {
			worst = max(worst, smp.Latency)
		}
	}
	r.SlowestMs = append(r.SlowestMs, ms(worst))
}

// firstAnswer records the time from started to the first answer of the
// backend with host name host at the front door, waiting up to 30 s.
func (r *result) firstAnswer(t *testing.T, host string, started time.Time) {
	t.Helper()
	eventuallyFast(t, 30*time.Second, host+" answers at the front door", func() error {
		var first time.Time
		for _, smp := range r.load.Result().Samples {
			if smp.Host == host && (first.IsZero() || smp.At.Add(smp.Latency).Before(first)) {
				first = smp.At.Add(smp.Latency)
			}
		}
		if first.IsZero() {
			return fmt.Errorf("no answer from %s yet", host)
		}
		r.FirstAnswerMs = append(r.FirstAnswerMs, ms(first.Sub(started)))
		return nil
	})
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func (r *result) converged(d time.Duration) {
	r.ConvergenceMs = append(r.ConvergenceMs, float64(d.Microseconds())/1000)
}

// run measures one scenario under load.
func (b *bench) run(name string, scenario func(r *result)) { b.runWith(name, 8, scenario) }

// runWith measures one scenario with that many load workers (0: no load).
func (b *bench) runWith(name string, workers int, scenario func(r *result)) {
	r := &result{Name: name}
	reloads0, pushes0 := b.passes()
	cfg := load.Config{Addr: b.s.publish, Workers: workers, Duration: 10 * time.Minute}
	if workers == 0 {
		cfg.Workers, cfg.MaxRequests = 1, 1 // a single request: the run is idle
	}
	lr := load.Start(b.t.Context(), cfg)
	r.load = lr
	start := time.Now()
	func() {
		defer func() {
			res := lr.Stop()
			r.Seconds = time.Since(start).Seconds()
			r.Requests, r.Non2xx, r.TransportErrors = res.Requests, res.Non2xx, res.Errors
			for k, n := range res.ErrorKind {
				r.ErrorKinds = append(r.ErrorKinds, fmt.Sprintf("%s x%d", k, n))
			}
			r.LatencyP50Ms = float64(res.Percentile(50).Microseconds()) / 1000
			r.LatencyP99Ms = float64(res.Percentile(99).Microseconds()) / 1000
			r.LatencyMaxMs = ms(res.Percentile(100))
		}()
		scenario(r)
	}()
	reloads1, pushes1 := b.passes()
	if r.countersReset {
		reloads0, pushes0 = 0, 0
	}
	r.Reloads, r.Pushes = reloads1-reloads0, pushes1-pushes0
	if r.RSSBytes == 0 {
		r.RSSBytes, _ = b.daemon.RSS()
	}
	if len(r.ConvergenceMs) > 0 {
		sorted := append([]float64(nil), r.ConvergenceMs...)
		sort.Float64s(sorted)
		r.ConvP50Ms = sorted[len(sorted)/2]
		r.ConvP99Ms = sorted[int(0.99*float64(len(sorted)-1)+0.5)]
		r.ConvMaxMs = sorted[len(sorted)-1]
	}
	b.results = append(b.results, r)
	b.t.Logf("%s: %d requests, %d non-2xx, %d transport errors, convergence %v ms, %d reloads, %d pushes",
		name, r.Requests, r.Non2xx, r.TransportErrors, r.ConvergenceMs, r.Reloads, r.Pushes)
}

// scale sets apache's replicas to n and returns how long nginx's pool took
// to hold n backends; it returns once they run, are registered and served.
func (b *bench) scale(n int) time.Duration {
	b.t.Helper()
	t0 := time.Now()
	out, err := b.s.cli("scale", "apache", strconv.Itoa(n))
	require.NoError(b.t, err, out)
	took := b.waitPool(t0, func(p map[string]bool) bool { return len(p) == n })
	b.s.waitConverged(n, 3*time.Minute)
	return took
}

// firstAnswerOfNew scales apache to n (one more than runs) and records,
// for the new backend, the time from its container's start to its first
// answer at the front door.
func (b *bench) firstAnswerOfNew(r *result, n int) {
	b.t.Helper()
	before := map[string]bool{}
	for _, c := range b.s.backends() {
		before[c.ID] = true
	}
	out, err := b.s.cli("scale", "apache", strconv.Itoa(n))
	require.NoError(b.t, err, out)
	var fresh containers.Container
	eventuallyFast(b.t, 60*time.Second, "the new backend started", func() error {
		for _, c := range b.s.backends() {
			if !before[c.ID] {
				full, err := b.s.docker.Inspect(b.t.Context(), c.ID)
				if err != nil {
					return err
				}
				if full.Started.IsZero() {
					return fmt.Errorf("%s not started yet", c.Name)
				}
				fresh = full
				return nil
			}
		}
		return errors.New("no new backend yet")
	})
	r.firstAnswer(b.t, store.HostLabel(fresh.Name), fresh.Started)
}

// passes reads the daemon's reload and push counters.
func (b *bench) passes() (reloads, pushes int) {
	resp, err := http.Get(b.metrics)
	if err != nil {
		b.t.Logf("metrics: %v", err)
		return 0, 0
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		for label, dst := range map[string]*int{`result="reload"`: &reloads, `result="push"`: &pushes} {
			if strings.HasPrefix(line, "upstreamd_render_passes_total{") && strings.Contains(line, label) {
				f, _ := strconv.ParseFloat(line[strings.LastIndex(line, " ")+1:], 64)
				*dst = int(f)
			}
		}
	}
	return reloads, pushes
}

// pool returns the addresses nginx's balancer holds for service.
func (b *bench) pool(service string) (map[string]bool, error) { return b.s.nginxPool(service) }

// waitPool polls nginx's pool of apache until cond holds; it returns the
// time since t0.
func (b *bench) waitPool(t0 time.Time, cond func(map[string]bool) bool) time.Duration {
	return b.waitPoolOf("apache", t0, cond)
}

func (b *bench) waitPoolOf(service string, t0 time.Time, cond func(map[string]bool) bool) time.Duration {
	b.t.Helper()
	var took time.Duration
	eventuallyFast(b.t, 30*time.Second, "nginx's pool of "+service, func() error {
		p, err := b.pool(service)
		if err != nil {
			return err
		}
		if !cond(p) {
			return fmt.Errorf("pool %v", p)
		}
		took = time.Since(t0)
		return nil
	})
	return took
}

func (b *bench) configHash() (string, error) {
	resp, err := http.Get(b.s.statusURL("/upstreamd/status"))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(body)), err
}

// waitHashChange polls nginx's config hash until it differs from before.
func (b *bench) waitHashChange(t0 time.Time, before string) time.Duration {
	var took time.Duration
	eventuallyFast(b.t, 30*time.Second, "a new config in nginx", func() error {
		h, err := b.configHash()
		if err != nil {
			return err
		}
		if h == before {
			return fmt.Errorf("still %s", h)
		}
		took = time.Since(t0)
		return nil
	})
	return took
}

// report prints the table and writes the JSON.
func (b *bench) report() {
	if len(b.results) == 0 {
		return
	}
	var sb strings.Builder
	tw := tabwriter.NewWriter(&sb, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SCENARIO\tREQUESTS\tNON-2XX\tERRORS\tCONV p50/p99/max ms\tRELOADS\tPUSHES\tRSS MB\tLAT p50/p99/max ms\tSLOWEST min/med/max ms\tFIRST ANSWER min/med/max ms")
	for _, r := range b.results {
		conv := "-"
		if len(r.ConvergenceMs) > 0 {
			conv = fmt.Sprintf("%.0f/%.0f/%.0f", r.ConvP50Ms, r.ConvP99Ms, r.ConvMaxMs)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%d\t%d\t%.1f\t%.1f/%.1f/%.0f\t%s\t%s\n", r.Name, r.Requests, r.Non2xx, r.TransportErrors,
			conv, r.Reloads, r.Pushes, float64(r.RSSBytes)/(1<<20), r.LatencyP50Ms, r.LatencyP99Ms, r.LatencyMaxMs,
			spread(r.SlowestMs), spread(r.FirstAnswerMs))
	}
	if err := tw.Flush(); err != nil { // into a strings.Builder: never
		b.t.Fatal(err)
	}
	fmt.Println(sb.String())
	b.t.Log("\n" + sb.String())
	out := os.Getenv("BENCH_OUT")
	if out == "" {
		out = filepath.Join("..", "bench-results.json")
	}
	data, err := json.MarshalIndent(struct {
		When    time.Time `json:"when"`
		Results []*result `json:"results"`
	}{time.Now().UTC(), b.results}, "", "  ")
	if err == nil {
		err = os.WriteFile(out, data, 0o644)
	}
	if err != nil {
		b.t.Errorf("write %s: %v", out, err)
		return
	}
	b.t.Logf("results written to %s", out)
}

// spread writes min/median/max of xs, or "-".
func spread(xs []float64) string {
	if len(xs) == 0 {
		return "-"
	}
	sorted := append([]float64(nil), xs...)
	sort.Float64s(sorted)
	return fmt.Sprintf("%.0f/%.0f/%.0f", sorted[0], sorted[len(sorted)/2], sorted[len(sorted)-1])
}

func metricsURL(s *stack) string {
	i := strings.Index(s.opts.extra, "listen = \"")
	addr := s.opts.extra[i+len("listen = \""):]
	return "http://" + addr[:strings.Index(addr, "\"")] + "/metrics"
}

// burst makes 100 registration changes in about a second: 50 backends of a
// service "burst" (not routed, so no request reaches their fake
// addresses), then their removal. A template that lists every service
// renders each change; the built-in one pushes the pools.
func burst(t *testing.T, s *stack) {
	t0 := time.Now()
	for i := 0; i < 100; i++ {
		addr := fmt.Sprintf("10.254.0.%d:80", i%50+1)
		if i < 50 {
			putFake(t, s, "burst", addr)
		} else {
			require.NoError(t, noRev(s.etcd.Delete(t.Context(), store.ServiceKey(store.DefaultPrefix, "burst", addr))))
		}
		waitFor(t, time.Until(t0.Add(time.Duration(i+1)*10*time.Millisecond))) // 100 changes in 1 s
	}
	t.Logf("burst of 100 changes took %s", time.Since(t0).Round(time.Millisecond))
	waitFor(t, time.Second) // let the last debounce window pass
}

func putFake(t *testing.T, s *stack, service, addr string) {
	host, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	reg := store.Registration{Host: "fake", IPv4: host, Port: p, Node: "bench", Project: s.project}
	require.NoError(t, noRev(s.etcd.Put(t.Context(), store.ServiceKey(store.DefaultPrefix, service, addr), reg.Encode(), 0)))
}

func putMany(t *testing.T, s *stack, service string, n int) {
	for i := 0; i < n; i++ {
		putFake(t, s, service, fmt.Sprintf("10.253.%d.%d:80", i/250, i%250+1))
	}
}

func deletePrefix(t *testing.T, s *stack, service string) {
	kvs, _, err := s.etcd.List(t.Context(), store.ServicePrefix(store.DefaultPrefix, service))
	require.NoError(t, err)
	for _, kv := range kvs {
		require.NoError(t, noRev(s.etcd.Delete(t.Context(), kv.Key)))
	}
}

// waitFor lets time pass in a scenario whose point is the passing of time
// (steady load, spacing of a burst).
func waitFor(t *testing.T, d time.Duration) {
	select {
	case <-t.Context().Done():
	case <-time.After(d):
	}
}

// eventuallyFast is eventually with a 2 ms poll, for timing measurements.
func eventuallyFast(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %s: %v", what, timeout, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// engineFloor creates and starts n Apache containers at once on the
// project's network (labelled for no project, so the daemon ignores them)
// and returns the time until each answered HTTP; they are removed after.
func engineFloor(t *testing.T, s *stack, n int) time.Duration {
	t.Helper()
	ids := make([]string, n)
	errs := make([]error, n)
	t0 := time.Now()
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			c, err := s.docker.Create(t.Context(), containers.CreateSpec{
				Name: fmt.Sprintf("floor-%s-%d", s.project, i), Image: "upstreamd/apache:latest",
				Network: s.project, ExposedPort: 80, Labels: map[string]string{"io.upstreamd.bench": "floor"}})
			if err != nil {
				errs[i] = err
				return
			}
			ids[i] = c.ID
			if errs[i] = s.docker.Start(t.Context(), c.ID); errs[i] != nil {
				return
			}
			full, err := s.docker.Inspect(t.Context(), c.ID)
			if err != nil {
				errs[i] = err
				return
			}
			hc := &http.Client{Timeout: time.Second}
			for time.Since(t0) < time.Minute {
				resp, err := hc.Get("http://" + net.JoinHostPort(full.IPs[s.project], "80") + "/")
				if err == nil {
					resp.Body.Close()
					if resp.StatusCode == http.StatusOK {
						return
					}
				}
				time.Sleep(10 * time.Millisecond) // polling the container: no event says it listens
			}
			errs[i] = fmt.Errorf("%s never answered", c.Name)
		})
	}
	wg.Wait()
	took := time.Since(t0)
	for _, id := range ids {
		if id != "" {
			_ = s.docker.Remove(context.Background(), id)
		}
	}
	require.NoError(t, errors.Join(errs...))
	return took
}
