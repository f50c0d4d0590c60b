//go:build integration

package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/upstreamd/upstreamd/admin"
	"github.com/upstreamd/upstreamd/integration/internal/daemon"
	"github.com/upstreamd/upstreamd/internal/events"
)

// adminEvents returns the daemon's events after since.
func (s *stack) adminEvents(since int64) ([]events.Event, error) {
	code, body, err := s.adminGet(fmt.Sprintf("/api/v1/events?since=%d", since))
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("events: %d %s", code, body)
	}
	var evs admin.Events
	return evs.Events, json.Unmarshal(body, &evs)
}

func (s *stack) adminStatus() (admin.Status, error) {
	var st admin.Status
	code, body, err := s.adminGet("/api/v1/status")
	if err != nil {
		return st, err
	}
	if code != http.StatusOK {
		return st, fmt.Errorf("status: %d %s", code, body)
	}
	return st, json.Unmarshal(body, &st)
}

// inOrder finds, in evs, one event matching each of want in turn, and
// returns what it still misses.
func inOrder(evs []events.Event, want []func(events.Event) bool, names []string) error {
	i := 0
	for _, e := range evs {
		if i < len(want) && want[i](e) {
			i++
		}
	}
	if i < len(want) {
		var got []string
		for _, e := range evs {
			got = append(got, fmt.Sprintf("%s(%s)", e.Kind, e.Container))
		}
		return fmt.Errorf("found %v in order, then no %s, in %v", names[:i], names[i], got)
	}
	return nil
}

// TestAdminAPI: the daemon's JSON API against the real stack. After a
// kill, the event feed shows died → pool pushed → replaced → healthy →
// registered, in that order and naming the containers, and died →
// deregistered → registered (the registrar's delete and nginx's push of
// the pool without the dead backend race by a millisecond: the renderer
// sees the delete in its watch while the registrar waits for etcd's
// answer, so either may be recorded first); the
// status shows every backend healthy, registered and served, and the
// config nginx serves; /healthz and /readyz answer 200.
func TestAdminAPI(t *testing.T) {
	s := newStack(t)
	s.startDaemon()
	s.waitConverged(3, 90*time.Second)
	eventually(t, 10*time.Second, "the status shows 3 healthy, registered, served backends", func() error {
		st, err := s.adminStatus()
		if err != nil {
			return err
		}
		if !st.Ready || len(st.Services) != 1 || len(st.Services[0].Backends) != 3 {
			return fmt.Errorf("ready %v, services %+v", st.Ready, st.Services)
		}
		for _, b := range st.Services[0].Backends {
			if b.State != "healthy" || !b.Registered || !b.Served || b.LastProbe == nil {
				return fmt.Errorf("backend %+v", b)
			}
		}
		if !st.Proxy.Running || st.Proxy.Hash == "" || st.Proxy.ConfigChanged == nil {
			return fmt.Errorf("proxy %+v", st.Proxy)
		}
		return nil
	})
	for _, path := range []string{"/healthz", "/readyz"} {
		code, body, err := s.adminGet(path)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, code, "%s: %s", path, body)
	}
	before, err := s.adminEvents(0)
	require.NoError(t, err)
	since := int64(0)
	if len(before) > 0 {
		since = before[len(before)-1].Seq
	}

	// upstreamd events, following the daemon's stream from a terminal.
	follow, err := daemon.Start(binPath, []string{"events", "--json", "--config", s.configFile}, nil)
	require.NoError(t, err)
	defer follow.Kill()
	require.NoError(t, follow.WaitLog(t.Context(), `"kind":"registered"`, 10*time.Second), "the kept events first:\n%s", follow.Logs())

	victim := s.backends()[0]
	require.NoError(t, s.docker.Signal(t.Context(), victim.ID, "KILL"))
	require.NoError(t, follow.WaitLog(t.Context(), `"kind":"died","container":"`+victim.Name+`"`, 10*time.Second),
		"upstreamd events shows the kill as it happens:\n%s", follow.Logs())
	var replacement string
	died := func(e events.Event) bool { return e.Kind == events.Died && e.Container == victim.Name }
	names := []string{"died", "pool pushed", "replaced", "healthy", "registered"}
	want := []func(events.Event) bool{
		died,
		func(e events.Event) bool { return e.Kind == events.PoolPushed && !strings.Contains(e.Message, "none") },
		func(e events.Event) bool {
			if e.Kind == events.Started && strings.Contains(e.Reason, "replacing") {
				replacement = e.Container
				return true
			}
			return false
		},
		func(e events.Event) bool {
			return e.Kind == events.HealthChanged && e.Container == replacement && e.To == "healthy"
		},
		func(e events.Event) bool { return e.Kind == events.Registered && e.Container == replacement },
	}
	var evs []events.Event
	eventually(t, 30*time.Second, "the kill's events, in order", func() error {
		if evs, err = s.adminEvents(since); err != nil {
			return err
		}
		replacement = ""
		if err := inOrder(evs, want, names); err != nil {
			return err
		}
		return inOrder(evs, []func(events.Event) bool{
			died,
			func(e events.Event) bool { return e.Kind == events.Deregistered && e.Container == victim.Name },
			func(e events.Event) bool { return e.Kind == events.Registered && e.Container == replacement },
		}, []string{"died", "deregistered", "the replacement registered"})
	})
	for _, e := range evs {
		t.Logf("%s", e)
	}
	require.NotEqual(t, victim.Name, replacement)

	// The CLI reads the same API.
	out, err := s.cli("status", "--json")
	require.NoError(t, err)
	var st admin.Status
	require.NoError(t, json.NewDecoder(strings.NewReader(out[strings.Index(out, "{"):])).Decode(&st), out)
	require.Equal(t, s.project, st.Project)
	out, err = s.cli("events", "--no-follow", "--json", "--last", "0")
	require.NoError(t, err)
	require.Contains(t, out, `"kind":"died"`)
	require.Contains(t, out, victim.Name)
}

// TestAdminToken: an admin listener on every address requires the token
// of admin.token_file: 401 without it (and with a wrong one), 200 with
// it, as a header or in the page's address; /healthz needs none. The CLI
// sends it.
func TestAdminToken(t *testing.T) {
	const token = "f00dfeedf00dfeedf00dfeed"
	dir := t.TempDir()
	file := filepath.Join(dir, "admin.token")
	require.NoError(t, os.WriteFile(file, []byte(token+"\n"), 0o600))
	port := freePort(t)
	s := newStack(t, withReplicas(1), withExtraTOML(fmt.Sprintf("[admin]\nlisten = \"0.0.0.0:%d\"\ntoken_file = %q", port, file)))
	s.admin = fmt.Sprintf("127.0.0.1:%d", port)
	s.startDaemon()
	s.waitConverged(1, 90*time.Second)

	code, body, err := s.adminGet("/api/v1/status")
	require.NoError(t, err)
	require.Equal(t, http.StatusUnauthorized, code, "no token: %s", body)
	require.Contains(t, string(body), "admin.token_file")
	code, _, err = s.adminGet("/api/v1/status?token=wrong-wrong-wrong-wrong")
	require.NoError(t, err)
	require.Equal(t, http.StatusUnauthorized, code, "a wrong token")
	code, body, err = s.adminGet("/?token=" + token)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code, "the page with the token: %s", body)
	code, _, err = s.adminGet("/healthz")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code, "/healthz without a token")

	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+s.admin+"/metrics", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	_ = resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "/metrics with the token")

	out, err := s.cli("status", "--json")
	require.NoError(t, err, "the CLI sends the token of the spec")
	require.Contains(t, out, `"project": "`+s.project+`"`)
}
