package spec

import (
	"fmt"
	"time"

	"github.com/upstreamd/upstreamd/admin"
	"github.com/upstreamd/upstreamd/cluster"
	"github.com/upstreamd/upstreamd/orchestrator"
	"github.com/upstreamd/upstreamd/render"
	"github.com/upstreamd/upstreamd/store"
)

// Defaults reproduce the seed: one nginx in front of 3 Apache containers of
// service "apache", registered under /services/apache/.
const (
	defaultProject    = "upstreamd"
	defaultEtcd       = "http://127.0.0.1:2379"
	defaultProxyImage = "upstreamd/nginx:latest"
	defaultPublish    = "127.0.0.1:8080"
	defaultConfigPath = "/etc/nginx/conf.d/upstreamd.conf"
	defaultMainConfig = "/etc/nginx/nginx.conf"
	defaultConfigDir  = "/etc/nginx"
	defaultService    = "apache"
	defaultImage      = "upstreamd/apache:latest"
	defaultReplicas   = 3
	defaultStatusPort = 8099
	// defaultStartPeriod is long enough for a slow Apache or a JVM.
	defaultStartPeriod = 60 * time.Second
)

// applyDefaults gives every key the file leaves out its default;
// hostname is the host's name, the default node name.
func (c *Spec) applyDefaults(hostname string) {
	if c.Project.Name == "" {
		c.Project.Name = defaultProject
	}
	if c.Node.Name == "" && hostname != "" {
		// The host name, made a valid name (not a constant: two daemons
		// with one node name refuse to run side by side).
		c.Node.Name = store.HostLabel(hostname)
	}
	if len(c.Node.Etcd.Endpoints) == 0 {
		c.Node.Etcd.Endpoints = []string{defaultEtcd}
	}
	if c.Project.Etcd.Prefix == "" {
		c.Project.Etcd.Prefix = store.DefaultPrefix
	}
	// A number or duration the file sets is taken as it is, zero
	// included: Validate accepts or refuses it, it never becomes the
	// default unseen.
	c.setDur("etcd.lease_ttl", &c.Project.Etcd.LeaseTTL, 10*time.Second)
	c.setDur("etcd.dial_timeout", &c.Node.Etcd.DialTimeout, 5*time.Second)
	c.setDur("docker.timeout", &c.Node.Docker.Timeout, 30*time.Second)
	if c.Project.Network.Name == "" {
		c.Project.Network.Name = c.Project.Name
	}
	setStr(&c.Project.Network.Advertise, orchestrator.AdvertiseContainer)
	if !c.written("admin.listen") {
		// The older [metrics] listen, else the default.
		c.Node.Admin.Listen = c.Node.Metrics.Listen
		setStr(&c.Node.Admin.Listen, admin.DefaultListen)
	}
	if c.acmeOn() {
		setStr(&c.Project.ACME.Directory, DefaultACMEDirectory)
	}
	c.defaultProxy()
	c.defaultServices()
	if len(c.Project.Service) > 0 && !c.routed() {
		// The seed: one service at "/" of every host. Once a service is
		// routed by host or path, the default is only what the spec says.
		setStr(&c.Project.Proxy.Service, c.Project.Service[0].Name)
	}
}

// defaultProxy defaults [proxy].
func (c *Spec) defaultProxy() {
	p := &c.Project.Proxy
	setStr(&p.Placement, orchestrator.PlacementEvery)
	setStr(&p.Image, defaultProxyImage)
	setStr(&p.Publish, defaultPublish)
	setStr(&p.ConfigPath, defaultConfigPath)
	setStr(&p.MainConfig, defaultMainConfig)
	setStr(&p.ConfigDir, defaultConfigDir)
	c.setInt("proxy.port", &p.Port, 80)
	c.setDur("proxy.debounce_min", &p.DebounceMin, render.DefaultMinDebounce)
	c.setDur("proxy.debounce_max", &p.DebounceMax, render.DefaultMaxDebounce)
	setPtr(&p.StatusPort, defaultStatusPort)
	// The built-in template uses the Lua balancer of upstreamd/nginx; a
	// template of one's own lists its servers unless it says so.
	setPtr(&p.Dynamic, p.Template == "" && *p.StatusPort != 0)
}

// defaultServices defaults the [[service]] tables, and gives a file
// without any the seed's.
func (c *Spec) defaultServices() {
	if len(c.Project.Service) == 0 && !c.written("service") {
		c.Project.Service = []Service{{Name: defaultService}}
	}
	for i := range c.Project.Service {
		s := &c.Project.Service[i]
		k := fmt.Sprintf("service[%d].", i)
		if s.Name == defaultService {
			setStr(&s.Image, defaultImage)
		}
		setPtr(&s.Replicas, defaultReplicas)
		setPtr(&s.MaxPerNode, cluster.MaxReplicas)
		c.setInt(k+"port", &s.Port, 80)
		c.setDur(k+"stop_grace", &s.StopGrace, orchestrator.DefaultStopGrace)
		c.setDur(k+"connect_timeout", &s.ConnectTimeout, render.DefaultConnectTimeout)
		setStr(&s.Restart, orchestrator.DefaultRestart)
		setStr(&s.Health.Path, "/")
		c.setDur(k+"health.interval", &s.Health.Interval, 2*time.Second)
		c.setDur(k+"health.timeout", &s.Health.Timeout, time.Second)
		c.setDur(k+"health.start_period", &s.Health.StartPeriod, defaultStartPeriod)
		setPtr(&s.Health.Rise, 2)
		setPtr(&s.Health.Fall, 2)
	}
}

// routed reports whether a service is routed by host or path.
func (c *Spec) routed() bool {
	for _, s := range c.Project.Service {
		if len(s.Hosts) > 0 || s.PathPrefix != "" {
			return true
		}
	}
	return false
}

// setStr defaults an empty string: in the spec, "" means the default.
func setStr(p *string, def string) {
	if *p == "" {
		*p = def
	}
}

// setDur defaults a duration the file does not set.
func (c *Spec) setDur(path string, p *Duration, def time.Duration) {
	if !c.written(path) && p.d == 0 {
		p.d = def
	}
}

// setInt defaults an integer the file does not set.
func (c *Spec) setInt(path string, p *int, def int) {
	if !c.written(path) && *p == 0 {
		*p = def
	}
}

func setPtr[T any](p **T, def T) {
	if *p == nil {
		*p = &def
	}
}
