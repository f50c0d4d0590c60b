package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
)

// Member is one member of the cluster's etcd cluster.
type Member struct {
	// Name is the container's name and the member's name.
	Name string
	// ID is the container's ID on the machine's engine.
	ID string
	// Addr is the member's IPv4 address on the LAN.
	Addr string
	// Endpoint is its client URL, http://Addr:2379.
	Endpoint string

	c *Cluster
}

// createEtcd creates n members, not started. The image has no entrypoint:
// the command is the whole etcd command line. Data stays in the container,
// so a member started again after Kill rejoins with it.
func (c *Cluster) createEtcd(ctx context.Context, n int) error {
	var peers []string
	for i := range n {
		addr, err := c.addr(100 + i)
		if err != nil {
			return err
		}
		m := &Member{Name: fmt.Sprintf("%s-etcd%d", c.Name, i+1), Addr: addr, Endpoint: "http://" + addr + ":2379", c: c}
		c.Etcd = append(c.Etcd, m)
		peers = append(peers, m.Name+"=http://"+addr+":2380")
	}
	for _, m := range c.Etcd {
		cmd := []string{"etcd",
			"--name", m.Name,
			"--data-dir", "/var/lib/etcd/data",
			"--listen-client-urls", "http://0.0.0.0:2379",
			"--advertise-client-urls", m.Endpoint,
			"--listen-peer-urls", "http://0.0.0.0:2380",
			"--initial-advertise-peer-urls", "http://" + m.Addr + ":2380",
			"--initial-cluster", strings.Join(peers, ","),
			"--initial-cluster-token", c.Name,
			"--initial-cluster-state", "new",
		}
		created, err := c.api.ContainerCreate(ctx,
			&container.Config{Image: EtcdImage, Hostname: m.Name, Cmd: cmd, Labels: c.labels()},
			&container.HostConfig{},
			&network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{c.LAN: c.endpointOn(m.Addr)}},
			nil, m.Name)
		if err != nil {
			return fmt.Errorf("etcd member %s: create container from %s: %w", m.Name, EtcdImage, err)
		}
		m.ID = created.ID
	}
	return nil
}

// StartEtcd starts every member (again, after each was killed), then
// waits until each reports healthy (which etcd does once the cluster has
// a leader: a member started alone never does).
func (c *Cluster) StartEtcd(ctx context.Context) error {
	for _, m := range c.Etcd {
		if err := c.api.ContainerStart(ctx, m.ID, container.StartOptions{}); err != nil {
			return fmt.Errorf("etcd member %s: start: %w", m.Name, err)
		}
	}
	for _, m := range c.Etcd {
		if err := m.waitHealthy(ctx); err != nil {
			return err
		}
	}
	return nil
}

// Kill sends SIGKILL to the member and waits until its container stopped.
func (m *Member) Kill(ctx context.Context) error {
	return killContainer(ctx, m.c.api, m.ID, "etcd member "+m.Name)
}

// Start starts the member again after Kill and waits until it is healthy.
func (m *Member) Start(ctx context.Context) error {
	if err := m.c.api.ContainerStart(ctx, m.ID, container.StartOptions{}); err != nil {
		return fmt.Errorf("etcd member %s: start: %w", m.Name, err)
	}
	return m.waitHealthy(ctx)
}

// waitHealthy waits until the member reports healthy.
func (m *Member) waitHealthy(ctx context.Context) error {
	hc := &http.Client{Timeout: time.Second}
	return m.c.waitFor(ctx, etcdTimeout, m.ID, "etcd member "+m.Name+": wait for health at "+m.Endpoint,
		func(ctx context.Context) error { return m.healthy(ctx, hc) })
}

// healthy asks the member's /health once.
func (m *Member) healthy(ctx context.Context, hc *http.Client) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.Endpoint+"/health", nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return err
	}
	var h struct {
		Health string `json:"health"`
	}
	if err := json.Unmarshal(body, &h); err != nil || h.Health != "true" {
		return fmt.Errorf("/health answered %d %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return nil
}
