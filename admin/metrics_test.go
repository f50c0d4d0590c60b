package admin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/upstreamd/upstreamd/internal/events"
	"github.com/upstreamd/upstreamd/internal/health"
	"github.com/upstreamd/upstreamd/nginx"
	"github.com/upstreamd/upstreamd/render"
)

// TestMetricsObserve: every pass the renderer reports counts once, under
// its result; only the passes that changed something are timed, and only
// an error is a problem.
func TestMetricsObserve(t *testing.T) {
	tests := []struct {
		name      string
		o         render.Outcome
		want      string
		wantTimed bool
		wantProb  string
	}{
		{name: "reload", o: render.Outcome{Result: render.ResultReload, Changed: true, Pushed: true}, want: "reload", wantTimed: true},
		{name: "push", o: render.Outcome{Result: render.ResultPush, Pushed: true}, want: "push", wantTimed: true},
		{name: "nothing to do", o: render.Outcome{Result: render.ResultUnchanged}, want: "unchanged"},
		{name: "nginx -t said no", o: render.Outcome{Result: render.ResultRejected, Pushed: true, Err: &nginx.CheckError{Message: "bad"}}, want: "rejected"},
		{name: "would empty a pool", o: render.Outcome{Result: render.ResultRefused, Pushed: true, Err: fmt.Errorf("%w of apache", render.ErrWouldEmpty)}, want: "refused"},
		{name: "no proxy yet", o: render.Outcome{Result: render.ResultWaiting, Err: fmt.Errorf("%w: no running proxy", render.ErrNotReady)}, want: "waiting"},
		{name: "HUP failed", o: render.Outcome{Result: render.ResultError, Changed: true, Err: errors.New("deliver config: reload: timeout")}, want: "error",
			wantProb: "render: deliver config: reload: timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := NewMetrics()
			m.Observe(tt.o)
			for _, r := range []string{"reload", "push", "unchanged", "rejected", "refused", "waiting", "error"} {
				want := 0.0
				if r == tt.want {
					want = 1
				}
				if got := testutil.ToFloat64(m.passes.WithLabelValues(r)); got != want {
					t.Errorf("render_passes_total{result=%q} = %v; want %v", r, got, want)
				}
			}
			if got := histCount(t, m) == 1; got != tt.wantTimed {
				t.Errorf("timed = %v; want %v", got, tt.wantTimed)
			}
			if got := strings.Join(m.Problems(fakeSources{}), "|"); got != tt.wantProb {
				t.Errorf("problems = %q; want %q", got, tt.wantProb)
			}
		})
	}
}

// histCount is how many passes upstreamd_render_pass_seconds counted.
func histCount(t *testing.T, m *Metrics) uint64 {
	t.Helper()
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "upstreamd_render_pass_seconds" {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	return 0
}

// fakeSources is the orchestrator as the metrics read it.
type fakeSources struct {
	states   map[string]map[health.State]int
	problems []string
}

func (f fakeSources) BackendStates() map[string]map[health.State]int { return f.states }
func (f fakeSources) Problems() []string                             { return append([]string(nil), f.problems...) }

func TestHealthz(t *testing.T) {
	tests := []struct {
		name     string
		problems []string
		render   render.Outcome
		want     int
		wantBody []string
	}{
		{name: "all well", render: render.Outcome{Result: render.ResultPush, Pushed: true}, want: http.StatusOK, wantBody: []string{"ok"}},
		{name: "nginx rejected a config: still healthy", render: render.Outcome{Result: render.ResultRejected, Err: &nginx.CheckError{Message: "x"}}, want: http.StatusOK},
		{name: "docker failing", problems: []string{"docker: reconcile failing: engine down"}, want: http.StatusServiceUnavailable,
			wantBody: []string{"docker: reconcile failing: engine down"}},
		{name: "etcd without a lease", problems: []string{"etcd: this node holds no lease"}, want: http.StatusServiceUnavailable,
			wantBody: []string{"etcd: this node holds no lease"}},
		{name: "render failing", render: render.Outcome{Result: render.ResultError, Err: errors.New("push pools: status 403")}, want: http.StatusServiceUnavailable,
			wantBody: []string{"render: push pools: status 403"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := NewMetrics()
			m.Observe(tt.render)
			src := fakeSources{problems: tt.problems}
			srv := httptest.NewServer(NewServer(Config{Problems: func() []string { return m.Problems(src) }, Journal: events.New(0)}))
			defer srv.Close()
			resp, err := http.Get(srv.URL + "/healthz")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("status %d; want %d (%s)", resp.StatusCode, tt.want, body)
			}
			for _, w := range tt.wantBody {
				if !strings.Contains(string(body), w) {
					t.Errorf("body %q; want it to say %q", body, w)
				}
			}
		})
	}
}

