// Package engine is the Docker engine as the integration suite uses it:
// upstreamd's own client (containers.Client) plus what only tests do to
// containers and networks: hang and thaw a container, run a command in it,
// remove a network.
package engine

import (
	"context"
	"errors"
	"fmt"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/containers"
)

// Client is containers.Client with the suite's extra verbs.
type Client struct {
	*containers.Client
	api *client.Client
}

// New connects to the engine of the environment (DOCKER_HOST or the
// default socket).
func New() (*Client, error) {
	cc, err := containers.New(containers.Config{Logger: zerolog.Nop()})
	if err != nil {
		return nil, err
	}
	api, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		cc.Close()
		return nil, fmt.Errorf("docker client: %w", err)
	}
	return &Client{Client: cc, api: api}, nil
}

// Close closes both clients.
func (c *Client) Close() error { return errors.Join(c.Client.Close(), c.api.Close()) }

// Exec runs cmd in a running container and waits for it.
func (c *Client) Exec(ctx context.Context, id string, cmd []string) (containers.ExecResult, error) {
	return c.ExecWithStdin(ctx, id, cmd, nil)
}

// Pause freezes every process of a container (the engine's "hang").
// On a loaded machine the cgroup freezer can give up ("unable to freeze":
// runc thaws the container again and the engine answers a system error),
// so such a failure is tried again a few times; a container that is gone
// or not running is not.
func (c *Client) Pause(ctx context.Context, id string) error {
	var err error
	for attempt := 1; attempt <= 5; attempt++ {
		if err = c.api.ContainerPause(ctx, id); err == nil || cerrdefs.IsNotFound(err) || cerrdefs.IsConflict(err) {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pause container %s: %w", containers.ShortID(id), errors.Join(err, ctx.Err()))
		case <-time.After(time.Duration(attempt) * 200 * time.Millisecond):
		}
	}
	if err != nil {
		return fmt.Errorf("pause container %s: %w", containers.ShortID(id), err)
	}
	return nil
}

// Unpause thaws a paused container.
func (c *Client) Unpause(ctx context.Context, id string) error {
	if err := c.api.ContainerUnpause(ctx, id); err != nil {
		return fmt.Errorf("unpause container %s: %w", containers.ShortID(id), err)
	}
	return nil
}

// RemoveNetwork removes a network; a missing one counts as removed.
func (c *Client) RemoveNetwork(ctx context.Context, name string) error {
	if err := c.api.NetworkRemove(ctx, name); err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("remove network %s: %w", name, err)
	}
	return nil
}

// NetworkExists reports whether a network of that name exists.
func (c *Client) NetworkExists(ctx context.Context, name string) (bool, error) {
	_, err := c.api.NetworkInspect(ctx, name, network.InspectOptions{})
	switch {
	case err == nil:
		return true, nil
	case cerrdefs.IsNotFound(err):
		return false, nil
	}
	return false, fmt.Errorf("inspect network %s: %w", name, err)
}

// ListAll returns every container of the engine, any project, any state.
func (c *Client) ListAll(ctx context.Context) ([]containers.Container, error) {
	list, err := c.api.ContainerList(ctx, container.ListOptions{All: true})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	out := make([]containers.Container, 0, len(list))
	for _, s := range list {
		ips := map[string]string{}
		if s.NetworkSettings != nil {
			for name, ep := range s.NetworkSettings.Networks {
				if ep != nil {
					ips[name] = ep.IPAddress
				}
			}
		}
		out = append(out, containers.Container{ID: s.ID, Image: s.Image, State: string(s.State), IPs: ips, Labels: s.Labels})
	}
	return out, nil
}
