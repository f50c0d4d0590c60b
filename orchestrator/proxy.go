package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"path"
	"sort"
	"sync"

	"github.com/upstreamd/upstreamd/cluster"
	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/internal/events"
	"github.com/upstreamd/upstreamd/internal/wake"
	"github.com/upstreamd/upstreamd/nginx"
)

// Names of the singleton containers.
func dataName(project string) string  { return project + "-data" }
func proxyName(project string) string { return project + "-proxy" }

// runningProxy is the running proxy as the last pass saw it, published to
// the renderer, which subscribes to its changes.
type runningProxy struct {
	changed wake.Fanout // after each change

	mu sync.Mutex
	p  nginx.Proxy
}

func newRunningProxy() *runningProxy { return &runningProxy{} }

// get returns the proxy (ID empty when none).
func (r *runningProxy) get() nginx.Proxy {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.p
}

// set records the running proxy: a container id with address ip, or none
// when id is empty. started says nginx in it (re)started since it was last
// set, which gives it a new Generation.
func (r *runningProxy) set(id, ip string, started bool) {
	r.mu.Lock()
	next := nginx.Proxy{ID: id, IP: ip, Generation: r.p.Generation}
	if started || id != r.p.ID {
		next.Generation++
	}
	if id == "" {
		next = nginx.Proxy{Generation: r.p.Generation}
	}
	same := next == r.p
	r.p = next
	r.mu.Unlock()
	if !same {
		r.changed.Wake()
	}
}

// restarted records that nginx in the proxy id started again in place (the
// engine's restart policy): what was known of it is stale.
func (r *runningProxy) restarted(id string) {
	if cur := r.get(); cur.ID == id {
		r.set(cur.ID, cur.IP, true)
	}
}

// dataSpec is the CreateSpec of the data-volume container: the proxy image
// with an anonymous volume at the config directory, never started (the
// seed's `docker run -v /etc/nginx --name conf-data nginx echo`).
func (r *reconciler) dataSpec() containers.CreateSpec {
	spec := r.cfg.Spec
	cs := containers.CreateSpec{
		Name:  dataName(spec.Project),
		Image: spec.Proxy.Image,
		Cmd:   []string{"true"},
		Labels: map[string]string{
			containers.LabelProject: spec.Project,
			containers.LabelRole:    string(containers.RoleData),
		},
		Volumes: []string{spec.Proxy.ConfigDir},
	}
	cs.Labels[containers.LabelSpec] = specHash(cs)
	return cs
}

// proxySpec is the CreateSpec of the proxy, mounting the volumes of data.
func (r *reconciler) proxySpec(dataID string) containers.CreateSpec {
	spec := r.cfg.Spec
	cs := containers.CreateSpec{
		Name:  proxyName(spec.Project),
		Image: spec.Proxy.Image,
		Labels: map[string]string{
			containers.LabelProject: spec.Project,
			containers.LabelRole:    string(containers.RoleProxy),
		},
		Network:     spec.Network,
		Aliases:     []string{"proxy"},
		ExposedPort: spec.Proxy.Port,
		PublishAddr: spec.Proxy.Publish,
		VolumesFrom: []string{dataID},
		Restart:     "unless-stopped", // keep serving while the daemon is away
		MemoryBytes: spec.Proxy.Limits.MemoryBytes,
		NanoCPUs:    spec.Proxy.Limits.NanoCPUs,
		StopTimeout: DefaultStopGrace,
	}
	if spec.Proxy.PublishTLS != "" {
		cs.TLSPort, cs.TLSPublishAddr = TLSPort, spec.Proxy.PublishTLS
	}
	cs.Labels[containers.LabelSpec] = specHash(cs)
	return cs
}

// TLSPort is nginx's TLS port inside the proxy.
const TLSPort = 443

// reconcileProxy keeps exactly one data-volume container (created once,
// adopted afterwards, never recreated while it exists) and one running,
// up-to-date proxy mounting it, and publishes that proxy.
func (r *reconciler) reconcileProxy(ctx context.Context, data, proxies []containers.Container) error {
	if r.cfg.RunProxy != nil {
		switch r.cfg.RunProxy() {
		case cluster.ProxyNone:
			return r.noProxy(ctx, proxies)
		case cluster.ProxyKeep:
			return r.keepProxy(ctx, proxies)
		}
	}
	dataC, err := r.ensureData(ctx, data)
	if err != nil {
		r.cfg.Proxy.set("", "", false)
		return fmt.Errorf("proxy data volume: %w", err)
	}
	current, started, err := r.ensureProxy(ctx, r.proxySpec(dataC.ID), dataC.ID, proxies)
	if err != nil {
		r.cfg.Proxy.set("", "", false)
		return fmt.Errorf("proxy: %w", err)
	}
	ip := current.IPs[r.cfg.Spec.Network]
	if ip == "" { // just started: the listing predates its address
		fresh, err := r.cfg.Docker.Inspect(ctx, current.ID)
		if err != nil {
			r.cfg.Proxy.set("", "", false)
			return fmt.Errorf("proxy: %w", err)
		}
		ip = fresh.IPs[r.cfg.Spec.Network]
	}
	r.cfg.Proxy.set(current.ID, ip, started)
	return nil
}

