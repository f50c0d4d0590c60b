package main

import (
	"context"
	"net"
	"strconv"

	"github.com/upstreamd/upstreamd/certs"
	"github.com/upstreamd/upstreamd/cluster"
	"github.com/upstreamd/upstreamd/nginx"
	"github.com/upstreamd/upstreamd/orchestrator"
	"github.com/upstreamd/upstreamd/render"
)

// wireACME builds the ACME orderer and, with a proxy on every node, the
// Acker; both reach this node's proxy as a responder.
func (d *daemon) wireACME(mcfg certs.ManagerConfig) {
	cfg, log := d.cfg, d.log.With().Str("component", "acme").Logger()
	proxy := responder{orch: d.orch, ctrl: d.ctrl, listen: cfg.Project.Proxy.Port}
	if cfg.Project.Proxy.Placement == orchestrator.PlacementEvery {
		// Every node runs a proxy the CA may reach: each acknowledges
		// the answers its proxy serves, and the orderer waits for all.
		mcfg.ProxyNodes = func(ctx context.Context) ([]string, error) { return cluster.LiveNodes(ctx, d.etcd, cfg.Project.Name) }
		d.acks = certs.NewAcker(certs.AckerConfig{Project: cfg.Project.Name, Node: cfg.Node.Name, Cache: d.certs, Store: d.etcd,
			Responder: proxy, Logger: log})
	}
	mcfg.Store = d.etcd
	mcfg.Cache = d.certs
	mcfg.Responder = proxy
	mcfg.Observe = d.metrics.ObserveOrder
	mcfg.Logger = log
	d.acme = certs.NewManager(mcfg)
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

func (r responder) Running() bool { return r.orch.Proxy().ID != "" }

func (r responder) SubscribeRunning() <-chan struct{} { return r.orch.SubscribeProxy() }

func (r responder) ServesAnswer(ctx context.Context, host, token, keyAuth string) error {
	if err := r.ctrl.WaitAnswerLive(ctx, token); err != nil {
		return err
	}
	p := r.orch.Proxy()
	if p.IP == "" {
		return nil // not reachable from here: the pass's word is all there is
	}
	return nginx.WaitAnswer(ctx, net.JoinHostPort(p.IP, strconv.Itoa(r.listen)), host, token, keyAuth)
}
