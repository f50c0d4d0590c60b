// Package orchestrator keeps the Docker host and etcd in step with the
// spec: the single-host reconciler.
//
// An Orchestrator joins runnables that each own one job: the reconciler
// (reconcile.go, with backends.go and proxy.go) compares the spec and this
// node's share of the replicas with the containers found by label and acts
// only on the difference, in classify, a pure planService and apply;
// Docker events, cluster changes and a slow resync only wake it. Health
// probes each running backend (one probe in flight, rise/fall hysteresis);
// the drainer takes backends out of service gracefully; the registrar
// mirrors the healthy set into etcd under the node's lease. The ledger is
// the one record of the containers that died or are draining although a
// listing may still show them running.
//
// Everything this daemon agrees on with the other daemons of its project
// is the cluster package's: the Orchestrator runs a cluster.Member (the
// node and its lease, the replica overrides, the placement of replicas on
// nodes, the proxy's election) and asks it how many backends of each
// service to run here (its share) and whether to run the proxy. Render
// consumes the Orchestrator as its Host: where the proxy runs, whether
// this node has healthy backends, and readiness.
package orchestrator

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"time"

	"github.com/upstreamd/upstreamd/cluster"
	"github.com/upstreamd/upstreamd/containers"
)

// Spec is the desired state of one project.
type Spec struct {
	// Project names the deployment; it labels every container and prefixes names.
	Project string
	// Network is the bridge network backends and the proxy join.
	Network string
	// Node identifies this daemon in registrations; unique per daemon.
	Node string
	// Prefix is the etcd registrations prefix, e.g. /services.
	Prefix string
	// Advertise says which address of a backend is registered, probed and
	// dialled: AdvertiseContainer (its address on Network; one host) or
	// AdvertiseHost (its port published on NodeAddress; a cluster).
	Advertise string
	// NodeAddress is this node's address other hosts reach it at.
	NodeAddress string
	// Proxy describes the nginx container and its data volume.
	Proxy ProxySpec
	// Services are the backend services, in order.
	Services []ServiceSpec
}

// ProxySpec describes the proxy and its data-volume container.
type ProxySpec struct {
	// Image is the nginx image; the data-volume container uses it too.
	Image string
	// Publish is the host address nginx is published on, e.g. 127.0.0.1:8080.
	Publish string
	// PublishTLS is the host address nginx's TLS port (TLSPort) is
	// published on; empty: no TLS.
	PublishTLS string
	// Port is the port nginx listens on inside the container.
	Port int
	// ConfigDir is the directory the data-volume container holds, e.g. /etc/nginx.
	ConfigDir string
	// ConfigPath is the rendered file, inside ConfigDir. Until the first
	// render it holds a placeholder that answers 503 (see placeholder).
	ConfigPath string
	// Limits are optional resource limits.
	Limits Limits
}

// ServiceSpec describes one replicated backend service.
type ServiceSpec struct {
	Name  string
	Image string
	// Replicas counts the cluster: each live node runs its share.
	Replicas int
	// MaxPerNode bounds the replicas one node runs (the seed's
	// Conflicts=); zero means unlimited.
	MaxPerNode int
	// Port is the container port the backend serves on.
	Port int
	// Env and Cmd are passed to the container; Cmd empty means the image's.
	Env []string
	Cmd []string
	// Health is the probe.
	Health HealthSpec
	// StopGrace is how long a stopping backend gets before SIGKILL.
	StopGrace time.Duration
	// Restart is the engine's restart policy for the backends: "no" (the
	// default: upstreamd replaces dead backends with fresh containers),
	// "on-failure", "unless-stopped" or "always" (the engine restarts them,
	// also while the daemon is down).
	Restart string
	// Limits are optional resource limits.
	Limits Limits
}

// Limits are container resource limits; zero means unlimited.
type Limits struct {
	MemoryBytes int64
	NanoCPUs    int64
}

// HealthSpec is an HTTP probe: GET Path must answer 2xx or 3xx within Timeout.
type HealthSpec struct {
	Path     string
	Interval time.Duration
	Timeout  time.Duration
	// Rise is the consecutive passes that bring a failed backend back; a new
	// backend is registered on its first pass.
	Rise int
	// Fall is the consecutive failures that deregister a healthy backend.
	Fall int
	// StartPeriod is how long after its container was created a backend
	// may take to answer its first probe: until then it is probed every
	// StartProbeInterval and its failures do not count. Zero: none.
	StartPeriod time.Duration
}

// StartProbeInterval is how often a backend in its start period is probed:
// it is registered within this long of answering.
const StartProbeInterval = 50 * time.Millisecond

// Defaults the spec file applies, and the orchestrator where the spec says
// nothing (a backend of a service removed from the spec, the proxy).
const (
	// DefaultStopGrace is the time a stopping container gets before SIGKILL.
	DefaultStopGrace = 10 * time.Second
	// DefaultRestart is the backends' restart policy: upstreamd replaces
	// dead backends itself.
	DefaultRestart = "no"
)

// Advertise modes.
const (
	AdvertiseContainer = "container"
	AdvertiseHost      = "host"
)

// backendAddr is where nginx dials a backend listening on port: its
// address on the project's network, or, with AdvertiseHost, the node's
// address and the host port the engine published port on. ok is false
// while the container has no such address (not started, not published).
func (s Spec) backendAddr(c containers.Container, port int) (ip string, p int, ok bool) {
	if s.Advertise == AdvertiseHost {
		hp := c.Published[port]
		return s.NodeAddress, hp, hp > 0 && s.NodeAddress != ""
	}
	ip = c.IPs[s.Network]
	return ip, port, ip != ""
}

// serviceNames lists the services in spec order.
func (s Spec) serviceNames() []string {
	out := make([]string, 0, len(s.Services))
	for _, svc := range s.Services {
		out = append(out, svc.Name)
	}
	return out
}

// clusterServices is what the cluster places of each service.
func (s Spec) clusterServices() []cluster.Service {
	out := make([]cluster.Service, 0, len(s.Services))
	for _, svc := range s.Services {
		out = append(out, cluster.Service{Name: svc.Name, Replicas: svc.Replicas, MaxPerNode: svc.MaxPerNode})
	}
	return out
}

// specHash is the io.upstreamd.spec label: a short hash of what decides a
// container's configuration, so a changed spec is noticed after restarts.
func specHash(c containers.CreateSpec) string {
	c.Name, c.Hostname = "", "" // per-instance, not part of the spec
	b, err := json.Marshal(c)
	if err != nil {
		panic(err) // plain data always marshals
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:6])
}

// Digest is a short hash of the spec without what differs from node to
// node (the node's name and address): the nodes of one project announce
// it, and a node running another spec is pointed out.
func (s Spec) Digest() string {
	s.Node, s.NodeAddress = "", ""
	b, err := json.Marshal(s)
	if err != nil {
		panic(err) // plain data always marshals
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:6])
}
