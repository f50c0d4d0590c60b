package admin

import (
	"context"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/upstreamd/upstreamd/internal/health"
	"github.com/upstreamd/upstreamd/nginx"
	"github.com/upstreamd/upstreamd/render"
)

// sources is what the metrics and the health check read from the
// orchestrator at request time (an *orchestrator.Orchestrator).
type sources interface {
	BackendStates() map[string]map[health.State]int
	Problems() []string
}

// Metrics are the daemon's Prometheus metrics, fed by the render
// Controller's outcomes and the ACME orders and read from the orchestrator
// when scraped, and the problems /healthz answers with.
type Metrics struct {
	reg     *prometheus.Registry
	passes  *prometheus.CounterVec
	took    prometheus.Histogram
	confirm prometheus.Histogram
	orders  *prometheus.CounterVec

	mu        sync.Mutex
	renderErr error // the last render pass's failure; nil once one works
}

// NewMetrics returns the metrics, every render result and order result
// at zero.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		passes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "upstreamd_render_passes_total",
			Help: "Render passes by result: reload (a new config went live), push (pools changed without reload), unchanged, rejected (nginx -t said no), refused (would empty a pool this node finds healthy), waiting (no registrations read or no proxy running yet), error (the template failed, or the proxy could not be reached, refused a push, a delivery or a HUP, or did not confirm a reload).",
		}, []string{"result"}),
		took: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "upstreamd_render_pass_seconds",
			Help:    "Time of render passes that changed something: render, push, stage, check, swap, HUP and reload confirmation.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
		}),
		confirm: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "upstreamd_reload_confirm_seconds",
			Help:    "Time from HUP until nginx answered with the new config's hash.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
		}),
		orders: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "upstreamd_acme_orders_total",
			Help: "ACME orders by this daemon, by result: issued (stored in etcd), failed (retried with backoff; the log says why).",
		}, []string{"result"}),
	}
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.passes, m.took, m.confirm, m.orders)
	m.orders.WithLabelValues("issued")
	m.orders.WithLabelValues("failed")
	for _, r := range render.Results() {
		m.passes.WithLabelValues(string(r)) // exported at zero from the start
	}
	return m
}

// Observe records one render pass, under its result (the render
// Controller's Observe).
func (m *Metrics) Observe(o render.Outcome) {
	m.passes.WithLabelValues(string(o.Result)).Inc()
	var failed error
	if o.Result == render.ResultError {
		failed = o.Err
	}
	m.mu.Lock()
	m.renderErr = failed
	m.mu.Unlock()
	if o.Result == render.ResultReload || o.Result == render.ResultPush {
		m.took.Observe(o.Took.Seconds())
	}
	if o.Confirmed > 0 {
		m.confirm.Observe(o.Confirmed.Seconds())
	}
}

// ObserveOrder records one ACME order (the certs Manager's Observe).
func (m *Metrics) ObserveOrder(_ string, err error) {
	if err != nil {
		m.orders.WithLabelValues("failed").Inc()
		return
	}
	m.orders.WithLabelValues("issued").Inc()
}

// certExpiryDesc is upstreamd_cert_expiry_seconds, per host name a served
// certificate names.
var certExpiryDesc = prometheus.NewDesc("upstreamd_cert_expiry_seconds",
	"Seconds until the certificate the proxy serves for host expires (negative: expired), by source: file ([[tls.certificate]]), acme or import (kept in etcd).",
	[]string{"host", "source"}, nil)

// certsCollector reads the served certificates when scraped; a host named
// by several is reported for the first, the one nginx picks.
type certsCollector struct{ list func() []Certificate }

func (c certsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- certExpiryDesc }

func (c certsCollector) Collect(ch chan<- prometheus.Metric) {
	seen := map[string]bool{}
	for _, cert := range c.list() {
		for _, h := range cert.Names {
			if !seen[h] {
				seen[h] = true
				ch <- prometheus.MustNewConstMetric(certExpiryDesc, prometheus.GaugeValue, time.Until(cert.NotAfter).Seconds(), h, cert.Source)
			}
		}
	}
}

// backendsDesc is upstreamd_backends: computed at each scrape from one
// reading, so two scrapes at once cannot mix their counts.
var backendsDesc = prometheus.NewDesc("upstreamd_backends",
	"Backends probed by this daemon, by service and health state (healthy, pending, unhealthy).",
	[]string{"service", "state"}, nil)

// backendsCollector reads the backend states when scraped.
type backendsCollector struct{ src sources }

func (c backendsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- backendsDesc }

func (c backendsCollector) Collect(ch chan<- prometheus.Metric) {
	for service, states := range c.src.BackendStates() {
		for state, n := range states {
			ch <- prometheus.MustNewConstMetric(backendsDesc, prometheus.GaugeValue, float64(n), service, string(state))
		}
	}
}

// Ejections, as nginx's balancer counts them, read at each scrape.
var (
	ejectionsDesc = prometheus.NewDesc("upstreamd_nginx_ejections_total",
		"Peers nginx's balancer skipped after they failed to connect or timed out, since nginx started (dynamic pools only).", nil, nil)
	ejectedDesc = prometheus.NewDesc("upstreamd_nginx_ejected_peers",
		"Peers nginx's balancer skips now after a failure (for 5 s, or until a push brings them back).", nil, nil)
	ejectedHostsDesc = prometheus.NewDesc("upstreamd_nginx_ejected_hosts",
		"IPs nginx's balancer skips whole now, every peer at them, after a connect there timed out (a vanished host).", nil, nil)
)

// ejections reads what the balancer of the running proxy says, or fails.
type ejections func(ctx context.Context) (nginx.Ejections, error)

// ejectionsCollector asks the proxy at each scrape; nothing is exported
// while it cannot answer (no proxy, static pools).
type ejectionsCollector struct{ read ejections }

func (c ejectionsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- ejectionsDesc
	ch <- ejectedDesc
	ch <- ejectedHostsDesc
}

func (c ejectionsCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	e, err := c.read(ctx)
	if err != nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(ejectionsDesc, prometheus.CounterValue, float64(e.Total))
	ch <- prometheus.MustNewConstMetric(ejectedDesc, prometheus.GaugeValue, float64(len(e.Down)))
	ch <- prometheus.MustNewConstMetric(ejectedHostsDesc, prometheus.GaugeValue, float64(len(e.DownHosts)))
}

// Problems lists what is wrong now: the orchestrator's, then the
// renderer's last failure.
func (m *Metrics) Problems(src sources) []string {
	out := src.Problems()
	m.mu.Lock()
	if m.renderErr != nil {
		out = append(out, "render: "+m.renderErr.Error())
	}
	m.mu.Unlock()
	sort.Strings(out)
	return out
}

// Handler answers /metrics: the daemon's metrics, the backends' states
// read from src, when read is not nil the proxy's ejections, and when
// served is not nil the expiry of the certificates the proxy serves, read
// at each scrape.
func (m *Metrics) Handler(src sources, read func(context.Context) (nginx.Ejections, error), served func() []Certificate) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(backendsCollector{src: src})
	if served != nil {
		reg.MustRegister(certsCollector{list: served})
	}
	if read != nil {
		reg.MustRegister(ejectionsCollector{read: read})
	}
	return promhttp.HandlerFor(prometheus.Gatherers{m.reg, reg}, promhttp.HandlerOpts{})
}
