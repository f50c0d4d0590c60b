// Package cluster runs a cluster of Docker hosts on one machine for the
// integration suite and the cluster demo: each host is a container of the
// upstreamd/host image running its own Docker engine, on a bridge network of
// the machine's engine (the LAN), beside an etcd cluster on the same LAN.
//
// Every address is a LAN address, reachable from the machine (the test
// process) and from every host alike: a host's engine at tcp://Addr:2375,
// the ports its containers publish at Addr:<port>, etcd at Endpoints().
// Addresses are fixed for the cluster's life, across Kill/Start and
// Disconnect/Reconnect. Inside a host, the engine is also at
// unix:///var/run/docker.sock, and other containers of the LAN resolve by
// name (the outer engine's DNS); from the inner engine's containers only
// addresses work.
//
// Every object is named after Config.Name and labelled LabelCluster, so
// Close (or `docker rm -f $(docker ps -aq --filter label=...)`) finds them.
package cluster

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/jsonmessage"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/upstreamd/upstreamd/containers"
)

// Images the cluster runs; HostImage is built by `make images` from
// images/host.
const (
	HostImage = "upstreamd/host:latest"
	EtcdImage = "upstreamd/etcd:latest"
)

// LabelCluster is on every container, volume and network of a cluster; its
// value is Config.Name.
const LabelCluster = "io.upstreamd.cluster"

// Bounds of the waits, each within the caller's ctx.
const (
	engineTimeout = 90 * time.Second // a host's engine answering after its start
	etcdTimeout   = 60 * time.Second // a member reporting healthy after its start
	removeTimeout = 2 * time.Minute  // Close, and the clean-up of a failed Start
)

// Config describes a cluster.
type Config struct {
	// Name prefixes every object's name (hosts are <Name>-a, <Name>-b, ...,
	// etcd members <Name>-etcd1, ...); unique per test. Required.
	Name string
	// Hosts is the number of Docker hosts, 1 to 26; zero means 3.
	Hosts int
	// EtcdMembers is the size of the etcd cluster, 1 to 9; zero means 3.
	EtcdMembers int
	// Images of the machine's engine loaded into every host's engine
	// (e.g. upstreamd/apache:latest).
	Images []string
	// ImageCache, when set, is a directory where the saved Images are kept
	// for the next cluster, under a name made of their IDs (a suite passes
	// its temp dir and removes it at the end). Empty: a temp file removed
	// once loaded.
	ImageCache string
	// Logf, when set, receives one line per phase (e.g. testing.T.Logf).
	Logf func(format string, args ...any)
}

// Timings are how long the phases of Start took. They overlap: the images
// are saved while the hosts boot, and etcd starts with the hosts.
type Timings struct {
	Hosts time.Duration // from creating the hosts to every engine answering
	Save  time.Duration // saving Config.Images from the machine's engine
	Load  time.Duration // loading them into every host, concurrently
	Etcd  time.Duration // from creating the members to every one healthy
	Total time.Duration // all of Start
}

// Cluster is a running cluster.
type Cluster struct {
	// Name is Config.Name.
	Name string
	// LAN is the name of the bridge network; Subnet its address range.
	LAN    string
	Subnet netip.Prefix
	Hosts  []*Host
	Etcd   []*Member
	// Timings of Start.
	Timings Timings

	api  *client.Client     // the machine's engine
	exec *containers.Client // the same engine: exec and file copies
	logf func(format string, args ...any)
}

