//go:build integration

package integration

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/integration/internal/daemon"
	"github.com/upstreamd/upstreamd/store"
)

// TestNamesWithUnderscores: every name the spec accepts works end to end.
// A project and a service with "_" give container names that are no DNS
// labels; the backends get host names that are, register under them, and
// serve. Then the daemon sits idle: etcd's revision does not move.
func TestNamesWithUnderscores(t *testing.T) {
	s := newStack(t, withProject("it_"+randomHex(4)), withService("my_svc"))
	s.startDaemon()
	hosts := s.waitConverged(3, 90*time.Second)
	for _, h := range hosts {
		require.NotContains(t, h, "_", "host name %s", h)
	}
	for _, e := range s.keys() {
		require.Equal(t, "my_svc", e.Service)
	}

	requireEtcdIdle(t, s, "an idle daemon")
}

// TestSecondDaemonRefuses: a second daemon with the node name of a live
// one, or of the same project on the same engine, does not start: it says
// who holds what and what to change, and touches nothing.
func TestSecondDaemonRefuses(t *testing.T) {
	s := newStack(t)
	s.startDaemon()
	s.waitConverged(3, 90*time.Second)
	before := names(s.backends())
	list, err := s.docker.List(t.Context(), s.project)
	require.NoError(t, err)

	// The second daemon's spec differs from the first's in its admin
	// listener only (a second listener on one address fails first).
	live := s.admin
	s.admin = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	sameNode := filepath.Join(t.TempDir(), "same-node.toml")
	s.writeConfigAs(sameNode, "node-"+s.project)
	otherNode := filepath.Join(t.TempDir(), "other-node.toml")
	s.writeConfigAs(otherNode, "node-b-"+s.project)
	s.admin = live
	for _, tc := range []struct{ name, config, want string }{
		{name: "same node name", config: sameNode, want: fmt.Sprintf("node name %q", "node-"+s.project)},
		{name: "same project on the same engine", config: otherNode, want: "this Docker engine"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := daemon.Start(binPath, []string{"run", "--config", tc.config, "--log-format", "console"}, nil)
			require.NoError(t, err)
			select {
			case <-p.Done():
			case <-time.After(30 * time.Second): // the lease TTL (5 s) and more
				p.Kill()
				t.Fatalf("the second daemon is still running:\n%s", p.Logs())
			}
			require.Error(t, p.Err(), "the second daemon exited 0")
			logs := p.Logs()
			for _, want := range []string{tc.want, "taken by another live daemon", `"node":"node-` + s.project + `"`, "Stop that daemon"} {
				require.Contains(t, logs, want)
			}
		})
	}
	// Nothing was touched meanwhile.
	require.Equal(t, before, names(s.backends()))
	after, err := s.docker.List(t.Context(), s.project)
	require.NoError(t, err)
	require.Len(t, after, len(list))
	entries := s.keys()
	require.Len(t, entries, 3)
	for _, e := range entries {
		require.True(t, strings.HasPrefix(e.Reg.Node, "node-"+s.project), "key %s written by %s", e.Key, e.Reg.Node)
		_, err := store.ParseEntry(store.DefaultPrefix, e.Key, []byte(e.Value))
		require.NoError(t, err)
	}
}

// TestExecBounded: docker.timeout bounds a whole exec, its output stream
// included, not only the call that starts it: a hung command (a stuck
// `nginx -t`) cannot block the render loop or shutdown.
func TestExecBounded(t *testing.T) {
	s := newStack(t, withReplicas(1))
	s.startDaemon()
	s.waitConverged(1, 90*time.Second)
	dc, err := containers.New(containers.Config{Timeout: time.Second, Logger: zerolog.Nop()})
	require.NoError(t, err)
	defer func() { _ = dc.Close() }()
	start := time.Now()
	_, err = dc.ExecWithStdin(t.Context(), s.proxy().ID, []string{"sleep", "30"}, nil)
	took := time.Since(start)
	require.Error(t, err, "an exec of sleep 30 with a 1 s timeout succeeded")
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Less(t, took, 10*time.Second, "the exec was not cut off at its deadline (took %s)", took)
}

// TestPoolsAPI exercises the Lua module behind the pools API on the real
// nginx: without the token or with a wrong one nothing changes; a body it
// cannot read changes nothing; 1,500 servers go through; and a backend,
// even with the token, is refused (only the daemon's address may write).
func TestPoolsAPI(t *testing.T) {
	s := newStack(t)
	s.startDaemon()
	s.waitConverged(3, 90*time.Second)
	proxy := s.proxy()
	token, err := s.docker.ReadFile(t.Context(), proxy.ID, "/etc/nginx/upstreamd/token")
	require.NoError(t, err)
	before, err := s.nginxPool("apache")
	require.NoError(t, err)
	require.Len(t, before, 3)

	put := func(tok, body string) int {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, s.statusURL("/upstreamd/pools"), strings.NewReader(body))
		require.NoError(t, err)
		if tok != "" {
			req.Header.Set("X-Upstreamd-Token", tok)
		}
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := c.Do(req)
		require.NoError(t, err)
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	bad := "99\napache 10.9.9.9:80\n"
	require.Equal(t, http.StatusForbidden, put("", bad), "no token")
	require.Equal(t, http.StatusForbidden, put(strings.Repeat("0", len(token)), bad), "wrong token of the right length")
	require.Equal(t, http.StatusForbidden, put(string(token)+"x", bad), "token with a byte more")
	require.Equal(t, http.StatusBadRequest, put(string(token), "not a version line"), "malformed body")
	after, err := s.nginxPool("apache")
	require.NoError(t, err)
	require.Equal(t, before, after, "a refused push changed the pools")

	// 1,500 servers (a service nothing routes to, beside apache's pool).
	var b strings.Builder
	b.WriteString("100\napache")
	for a := range before {
		b.WriteString(" " + a)
	}
	b.WriteString("\nbig")
	for i := range 1500 {
		fmt.Fprintf(&b, " 10.%d.%d.%d:8080", i/65536, i/256%256, i%256)
	}
	b.WriteString("\n")
	require.Equal(t, http.StatusOK, put(string(token), b.String()))
	big, err := s.nginxPool("big")
	require.NoError(t, err)
	require.Len(t, big, 1500)
	_, err = s.servedHosts(6)
	require.NoError(t, err, "apache still served")

	// From a backend, with the right token: refused by address.
	ip := proxy.IPs[s.project]
	res, err := s.docker.Exec(t.Context(), s.backends()[0].ID, []string{"bash", "-c",
		"exec 3<>/dev/tcp/" + ip + "/8099; printf 'PUT /upstreamd/pools HTTP/1.0\\r\\nX-Upstreamd-Token: " + string(token) +
			"\\r\\nContent-Length: 3\\r\\n\\r\\n1\\n\\n' >&3; head -1 <&3"})
	require.NoError(t, err)
	require.Contains(t, res.Output(), " 403 ", "a backend changed the pools: %s", res.Output())
}
