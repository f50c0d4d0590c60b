// Package etcd starts a single etcd node for tests with the testcontainers
// etcd module, from the locally built upstreamd/etcd image.
package etcd

import (
	"context"
	"fmt"
	"time"

	"github.com/testcontainers/testcontainers-go"
	tcetcd "github.com/testcontainers/testcontainers-go/modules/etcd"
	"github.com/testcontainers/testcontainers-go/wait"
)

// DefaultImage is built by `make images`.
const DefaultImage = "upstreamd/etcd:latest"

// Container is a running etcd node.
type Container struct {
	*tcetcd.EtcdContainer
}

// Run starts etcd and waits until its /health endpoint answers (the module
// itself sets no wait strategy). On error the returned container, if not
// nil, must still be terminated.
func Run(ctx context.Context, image string, opts ...testcontainers.ContainerCustomizer) (*Container, error) {
	all := append([]testcontainers.ContainerCustomizer{
		testcontainers.WithWaitStrategy(wait.ForHTTP("/health").WithPort("2379/tcp").
			WithStartupTimeout(60 * time.Second).WithPollInterval(50 * time.Millisecond)),
	}, opts...)
	c, err := tcetcd.Run(ctx, image, all...)
	var out *Container
	if c != nil {
		out = &Container{c}
	}
	if err != nil {
		return out, fmt.Errorf("run etcd from %s: %w", image, err)
	}
	return out, nil
}

// Endpoint returns the client URL reachable from the host.
func (c *Container) Endpoint(ctx context.Context) (string, error) {
	return c.ClientEndpoint(ctx)
}
