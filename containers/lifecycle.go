package containers

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/go-connections/nat"
)

// RestartPolicy names a Docker restart policy ("no", "always",
// "unless-stopped", "on-failure").
type RestartPolicy string

// CreateSpec is everything the daemon decides about a new container.
type CreateSpec struct {
	// Name is the container name; it must be unique on the engine.
	Name string
	// Image is the image reference; it must be present (see EnsureImage).
	Image string
	// Hostname; empty means the engine's default (the short container ID).
	Hostname string
	// Cmd overrides the image's CMD when non-empty.
	Cmd []string
	// Env is a list of KEY=VALUE pairs.
	Env []string
	// Labels are set as given; callers include the io.upstreamd.* labels.
	Labels map[string]string
	// Network is the network to attach to; empty means the engine default.
	Network string
	// Aliases are DNS names of the container on Network.
	Aliases []string
	// ExposedPort is the container port published on PublishAddr, e.g. 80.
	ExposedPort int
	// PublishAddr is the host address ("127.0.0.1:8080" or ":8080"); empty
	// means the port is not published.
	PublishAddr string
	// PublishIP, when PublishAddr is empty, publishes ExposedPort on this
	// host address at a port the engine picks (see Container.Published).
	PublishIP string `json:",omitempty"`
	// TLSPort, when not zero, is a second container port published on
	// TLSPublishAddr (the proxy's HTTPS).
	TLSPort        int    `json:",omitempty"`
	TLSPublishAddr string `json:",omitempty"`
	// Volumes are anonymous volumes to create, by container path.
	Volumes []string
	// VolumesFrom names containers whose volumes are mounted.
	VolumesFrom []string
	// Restart is the restart policy; empty means "no".
	Restart RestartPolicy
	// MemoryBytes limits memory; zero means unlimited.
	MemoryBytes int64
	// NanoCPUs limits CPU in units of 1e-9 CPUs; zero means unlimited.
	NanoCPUs int64
	// StopTimeout is the grace the engine gives on stop before SIGKILL.
	StopTimeout time.Duration
	// CapDrop lists capabilities taken from the engine's default set
	// (NET_RAW, say: no raw sockets to spoof a neighbour with).
	CapDrop []string
	// AutoRemove has the engine remove the container when it exits (a
	// throwaway one). Left out of spec hashes when false.
	AutoRemove bool `json:",omitempty"`
}

// Create creates a container (without starting it) and returns it as
// Inspect sees it.
func (c *Client) Create(ctx context.Context, spec CreateSpec) (Container, error) {
	cfg, hostCfg, netCfg, err := spec.engineConfig()
	if err != nil {
		return Container{}, fmt.Errorf("create container %s: %w", spec.Name, err)
	}
	cctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	resp, err := c.api.ContainerCreate(cctx, cfg, hostCfg, netCfg, nil, spec.Name)
	if err != nil {
		if cerrdefs.IsNotFound(err) {
			return Container{}, fmt.Errorf("create container %s: image %s: %w (build it with `make images`)", spec.Name, spec.Image, ErrImageMissing)
		}
		return Container{}, fmt.Errorf("create container %s: %w", spec.Name, err)
	}
	for _, w := range resp.Warnings {
		c.log.Warn().Str("container", spec.Name).Msg(w)
	}
	ct, err := c.Inspect(ctx, resp.ID)
	if err != nil {
		return Container{}, err
	}
	ev := c.log.Info().Str("container", ct.Name).Str("id", ct.Short()).Str("image", spec.Image).Str("role", spec.Labels[LabelRole])
	if svc := spec.Labels[LabelService]; svc != "" { // the proxy and the data volume have none
		ev = ev.Str("service", svc)
	}
	ev.Msg("container created")
	return ct, nil
}

