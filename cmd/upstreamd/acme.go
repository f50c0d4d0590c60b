package main

import (
	"context"
	"net"
	"strconv"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/certs"
	"github.com/upstreamd/upstreamd/nginx"
	"github.com/upstreamd/upstreamd/orchestrator"
	"github.com/upstreamd/upstreamd/render"
)

// wireACME builds the ACME orderer and, with a proxy on every node, the
// Acker; both reach this node's proxy as a responder.
func (d *daemon) wireACME(cfg *Config, listen int, log zerolog.Logger) {
	proxy := responder{orch: d.orch, ctrl: d.ctrl, listen: listen}
	log = log.With().Str("component", "acme").Logger()
	var proxyNodes func(context.Context) ([]string, error)
	if cfg.Proxy.Placement == orchestrator.PlacementEvery {
		// Every node runs a proxy the CA may reach: each acknowledges
		// the answers its proxy serves, and the orderer waits for all.
		proxyNodes = func(ctx context.Context) ([]string, error) { return liveNodes(ctx, d.etcd, cfg.Project) }
		d.acks = certs.NewAcker(certs.AckerConfig{Project: cfg.Project, Node: cfg.Node, Cache: d.certs, Store: d.etcd,
			Responder: proxy, Logger: log})
	}
	d.acme = certs.NewManager(certs.ManagerConfig{
		Project: cfg.Project, Node: cfg.Node,
		Directory: cfg.ACME.Directory, Email: cfg.ACME.Email, Roots: cfg.acmeRoots, Hosts: cfg.ACME.Hosts,
		Store: d.etcd, Cache: d.certs,
		Responder:  proxy,
		ProxyNodes: proxyNodes,
		Observe:    d.metrics.ObserveOrder,
		Logger:     log,
	})
}

// responder is this node's proxy as the CA's validation reaches it: the
// orchestrator says whether and where it runs, the render Controller
// when a config serving an answer is live there, and nginx asks it for
// the answer as the CA will.
type responder struct {
	orch   *orchestrator.Orchestrator
	ctrl   *render.Controller
	listen int // the port the proxy serves HTTP on, at its address
}

var _ certs.Responder = responder{}

func (r responder) Running() (bool, <-chan struct{}) {
	p, changed := r.orch.Proxy()
	return p.ID != "", changed
}

func (r responder) ServesAnswer(ctx context.Context, host, token, keyAuth string) error {
	if err := r.ctrl.WaitAnswerLive(ctx, token); err != nil {
		return err
	}
	p, _ := r.orch.Proxy()
	if p.IP == "" {
		return nil // not reachable from here: the pass's word is all there is
	}
	return nginx.WaitAnswer(ctx, net.JoinHostPort(p.IP, strconv.Itoa(r.listen)), host, token, keyAuth)
}
