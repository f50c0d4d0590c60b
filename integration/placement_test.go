//go:build integration

package integration

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/upstreamd/upstreamd/store"
)

// hostIPv4 returns an IPv4 address of this machine that its containers
// reach it at: the first of a physical-looking interface, else docker0's.
func hostIPv4(t *testing.T) string {
	t.Helper()
	ifs, err := net.Interfaces()
	require.NoError(t, err)
	fallback := ""
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 || strings.HasPrefix(ifc.Name, "veth") || strings.HasPrefix(ifc.Name, "br-") {
			continue
		}
		addrs, err := ifc.Addrs()
		require.NoError(t, err)
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil {
				if ifc.Name == "docker0" {
					fallback = ipn.IP.String()
					continue
				}
				return ipn.IP.String()
			}
		}
	}
	require.NotEmpty(t, fallback, "no IPv4 address on this machine but loopback")
	return fallback
}

// TestAdvertiseHostAndLeader runs the cluster's modes on one machine:
// advertise = "host" publishes each backend on the node's address, and
// registers, probes and serves it there, under the seed's key shape
// (/services/apache/<address>:<port>); with proxy.placement = "leader"
// the one node is elected and runs the proxy, and status says where it
// is. A killed backend is replaced and the pool follows, as with container
// addresses.
func TestAdvertiseHostAndLeader(t *testing.T) {
	addr := hostIPv4(t)
	s := newStack(t,
		withProxyTOML(`placement = "leader"`),
		withServiceTOML(`read_timeout = "1s"`),
		withExtraTOML(fmt.Sprintf("[network]\nadvertise = \"host\"\nnode_address = %q\n", addr)))
	d := s.startDaemon()
	s.waitConverged(3, 90*time.Second)
	require.NoError(t, d.WaitLog(t.Context(), "elected: this node runs the project's proxy", 10*time.Second))

	checkKeys := func() {
		t.Helper()
		pool, err := s.nginxPool("apache")
		require.NoError(t, err)
		keys := s.keys()
		require.Len(t, keys, 3)
		for _, e := range keys {
			host, port, err := net.SplitHostPort(strings.TrimPrefix(e.Key, "/services/apache/"))
			require.NoError(t, err, e.Key)
			require.Equal(t, addr, host, "key %s: registered at the node's address", e.Key)
			require.Equal(t, addr, e.Reg.IPv4, "key %s: ipv4_addr", e.Key)
			require.Equal(t, port, fmt.Sprint(e.Reg.Port), "key %s: port is the published one", e.Key)
			require.True(t, pool[addr+":"+port], "nginx pool %v lacks %s", pool, e.Key)
		}
	}
	checkKeys()

	out, err := s.cli("status")
	require.NoError(t, err, out)
	require.Contains(t, out, fmt.Sprintf("PROXY: on the leader, node node-%s, at 127.0.0.1:", s.project))
	require.Regexp(t, `apache\s+3\s+3\s+spec`, out)
	require.Regexp(t, `running\s+`+regexp.QuoteMeta(addr)+`:\d+\s+/services/apache/`, out, "status shows a backend at its advertised address")
	require.Regexp(t, fmt.Sprintf(`node-%s\s+\S+\s+%s\s+\S+\s+\S+\s+apache:3`, s.project, regexp.QuoteMeta(addr)), out)

	victim := s.backends()[0]
	require.NoError(t, s.docker.Signal(t.Context(), victim.ID, "KILL"))
	eventually(t, 10*time.Second, "the killed backend's key is deleted", func() error {
		if contains(s.registeredHosts(), store.HostLabel(victim.Name)) {
			return fmt.Errorf("%s still registered", victim.Name)
		}
		return nil
	})
	s.waitConverged(3, 90*time.Second)
	checkKeys()

	// Every backend shares the node's address here, as on a cluster's
	// host. A request slower than read_timeout times out on each backend
	// in turn (504): each of them answered its connection, so the balancer
	// skips those peers for a while (as nginx's max_fails=1 would) but
	// never their whole address, which only a connect timeout (a host that
	// is gone) may take out; and nothing fails meanwhile.
	c := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + s.publish + "/cgi-bin/slow?ms=1500")
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusGatewayTimeout, resp.StatusCode, "a request slower than read_timeout on every backend")
	ej := rawStatus(t, s, "/upstreamd/ejections")
	require.Regexp(t, `(?m)^ejections [1-9]`, ej, "the peers that timed out are not skipped")
	require.Contains(t, ej, "host-ejections 0\n", "a read timeout took the live host's address out")
	require.NotContains(t, ej, "down-host ", "a read timeout took the live host's address out")
	_, err = s.servedHosts(12)
	require.NoError(t, err, "requests right after the slow one")

	// The leader's daemon killed, or stopped, and started again under
	// load: it keeps the proxy it finds serving until it is elected again,
	// and goes on with the same container; no request fails.
	for _, stop := range []struct {
		how  string
		stop func()
	}{{"SIGKILL", d.Kill}, {"SIGTERM", func() { require.NoError(t, d.Stop(30*time.Second)) }}} {
		proxy := s.proxy()
		r := s.startLoad()
		waitRequests(t, r, 200)
		stop.stop()
		d = s.startDaemon()
		require.NoError(t, d.WaitLog(t.Context(), "elected: this node runs the project's proxy", time.Minute), "after %s", stop.how)
		s.waitConverged(3, 90*time.Second)
		waitRequests(t, r, 200)
		requireNoFailures(t, r.Stop())
		require.Equal(t, proxy.ID, s.proxy().ID, "the leader's daemon restarted after %s replaced its proxy", stop.how)
	}
}
