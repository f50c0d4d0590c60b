package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/upstreamd/upstreamd/nginx"
	"github.com/upstreamd/upstreamd/orchestrator"
	"github.com/upstreamd/upstreamd/render"
)

// metrics are the daemon's Prometheus metrics, fed by the render
// controller's outcomes and read from the health manager.
type metrics struct {
	reg      *prometheus.Registry
	passes   *prometheus.CounterVec
	took     prometheus.Histogram
	confirm  prometheus.Histogram
	backends *prometheus.GaugeVec
}

func newMetrics() *metrics {
	m := &metrics{
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
		backends: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "upstreamd_backends",
			Help: "Backends probed by this daemon, by service and health state.",
		}, []string{"service", "state"}),
	}
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.passes, m.took, m.confirm, m.backends)
	for _, r := range []string{"reload", "push", "unchanged", "rejected", "refused", "waiting", "error"} {
		m.passes.WithLabelValues(r) // exported at zero from the start
	}
	return m
}

// observe records one render pass.
func (m *metrics) observe(o render.Outcome) {
	switch {
	case errors.Is(o.Err, nginx.ErrCheckFailed):
		m.passes.WithLabelValues("rejected").Inc()
	case errors.Is(o.Err, render.ErrNotReady):
		m.passes.WithLabelValues("waiting").Inc()
	case errors.Is(o.Err, render.ErrWouldEmpty):
		m.passes.WithLabelValues("refused").Inc()
	case o.Err != nil:
		m.passes.WithLabelValues("error").Inc()
	case o.Changed:
		m.passes.WithLabelValues("reload").Inc()
	case o.Pushed:
		m.passes.WithLabelValues("push").Inc()
	default:
		m.passes.WithLabelValues("unchanged").Inc()
	}
	if o.Err == nil && (o.Changed || o.Pushed) {
		m.took.Observe(o.Took.Seconds())
	}
	if o.Confirmed > 0 {
		m.confirm.Observe(o.Confirmed.Seconds())
	}
}

// updateBackends sets the backend gauges from the health manager.
func (m *metrics) updateBackends(healthy, pending []orchestrator.Target) {
	m.backends.Reset()
	for _, t := range healthy {
		m.backends.WithLabelValues(t.Service, "healthy").Inc()
	}
	for _, t := range pending {
		m.backends.WithLabelValues(t.Service, "pending").Inc()
	}
}

// serve answers /metrics and /healthz on addr until ctx ends.
func (m *metrics) serve(ctx context.Context, addr string, backends func() (healthy, pending []orchestrator.Target)) error {
	mux := http.NewServeMux()
	metricsHandler := promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
	mux.Handle("/metrics", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.updateBackends(backends())
		metricsHandler.ServeHTTP(w, r)
	}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
