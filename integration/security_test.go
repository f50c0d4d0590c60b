//go:build integration

package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	dcontainer "github.com/docker/docker/api/types/container"
	dclient "github.com/docker/docker/client"
	"github.com/stretchr/testify/require"
	"github.com/testcontainers/testcontainers-go"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/integration/internal/daemon"
	"github.com/upstreamd/upstreamd/integration/internal/engine"
	"github.com/upstreamd/upstreamd/integration/internal/etcd"
	"github.com/upstreamd/upstreamd/integration/internal/pki"
	"github.com/upstreamd/upstreamd/store"
)

// TestEtcdTLSAndAuth: against an etcd that takes TLS with client
// certificates only and has authentication on, a daemon whose user may
// touch nothing but /services/ and /upstreamd/ (the role the README
// recommends) registers its backends and nginx serves them; its logs never
// show the password or the private key. With a wrong password the daemon
// says so, keeps running (no crash loop) and registers nothing.
func TestEtcdTLSAndAuth(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	certs, err := pki.Generate(dir, "upstreamd-client")
	require.NoError(t, err)
	ec, err := etcd.RunTLS(ctx, etcd.DefaultImage, certs)
	if ec != nil {
		testcontainers.CleanupContainer(t, ec)
	}
	require.NoError(t, err)
	endpoint, err := ec.ClientURL(ctx)
	require.NoError(t, err)

	rootPassword, password := "root-"+randomHex(12), "daemon-"+randomHex(12)
	enableEtcdAuth(t, endpoint, certs, rootPassword, password)
	admin := tlsEtcdClient(t, endpoint, certs, "root", rootPassword)

	// The premise: with auth on, the client certificate alone (its CN is
	// no etcd user) reads nothing; the daemon needs its password.
	anon := tlsEtcdClient(t, endpoint, certs, "", "")
	_, err = anon.Get(ctx, "/services/", clientv3.WithPrefix())
	require.Error(t, err, "etcd must refuse a client without credentials")

	s := newTLSStack(t, endpoint, certs, "upstreamd", password, 3)
	d := s.startDaemon()
	var addrs []string
	eventually(t, 90*time.Second, "3 backends running, registered through TLS+auth and served", func() error {
		running := names(s.backends())
		if len(running) != 3 {
			return fmt.Errorf("%d backends running: %v", len(running), running)
		}
		entries, err := registrations(ctx, admin, "apache")
		if err != nil {
			return err
		}
		var hosts []string
		addrs = addrs[:0]
		for _, e := range entries {
			hosts = append(hosts, e.Reg.Host)
			addrs = append(addrs, e.Addr)
		}
		sort.Strings(hosts)
		if !equal(hosts, running) {
			return fmt.Errorf("registered %v, running %v", hosts, running)
		}
		served, err := s.servedHosts(9)
		if err != nil {
			return err
		}
		if !equal(served, running) {
			return fmt.Errorf("nginx served %v, want %v", served, running)
		}
		return nil
	})
	entries, err := registrations(ctx, admin, "apache")
	require.NoError(t, err)
	for _, e := range entries {
		require.Equal(t, "node-"+s.project, e.Reg.Node)
		require.NotZero(t, e.Lease, "key %s has no lease", e.Key)
	}
	// The daemon's own liveness check must pass under the least-privilege
	// role, and so must the one-shot commands.
	require.NoError(t, d.WaitLog(ctx, "etcd reachable", 30*time.Second))
	out, err := s.cli("render")
	require.NoError(t, err, out)
	for _, a := range addrs {
		require.Contains(t, out, a, "`upstreamd render` through TLS+auth shows every registration")
	}

	// A wrong password: a clear error, retries, no exit, and nothing done:
	// a daemon that cannot hold its node name in etcd touches no container.
	s2 := newTLSStack(t, endpoint, certs, "upstreamd", "wrong-"+randomHex(12), 1)
	d2 := s2.startDaemon()
	require.NoError(t, d2.WaitLog(ctx, "authentication failed", 30*time.Second),
		"a wrong password must be logged as an authentication error")
	eventually(t, 60*time.Second, "the wrong-password daemon retried etcd", func() error {
		processRunning(t, d2, "the daemon with a wrong password")
		n := 0
		for _, l := range strings.Split(d2.Logs(), "\n") {
			if strings.Contains(l, "etcd answers with an error; retrying: no container is created or changed") && strings.Contains(l, "authentication failed") {
				n++
			}
		}
		if n < 2 {
			return errors.New("no retry of etcd logged yet")
		}
		return nil // a retry after backoff failed the same way
	})
	list, err := s2.docker.List(ctx, s2.project)
	require.NoError(t, err)
	require.Empty(t, list, "the wrong-password daemon created containers without holding its node name")
	processRunning(t, d2, "the daemon with a wrong password")
	kvs, err := admin.Get(ctx, "/services/", clientv3.WithPrefix())
	require.NoError(t, err)
	for _, kv := range kvs.Kvs {
		require.NotContains(t, string(kv.Value), "node-"+s2.project, "the wrong-password daemon registered %s", kv.Key)
	}
	require.Len(t, kvs.Kvs, 3, "only the 3 registrations of the daemon with the right password")

	// Secrets never reach the logs (at debug level, the most talkative).
	key, err := os.ReadFile(certs.ClientKey)
	require.NoError(t, err)
	keyBody := strings.TrimSpace(strings.Split(string(key), "\n")[1]) // a base64 line of the key
	for name, logs := range map[string]string{"daemon": d.Logs(), "wrong-password daemon": d2.Logs(), "render": out} {
		require.NotContains(t, logs, password, "%s logs show the password", name)
		require.NotContains(t, logs, rootPassword, "%s logs show a password", name)
		require.NotContains(t, logs, keyBody, "%s logs show the private key", name)
	}
}

