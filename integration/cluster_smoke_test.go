//go:build integration

package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/go-connections/nat"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/upstreamd/upstreamd/integration/internal/cluster"
)

// newCluster starts a cluster (cfg.Name defaults to a random "cl…" name;
// Logf to t.Logf) and removes it when the test ends.
func newCluster(t *testing.T, cfg cluster.Config) *cluster.Cluster {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = "cl" + randomHex(4)
	}
	if cfg.Logf == nil {
		cfg.Logf = t.Logf
	}
	c, err := cluster.Start(t.Context(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := c.Close(ctx); err != nil {
			t.Errorf("remove cluster %s: %v", c.Name, err)
		}
	})
	return c
}

// TestClusterSmoke checks the cluster harness itself: three hosts whose
// engines publish ports on the LAN, a 3-member etcd that survives a
// member's death, a host's kill and restart, and the daemon run inside a
// host.
func TestClusterSmoke(t *testing.T) {
	ctx := t.Context()
	phase := time.Now()
	lap := func(what string) {
		t.Logf("phase %s: %s", what, time.Since(phase).Round(10*time.Millisecond))
		phase = time.Now()
	}
	c := newCluster(t, cluster.Config{Name: "uc-smoke-" + randomHex(3), Hosts: 3, EtcdMembers: 3,
		Images: []string{"upstreamd/apache:latest", "upstreamd/nginx:latest"}})
	require.Len(t, c.Hosts, 3)
	lap("cluster up")

	// One Apache per host, published on a port the inner engine picks.
	ports := make([]string, len(c.Hosts))
	for i, h := range c.Hosts {
		ports[i] = runApache(t, h, "web")
	}
	for i, h := range c.Hosts {
		url := fmt.Sprintf("http://%s:%s/", h.Addr, ports[i])
		eventually(t, 20*time.Second, "apache on "+h.Name+" answers the machine", func() error {
			return expectHostname(url, "web")
		})
		// From the next host, through the LAN.
		from := c.Hosts[(i+1)%len(c.Hosts)]
		res, err := from.Exec(ctx, []string{"curl", "-fsS", "-m", "5", url})
		require.NoError(t, err)
		require.Equal(t, 0, res.ExitCode, "curl %s from %s: %s", url, from.Name, res.Output())
		require.Contains(t, string(res.Stdout), "hostname: web")
		// From a container of the next host's engine (nginx's way to the
		// backends of other hosts): out through that host's NAT.
		get := fmt.Sprintf(`exec 3<>/dev/tcp/%s/%s && printf 'GET / HTTP/1.0\r\n\r\n' >&3 && cat <&3`, h.Addr, ports[i])
		res, err = from.Exec(ctx, []string{"docker", "exec", "web", "bash", "-c", get})
		require.NoError(t, err)
		require.Equal(t, 0, res.ExitCode, "GET %s from a container on %s: %s", url, from.Name, res.Output())
		require.Contains(t, string(res.Stdout), "hostname: web")
	}
	lap("apache in every host, reached from the machine, another host and a container of another host")

	// etcd: 3 members, writes go on with one of them dead.
	etcd, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	require.NoError(t, err)
	defer etcd.Close()
	members, err := etcd.MemberList(ctx)
	require.NoError(t, err)
	require.Len(t, members.Members, 3)
	for _, ep := range c.Endpoints() { // from inside a host too
		res, err := c.Hosts[2].Exec(ctx, []string{"curl", "-fsS", "-m", "5", ep + "/health"})
		require.NoError(t, err)
		require.Equal(t, 0, res.ExitCode, "curl %s/health from %s: %s", ep, c.Hosts[2].Name, res.Output())
	}
	require.NoError(t, c.Etcd[0].Kill(ctx))
	eventually(t, 20*time.Second, "a put with one member dead", func() error {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, err := etcd.Put(pctx, "/smoke", "one member dead")
		return err
	})
	require.NoError(t, c.Etcd[0].Start(ctx))
	lap("etcd member killed, put, member back")

	// A killed host's port stops answering; started again, its engine has
	// its images and its (stopped) container.
	a := c.Hosts[0]
	urlA := fmt.Sprintf("http://%s:%s/", a.Addr, ports[0])
	require.NoError(t, a.Kill(ctx))
	require.Error(t, expectHostname(urlA, "web"), "host %s killed, yet its port answers", a.Name)
	lap("host killed")
	require.NoError(t, a.Start(ctx))
	_, err = a.Docker().ImageInspect(ctx, "upstreamd/apache:latest")
	require.NoError(t, err, "images survive a restart of the host")
	require.NoError(t, a.Docker().ContainerStart(ctx, "web", container.StartOptions{}))
	eventually(t, 20*time.Second, "apache on "+a.Name+" after its restart", func() error {
		return expectHostname(urlA, "web")
	})
	lap("host started again")

	// Cut off the LAN and back, at the same address.
	require.NoError(t, a.Disconnect(ctx))
	require.Error(t, expectHostname(urlA, "web"), "host %s disconnected, yet its port answers", a.Name)
	require.NoError(t, a.Reconnect(ctx))
	eventually(t, 20*time.Second, "apache on "+a.Name+" after reconnecting", func() error {
		return expectHostname(urlA, "web")
	})
	lap("host disconnected and reconnected")

	// The daemon inside a host: the binary copied in, then `upstreamd run`
	// on the host's engine (unix socket) and the cluster's etcd, nginx
	// published on the host's LAN address.
	b := c.Hosts[1]
	require.NoError(t, b.CopyFile(ctx, binPath, cluster.DaemonBinary, 0o755))
	res, err := b.Exec(ctx, []string{"upstreamd", "version"})
	require.NoError(t, err)
	require.Equal(t, 0, res.ExitCode, res.Output())
	require.True(t, strings.HasPrefix(string(res.Stdout), "upstreamd "), "upstreamd version printed %q", res.Stdout)
	spec := fmt.Sprintf("project = \"smoke\"\nnode = %q\n[etcd]\nendpoints = [\"%s\"]\n[proxy]\npublish = \"%s:8080\"\n"+
		"[[service]]\nname = \"apache\"\nimage = \"upstreamd/apache:latest\"\nreplicas = 1\n",
		b.Name, strings.Join(c.Endpoints(), `", "`), b.Addr)
	require.NoError(t, b.WriteFile(ctx, "/etc/upstreamd/upstreamd.toml", []byte(spec)))
	require.NoError(t, b.StartDaemon(ctx, []string{"run", "--log-format", "console"}, nil))
	t.Cleanup(func() {
		if t.Failed() {
			logs, err := b.DaemonLogs(context.Background())
			t.Logf("daemon logs on %s (%v):\n%s", b.Name, err, logs)
		}
	})
	require.Error(t, b.StartDaemon(ctx, []string{"run"}, nil), "a second daemon started")
	eventually(t, 60*time.Second, "nginx of the daemon on "+b.Name, func() error {
		return expectHostname("http://"+b.Addr+":8080/", "")
	})
	lap("daemon in a host serves through its nginx")
	code, err := b.StopDaemon(ctx, syscall.SIGTERM)
	require.NoError(t, err)
	require.Equal(t, 0, code, "the daemon's exit status after SIGTERM")
	logs, err := b.DaemonLogs(ctx)
	require.NoError(t, err)
	require.NotEmpty(t, logs)
	lap("daemon stopped")
	t.Logf("cluster timings: %+v", c.Timings)
}

