//go:build integration

package acmeca

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestRun starts the CA (needs the upstreamd/pebble image): the directory is
// served over HTTPS verified by CAFile, the issuing root is available, and
// challtestsrv answers 127.0.0.1 and no IPv6 address for any name.
func TestRun(t *testing.T) {
	ctx := t.Context()
	ca, err := Run(ctx, DefaultImage, Options{HTTPPort: 5002, Dir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = ca.Terminate(context.WithoutCancel(ctx)) })

	body, err := ca.get(ctx, ca.Directory)
	require.NoError(t, err, ca.Logs(ctx))
	var dir map[string]any
	require.NoError(t, json.Unmarshal(body, &dir))
	require.Contains(t, dir, "newOrder")

	pem, err := os.ReadFile(ca.CAFile)
	require.NoError(t, err)
	require.Contains(t, string(pem), "BEGIN CERTIFICATE")

	_, err = ca.Roots(ctx)
	require.NoError(t, err)

	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, ca.DNS)
	}}
	ips, err := r.LookupIPAddr(ctx, "anything.example.com")
	require.NoError(t, err)
	require.Len(t, ips, 1)
	require.Equal(t, "127.0.0.1", ips[0].IP.String())

	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ca.ChallTestSrv+"/set-default-ipv4",
		strings.NewReader(`{"ip":"127.0.0.1"}`))
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)

	require.Contains(t, ca.Logs(ctx), "ACME directory available at")
}
