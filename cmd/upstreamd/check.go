package main

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strconv"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/nginx"
	"github.com/upstreamd/upstreamd/render"
	"github.com/upstreamd/upstreamd/store"
)

// viewInput is what the template's View is built from, but the snapshot.
func (c *Config) viewInput() render.ViewInput {
	routes := make(map[string]render.Route, len(c.Service))
	for _, s := range c.Service {
		routes[s.Name] = s.route()
	}
	acme := ""
	if c.tls != nil && c.acmeOn() {
		acme = path.Join(c.Proxy.ConfigDir, acmeDir)
	}
	return render.ViewInput{
		ACME:       acme,
		Projects:   c.Projects(),
		Services:   c.ServiceNames(),
		Default:    c.Proxy.Service,
		Listen:     c.Proxy.Port,
		Routes:     routes,
		TLS:        c.tls,
		Dynamic:    *c.Proxy.Dynamic,
		StatusPort: *c.Proxy.StatusPort,
	}
}

// view builds the View the template renders from snap, as the daemon does.
func (c *Config) view(snap store.Snapshot) render.View {
	in := c.viewInput()
	in.Snapshot = snap
	return render.NewView(in)
}

// renderFor renders the full file the proxy would get for snap.
func (c *Config) renderFor(tmpl *render.Template, snap store.Snapshot) ([]byte, error) {
	v := c.view(snap)
	out, err := render.Render(tmpl, v)
	if err != nil {
		return nil, err
	}
	return render.Finish(out, v), nil
}

// sampleSnapshot holds one made-up backend per configured service, at a
// documentation address (192.0.2.0/24), its host name the address too, so
// that nginx -t resolves no name.
func (c *Config) sampleSnapshot() store.Snapshot {
	var snap store.Snapshot
	for i, s := range c.Service {
		ip := "192.0.2." + strconv.Itoa(i%250+1)
		addr := ip + ":" + strconv.Itoa(s.Port)
		reg := store.Registration{Host: ip, IPv4: ip, Port: s.Port, Container: "sample", Node: c.Node, Project: c.Project}
		key := store.ServiceKey(c.Etcd.Prefix, s.Name, addr)
		if e, err := store.ParseEntry(c.Etcd.Prefix, key, []byte(reg.Encode())); err == nil {
			snap.Entries = append(snap.Entries, e)
		}
	}
	return snap
}

// templateCheck is what a template renders at start-up: with no backend
// at all, and with one made-up backend per service.
type templateCheck struct {
	empty, sample []byte
	files         map[string][]byte // the certificates the configs name
}

// renderChecks renders the template on both views; an error names the
// template, the view and the reason.
func (c *Config) renderChecks(tmpl *render.Template) (templateCheck, error) {
	tc := templateCheck{files: c.view(store.Snapshot{}).Files()}
	var err error
	if tc.empty, err = c.renderFor(tmpl, store.Snapshot{}); err != nil {
		return tc, fmt.Errorf("%s: proxy.template fails with no backend registered (as at a first start): %w", c.file, err)
	}
	if tc.sample, err = c.renderFor(tmpl, c.sampleSnapshot()); err != nil {
		return tc, fmt.Errorf("%s: proxy.template fails with one backend per service: %w", c.file, err)
	}
	return tc, nil
}

// nginxConfig is the nginx package's Config for this spec.
func (c *Config) nginxConfig(log zerolog.Logger) nginx.Config {
	return nginx.Config{
		ConfigPath: c.Proxy.ConfigPath,
		MainPath:   c.Proxy.MainConfig,
		StatusPort: *c.Proxy.StatusPort,
		Logger:     log,
	}
}

// throwaway starts a throwaway proxy for nginx -t. Its container chatter
// is not logged: "container created" in a daemon's log means one of the
// project's.
func (c *Config) throwaway(ctx context.Context, log zerolog.Logger) (*nginx.Session, func(), error) {
	quiet := log.Level(zerolog.WarnLevel)
	docker, err := containers.New(containers.Config{Host: c.Docker.Host, Timeout: c.Docker.Timeout.D(), Logger: quiet})
	if err != nil {
		return nil, nil, err
	}
	s, remove, err := nginx.Throwaway(ctx, docker, c.Proxy.Image, c.nginxConfig(log))
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
func (c *Config) checkWithNginx(ctx context.Context, s *nginx.Session, tc templateCheck, log zerolog.Logger) error {
	if err := s.WriteFiles(ctx, tc.files); err != nil {
		return err
	}
	if err := s.Check(ctx, tc.sample); err != nil {
		if errors.Is(err, nginx.ErrCheckFailed) {
			return fmt.Errorf("%s: proxy.template renders a config nginx rejects (checked with one made-up backend per service at 192.0.2.x): %w", c.file, err)
		}
		return err
	}
	err := s.Check(ctx, tc.empty)
	if errors.Is(err, nginx.ErrCheckFailed) {
		log.Warn().Err(err).Msg("the template renders a config nginx rejects while a service has no backend; nginx keeps the config it runs until one registers")
		return nil
	}
	return err
}
