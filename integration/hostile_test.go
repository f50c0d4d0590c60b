//go:build integration

package integration

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	dnetwork "github.com/docker/docker/api/types/network"
	dclient "github.com/docker/docker/client"
	"github.com/stretchr/testify/require"

	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/store"
)

// validReg is a well-formed registration value.
const validReg = `{"host":"evil","ipv4_addr":"1.2.3.99","port":80,"container":"","node":"intruder"}`

// hostileWrites are keys and values "someone else" puts under
// /services/apache/. Each is invalid for a different reason; every one
// carries a marker (1.2.3.x, 9999, ::1:80 or a run of a's) that must never
// reach nginx.
var hostileWrites = []struct{ key, value string }{
	{"/services/apache/1.2.3.4:80; } server { listen 9999; }", validReg},
	{"/services/apache/1.2.3.5:80\nserver 1.2.3.55:9999", validReg},
	{"/services/apache/{1.2.3.6}:80", validReg},
	{"/services/apache/1.2.3.7;:80", validReg},
	{`/services/apache/"1.2.3.8":80`, validReg},
	{"/services/apache/1.2.3.9:http", validReg},
	{"/services/apache/1.2.3.10:0", validReg},
	{"/services/apache/1.2.3.11:70000", validReg},
	{"/services/apache/::1:80", validReg},
	{"/services/apache/1.2.3.12:80", strings.Repeat("a", 1<<20)},
	{"/services/apache/1.2.3.13:80", "server 1.2.3.13:9999; }"},
	{"/services/apache/1.2.3.14:80", `{"host":"evil","ipv4_addr":"1.2.3.14; } server { listen 9999; }","port":80}`},
}

// hostileMarkers must appear nowhere in what nginx runs or what render prints.
var hostileMarkers = []string{"1.2.3.", "9999", "::1:80", "aaaaaaaa", "evil", "intruder"}

