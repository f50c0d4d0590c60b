// Package containers is upstreamd's only speaker of the Docker Engine API.
//
// It finds the containers the daemon owns by label (never by name), creates
// and adopts the managed network, the data-volume container, the backends
// and the proxy, starts, stops, removes, signals and execs into them, copies
// files in and out, streams events, and makes sure images are present.
// Every call derives its own deadline from the caller's context.
package containers

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"
	"github.com/rs/zerolog"
)

// Labels carried by every container and network the daemon owns.
const (
	LabelProject = "io.upstreamd.project" // the spec's project name
	LabelService = "io.upstreamd.service" // the backend service; empty for proxy and data
	LabelRole    = "io.upstreamd.role"    // one of the Role values
	LabelSpec    = "io.upstreamd.spec"    // hash of what the container was created from
	LabelPort    = "io.upstreamd.port"    // a backend's container port
)

// Role is what a managed container is for.
type Role string

// The roles of managed containers.
const (
	RoleBackend Role = "backend"
	RoleProxy   Role = "proxy"
	RoleData    Role = "data"
)

// States of a container as the engine reports them.
const (
	StateCreated    = "created"
	StateRunning    = "running"
	StatePaused     = "paused"
	StateRestarting = "restarting"
	StateRemoving   = "removing"
	StateExited     = "exited"
	StateDead       = "dead"
)

// DefaultTimeout bounds one Docker API call when Config.Timeout is zero.
const DefaultTimeout = 30 * time.Second

// Sentinel errors, checked with errors.Is.
var (
	// ErrNotFound: the container, image or network does not exist.
	ErrNotFound = errors.New("not found")
	// ErrImageMissing: an image is absent locally and could not be pulled.
	ErrImageMissing = errors.New("image missing")
)

// Container is what the daemon needs to know about one managed container.
type Container struct {
	ID       string
	Name     string // without the leading slash
	Image    string
	Service  string
	Role     Role
	SpecHash string
	State    string
	// IPs maps network name to the container's IPv4 address on it.
	IPs map[string]string
	// Published maps a container port (tcp) to the host port it is
	// published on; empty when none is.
	Published map[int]int
	Created   time.Time
	// Started is when it last started; only Inspect knows it (zero from
	// List).
	Started time.Time
	Labels  map[string]string
}

// Short returns the first 12 characters of the ID, as the docker CLI shows it.
func (c Container) Short() string { return ShortID(c.ID) }

// ShortID returns the first 12 characters of a container ID.
func ShortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// Config configures a Client.
type Config struct {
	// Host is the Docker endpoint, e.g. unix:///var/run/docker.sock. Empty
	// means the environment (DOCKER_HOST and friends), then the default socket.
	Host string
	// Timeout bounds each API call; zero means DefaultTimeout.
	Timeout time.Duration
	// Logger receives one line per container action.
	Logger zerolog.Logger
}

// Client wraps the Docker Engine API client.
type Client struct {
	api     client.APIClient
	timeout time.Duration
	log     zerolog.Logger

	mu         sync.Mutex
	pullFailed map[string]pullFailure // image → last failed pull
}