// enableEtcdAuth creates root and a user "upstreamd" with password, whose
// role may read and write /services/ and /upstreamd/ only, then turns
// authentication on.
func enableEtcdAuth(t *testing.T, endpoint string, certs pki.Files, rootPassword, password string) {
	t.Helper()
	ctx := t.Context()
	cli := tlsEtcdClient(t, endpoint, certs, "", "")
	_, err := cli.UserAdd(ctx, "root", rootPassword)
	require.NoError(t, err)
	if _, err := cli.RoleAdd(ctx, "root"); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
		require.NoError(t, err)
	}
	_, err = cli.UserGrantRole(ctx, "root", "root")
	require.NoError(t, err)
	_, err = cli.UserAdd(ctx, "upstreamd", password)
	require.NoError(t, err)
	_, err = cli.RoleAdd(ctx, "upstreamd")
	require.NoError(t, err)
	for _, prefix := range []string{"/services/", "/upstreamd/"} {
		_, err = cli.RoleGrantPermission(ctx, "upstreamd", prefix, clientv3.GetPrefixRangeEnd(prefix), clientv3.PermissionType(clientv3.PermReadWrite))
		require.NoError(t, err)
	}
	_, err = cli.UserGrantRole(ctx, "upstreamd", "upstreamd")
	require.NoError(t, err)
	_, err = cli.AuthEnable(ctx)
	require.NoError(t, err)
}

// tlsEtcdClient is a clientv3 client of our own (not the daemon's store
// package) with the test CA and client certificate; user may be empty.
func tlsEtcdClient(t *testing.T, endpoint string, certs pki.Files, user, password string) *clientv3.Client {
	t.Helper()
	ca, err := os.ReadFile(certs.CA)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(ca))
	cert, err := tls.LoadX509KeyPair(certs.ClientCert, certs.ClientKey)
	require.NoError(t, err)
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 5 * time.Second,
		TLS:         &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		Username:    user,
		Password:    password,
		Logger:      zap.NewNop(),
	})
	require.NoError(t, err)
	t.Cleanup(func() { cli.Close() })
	return cli
}