// TestBackendsMetric: every state is exported, unhealthy included, and
// concurrent scrapes each see one consistent reading.
func TestBackendsMetric(t *testing.T) {
	m := NewMetrics()
	src := fakeSources{states: map[string]map[health.State]int{"apache": {health.Healthy: 2, health.Pending: 1, health.Unhealthy: 1}}}
	srv := httptest.NewServer(m.Handler(src, nil, nil))
	defer srv.Close()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body, err := scrape(srv.URL)
			if err != nil {
				t.Error(err)
				return
			}
			for _, want := range []string{
				`upstreamd_backends{service="apache",state="healthy"} 2`,
				`upstreamd_backends{service="apache",state="pending"} 1`,
				`upstreamd_backends{service="apache",state="unhealthy"} 1`,
			} {
				if !strings.Contains(body, want) {
					t.Errorf("scrape lacks %q", want)
				}
			}
		}()
	}
	wg.Wait()
}

// TestEjectionsMetric: the balancer's ejections are exported as nginx
// answers them, and not at all while it cannot answer.
func TestEjectionsMetric(t *testing.T) {
	for _, tt := range []struct {
		name string
		read ejections
		want []string
		not  []string
	}{
		{
			name: "answers",
			read: func(context.Context) (nginx.Ejections, error) {
				return nginx.Ejections{Total: 7, Down: []string{"172.18.0.3:80"}}, nil
			},
			want: []string{"upstreamd_nginx_ejections_total 7", "upstreamd_nginx_ejected_peers 1"},
		},
		{
			name: "no proxy",
			read: func(context.Context) (nginx.Ejections, error) {
				return nginx.Ejections{}, errors.New("no proxy running")
			},
			not: []string{"upstreamd_nginx_ejections_total", "upstreamd_nginx_ejected_peers"},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(NewMetrics().Handler(fakeSources{}, tt.read, nil))
			defer srv.Close()
			body, err := scrape(srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				if !strings.Contains(body, w) {
					t.Errorf("/metrics lacks %q", w)
				}
			}
			for _, w := range tt.not {
				if strings.Contains(body, w) {
					t.Errorf("/metrics has %q", w)
				}
			}
		})
	}
}

// TestCertExpiryMetric: each host a served certificate names is exported
// once, for the first certificate naming it (the one nginx picks), with its
// source.
func TestCertExpiryMetric(t *testing.T) {
	far := time.Now().Add(90 * 24 * time.Hour)
	served := func() []Certificate {
		return []Certificate{
			{Source: "file", Names: []string{"a.example", "b.example"}, NotAfter: far},
			{Source: "acme", Names: []string{"b.example", "c.example"}, NotAfter: far},
		}
	}
	srv := httptest.NewServer(NewMetrics().Handler(fakeSources{}, nil, served))
	defer srv.Close()
	body, err := scrape(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`upstreamd_cert_expiry_seconds{host="a.example",source="file"} 7.7`,
		`upstreamd_cert_expiry_seconds{host="b.example",source="file"} 7.7`,
		`upstreamd_cert_expiry_seconds{host="c.example",source="acme"} 7.7`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if n := strings.Count(body, `host="b.example"`); n != 1 {
		t.Errorf("b.example exported %d times; want once", n)
	}
}

// scrape GETs /metrics of the server at url.
func scrape(url string) (string, error) {
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return string(body), err
}