// Start creates the LAN, the hosts and the etcd cluster, loads the images
// into every host and waits until every engine answers and etcd is healthy.
// When it fails it removes whatever it created.
func Start(ctx context.Context, cfg Config) (_ *Cluster, err error) {
	if err := cfg.normalize(); err != nil {
		return nil, err
	}
	began := time.Now()
	c := &Cluster{Name: cfg.Name, LAN: cfg.Name + "-lan", logf: cfg.Logf}
	if c.logf == nil {
		c.logf = func(string, ...any) {}
	}
	if c.api, err = client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation()); err != nil {
		return nil, fmt.Errorf("cluster %s: docker client: %w", c.Name, err)
	}
	// Exec and copies may take long (a load in a host): ctx bounds them.
	if c.exec, err = containers.New(containers.Config{Timeout: 10 * time.Minute, Logger: zerolog.Nop()}); err != nil {
		c.api.Close()
		return nil, fmt.Errorf("cluster %s: %w", c.Name, err)
	}
	defer func() {
		if err != nil {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), removeTimeout)
			defer cancel()
			if cerr := c.Close(ctx); cerr != nil {
				err = errors.Join(err, fmt.Errorf("clean up: %w", cerr))
			}
		}
	}()

	if err := c.createLAN(ctx); err != nil {
		return nil, err
	}
	for i := range cfg.Hosts {
		name := fmt.Sprintf("%s-%c", c.Name, 'a'+i)
		addr, err := c.addr(10 + i)
		if err != nil {
			return nil, err
		}
		h, err := c.createHost(ctx, name, addr)
		if err != nil {
			return nil, err
		}
		c.Hosts = append(c.Hosts, h)
	}
	if err := c.createEtcd(ctx, cfg.EtcdMembers); err != nil {
		return nil, err
	}

	// etcd boots beside the hosts; a failure of the hosts cancels it.
	etcdCtx, cancelEtcd := context.WithCancel(ctx)
	defer cancelEtcd()
	etcdDone := make(chan error, 1)
	go func() {
		err := c.StartEtcd(etcdCtx)
		c.Timings.Etcd = time.Since(began)
		if err == nil {
			c.logf("cluster %s: etcd cluster of %d healthy in %s", c.Name, len(c.Etcd), round(c.Timings.Etcd))
		}
		etcdDone <- err
	}()
	err = c.bootHosts(ctx, began, cfg.Images, cfg.ImageCache)
	if err != nil {
		cancelEtcd()
	}
	if eerr := <-etcdDone; err == nil {
		err = eerr
	}
	if err != nil {
		return nil, err
	}
	c.Timings.Total = time.Since(began)
	c.logf("cluster %s: ready in %s (hosts %s, save %s, load %s, etcd %s)", c.Name, round(c.Timings.Total),
		round(c.Timings.Hosts), round(c.Timings.Save), round(c.Timings.Load), round(c.Timings.Etcd))
	return c, nil
}

