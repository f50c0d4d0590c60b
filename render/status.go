package render

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// StatusClient talks to upstreamd's status server inside the proxy (see
// Finish): it pushes pools to the Lua balancer and reads the hash of the
// config nginx is running. Every request uses a new connection, so that
// after a reload it reaches a new worker.
type StatusClient struct {
	http *http.Client
}

// NewStatusClient returns a StatusClient whose requests time out after
// timeout.
func NewStatusClient(timeout time.Duration) *StatusClient {
	return &StatusClient{http: &http.Client{
		Timeout:   timeout,
		Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
	}}
}

// ErrNoStatusServer: the proxy does not answer on the status port (the
// config with the status server is not live yet).
var ErrNoStatusServer = errors.New("status server not answering")

// PushPools replaces the pools of the Lua balancer at addr (ip:port).
func (c *StatusClient) PushPools(ctx context.Context, addr, token string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, "http://"+addr+"/upstreamd/pools", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("X-Upstreamd-Token", token)
	req.Header.Set("Content-Type", "text/plain")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("push pools to %s: %w: %v", addr, ErrNoStatusServer, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	switch resp.StatusCode {
	case http.StatusOK:
		return nil
	case http.StatusNotFound: // a config without the pools API is live
		return fmt.Errorf("push pools to %s: %w: 404", addr, ErrNoStatusServer)
	default:
		return fmt.Errorf("push pools to %s: status %d: %s", addr, resp.StatusCode, strings.TrimSpace(string(msg)))
	}
}

// ConfigHash returns the hash of the config nginx at addr is running.
func (c *StatusClient) ConfigHash(ctx context.Context, addr string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/upstreamd/status", nil)
	if err != nil {
		return "", err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return "", fmt.Errorf("read config hash from %s: %w: %v", addr, ErrNoStatusServer, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 512))
	if err != nil {
		return "", fmt.Errorf("read config hash from %s: %w", addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("read config hash from %s: %w: status %d", addr, ErrNoStatusServer, resp.StatusCode)
	}
	hash, ok := strings.CutPrefix(strings.TrimSpace(string(body)), "config ")
	if !ok {
		return "", fmt.Errorf("read config hash from %s: unexpected answer %q", addr, body)
	}
	return hash, nil
}
