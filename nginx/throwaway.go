package nginx

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/upstreamd/upstreamd/containers"
)

// Containers is what CheckRendered needs: a Session's engine, and a
// container of its own.
type Containers interface {
	dockerAPI
	EnsureImage(ctx context.Context, ref string) error
	Create(ctx context.Context, spec containers.CreateSpec) (containers.Container, error)
	Start(ctx context.Context, id string) error
	Remove(ctx context.Context, id string) error
}

var _ Containers = (*containers.Client)(nil)

// RoleCheck labels the throwaway containers of CheckRendered.
const RoleCheck containers.Role = "check"

// Throwaway starts a throwaway container of image (no network, no
// published port) and returns a Session with it, for Check: what `nginx -t`
// in a proxy of image would say of a rendered file, without a proxy. It
// lets `upstreamd run` refuse a template before it creates anything, and
// `upstreamd render --check` check what it prints. Call remove when done.
func Throwaway(ctx context.Context, docker Containers, image string, cfg Config) (s *Session, remove func(), err error) {
	if err := docker.EnsureImage(ctx, image); err != nil {
		return nil, nil, err
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	c, err := docker.Create(ctx, containers.CreateSpec{
		Name:    "upstreamd-check-" + hex.EncodeToString(b),
		Image:   image,
		Cmd:     []string{"sleep", "300"}, // outlives the checks; gone on its own if this process dies
		Labels:  map[string]string{containers.LabelRole: string(RoleCheck)},
		Network: "none",
		CapDrop: []string{"NET_RAW"},
		// Removed when sleep ends, should remove not be called.
		AutoRemove: true,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("throwaway proxy for nginx -t: %w", err)
	}
	remove = func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		_ = docker.Remove(rctx, c.ID) // best effort: it removes itself in 5 minutes
	}
	if err := docker.Start(ctx, c.ID); err != nil {
		remove()
		return nil, nil, fmt.Errorf("throwaway proxy for nginx -t: %w", err)
	}
	cfg.Docker = docker
	cfg.StatusPort = 0
	return New(cfg).Session(Proxy{ID: c.ID}), remove, nil
}
