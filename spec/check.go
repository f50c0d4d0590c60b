package spec

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/nginx"
	"github.com/upstreamd/upstreamd/render"
	"github.com/upstreamd/upstreamd/store"
)

// ACMEDir is where, under proxy.config_dir, the proxy serves the ACME
// HTTP-01 answers from (/.well-known/acme-challenge/<token>).
const ACMEDir = "upstreamd-acme"

// View builds the View the template renders from snap, as the daemon does.
func (c *Spec) View(f Files, snap store.Snapshot) render.View {
	in := c.ViewInput(f)
	in.Snapshot = snap
	return render.NewView(in)
}

// RenderFor renders the full file the proxy would get for snap.
func (c *Spec) RenderFor(tmpl *render.Template, f Files, snap store.Snapshot) ([]byte, error) {
	v := c.View(f, snap)
	out, err := render.Render(tmpl, v)
	if err != nil {
		return nil, err
	}
	return render.Finish(out, v), nil
}

// SampleSnapshot holds one made-up backend per configured service, at a
// documentation address (192.0.2.0/24), its host name the address too, so
// that nginx -t resolves no name.
func (c *Spec) SampleSnapshot() store.Snapshot {
	var snap store.Snapshot
	for i, s := range c.Project.Service {
		ip := "192.0.2." + strconv.Itoa(i%250+1)
		addr := ip + ":" + strconv.Itoa(s.Port)
		reg := store.Registration{Host: ip, IPv4: ip, Port: s.Port, Container: "sample", Node: c.Node.Name, Project: c.Project.Name}
		key := store.ServiceKey(c.Project.Etcd.Prefix, s.Name, addr)
		if e, err := store.ParseEntry(c.Project.Etcd.Prefix, key, []byte(reg.Encode())); err == nil {
			snap.Entries = append(snap.Entries, e)
		}
	}
	return snap
}

// TemplateCheck is what a template renders at start-up: with no backend
// at all, and with one made-up backend per service.
type TemplateCheck struct {
	Empty, Sample []byte
	Files         map[string][]byte // the certificates the configs name
}

// RenderChecks renders the template on both views; an error names the
// template, the view and the reason.
func (c *Spec) RenderChecks(tmpl *render.Template, f Files) (TemplateCheck, error) {
	tc := TemplateCheck{Files: c.View(f, store.Snapshot{}).Files()}
	var err error
	if tc.Empty, err = c.RenderFor(tmpl, f, store.Snapshot{}); err != nil {
		return tc, fmt.Errorf("%s: proxy.template fails with no backend registered (as at a first start): %w", c.file, err)
	}
	if tc.Sample, err = c.RenderFor(tmpl, f, c.SampleSnapshot()); err != nil {
		return tc, fmt.Errorf("%s: proxy.template fails with one backend per service: %w", c.file, err)
	}
	return tc, nil
}

// nginxChecker is where CheckWithNginx runs `nginx -t` (an
// *nginx.Session: the project's proxy, or a throwaway one).
type nginxChecker interface {
	WriteFiles(ctx context.Context, files map[string][]byte) error
	Check(ctx context.Context, config []byte) error
}

// CheckWithNginx runs `nginx -t` on what the template renders (tc), in s.
// A config nginx rejects with a backend per service is an error (matching
// nginx.ErrCheckFailed); one it rejects with no backend at all is a
// warning: nginx then keeps what it runs until a backend registers.
func (c *Spec) CheckWithNginx(ctx context.Context, s nginxChecker, tc TemplateCheck, log zerolog.Logger) error {
	if err := s.WriteFiles(ctx, tc.Files); err != nil {
		return err
	}
	if err := s.Check(ctx, tc.Sample); err != nil {
		if errors.Is(err, nginx.ErrCheckFailed) {
			return fmt.Errorf("%s: proxy.template renders a config nginx rejects (checked with one made-up backend per service at 192.0.2.x): %w", c.file, err)
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
