// Package nginx is everything upstreamd says to a running nginx proxy
// container: it delivers a rendered config (stage, `nginx -t`, swap, HUP, in
// one exec), pushes pools to the Lua balancer and reads which config nginx
// runs, both over upstreamd's status server inside the proxy, and asks the
// proxy for ACME HTTP-01 answers as the CA will (WaitAnswer, stateless: it
// shares no Session).
//
// A Client holds what is the same for every proxy (paths, ports, the Docker
// engine). A Session is one proxy container as the daemon knows it: what is
// live there, whether the check config is written, the pools token. When
// the container changes, or may have changed behind the daemon's back,
// start a new Session; nothing else is ever reset.
//
// checkConfig, the rewrite of nginx's main config that points its include
// of the live file at the staged candidate, is pure and tested on its own.
package nginx

import (
	"context"
	"errors"
	"net"
	"strconv"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/containers"
)

// Proxy is a running proxy container, as the orchestrator reports it.
type Proxy struct {
	// ID is the container ID.
	ID string
	// IP is its address on the managed network, where the status server
	// listens; empty when unknown.
	IP string
	// Generation changes whenever the container was created or started
	// again (restarted in place): what was known of the nginx inside may be
	// stale, so a new Session is due.
	Generation uint64
}

// Sentinel errors, checked with errors.Is.
var (
	// ErrCheckFailed: `nginx -t` rejected a candidate config. Retrying the
	// same bytes cannot help; the live config was left untouched.
	ErrCheckFailed = errors.New("nginx rejected the config")
	// ErrNoStatusServer: the proxy does not answer on the status port, or
	// the config it runs has no pools API (not upstreamd's, or static).
	ErrNoStatusServer = errors.New("status server not answering")
)

// CheckError is `nginx -t` rejecting a candidate config: it matches
// ErrCheckFailed, and Message is what nginx said, with the candidate's
// staging path named "<live file> (candidate)".
type CheckError struct {
	Message string
}

func (e *CheckError) Error() string { return ErrCheckFailed.Error() + ": " + e.Message }

// Unwrap makes a CheckError match ErrCheckFailed.
func (e *CheckError) Unwrap() error { return ErrCheckFailed }

// dockerAPI is what a Session needs from the Docker engine.
type dockerAPI interface {
	CopyFiles(ctx context.Context, id, dir string, files []containers.File) error
	ReadFile(ctx context.Context, id, file string) ([]byte, error)
	ReadDir(ctx context.Context, id, dir string) ([]string, error)
	ExecWithStdin(ctx context.Context, id string, cmd []string, stdin []byte) (containers.ExecResult, error)
	Signal(ctx context.Context, id, sig string) error
}

var _ dockerAPI = (*containers.Client)(nil)

// Defaults for Config.
const (
	DefaultStatusTimeout  = 2 * time.Second
	DefaultConfirmTimeout = 5 * time.Second
)

// Config configures a Client.
type Config struct {
	// Docker reaches the proxy container.
	Docker dockerAPI
	// ConfigPath is the live rendered file inside the proxy, e.g.
	// /etc/nginx/conf.d/upstreamd.conf.
	ConfigPath string
	// MainPath is nginx's main config inside the proxy, which includes
	// ConfigPath directly or through a glob; e.g. /etc/nginx/nginx.conf.
	MainPath string
	// StatusPort is the port of upstreamd's status server in the proxy; 0
	// means there is none (no pools, reloads not confirmed).
	StatusPort int
	// StatusTimeout bounds each request to the status server; zero means
	// DefaultStatusTimeout.
	StatusTimeout time.Duration
	// ConfirmTimeout bounds the wait for nginx to run a new config after
	// HUP; zero means DefaultConfirmTimeout.
	ConfirmTimeout time.Duration
	// Logger is for what a Session notices on its own.
	Logger zerolog.Logger
}

// Client starts Sessions with proxy containers.
type Client struct {
	cfg    Config
	status *statusClient
}

// New returns a Client.
func New(cfg Config) *Client {
	if cfg.StatusTimeout <= 0 {
		cfg.StatusTimeout = DefaultStatusTimeout
	}
	if cfg.ConfirmTimeout <= 0 {
		cfg.ConfirmTimeout = DefaultConfirmTimeout
	}
	return &Client{cfg: cfg, status: newStatusClient(cfg.StatusTimeout)}
}

// Session returns a new Session with p, knowing nothing of it yet.
func (c *Client) Session(p Proxy) *Session {
	s := &Session{cfg: c.cfg, status: c.status, proxy: p}
	if c.cfg.StatusPort > 0 && p.IP != "" {
		s.statusAddr = net.JoinHostPort(p.IP, strconv.Itoa(c.cfg.StatusPort))
		s.admin = sourceIP(s.statusAddr)
	}
	return s
}

// sourceIP returns the address this process reaches addr from: its own on
// the proxy's network when it runs in a container there, the network's
// gateway when it runs on the host. A UDP "connection" sends nothing; it
// only asks the kernel for the route.
func sourceIP(addr string) string {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return ""
	}
	defer func() { _ = c.Close() }() // nothing was sent
	if a, ok := c.LocalAddr().(*net.UDPAddr); ok {
		return a.IP.String()
	}
	return ""
}

// Session is one proxy container as the daemon knows it. It remembers what
// it put there, so that unchanged configs cost nothing. It is used by one
// goroutine at a time.
type Session struct {
	cfg        Config
	status     *statusClient
	proxy      Proxy
	statusAddr string // ip:port of the status server; empty when none
	admin      string // the address the proxy sees this daemon at

	live         []byte // the bytes known live, when liveKnown
	liveKnown    bool
	main         []byte // nginx's main config, once read
	checkWritten bool   // the check config is in the proxy
	token        string // the pools API token, once read or made
	// hupOwed: the live file was replaced but the HUP after it failed, so
	// nginx still runs the previous config.
	hupOwed bool
	// written are the files WriteFiles wrote into this proxy (and Prune
	// has not removed); swept are the directories Prune looked through.
	written map[string]bool
	swept   map[string]bool
}

// Proxy returns the container this Session is with.
func (s *Session) Proxy() Proxy { return s.proxy }

// HasStatus reports whether the status server can be reached: a status
// port is configured and the proxy's address is known.
func (s *Session) HasStatus() bool { return s.statusAddr != "" }

// Admin returns the address the proxy sees this daemon at: the one address
// its pools API is to accept. Empty when unknown.
func (s *Session) Admin() string { return s.admin }

// Short returns the container ID as the docker CLI shows it.
func (p Proxy) Short() string { return containers.ShortID(p.ID) }