// registrations reads and validates the registrations of service.
func registrations(ctx context.Context, cli *clientv3.Client, service string) ([]store.Entry, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, store.ServicePrefix(store.DefaultPrefix, service), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("etcd get: %w", err)
	}
	var out []store.Entry
	for _, kv := range resp.Kvs {
		e, err := store.ParseEntry(store.DefaultPrefix, string(kv.Key), kv.Value)
		if err != nil {
			return nil, fmt.Errorf("the daemon wrote an invalid registration: %w", err)
		}
		e.Lease = kv.Lease
		out = append(out, e)
	}
	return out, nil
}

// newTLSStack is a stack whose daemon reaches etcd over TLS as user with
// password (kept in a file). It has no plain etcd: s.etcd is nil, so read
// etcd with registrations, not s.keys. Its containers and network are
// removed at cleanup.
func newTLSStack(t *testing.T, endpoint string, certs pki.Files, user, password string, replicas int) *stack {
	t.Helper()
	s := &stack{t: t, project: "it" + randomHex(4), etcdURL: endpoint, opts: stackOptions{service: "apache"}}
	s.publish = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	var err error
	s.docker, err = engine.New()
	require.NoError(t, err)
	t.Cleanup(func() { s.removeAll() })

	dir := t.TempDir()
	pwFile := filepath.Join(dir, "etcd-password")
	require.NoError(t, os.WriteFile(pwFile, []byte(password+"\n"), 0o600))
	s.configFile = filepath.Join(dir, "upstreamd.toml")
	var b strings.Builder
	fmt.Fprintf(&b, "project = %q\nnode = %q\n", s.project, "node-"+s.project)
	fmt.Fprintf(&b, "[etcd]\nendpoints = [%q]\nlease_ttl = \"5s\"\n", endpoint)
	fmt.Fprintf(&b, "ca_file = %q\ncert_file = %q\nkey_file = %q\n", certs.CA, certs.ClientCert, certs.ClientKey)
	fmt.Fprintf(&b, "username = %q\npassword_file = %q\n", user, pwFile)
	fmt.Fprintf(&b, "[proxy]\npublish = %q\n", s.publish)
	fmt.Fprintf(&b, "[[service]]\nname = \"apache\"\nreplicas = %d\nstop_grace = \"2s\"\n", replicas)
	b.WriteString("[service.health]\npath = \"/healthz\"\ninterval = \"500ms\"\ntimeout = \"400ms\"\nrise = 2\nfall = 2\n")
	require.NoError(t, os.WriteFile(s.configFile, []byte(b.String()), 0o644))
	return s
}