// ensureData returns the data-volume container: the oldest found (it holds
// the config; any others are left alone), or a new one.
func (r *reconciler) ensureData(ctx context.Context, data []containers.Container) (containers.Container, error) {
	if len(data) > 0 {
		sort.Slice(data, func(i, j int) bool { return data[i].Created.Before(data[j].Created) })
		return data[0], nil
	}
	if err := r.cfg.Docker.EnsureImage(ctx, r.cfg.Spec.Proxy.Image); err != nil {
		return containers.Container{}, err
	}
	c, err := r.cfg.Docker.Create(ctx, r.dataSpec())
	if err != nil {
		return containers.Container{}, err
	}
	r.log.Info().Str("container", c.Name).Str("volume", r.cfg.Spec.Proxy.ConfigDir).Msg("data-volume container created")
	return c, nil
}

// ensureProxy removes every proxy that is not running or not of want, and
// returns the one that is, created and started when missing; started says
// it was (re)started in this pass.
func (r *reconciler) ensureProxy(ctx context.Context, want containers.CreateSpec, dataID string, proxies []containers.Container) (current containers.Container, started bool, err error) {
	hash := want.Labels[containers.LabelSpec]
	var errs []error
	for _, p := range proxies {
		ok := p.SpecHash == hash && (p.State == containers.StateRunning || p.State == containers.StateRestarting || p.State == containers.StateCreated)
		if ok && current.ID == "" {
			current = p
			continue
		}
		reason := "not running"
		if p.SpecHash != hash {
			reason = "created from an older spec or data volume"
		}
		r.log.Info().Str("container", p.Name).Str("state", p.State).Str("reason", reason).Msg("replacing proxy")
		if err := r.cfg.Docker.Remove(ctx, p.ID); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return containers.Container{}, false, err
	}
	if current.ID == "" {
		if err := r.cfg.Docker.EnsureImage(ctx, want.Image); err != nil {
			return containers.Container{}, false, err
		}
		if err := r.ensureConfig(ctx, dataID); err != nil {
			return containers.Container{}, false, err
		}
		if current, err = r.cfg.Docker.Create(ctx, want); err != nil {
			return containers.Container{}, false, err
		}
	}
	if current.State != containers.StateRunning && current.State != containers.StateRestarting {
		if err := r.cfg.Docker.Start(ctx, current.ID); err != nil {
			return containers.Container{}, false, err
		}
		r.log.Info().Str("container", current.Name).Str("publish", r.cfg.Spec.Proxy.Publish).Msg("proxy started")
		r.cfg.Events.Record(events.Event{Kind: events.ProxyCreated, Container: current.Name, ID: containers.ShortID(current.ID),
			Message: fmt.Sprintf("proxy %s started, published on %s", current.Name, r.cfg.Spec.Proxy.Publish)})
		started = true
	}
	return current, started, nil
}

// placeholder is the config a new proxy starts with, until the first
// render replaces it: without it nginx would listen on nothing, and its
// published port would reset every connection. It answers every request
// with 503 and says why.
func placeholder(port int) []byte {
	return fmt.Appendf(nil, `# Written by upstreamd when it created the data volume; the first render
# replaces it.
server {
    listen %d default_server;
    location / {
        default_type text/plain;
        return 503 "upstreamd: no configuration rendered yet; try again shortly\n";
    }
}
`, port)
}

// ensureConfig writes the placeholder into the data volume when the
// rendered file is not there yet (a new data volume).
func (r *reconciler) ensureConfig(ctx context.Context, dataID string) error {
	p := r.cfg.Spec.Proxy
	if p.ConfigPath == "" {
		return nil
	}
	_, err := r.cfg.Docker.ReadFile(ctx, dataID, p.ConfigPath)
	if !errors.Is(err, containers.ErrNotFound) {
		return err // there already, or the engine failed
	}
	err = r.cfg.Docker.CopyFiles(ctx, dataID, path.Dir(p.ConfigPath), []containers.File{{Path: path.Base(p.ConfigPath), Data: placeholder(p.Port)}})
	if err != nil {
		return fmt.Errorf("write the placeholder config: %w", err)
	}
	r.log.Info().Str("file", p.ConfigPath).Msg("placeholder config written: nginx answers 503 until the first render")
	return nil
}

// keepProxy keeps the running proxy found here, as it is, while who leads
// is not known: a leader's daemon that restarts must not take the front
// door down before etcd says another node has it. It creates nothing.
func (r *reconciler) keepProxy(ctx context.Context, proxies []containers.Container) error {
	for _, p := range proxies {
		if p.State != containers.StateRunning {
			continue
		}
		ip := p.IPs[r.cfg.Spec.Network]
		if ip == "" {
			fresh, err := r.cfg.Docker.Inspect(ctx, p.ID)
			if err != nil {
				return fmt.Errorf("proxy: %w", err)
			}
			ip = fresh.IPs[r.cfg.Spec.Network]
		}
		r.cfg.Proxy.set(p.ID, ip, false)
		return nil
	}
	r.cfg.Proxy.set("", "", false)
	return nil
}

// noProxy removes the proxies of a node that is not to run one (another
// node leads); its data volume stays for when it leads again.
func (r *reconciler) noProxy(ctx context.Context, proxies []containers.Container) error {
	r.cfg.Proxy.set("", "", false)
	var errs []error
	for _, p := range proxies {
		r.log.Info().Str("container", p.Name).Msg("removing the proxy: another node leads and runs the project's proxy")
		r.cfg.Events.Record(events.Event{Kind: events.ProxyRemoved, Container: p.Name, ID: containers.ShortID(p.ID),
			Message: fmt.Sprintf("proxy %s removed: another node leads and runs the project's proxy", p.Name)})
		if err := r.cfg.Docker.Remove(ctx, p.ID); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
