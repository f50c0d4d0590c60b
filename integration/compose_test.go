//go:build integration

package integration

import (
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/integration/internal/daemon"
	"github.com/upstreamd/upstreamd/integration/internal/engine"
)

// TestComposeFile: docker-compose.yml is valid for the compose tools on
// this machine (docker-compose 1.29 and/or Compose v2). The demo itself
// (make demo) was checked by hand; this keeps the file from rotting.
func TestComposeFile(t *testing.T) {
	var tools [][]string
	if _, err := exec.LookPath("docker-compose"); err == nil {
		tools = append(tools, []string{"docker-compose"})
	}
	if err := exec.Command("docker", "compose", "version").Run(); err == nil {
		tools = append(tools, []string{"docker", "compose"})
	}
	if len(tools) == 0 {
		t.Skip("neither docker-compose nor docker compose is installed")
	}
	for _, tool := range tools {
		t.Run(strings.Join(tool, " "), func(t *testing.T) {
			cmd := exec.Command(tool[0], append(tool[1:], "-f", "docker-compose.yml", "config")...)
			cmd.Dir = ".."
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%s config: %v\n%s", strings.Join(tool, " "), err, out)
			}
			for _, want := range []string{"upstreamd/etcd:latest", "upstreamd/upstreamd:latest", "/var/run/docker.sock"} {
				if !strings.Contains(string(out), want) {
					t.Errorf("%s config output lacks %q:\n%s", strings.Join(tool, " "), want, out)
				}
			}
			if strings.Contains(strings.ToLower(string(out)), "warn") {
				t.Errorf("%s warns about the file:\n%s", strings.Join(tool, " "), out)
			}
		})
	}
}

// TestComposeDemo runs the demo as `make demo` does and checks what it
// promises: nginx answers on 127.0.0.1:8080; the backends cannot reach etcd
// (it is on a network they are not on), so none can rewrite the pools or
// the replica counts; and the one-shot commands work from the host with
// their defaults (etcd on 127.0.0.1:2379).
func TestComposeDemo(t *testing.T) {
	compose := composeTool(t)
	for _, addr := range []string{"127.0.0.1:8080", "127.0.0.1:2379", "127.0.0.1:9180"} {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			_ = c.Close()
			t.Fatalf("%s answers already: stop the demo (make demo-down) before the tests", addr)
		}
	}
	run := func(args ...string) string {
		cmd := exec.Command(compose[0], append(compose[1:], args...)...)
		cmd.Dir = ".."
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s %v:\n%s", compose, args, out)
		return string(out)
	}
	t.Cleanup(func() {
		cmd := exec.Command("make", "demo-down")
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("make demo-down: %v\n%s", err, out)
		}
	})
	token := exec.Command("make", "demo-token")
	token.Dir = ".."
	out, err := token.CombinedOutput()
	require.NoError(t, err, "make demo-token:\n%s", out)
	run("up", "-d")
	s := &stack{t: t, project: "upstreamd", publish: "127.0.0.1:8080", opts: stackOptions{service: "apache"}}
	s.docker, err = engine.New()
	require.NoError(t, err)
	defer func() { _ = s.docker.Close() }()
	eventually(t, 90*time.Second, "the demo serves on 127.0.0.1:8080", func() error {
		_, err := s.servedHosts(6)
		return err
	})

	backends := s.backends()
	require.NotEmpty(t, backends)
	etcdIP := ""
	list, err := s.docker.ListAll(t.Context())
	require.NoError(t, err)
	for _, c := range list {
		if c.Image == "upstreamd/etcd:latest" && c.State == containers.StateRunning {
			for _, ip := range c.IPs {
				etcdIP = ip
			}
		}
	}
	require.NotEmpty(t, etcdIP, "no running etcd container of the demo")
	res, err := s.docker.Exec(t.Context(), backends[0].ID, []string{"sh", "-c",
		"getent hosts etcd; timeout 3 bash -c 'exec 3<>/dev/tcp/" + etcdIP + "/2379' && echo REACHED"})
	require.NoError(t, err)
	require.NotContains(t, res.Output(), "REACHED", "a backend reaches etcd at %s", etcdIP)
	require.NotContains(t, res.Output(), etcdIP, "a backend resolves the name etcd")

	p, err := daemon.Start(binPath, []string{"status"}, nil)
	require.NoError(t, err)
	select {
	case <-p.Done():
	case <-time.After(30 * time.Second):
		p.Kill()
		t.Fatal("upstreamd status from the host did not finish")
	}
	require.NoError(t, p.Err(), "upstreamd status from the host:\n%s", p.Logs())
	require.Contains(t, p.Logs(), "/services/apache/", "status shows the demo's registrations:\n%s", p.Logs())

	// The admin listener listens on every address of the daemon's
	// container: the token is required, and makes the page answer.
	tok, err := os.ReadFile("../.demo/admin.token")
	require.NoError(t, err)
	s.admin = "127.0.0.1:9180"
	var code int
	eventually(t, 30*time.Second, "the demo's admin listener answers", func() error {
		code, _, err = s.adminGet("/api/v1/status")
		return err
	})
	require.Equal(t, http.StatusUnauthorized, code, "the status API without the token")
	code, page, err := s.adminGet("/?token=" + strings.TrimSpace(string(tok)))
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code, "the page with the token: %s", page)
	require.Contains(t, string(page), `data-state="healthy"`)
}

// composeTool returns the compose command of this machine.
func composeTool(t *testing.T) []string {
	if _, err := exec.LookPath("docker-compose"); err == nil {
		return []string{"docker-compose"}
	}
	if err := exec.Command("docker", "compose", "version").Run(); err == nil {
		return []string{"docker", "compose"}
	}
	t.Skip("neither docker-compose nor docker compose is installed")
	return nil
}
