//go:build integration

package integration

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestSlowStarter: backends that listen only 4 s after they start are in
// their start period until then: probed every 50 ms, their failures not
// counted, so they are never marked unhealthy and are served as soon as
// they answer (how soon is measured by `make bench`, not asserted here).
func TestSlowStarter(t *testing.T) {
	s := newStack(t, withReplicas(2), withServiceTOML(`env = ["START_DELAY=4"]`))
	d := s.startDaemonFormat("json")
	s.waitConverged(2, 90*time.Second)
	for _, m := range logLines(d.Logs()) {
		if m["message"] == "backend health changed" {
			require.NotEqual(t, "unhealthy", m["to"], "a starting backend was marked unhealthy: %v", m)
		}
	}
	require.Equal(t, 2, countMsg(d.Logs(), "backend health changed"), "each went pending → healthy once")
}

// TestTemplateSwitch: a daemon restarted with the built-in (dynamic)
// template on a proxy whose live config came from a static template
// delivers the new config and pushes pools (the old config answers a pool
// push with 405: no pools API yet, not an error to retry forever); and
// back again, the static template's config replaces the dynamic one.
func TestTemplateSwitch(t *testing.T) {
	s := newStack(t, withTemplate(staticTemplate))
	d := s.startDaemon()
	s.waitConverged(3, 90*time.Second)
	live, err := s.docker.ReadFile(t.Context(), s.proxy().ID, "/etc/nginx/conf.d/upstreamd.conf")
	require.NoError(t, err)
	require.NotContains(t, string(live), "balancer_by_lua", "the static template's config")

	switchTo := func(template string, replicas int) {
		t.Helper()
		require.NoError(t, d.Stop(20*time.Second))
		s.opts.template = template
		s.writeConfig()
		d = s.startDaemon()
		out, err := s.cli("scale", "apache", strconv.Itoa(replicas))
		require.NoError(t, err, out)
		s.waitConverged(replicas, 90*time.Second)
	}
	switchTo("", 4) // the built-in, dynamic template
	eventually(t, 30*time.Second, "nginx's Lua pool holds the 4 backends", func() error {
		pool, err := s.nginxPool("apache")
		if err != nil {
			return err
		}
		if len(pool) != 4 {
			return fmt.Errorf("pool %v", pool)
		}
		return nil
	})

	switchTo(staticTemplate, 2)
	live, err = s.docker.ReadFile(t.Context(), s.proxy().ID, "/etc/nginx/conf.d/upstreamd.conf")
	require.NoError(t, err)
	require.Equal(t, 2, strings.Count(string(live), "    server "), "the static config lists the 2 backends:\n%s", live)
	require.NotContains(t, string(live), "balancer_by_lua")
}
