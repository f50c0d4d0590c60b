//go:build integration

package integration

import (
	"os/exec"
	"strings"
	"testing"
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
