package nginx

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// statusClient talks HTTP to upstreamd's status server inside the proxy
// (render's trailer puts it in every config): it pushes pools to the Lua
// balancer and reads the hash of the config nginx is running. Every request
// uses a new connection, so that after a reload it reaches a new worker.
type statusClient struct {
	http *http.Client
}

func newStatusClient(timeout time.Duration) *statusClient {
	return &statusClient{http: &http.Client{
		Timeout:   timeout,
		Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
	}}
}

// pushPools replaces the pools of the Lua balancer at addr (ip:port).
func (c *statusClient) pushPools(ctx context.Context, addr, token string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, "http://"+addr+"/upstreamd/pools", bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("push pools to %s: %w", addr, err)
	}
	req.Header.Set("X-Upstreamd-Token", token)
	req.Header.Set("Content-Type", "text/plain")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("push pools to %s: %w: %w", addr, ErrNoStatusServer, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	switch resp.StatusCode {
	case http.StatusOK:
		return nil
	case http.StatusForbidden:
		return fmt.Errorf("push pools to %s: %w", addr, errTokenRefused)
	case http.StatusNotFound, http.StatusMethodNotAllowed:
		// The live config has a status server without the pools API (a
		// static template's: nginx answers a PUT to a path it serves as
		// files with 405).
		return fmt.Errorf("push pools to %s: %w: status %d", addr, ErrNoStatusServer, resp.StatusCode)
	default:
		return fmt.Errorf("push pools to %s: status %d: %s", addr, resp.StatusCode, strings.TrimSpace(string(msg)))
	}
}

// configHash returns the hash of the config nginx at addr is running.
func (c *statusClient) configHash(ctx context.Context, addr string) (string, error) {
	body, err := c.get(ctx, addr, "/upstreamd/status", "read config hash")
	if err != nil {
		return "", err
	}
	hash, ok := strings.CutPrefix(strings.TrimSpace(body), "config ")
	if !ok {
		return "", fmt.Errorf("read config hash from %s: unexpected answer %q", addr, body)
	}
	return hash, nil
}

// get fetches path from the status server at addr; what names the
// request in errors. A non-200 answer matches ErrNoStatusServer.
func (c *statusClient) get(ctx context.Context, addr, path, what string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return "", fmt.Errorf("%s from %s: %w", what, addr, err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return "", fmt.Errorf("%s from %s: %w: %w", what, addr, ErrNoStatusServer, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", fmt.Errorf("%s from %s: %w", what, addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s from %s: %w: status %d", what, addr, ErrNoStatusServer, resp.StatusCode)
	}
	return string(body), nil
}

// Ejections is what the Lua balancer says of the peers it skipped after
// they failed to connect.
type Ejections struct {
	// Total counts the ejections since nginx started.
	Total int64
	// Down lists the peers (ip:port) skipped now.
	Down []string
	// DownHosts lists the IPs skipped whole now (a connect there timed
	// out: a host that vanished).
	DownHosts []string
}

// parseEjections reads the balancer's answer: "ejections <n>", then one
// "down <ip:port>" line per peer skipped now and one "down-host <ip>" line
// per IP skipped whole.
func parseEjections(body string) (Ejections, error) {
	var e Ejections
	lines := strings.Split(strings.TrimSpace(body), "\n")
	n, ok := strings.CutPrefix(lines[0], "ejections ")
	total, err := strconv.ParseInt(n, 10, 64)
	if !ok || err != nil {
		return e, fmt.Errorf("unexpected ejections answer %q", lines[0])
	}
	e.Total = total
	for _, l := range lines[1:] {
		if addr, ok := strings.CutPrefix(l, "down "); ok {
			e.Down = append(e.Down, addr)
		}
		if ip, ok := strings.CutPrefix(l, "down-host "); ok {
			e.DownHosts = append(e.DownHosts, ip)
		}
	}
	return e, nil
}

// Ejections asks the balancer which peers it skipped after a failure. An
// error matching ErrNoStatusServer means the config nginx runs has no
// dynamic pools.
func (s *Session) Ejections(ctx context.Context) (Ejections, error) {
	if s.statusAddr == "" {
		return Ejections{}, errNoAddress
	}
	body, err := s.status.get(ctx, s.statusAddr, "/upstreamd/ejections", "read ejections")
	if err != nil {
		return Ejections{}, err
	}
	return parseEjections(body)
}

// errTokenRefused: the pools API refused the token (403): the volume's
// token changed (the data volume was recreated, or the file rewritten).
var errTokenRefused = errors.New("pools token refused (403)")

// errNoAddress: the proxy's address on the managed network is unknown (or
// no status port is configured), so its status server cannot be reached.
var errNoAddress = fmt.Errorf("%w: the proxy's address on the network is unknown", ErrNoStatusServer)

// PushPools replaces the pools of the proxy's Lua balancer with body (see
// render.PoolsBody). An error matching ErrNoStatusServer means the config
// nginx runs has no pools API (yet).
func (s *Session) PushPools(ctx context.Context, body []byte) error {
	if s.statusAddr == "" {
		return errNoAddress
	}
	token, err := s.poolsToken(ctx)
	if err != nil {
		return err
	}
	err = s.status.pushPools(ctx, s.statusAddr, token, body)
	if errors.Is(err, errTokenRefused) {
		s.token = "" // read it again on the retry
	}
	return err
}

// ConfigHash returns the hash of the config nginx runs (render.Hash of the
// rendered bytes), as its status server answers it.
func (s *Session) ConfigHash(ctx context.Context) (string, error) {
	if s.statusAddr == "" {
		return "", errNoAddress
	}
	return s.status.configHash(ctx, s.statusAddr)
}

// WaitConfig polls the status server until nginx answers with hash: the
// config is running in fresh workers. It returns how long that took, or an
// error after the Client's ConfirmTimeout.
func (s *Session) WaitConfig(ctx context.Context, hash string) (time.Duration, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ConfirmTimeout)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	last, lastErr := "none", error(nil) // the last answer that came back
	for {
		got, err := s.ConfigHash(ctx)
		switch {
		case err == nil && got == hash:
			return time.Since(start), nil
		case err == nil:
			last, lastErr = got, nil
		case ctx.Err() == nil:
			lastErr = err
		}
		select {
		case <-ctx.Done():
			if lastErr != nil {
				return 0, fmt.Errorf("nginx did not run config %s within %s: %w", hash, s.cfg.ConfirmTimeout, lastErr)
			}
			return 0, fmt.Errorf("nginx did not run config %s within %s (it runs %s)", hash, s.cfg.ConfirmTimeout, last)
		case <-tick.C:
		}
	}
}