// runApache runs upstreamd/apache:latest in the host's engine as name, with
// port 80 published on a port the engine picks, and returns that port.
func runApache(t *testing.T, h *cluster.Host, name string) string {
	t.Helper()
	ctx := t.Context()
	d := h.Docker()
	_, err := d.ContainerCreate(ctx,
		&container.Config{Image: "upstreamd/apache:latest", Hostname: name, ExposedPorts: nat.PortSet{"80/tcp": {}}},
		&container.HostConfig{PortBindings: nat.PortMap{"80/tcp": {{HostIP: "0.0.0.0"}}}},
		nil, nil, name)
	require.NoError(t, err, "create apache on %s", h.Name)
	require.NoError(t, d.ContainerStart(ctx, name, container.StartOptions{}), "start apache on %s", h.Name)
	ins, err := d.ContainerInspect(ctx, name)
	require.NoError(t, err)
	bindings := ins.NetworkSettings.Ports["80/tcp"]
	require.NotEmpty(t, bindings, "apache on %s publishes no port", h.Name)
	return bindings[0].HostPort
}

// expectHostname GETs url once and wants a 200 whose page names host
// (any host when empty).
func expectHostname(url, host string) error {
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "hostname: "+host) {
		return fmt.Errorf("GET %s: %d %q", url, resp.StatusCode, body)
	}
	return nil
}