func (s CreateSpec) engineConfig() (*container.Config, *container.HostConfig, *network.NetworkingConfig, error) {
	cfg := &container.Config{
		Image:    s.Image,
		Hostname: s.Hostname,
		Cmd:      s.Cmd,
		Env:      s.Env,
		Labels:   s.Labels,
	}
	if s.StopTimeout > 0 {
		secs := int((s.StopTimeout + time.Second - 1) / time.Second)
		cfg.StopTimeout = &secs
	}
	if len(s.Volumes) > 0 {
		cfg.Volumes = map[string]struct{}{}
		for _, v := range s.Volumes {
			cfg.Volumes[v] = struct{}{}
		}
	}
	hostCfg := &container.HostConfig{
		AutoRemove:  s.AutoRemove,
		CapDrop:     s.CapDrop,
		VolumesFrom: s.VolumesFrom,
		Resources: container.Resources{
			Memory:   s.MemoryBytes,
			NanoCPUs: s.NanoCPUs,
		},
	}
	if s.Restart != "" {
		hostCfg.RestartPolicy = container.RestartPolicy{Name: container.RestartPolicyMode(s.Restart)}
	}
	if s.ExposedPort > 0 {
		port := nat.Port(strconv.Itoa(s.ExposedPort) + "/tcp")
		cfg.ExposedPorts = nat.PortSet{port: struct{}{}}
		if s.PublishAddr != "" {
			host, hport, err := ParsePublish(s.PublishAddr)
			if err != nil {
				return nil, nil, nil, err
			}
			hostCfg.PortBindings = nat.PortMap{port: {{HostIP: host, HostPort: hport}}}
		} else if s.PublishIP != "" {
			hostCfg.PortBindings = nat.PortMap{port: {{HostIP: s.PublishIP}}}
		}
	}
	if s.TLSPort > 0 && s.TLSPublishAddr != "" {
		port := nat.Port(strconv.Itoa(s.TLSPort) + "/tcp")
		host, hport, err := ParsePublish(s.TLSPublishAddr)
		if err != nil {
			return nil, nil, nil, err
		}
		if cfg.ExposedPorts == nil {
			cfg.ExposedPorts = nat.PortSet{}
		}
		if hostCfg.PortBindings == nil {
			hostCfg.PortBindings = nat.PortMap{}
		}
		cfg.ExposedPorts[port] = struct{}{}
		hostCfg.PortBindings[port] = []nat.PortBinding{{HostIP: host, HostPort: hport}}
	}
	var netCfg *network.NetworkingConfig
	if s.Network != "" {
		hostCfg.NetworkMode = container.NetworkMode(s.Network)
		netCfg = &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{
			s.Network: {Aliases: s.Aliases},
		}}
	}
	return cfg, hostCfg, netCfg, nil
}

// ParsePublish parses where a port is published: "127.0.0.1:8080",
// "[::1]:8080" or ":8080" (every address), with a port in 1-65535.
func ParsePublish(addr string) (host, port string, err error) {
	if ap, perr := netip.ParseAddrPort(addr); perr == nil && ap.Port() != 0 {
		return ap.Addr().String(), strconv.Itoa(int(ap.Port())), nil
	}
	if rest, ok := strings.CutPrefix(addr, ":"); ok {
		if p, perr := strconv.ParseUint(rest, 10, 16); perr == nil && p > 0 {
			return "", rest, nil
		}
	}
	return "", "", fmt.Errorf("%q is not IP:PORT (such as 127.0.0.1:8080) or :PORT", addr)
}

// Start starts a created or stopped container.
func (c *Client) Start(ctx context.Context, id string) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	if err := c.api.ContainerStart(ctx, id, container.StartOptions{}); err != nil {
		return fmt.Errorf("start container %s: %w", ShortID(id), wrapNotFound(err))
	}
	c.log.Info().Str("id", ShortID(id)).Msg("container started")
	return nil
}

// Stop asks the container to stop with its stop signal and kills it after
// grace. A container that is already gone counts as stopped.
func (c *Client) Stop(ctx context.Context, id string, grace time.Duration) error {
	secs := int((grace + time.Second - 1) / time.Second)
	ctx, cancel := context.WithTimeout(ctx, c.timeout+grace)
	defer cancel()
	if err := c.api.ContainerStop(ctx, id, container.StopOptions{Timeout: &secs}); err != nil {
		if cerrdefs.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("stop container %s: %w", ShortID(id), err)
	}
	c.log.Info().Str("id", ShortID(id)).Stringer("grace", grace).Msg("container stopped")
	return nil
}

// Remove force-removes a container together with its anonymous volumes. A
// container that is already gone counts as removed.
func (c *Client) Remove(ctx context.Context, id string) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	err := c.api.ContainerRemove(ctx, id, container.RemoveOptions{Force: true, RemoveVolumes: true})
	if err != nil && !cerrdefs.IsNotFound(err) {
		if cerrdefs.IsConflict(err) { // removal already in progress
			return nil
		}
		return fmt.Errorf("remove container %s: %w", ShortID(id), err)
	}
	c.log.Info().Str("id", ShortID(id)).Msg("container removed")
	return nil
}

// Signal sends a signal ("HUP", "KILL", ...) to the container's main process.
func (c *Client) Signal(ctx context.Context, id, sig string) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	if err := c.api.ContainerKill(ctx, id, sig); err != nil {
		return fmt.Errorf("signal %s to container %s: %w", sig, ShortID(id), wrapNotFound(err))
	}
	return nil
}