// New returns a Client. It does not contact the engine; Ping does.
func New(cfg Config) (*Client, error) {
	opts := []client.Opt{client.FromEnv, client.WithAPIVersionNegotiation()}
	if cfg.Host != "" {
		opts = append(opts, client.WithHost(cfg.Host))
	}
	api, err := client.NewClientWithOpts(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &Client{api: api, timeout: timeout, log: cfg.Logger, pullFailed: map[string]pullFailure{}}, nil
}

// Close releases the client's connections.
func (c *Client) Close() error { return c.api.Close() }

// Ping checks that the engine answers and negotiates the API version with a
// real call (Ping alone does not negotiate).
func (c *Client) Ping(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	v, err := c.api.ServerVersion(ctx)
	if err != nil {
		return "", fmt.Errorf("docker engine at %s: %w", c.api.DaemonHost(), err)
	}
	return fmt.Sprintf("%s (API %s)", v.Version, c.api.ClientVersion()), nil
}

// Host returns the engine endpoint the client talks to.
func (c *Client) Host() string { return c.api.DaemonHost() }

// EngineID returns the engine's unique ID (docker info's ID): two daemons
// with the same engine ID manage the same containers.
func (c *Client) EngineID(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	info, err := c.api.Info(ctx)
	if err != nil {
		return "", fmt.Errorf("docker engine at %s: info: %w", c.api.DaemonHost(), err)
	}
	if info.ID == "" {
		return "", fmt.Errorf("docker engine at %s: info has no ID", c.api.DaemonHost())
	}
	return info.ID, nil
}

// List returns every container, in any state, labelled with the project.
func (c *Client) List(ctx context.Context, project string) ([]Container, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	list, err := c.api.ContainerList(ctx, container.ListOptions{
		All:     true,
		Filters: filters.NewArgs(filters.Arg("label", LabelProject+"="+project)),
	})
	if err != nil {
		return nil, fmt.Errorf("list containers of project %s: %w", project, err)
	}
	out := make([]Container, 0, len(list))
	for _, s := range list {
		out = append(out, fromSummary(s))
	}
	return out, nil
}

// Inspect returns one container by ID or name.
func (c *Client) Inspect(ctx context.Context, id string) (Container, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	r, err := c.api.ContainerInspect(ctx, id)
	if err != nil {
		return Container{}, fmt.Errorf("inspect container %s: %w", ShortID(id), wrapNotFound(err))
	}
	ct := Container{
		ID:     r.ID,
		Name:   strings.TrimPrefix(r.Name, "/"),
		IPs:    map[string]string{},
		Labels: map[string]string{},
	}
	if r.Config != nil {
		ct.Image = r.Config.Image
		ct.Labels = r.Config.Labels
	}
	if r.State != nil {
		ct.State = r.State.Status
		if t, err := time.Parse(time.RFC3339Nano, r.State.StartedAt); err == nil && t.Year() > 1 {
			ct.Started = t
		}
	}
	if t, err := time.Parse(time.RFC3339Nano, r.Created); err == nil {
		// To the second, as List has it: the same container compares
		// equal whichever call described it.
		ct.Created = t.Truncate(time.Second).UTC()
	}
	if r.NetworkSettings != nil {
		for name, ep := range r.NetworkSettings.Networks {
			if ep != nil {
				ct.IPs[name] = ep.IPAddress
			}
		}
		for port, bindings := range r.NetworkSettings.Ports {
			if port.Proto() != "tcp" {
				continue
			}
			for _, b := range bindings {
				if hp, err := strconv.Atoi(b.HostPort); err == nil && hp > 0 {
					if ct.Published == nil {
						ct.Published = map[int]int{}
					}
					ct.Published[port.Int()] = hp
				}
			}
		}
	}
	fillLabels(&ct)
	return ct, nil
}

func fromSummary(s container.Summary) Container {
	ct := Container{
		ID:      s.ID,
		Image:   s.Image,
		State:   string(s.State),
		Created: time.Unix(s.Created, 0).UTC(),
		Labels:  s.Labels,
		IPs:     map[string]string{},
	}
	if len(s.Names) > 0 {
		ct.Name = strings.TrimPrefix(s.Names[0], "/")
	}
	for _, p := range s.Ports {
		if p.Type == "tcp" && p.PublicPort > 0 {
			if ct.Published == nil {
				ct.Published = map[int]int{}
			}
			ct.Published[int(p.PrivatePort)] = int(p.PublicPort)
		}
	}
	if s.NetworkSettings != nil {
		for name, ep := range s.NetworkSettings.Networks {
			if ep != nil {
				ct.IPs[name] = ep.IPAddress
			}
		}
	}
	fillLabels(&ct)
	return ct
}

func fillLabels(ct *Container) {
	if ct.Labels == nil {
		ct.Labels = map[string]string{}
	}
	ct.Service = ct.Labels[LabelService]
	ct.Role = Role(ct.Labels[LabelRole])
	ct.SpecHash = ct.Labels[LabelSpec]
}

// wrapNotFound makes the engine's not-found answers match ErrNotFound too.
func wrapNotFound(err error) error {
	if err != nil && cerrdefs.IsNotFound(err) {
		return errors.Join(ErrNotFound, err)
	}
	return err
}

// IsUnreachable reports whether err says only that the engine could not be
// reached (no socket, refused, timed out), not that it refused a request.
func IsUnreachable(err error) bool {
	return client.IsErrConnectionFailed(err) || errors.Is(err, context.DeadlineExceeded)
}

// IsNotFound reports whether err says the object does not exist.
func IsNotFound(err error) bool {
	return errors.Is(err, ErrNotFound) || cerrdefs.IsNotFound(err)
}