// TestHostileRegistrations: keys and values written into etcd by someone
// else — config injection through the key, newlines, braces, semicolons,
// quotes, bad ports, unbracketed IPv6, a 1 MB value, a value that is not
// JSON, JSON with injection in a field — under keep-alive load: no request
// fails, nginx keeps exactly the 3 real backends, neither the live config,
// nor the dynamic pools, nor `upstreamd render` contain any of it, nginx is
// not reloaded for it, and the daemon logs each write as skipped, once.
func TestHostileRegistrations(t *testing.T) {
	ctx := t.Context()
	s := newStack(t)
	d := s.startDaemonFormat("json")
	s.waitConverged(3, 90*time.Second)
	var real []string
	for _, e := range s.keys() {
		real = append(real, e.Addr)
	}
	r := s.startLoad()
	waitRequests(t, r, 300)
	reloadsBefore := countMsg(d.Logs(), "nginx reloaded with new config")

	for _, w := range hostileWrites {
		require.NoError(t, noRev(s.etcd.Put(ctx, w.key, w.value, 0)), "put %q", w.key)
	}
	eventually(t, 30*time.Second, "every hostile write is logged as skipped", func() error {
		skipped := skippedKeys(d.Logs())
		for _, w := range hostileWrites {
			if skipped[w.key] == 0 {
				return fmt.Errorf("no \"skipping invalid registration\" for key %q", w.key)
			}
		}
		return nil
	})
	skipped := skippedKeys(d.Logs())
	for _, w := range hostileWrites {
		require.Equalf(t, 1, skipped[w.key], "key %q: one log line per write", w.key)
	}
	waitRequests(t, r, 300) // the render passes those writes woke are over by now

	proxy := s.proxy()
	live, err := s.docker.ReadFile(ctx, proxy.ID, "/etc/nginx/conf.d/upstreamd.conf")
	require.NoError(t, err)
	requireNoMarkers(t, "the live nginx config", string(live))
	pools := rawPools(t, s)
	requireNoMarkers(t, "nginx's dynamic pools", pools)
	require.Equal(t, sortedSet(real), sortedSet(poolOf(pools, "apache")), "nginx's apache pool is the 3 real backends:\n%s", pools)
	require.Equal(t, reloadsBefore, countMsg(d.Logs(), "nginx reloaded with new config"), "invalid registrations must not reload nginx")

	stdout, stderr := s.renderSeparately()
	requireNoMarkers(t, "`upstreamd render`", stdout)
	for _, a := range real {
		require.Contains(t, stdout, a)
	}
	require.Equal(t, len(hostileWrites), countMsg(stderr, "skipping invalid registration"), "render logs each invalid key once:\n%s", stderr)

	// A valid registration of an address nobody listens on is a routing
	// risk, not a config injection: the address is well formed, so it
	// joins the pool (the registrar never deletes another node's keys; its
	// writer or its lease must). nginx sends a request there, gives up
	// after proxy_connect_timeout (100 ms) and retries it on the next
	// backend (proxy_next_upstream error timeout): slower, but no request
	// fails; and the balancer then skips that address in every worker for
	// 5 s (passive ejection), so only a few requests wait, not one in four.
	// etcd authentication (TestEtcdTLSAndAuth) is what keeps
	// strangers from writing such keys. The address is an unused one on the
	// test's own bridge network, so no packet leaves this host.
	// Two ports at that address (a vanished host with two backends): the
	// connect timeout at one takes the whole address out, so the other
	// costs no second wait per worker.
	nowhere := unusedBridgeAddr(t, s)
	intruded := time.Now()
	for _, port := range []int{80, 81} {
		key := store.ServiceKey(store.DefaultPrefix, "apache", fmt.Sprintf("%s:%d", nowhere, port))
		reg := store.Registration{Host: "nowhere", IPv4: nowhere, Port: port, Node: "intruder", Project: s.project}
		require.NoError(t, noRev(s.etcd.Put(ctx, key, reg.Encode(), 0)))
	}
	eventually(t, 10*time.Second, "nginx's pool takes the unanswered addresses", func() error {
		if p := poolOf(rawPools(t, s), "apache"); !contains(p, nowhere+":80") || !contains(p, nowhere+":81") {
			return fmt.Errorf("apache pool %v", p)
		}
		return nil
	})
	waitRequests(t, r, 500)
	res := r.Stop()
	requireNoFailures(t, res)
	require.Len(t, res.ByHost, 3, "the 3 real backends answered every request")
	slow, after := 0, 0
	for _, smp := range res.Samples {
		if smp.At.After(intruded) {
			after++
			if smp.Latency >= 95*time.Millisecond {
				slow++
			}
		}
	}
	require.Positive(t, slow, "nginx never tried the unanswered address (no request waited out proxy_connect_timeout)")
	require.LessOrEqual(t, slow, 24, "%d of %d requests waited for the unanswered address: it was not skipped after it failed", slow, after)
	t.Logf("%d of %d requests waited for the unanswered address, then were served by another backend", slow, after)
	ej := rawStatus(t, s, "/upstreamd/ejections")
	require.NotContains(t, ej, "ejections 0\n", "the balancer never skipped the unanswered address")
	require.Regexp(t, `(?m)^host-ejections [1-9]`, ej, "a connect timeout did not take the whole address out")
}

// TestUnknownImage: a service whose image does not exist is an error that
// names the image and says how to build it; the daemon keeps running and
// the other service is served.
func TestUnknownImage(t *testing.T) {
	s := newStack(t, withExtraTOML("[[service]]\nname = \"ghost\"\nimage = \"upstreamd/does-not-exist:latest\""))
	d := s.startDaemon()
	s.waitConverged(3, 90*time.Second)
	eventually(t, 30*time.Second, "an error line names the image and `make images`", func() error {
		for _, l := range strings.Split(d.Logs(), "\n") {
			if strings.Contains(l, " ERR ") && strings.Contains(l, "upstreamd/does-not-exist:latest") && strings.Contains(l, "make images") {
				return nil
			}
		}
		return fmt.Errorf("no such line")
	})
	processRunning(t, d, "the daemon")
	for _, c := range s.byProject() {
		require.NotEqual(t, "ghost", c.Service, "a container of the missing image exists: %s", c.Name)
	}
	s.waitConverged(3, 30*time.Second) // still served after the failed passes
}