// TestContainersAreUnprivilegedWithLimits: every container the daemon
// creates is unprivileged, adds no capability, mounts nothing from the
// host and shares no host namespace; backends and proxy carry the limits
// and restart policies of the spec. Service apache keeps the default
// restart policy ("no": the daemon replaces dead backends); service
// sticky asks for unless-stopped.
func TestContainersAreUnprivilegedWithLimits(t *testing.T) {
	s := newStack(t,
		withServiceTOML(`memory = "64m"`), withServiceTOML(`cpus = 0.5`),
		withProxyTOML(`memory = "128m"`),
		withExtraTOML("[[service]]\nname = \"sticky\"\nimage = \"upstreamd/apache:latest\"\nreplicas = 1\nrestart = \"unless-stopped\"\ncpus = 0.25"))
	s.startDaemon()
	eventually(t, 90*time.Second, "3 apache and 1 sticky backend running and registered, and a running proxy", func() error {
		bySvc := map[string]int{}
		for _, c := range s.allBackends() {
			bySvc[c.Service]++
		}
		if bySvc["apache"] != 3 || bySvc["sticky"] != 1 {
			return fmt.Errorf("backends running by service: %v", bySvc)
		}
		if n := len(s.keys()); n != 3 {
			return fmt.Errorf("%d apache registrations", n)
		}
		kvs, _, err := s.etcd.List(t.Context(), store.ServicePrefix(store.DefaultPrefix, "sticky"))
		if err != nil || len(kvs) != 1 {
			return fmt.Errorf("sticky registrations: %d: %w", len(kvs), err)
		}
		if _, err := s.servedHosts(9); err != nil {
			return err
		}
		return nil
	})

	api, err := dclient.NewClientWithOpts(dclient.FromEnv, dclient.WithAPIVersionNegotiation())
	require.NoError(t, err)
	defer api.Close()
	list, err := s.docker.List(t.Context(), s.project)
	require.NoError(t, err)
	roles := map[string]int{}
	for _, c := range list {
		in, err := api.ContainerInspect(t.Context(), c.ID)
		require.NoError(t, err)
		hc := in.HostConfig
		role := string(c.Role)
		if c.Service != "" {
			role += "/" + c.Service
		}
		roles[role]++
		require.Falsef(t, hc.Privileged, "%s (%s) is privileged", c.Name, role)
		require.Emptyf(t, hc.CapAdd, "%s (%s) adds capabilities", c.Name, role)
		if c.Role == containers.RoleBackend {
			dropsRaw := slices.ContainsFunc(hc.CapDrop, func(c string) bool { return strings.TrimPrefix(c, "CAP_") == "NET_RAW" })
			require.Truef(t, dropsRaw, "%s (%s) keeps NET_RAW (drops %v)", c.Name, role, hc.CapDrop)
		}
		require.Emptyf(t, hc.Binds, "%s (%s) bind-mounts host paths", c.Name, role)
		require.Emptyf(t, hc.Devices, "%s (%s) has host devices", c.Name, role)
		for _, m := range in.Mounts {
			require.NotEqualf(t, "bind", string(m.Type), "%s (%s) mounts host path %s", c.Name, role, m.Source)
		}
		for _, opt := range hc.SecurityOpt {
			require.NotContainsf(t, opt, "unconfined", "%s (%s) drops a security profile: %s", c.Name, role, opt)
		}
		require.Falsef(t, hc.NetworkMode.IsHost(), "%s (%s) uses the host network", c.Name, role)
		require.Falsef(t, hc.PidMode.IsHost(), "%s (%s) uses the host PID namespace", c.Name, role)
		require.Falsef(t, hc.IpcMode.IsHost(), "%s (%s) uses the host IPC namespace", c.Name, role)

		type limits struct {
			Restart  dcontainer.RestartPolicyMode
			Memory   int64
			NanoCPUs int64
		}
		got := limits{hc.RestartPolicy.Name, hc.Memory, hc.NanoCPUs}
		var want limits
		switch role {
		case "backend/apache":
			want = limits{"no", 64 << 20, 500_000_000}
		case "backend/sticky":
			want = limits{"unless-stopped", 0, 250_000_000}
		case "proxy":
			want = limits{"unless-stopped", 128 << 20, 0}
		case "data": // created, never started: no policy, no limits
			want = limits{got.Restart, 0, 0}
			require.Containsf(t, []dcontainer.RestartPolicyMode{"", "no"}, got.Restart, "data container restart policy")
		default:
			t.Fatalf("unexpected container %s with role %s", c.Name, role)
		}
		require.Equalf(t, want, got, "%s (%s): restart policy and limits", c.Name, role)
	}
	require.Equal(t, map[string]int{"backend/apache": 3, "backend/sticky": 1, "proxy": 1, "data": 1}, roles)
}

// processRunning fails the test when p has exited.
func processRunning(t *testing.T, p *daemon.Process, what string) {
	t.Helper()
	select {
	case <-p.Done():
		t.Fatalf("%s exited:\n%s", what, p.Logs())
	default:
	}
}
