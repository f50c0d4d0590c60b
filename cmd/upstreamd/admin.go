package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sort"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/admin"
	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/render"
	"github.com/upstreamd/upstreamd/store"
)

// listenAdmin opens the admin listener; nil when it is off. The default
// address, taken by another daemon of this host (another project), is
// said and skipped; an address the spec names must be had.
func (d *daemon) listenAdmin(log zerolog.Logger) (net.Listener, error) {
	listen, explicit := d.cfg.AdminListen()
	if listen == "" {
		return nil, nil
	}
	if d.cfg.Node.Metrics.Listen != "" {
		log.Warn().Str("listen", listen).Msg("[metrics] listen is now admin.listen ([admin] listen = ...): it serves /metrics as before, and the status page, the JSON API and /readyz")
	}
	l, err := net.Listen("tcp", listen)
	if errors.Is(err, syscall.EADDRINUSE) && !explicit {
		log.Warn().Str("listen", listen).Msg("the default admin address is in use (another upstreamd on this host?): no status page, API or /metrics; set [admin] listen to another port, or \"\" to say so")
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("admin.listen %s: %w", listen, err)
	}
	return l, nil
}

// observePass records a render pass in the metrics and the history.
func (d *daemon) observePass(o render.Outcome) {
	d.metrics.Observe(o)
	d.history.Observe(o)
}

// adminServer is the admin listener's handler.
func (d *daemon) adminServer() *admin.Server {
	acfg := d.cfg.AdminConfig(d.files)
	acfg.Status = d.status
	acfg.Problems = func() []string { return d.metrics.Problems(d.orch) }
	acfg.Ready = func() bool {
		select {
		case <-d.orch.Ready():
			return true
		default:
			return false
		}
	}
	acfg.Journal = d.journal
	acfg.Metrics = d.metrics.Handler(d.orch, d.ejections, d.certificates)
	acfg.Logger = d.log.With().Str("component", "admin").Logger()
	return admin.NewServer(acfg)
}

// status assembles GET /api/v1/status from what the daemon holds: the
// health of its backends, the registrations it watches, what nginx was
// given; and the nodes and the leader, read from etcd.
func (d *daemon) status(ctx context.Context) admin.Status {
	st := admin.Status{
		Project: d.cfg.Project.Name, Node: d.cfg.Node.Name, Version: version, Started: d.started, Now: time.Now(),
		Problems: d.metrics.Problems(d.orch),
		Nodes:    []admin.Node{},
	}
	if st.Problems == nil {
		st.Problems = []string{}
	}
	select {
	case <-d.orch.Ready():
		st.Ready = len(st.Problems) == 0
	default:
	}
	cl, clErr := d.clusterState.Read(ctx, d.etcd, d.cfg.Project.Name)
	if clErr != nil {
		st.NodesError = clErr.Error()
	}
	snap, _ := d.registrations.Snapshot()
	served := d.history.Served()
	local, _ := d.orch.Local()
	backends := d.orch.Backends()
	for _, svc := range d.cfg.Project.Service {
		s := admin.Service{Name: svc.Name, Replicas: *svc.Replicas, Local: local[svc.Name],
			Backends: []admin.Backend{}, Registered: []admin.Registration{}, Served: served[svc.Name]}
		if n, ok := cl.Overrides[svc.Name]; ok {
			s.Replicas = n
		}
		if s.Served == nil {
			s.Served = []string{}
		}
		registered := map[string]bool{}
		for _, e := range snap.Entries {
			if e.Service != svc.Name || !store.InProjects(e.Reg.Project, d.cfg.Projects()) {
				continue
			}
			registered[e.Addr] = true
			s.Registered = append(s.Registered, admin.Registration{Key: e.Key, Addr: e.Addr, Container: e.Reg.Host, Node: e.Reg.Node, Project: e.Reg.Project})
		}
		for _, b := range backends {
			if b.Service != svc.Name {
				continue
			}
			ab := admin.Backend{Container: b.Container, ID: b.ID, Addr: b.Addr, Node: b.Node, State: b.State, Since: b.Since,
				ProbeMS: float64(b.Took.Microseconds()) / 1000, ProbeError: b.Error,
				Registered: registered[b.Addr], Served: slices.Contains(s.Served, b.Addr)}
			if !b.LastProbe.IsZero() {
				t := b.LastProbe
				ab.LastProbe = &t
			}
			s.Backends = append(s.Backends, ab)
		}
		st.Services = append(st.Services, s)
	}
	if p := d.orch.Proxy(); p.ID != "" {
		st.Proxy.Running, st.Proxy.ID = true, containers.ShortID(p.ID)
		st.Proxy.Container = d.cfg.Project.Name + "-proxy"
	}
	d.history.Fill(&st.Proxy)
	if cl.Leader != nil {
		st.Leader = &admin.Leader{Node: cl.Leader.Node, Address: cl.Leader.Address}
	}
	for _, a := range cl.Nodes {
		st.Nodes = append(st.Nodes, admin.Node{Name: a.Node, Host: a.Host, Address: a.Address, Version: a.Version, Started: a.Started,
			Leader: cl.Leader != nil && cl.Leader.Node == a.Node, Slots: cl.Slots[a.Node]})
	}
	sort.Slice(st.Nodes, func(i, j int) bool { return st.Nodes[i].Name < st.Nodes[j].Name })
	d.fillCerts(&st)
	return st
}

// certificates lists the certificates the proxy serves, files first, for
// the status and the metrics.
func (d *daemon) certificates() []admin.Certificate {
	var out []admin.Certificate
	for _, c := range d.files.Certs {
		out = append(out, admin.Certificate{Source: "file", Names: c.Leaf.DNSNames, NotAfter: c.Leaf.NotAfter})
	}
	if d.certs != nil {
		for _, c := range d.certs.Served(d.files.ACMEHosts) {
			out = append(out, admin.Certificate{Source: c.Source, Names: c.Names(), NotAfter: c.Leaf.NotAfter})
		}
	}
	return out
}

// fillCerts adds the served certificates and the ACME hosts to st.
func (d *daemon) fillCerts(st *admin.Status) {
	st.Certificates = append(st.Certificates, d.certificates()...)
	if d.acme == nil {
		return
	}
	failing := d.acme.Failing()
	for _, h := range d.acme.Hosts() {
		a := admin.ACMEHost{Host: h}
		if f, ok := failing[h]; ok {
			next := f.Next
			a.Error, a.Failures, a.NextTry = f.Err, f.Count, &next
		}
		st.ACME = append(st.ACME, a)
	}
}