// renderSeparately runs `upstreamd render` and returns its stdout (the
// config) apart from its stderr (the logs, which name the bad keys).
func (s *stack) renderSeparately() (stdout, stderr string) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(s.t.Context(), 30*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	cmd := exec.CommandContext(ctx, binPath, "render", "--config", s.configFile, "--log-format", "json")
	cmd.Stdout, cmd.Stderr = &out, &errOut
	require.NoError(s.t, cmd.Run(), "upstreamd render: %s", errOut.String())
	return out.String(), errOut.String()
}

// byProject lists every container of the project, in any state.
func (s *stack) byProject() []containers.Container {
	s.t.Helper()
	list, err := s.docker.List(s.t.Context(), s.project)
	require.NoError(s.t, err)
	return list
}

// logLines parses the JSON log lines of a process; other lines are skipped.
func logLines(logs string) []map[string]any {
	var out []map[string]any
	for _, l := range strings.Split(logs, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// countMsg counts the JSON log lines whose message is msg.
func countMsg(logs, msg string) int {
	n := 0
	for _, m := range logLines(logs) {
		if m["message"] == msg {
			n++
		}
	}
	return n
}

// skippedKeys counts "skipping invalid registration" lines by key.
func skippedKeys(logs string) map[string]int {
	out := map[string]int{}
	for _, m := range logLines(logs) {
		if m["message"] == "skipping invalid registration" {
			if k, ok := m["key"].(string); ok {
				out[k]++
			}
		}
	}
	return out
}

func requireNoMarkers(t *testing.T, what, text string) {
	t.Helper()
	for _, m := range hostileMarkers {
		require.NotContainsf(t, text, m, "%s contains hostile text %q:\n%s", what, m, text)
	}
}

// rawPools returns what nginx's pools API answers, verbatim.
func rawPools(t *testing.T, s *stack) string {
	t.Helper()
	return rawStatus(t, s, "/upstreamd/pools")
}

// rawStatus returns what the proxy's status server answers at path.
func rawStatus(t *testing.T, s *stack, path string) string {
	t.Helper()
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	url := "http://" + net.JoinHostPort(s.proxy().IPs[s.project], "8099") + path
	resp, err := c.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "GET %s: %s", url, body)
	return string(body)
}

// poolOf returns the addresses of service in a pools API answer.
func poolOf(pools, service string) []string {
	for _, l := range strings.Split(pools, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == service {
			return f[1:]
		}
	}
	return nil
}

func sortedSet(list []string) map[string]bool {
	out := map[string]bool{}
	for _, x := range list {
		out[x] = true
	}
	return out
}

// unusedBridgeAddr returns the last host address of the project's bridge
// network, after checking that no container of the project has it.
func unusedBridgeAddr(t *testing.T, s *stack) string {
	t.Helper()
	api, err := dclient.NewClientWithOpts(dclient.FromEnv, dclient.WithAPIVersionNegotiation())
	require.NoError(t, err)
	defer api.Close()
	n, err := api.NetworkInspect(t.Context(), s.project, dnetwork.InspectOptions{})
	require.NoError(t, err)
	var prefix netip.Prefix
	for _, c := range n.IPAM.Config {
		if p, err := netip.ParsePrefix(c.Subnet); err == nil && p.Addr().Is4() {
			prefix = p.Masked()
		}
	}
	require.True(t, prefix.IsValid(), "network %s has no IPv4 subnet: %+v", s.project, n.IPAM.Config)
	base := prefix.Addr().As4()
	last := binary.BigEndian.Uint32(base[:]) | (1<<(32-prefix.Bits()) - 1) - 1 // broadcast - 1
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], last)
	addr := netip.AddrFrom4(b).String()
	for _, c := range s.byProject() {
		require.NotEqual(t, addr, c.IPs[s.project], "%s already has %s", c.Name, addr)
	}
	return addr
}
