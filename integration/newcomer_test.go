//go:build integration

package integration

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestProjectsShareEtcd: two projects on one etcd, with the default prefix,
// the same service name and even the same node name, are kept apart: each
// nginx routes only to its own backends, neither daemon touches the
// other's keys (an idle etcd stays idle), and a pool shared across
// projects is an explicit choice (etcd.include_projects) that `render`
// shows.
func TestProjectsShareEtcd(t *testing.T) {
	a := newStack(t, withReplicas(2))
	b := newStack(t, withReplicas(2), withEtcdOf(a))
	b.writeConfigAs(b.configFile, "node-"+a.project) // the same node name as a's daemon
	a.startDaemon()
	b.startDaemon()
	a.waitConverged(2, 90*time.Second) // served: only a's backends answer through a's nginx
	b.waitConverged(2, 90*time.Second)

	addrs := func(s *stack) []string {
		var out []string
		for _, e := range s.keys() {
			out = append(out, e.Addr)
		}
		slices.Sort(out)
		return out
	}
	for _, s := range []*stack{a, b} {
		pool, err := s.nginxPool("apache")
		require.NoError(t, err)
		require.Equal(t, addrs(s), slices.Sorted(maps.Keys(pool)), "project %s: nginx's apache pool is its own backends", s.project)
	}

	requireEtcdIdle(t, a, "two idle projects") // no fight over keys

	// Sharing on purpose: a's spec takes b's registrations too.
	a.opts.etcdTOML = fmt.Sprintf("include_projects = [%q]\n", b.project)
	a.writeConfig()
	out, err := a.cli("render")
	require.NoError(t, err)
	line := ""
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "#   apache: ") {
			line = l
		}
	}
	for _, addr := range append(addrs(a), addrs(b)...) {
		require.Contains(t, line, addr, "render with include_projects = [%q]:\n%s", b.project, out)
	}
}
