//go:build integration

package integration

import (
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
