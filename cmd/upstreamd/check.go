package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/nginx"
	"github.com/upstreamd/upstreamd/spec"
)

// throwaway starts a throwaway proxy for nginx -t. Its container chatter
// is not logged: "container created" in a daemon's log means one of the
// project's.
func throwaway(ctx context.Context, cfg *spec.Spec, log zerolog.Logger) (*nginx.Session, func(), error) {
	dcfg := cfg.DockerConfig()
	dcfg.Logger = log.Level(zerolog.WarnLevel)
	docker, err := containers.New(dcfg)
	if err != nil {
		return nil, nil, err
	}
	ncfg := cfg.NginxConfig()
	ncfg.Logger = log
	s, remove, err := nginx.Throwaway(ctx, docker, cfg.Project.Proxy.Image, ncfg)
	if err != nil {
		docker.Close()
		return nil, nil, err
	}
	return s, func() { remove(); docker.Close() }, nil
}

// checkWithNginx runs `nginx -t` on what the template renders, in s. A
// config nginx rejects with a
// backend per service is an error (matching nginx.ErrCheckFailed); one it
// rejects with no backend at all is a warning: nginx then keeps what it
// runs until a backend registers.
func checkWithNginx(ctx context.Context, cfg *spec.Spec, s *nginx.Session, tc spec.TemplateCheck, log zerolog.Logger) error {
	if err := s.WriteFiles(ctx, tc.Files); err != nil {
		return err
	}
	if err := s.Check(ctx, tc.Sample); err != nil {
		if errors.Is(err, nginx.ErrCheckFailed) {
			return fmt.Errorf("%s: proxy.template renders a config nginx rejects (checked with one made-up backend per service at 192.0.2.x): %w", cfg.File(), err)
		}
		return err
	}
	err := s.Check(ctx, tc.Empty)
	if errors.Is(err, nginx.ErrCheckFailed) {
		log.Warn().Err(err).Msg("the template renders a config nginx rejects while a service has no backend; nginx keeps the config it runs until one registers")
		return nil
	}
	return err
}
