// Package admin is upstreamd's operator surface: one HTTP listener with
// the Prometheus metrics, health and readiness checks, a JSON API (the
// daemon's status and its events, listed or streamed), and a live status
// page; and the client the CLI's `status --json` and `events` use.
//
// The daemon fills a Status at each request from what it holds in memory
// (the health of its backends, the registrations it watches, the config
// nginx took) and from etcd (the nodes, the leader); the events come from
// its events.Journal. Nothing here changes the daemon's state.
package admin

import (
	"time"

	"github.com/upstreamd/upstreamd/internal/events"
	"github.com/upstreamd/upstreamd/internal/health"
)

// APIVersion is the path prefix of the JSON API.
const APIVersion = "/api/v1"

// Status is GET /api/v1/status: everything an operator asks first.
type Status struct {
	Project string    `json:"project"`
	Node    string    `json:"node"`
	Version string    `json:"version"`
	Started time.Time `json:"started"`
	Now     time.Time `json:"now"`
	// Ready: etcd reflects this node's backends and no problem is known.
	Ready bool `json:"ready"`
	// Problems are what is wrong now (Docker, etcd, the render loop), one
	// sentence each; empty when all is well.
	Problems []string  `json:"problems"`
	Services []Service `json:"services"`
	Proxy    Proxy     `json:"proxy"`
	// Nodes are the project's live daemons as etcd lists them (this one
	// included); NodesError says why they could not be read.
	Nodes      []Node `json:"nodes"`
	NodesError string `json:"nodes_error,omitempty"`
	// Leader is the node that runs the project's proxy when
	// proxy.placement is "leader"; nil otherwise, or while none leads.
	Leader *Leader `json:"leader,omitempty"`
	// Certificates are those the proxy serves over TLS (files first, then
	// etcd's); absent without TLS.
	Certificates []Certificate `json:"certificates,omitempty"`
	// ACME is the state of each host [acme] keeps a certificate for, as
	// this daemon last ordered it; absent without [acme].
	ACME []ACMEHost `json:"acme,omitempty"`
}

// Certificate is one certificate the proxy serves.
type Certificate struct {
	// Source is file, acme or import.
	Source   string    `json:"source"`
	Names    []string  `json:"names"`
	NotAfter time.Time `json:"not_after"`
}

// ACMEHost is one host [acme] keeps a certificate for.
type ACMEHost struct {
	Host string `json:"host"`
	// Error is why the host's last order failed, Failures how many failed
	// in a row, and NextTry when it is ordered again: the project's record
	// in etcd, the same on every node. All absent when its last order (if
	// any) went through.
	Error    string     `json:"error,omitempty"`
	Failures int        `json:"failures,omitempty"`
	NextTry  *time.Time `json:"next_try,omitempty"`
}

// Service is one configured service.
type Service struct {
	Name string `json:"name"`
	// Replicas is the project's count (the spec's, or a scale override);
	// Local is this node's placed share of it.
	Replicas int `json:"replicas"`
	Local    int `json:"local"`
	// Backends are the backends this node probes.
	Backends []Backend `json:"backends"`
	// Registered are the service's keys in etcd, every node's.
	Registered []Registration `json:"registered"`
	// Served are the addresses nginx was last given for the service.
	Served []string `json:"served"`
}

// Backend is one backend container of this node.
type Backend struct {
	Container string       `json:"container"`
	ID        string       `json:"id"`
	Addr      string       `json:"addr"`
	Node      string       `json:"node"`
	State     health.State `json:"state"`
	Since     time.Time    `json:"since"`
	// LastProbe is when the last probe ended (absent: none yet), ProbeMS
	// how long it took, ProbeError why it failed.
	LastProbe  *time.Time `json:"last_probe,omitempty"`
	ProbeMS    float64    `json:"probe_ms"`
	ProbeError string     `json:"probe_error,omitempty"`
	Registered bool       `json:"registered"`
	Served     bool       `json:"served"`
}

// Registration is one key under the registrations prefix.
type Registration struct {
	Key       string `json:"key"`
	Addr      string `json:"addr"`
	Container string `json:"container"` // the registration's host field
	Node      string `json:"node,omitempty"`
	Project   string `json:"project,omitempty"`
}

// Proxy is this node's nginx and the config it serves.
type Proxy struct {
	// Running: this node runs a proxy (with "leader", only the leader).
	Running   bool   `json:"running"`
	Container string `json:"container,omitempty"`
	ID        string `json:"id,omitempty"`
	// Hash is the hash of the config nginx serves (what its status server
	// answers); ConfigChanged when it went live; Confirmed how long nginx
	// took to answer with it after HUP.
	Hash          string     `json:"hash,omitempty"`
	ConfigChanged *time.Time `json:"config_changed,omitempty"`
	ConfirmedMS   float64    `json:"confirmed_ms,omitempty"`
	// Pushed is when pools last went to nginx without a reload.
	Pushed *time.Time `json:"pushed,omitempty"`
	// Diff is the unified diff of the live config against the one before
	// it (empty before the second config).
	Diff string `json:"diff,omitempty"`
	// Rejected is the last config nginx -t refused, while no later config
	// went live since.
	Rejected *Rejected `json:"rejected,omitempty"`
	// RenderError is why the last render pass failed, if it did.
	RenderError string `json:"render_error,omitempty"`
}

// Rejected is a config nginx -t refused: it never reached nginx.
type Rejected struct {
	Time    time.Time `json:"time"`
	Hash    string    `json:"hash"`
	Message string    `json:"message"` // nginx's words
}

// Node is one daemon of the project.
type Node struct {
	Name    string         `json:"name"`
	Host    string         `json:"host"`
	Address string         `json:"address,omitempty"`
	Version string         `json:"version"`
	Started time.Time      `json:"started"`
	Leader  bool           `json:"leader"`
	Slots   map[string]int `json:"slots,omitempty"` // held, by service
}

// Leader is the elected node and its proxy's public address.
type Leader struct {
	Node    string `json:"node"`
	Address string `json:"address"`
}

// Events is GET /api/v1/events: the newest events the daemon keeps,
// oldest first.
type Events struct {
	// Run is the daemon's run id, which its events carry: ?since=RUN-SEQ
	// resumes after an event of this run, or from the first event of a
	// later one.
	Run    string         `json:"run"`
	Events []events.Event `json:"events"`
	// Missed counts events that are no longer kept (with ?since=).
	Missed int64 `json:"missed,omitempty"`
}