// validName: the names made of it are host names (at most 63 characters)
// and container names.
var validName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,49}$`)

func (cfg *Config) normalize() error {
	if !validName.MatchString(cfg.Name) {
		return fmt.Errorf("cluster: Config.Name %q: want 1-50 of a-z 0-9 - (a host name, starting with a letter or digit)", cfg.Name)
	}
	if cfg.Hosts == 0 {
		cfg.Hosts = 3
	}
	if cfg.EtcdMembers == 0 {
		cfg.EtcdMembers = 3
	}
	if cfg.Hosts < 1 || cfg.Hosts > 26 {
		return fmt.Errorf("cluster %s: %d hosts, want 1 to 26", cfg.Name, cfg.Hosts)
	}
	if cfg.EtcdMembers < 1 || cfg.EtcdMembers > 9 {
		return fmt.Errorf("cluster %s: %d etcd members, want 1 to 9", cfg.Name, cfg.EtcdMembers)
	}
	return nil
}

// bootHosts starts the created hosts and waits for their engines while it
// saves the images from the machine's engine, then loads them into every
// host.
func (c *Cluster) bootHosts(ctx context.Context, began time.Time, images []string, cache string) error {
	g, gctx := errgroup.WithContext(ctx)
	var tar string
	defer func() {
		if tar != "" && cache == "" {
			_ = os.Remove(tar) // a temp file left behind is harmless
		}
	}()
	g.Go(func() error {
		t0 := time.Now()
		var err error
		tar, err = c.saveImages(gctx, images, cache)
		c.Timings.Save = time.Since(t0)
		return err
	})
	g.Go(func() error {
		err := eachHost(gctx, c.Hosts, (*Host).Start)
		c.Timings.Hosts = time.Since(began)
		return err
	})
	if err := g.Wait(); err != nil {
		return err
	}
	c.logf("cluster %s: %d hosts up in %s", c.Name, len(c.Hosts), round(c.Timings.Hosts))
	if tar == "" {
		return nil
	}
	t0 := time.Now()
	err := eachHost(ctx, c.Hosts, func(h *Host, ctx context.Context) error {
		t0 := time.Now()
		err := h.loadImages(ctx, tar)
		c.logf("host %s: images loaded in %s", h.Name, round(time.Since(t0)))
		return err
	})
	if err != nil {
		return err
	}
	c.Timings.Load = time.Since(t0)
	c.logf("cluster %s: %d images loaded into %d hosts in %s (saved in %s)",
		c.Name, len(images), len(c.Hosts), round(c.Timings.Load), round(c.Timings.Save))
	return nil
}

// Endpoints returns the etcd client URLs (http://<member addr>:2379), for
// the test process and for the daemons in the hosts alike.
func (c *Cluster) Endpoints() []string {
	out := make([]string, 0, len(c.Etcd))
	for _, m := range c.Etcd {
		out = append(out, m.Endpoint)
	}
	return out
}

// Close removes every container, volume and network labelled with the
// cluster's name (the hosts take their engines and inner containers with
// them), then closes the clients. A test calls it in t.Cleanup with a
// context of its own (t.Context is already cancelled there).
func (c *Cluster) Close(ctx context.Context) error {
	var errs []error
	label := filters.NewArgs(filters.Arg("label", LabelCluster+"="+c.Name))
	list, err := c.api.ContainerList(ctx, container.ListOptions{All: true, Filters: label})
	if err != nil {
		errs = append(errs, fmt.Errorf("cluster %s: list containers: %w", c.Name, err))
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, ct := range list {
		wg.Go(func() {
			err := c.api.ContainerRemove(ctx, ct.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
			if err != nil && !cerrdefs.IsNotFound(err) {
				mu.Lock()
				errs = append(errs, fmt.Errorf("cluster %s: remove container %s: %w", c.Name, containerName(ct), err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	vols, err := c.api.VolumeList(ctx, volume.ListOptions{Filters: label})
	if err != nil {
		errs = append(errs, fmt.Errorf("cluster %s: list volumes: %w", c.Name, err))
	} else {
		for _, v := range vols.Volumes {
			if err := c.api.VolumeRemove(ctx, v.Name, true); err != nil && !cerrdefs.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("cluster %s: remove volume %s: %w", c.Name, v.Name, err))
			}
		}
	}
	nets, err := c.api.NetworkList(ctx, network.ListOptions{Filters: label})
	if err != nil {
		errs = append(errs, fmt.Errorf("cluster %s: list networks: %w", c.Name, err))
	}
	for _, n := range nets {
		if err := c.api.NetworkRemove(ctx, n.ID); err != nil && !cerrdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("cluster %s: remove network %s: %w", c.Name, n.Name, err))
		}
	}
	for _, h := range c.Hosts {
		if h.docker != nil {
			errs = append(errs, h.docker.Close())
		}
	}
	errs = append(errs, c.exec.Close(), c.api.Close())
	return errors.Join(errs...)
}

func containerName(s container.Summary) string {
	if len(s.Names) > 0 {
		return strings.TrimPrefix(s.Names[0], "/")
	}
	return containers.ShortID(s.ID)
}

// labels returns the labels of every object of the cluster.
func (c *Cluster) labels() map[string]string { return map[string]string{LabelCluster: c.Name} }

// createLAN creates the bridge network with a stated subnet, because the
// engine gives a container a fixed address (which Kill/Start and Reconnect
// keep) only on such a network. The subnet is the one the engine picks for
// a throwaway network of the same name, so it clashes with no other.
func (c *Cluster) createLAN(ctx context.Context) error {
	opts := network.CreateOptions{Driver: "bridge", Labels: c.labels()}
	probe, err := c.api.NetworkCreate(ctx, c.LAN, opts)
	if err != nil {
		return fmt.Errorf("cluster %s: create network %s: %w", c.Name, c.LAN, err)
	}
	ins, err := c.api.NetworkInspect(ctx, probe.ID, network.InspectOptions{})
	if err == nil && len(ins.IPAM.Config) == 0 {
		err = errors.New("no IPAM config")
	}
	if err != nil {
		return fmt.Errorf("cluster %s: inspect network %s: %w", c.Name, c.LAN, err)
	}
	ipam := ins.IPAM.Config[0]
	if c.Subnet, err = netip.ParsePrefix(ipam.Subnet); err != nil || !c.Subnet.Addr().Is4() {
		return fmt.Errorf("cluster %s: network %s has subnet %q, want an IPv4 prefix", c.Name, c.LAN, ipam.Subnet)
	}
	if err := c.api.NetworkRemove(ctx, probe.ID); err != nil {
		return fmt.Errorf("cluster %s: remove network %s: %w", c.Name, c.LAN, err)
	}
	opts.IPAM = &network.IPAM{Config: []network.IPAMConfig{{Subnet: ipam.Subnet, Gateway: ipam.Gateway}}}
	if _, err := c.api.NetworkCreate(ctx, c.LAN, opts); err != nil {
		return fmt.Errorf("cluster %s: create network %s with subnet %s: %w", c.Name, c.LAN, ipam.Subnet, err)
	}
	return nil
}

// addr returns the n-th address of the LAN's subnet.
func (c *Cluster) addr(n int) (string, error) {
	a := c.Subnet.Masked().Addr()
	for range n {
		a = a.Next()
	}
	if !c.Subnet.Contains(a) {
		return "", fmt.Errorf("cluster %s: subnet %s too small for address number %d", c.Name, c.Subnet, n)
	}
	return a.String(), nil
}

// endpointOn is the networking config that puts a container on the LAN at
// addr.
func (c *Cluster) endpointOn(addr string) *network.EndpointSettings {
	return &network.EndpointSettings{IPAMConfig: &network.EndpointIPAMConfig{IPv4Address: addr}}
}

// saveImages writes images from the machine's engine into a tarball and
// returns its path; none: "". With a cache directory, a tarball of the same
// images (same IDs) saved before is used as it is.
func (c *Cluster) saveImages(ctx context.Context, images []string, cache string) (string, error) {
	if len(images) == 0 {
		return "", nil
	}
	dir, final := "", ""
	if cache != "" {
		name, err := c.imagesKey(ctx, images)
		if err != nil {
			return "", err
		}
		dir, final = cache, filepath.Join(cache, name)
		if _, err := os.Stat(final); err == nil {
			return final, nil
		}
	}
	f, err := os.CreateTemp(dir, c.Name+"-images-*.tar")
	if err != nil {
		return "", fmt.Errorf("cluster %s: save images: %w", c.Name, err)
	}
	rc, err := c.api.ImageSave(ctx, images)
	if err == nil {
		_, err = io.Copy(f, rc)
		err = errors.Join(err, rc.Close())
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && final != "" {
		// Complete or absent: a concurrent cluster may be saving it too.
		err = os.Rename(f.Name(), final)
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return "", fmt.Errorf("cluster %s: save images %v from the machine's engine: %w", c.Name, images, err)
	}
	if final != "" {
		return final, nil
	}
	return f.Name(), nil
}

// imagesKey names the tarball of images after their IDs.
func (c *Cluster) imagesKey(ctx context.Context, images []string) (string, error) {
	var ids strings.Builder
	for _, ref := range images {
		ins, err := c.api.ImageInspect(ctx, ref)
		if err != nil {
			return "", fmt.Errorf("cluster %s: inspect image %s: %w", c.Name, ref, err)
		}
		ids.WriteString(ref + "=" + ins.ID + "\n")
	}
	sum := sha256.Sum256([]byte(ids.String()))
	return fmt.Sprintf("images-%x.tar", sum[:8]), nil
}

// loadImages loads the tarball into the host's engine.
func (h *Host) loadImages(ctx context.Context, tar string) error {
	f, err := os.Open(tar)
	if err != nil {
		return fmt.Errorf("host %s: load images: %w", h.Name, err)
	}
	defer func() { _ = f.Close() }() // read only
	resp, err := h.docker.ImageLoad(ctx, f, client.ImageLoadWithQuiet(true))
	if err != nil {
		return fmt.Errorf("host %s: load images: %w", h.Name, err)
	}
	defer resp.Body.Close()
	// The engine reports a failed load inside the stream.
	if err := jsonmessage.DisplayJSONMessagesStream(resp.Body, io.Discard, 0, false, nil); err != nil {
		return fmt.Errorf("host %s: load images: %w", h.Name, err)
	}
	return nil
}

// eachHost runs fn for every host concurrently and returns the errors.
func eachHost(ctx context.Context, hosts []*Host, fn func(*Host, context.Context) error) error {
	errs := make([]error, len(hosts))
	var wg sync.WaitGroup
	for i, h := range hosts {
		wg.Go(func() { errs[i] = fn(h, ctx) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

func round(d time.Duration) time.Duration { return d.Round(10 * time.Millisecond) }
