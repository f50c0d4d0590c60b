package containers

import (
	"context"
	"fmt"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/network"
)

// EnsureNetwork returns the ID of the bridge network called name, creating
// it with the project label when it does not exist. An existing network is
// adopted as it is, whoever created it (compose, for instance).
func (c *Client) EnsureNetwork(ctx context.Context, name, project string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	n, err := c.api.NetworkInspect(ctx, name, network.InspectOptions{})
	if err == nil {
		if n.Name != name { // inspect also matches ID prefixes
			return "", fmt.Errorf("network %s: name matches network %s by ID", name, n.Name)
		}
		return n.ID, nil
	}
	if !cerrdefs.IsNotFound(err) {
		return "", fmt.Errorf("inspect network %s: %w", name, err)
	}
	resp, err := c.api.NetworkCreate(ctx, name, network.CreateOptions{
		Driver: "bridge",
		Labels: map[string]string{LabelProject: project},
	})
	if err != nil {
		if cerrdefs.IsConflict(err) { // created concurrently
			n, ierr := c.api.NetworkInspect(ctx, name, network.InspectOptions{})
			if ierr == nil {
				return n.ID, nil
			}
		}
		return "", fmt.Errorf("create network %s: %w", name, err)
	}
	c.log.Info().Str("network", name).Str("id", ShortID(resp.ID)).Msg("network created")
	return resp.ID, nil
}
