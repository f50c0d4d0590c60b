package admin

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/upstreamd/upstreamd/internal/events"
)

// Client reads a daemon's admin API.
type Client struct {
	base  string // http://host:port
	token string
	http  *http.Client
}

// NewClient returns a Client of the daemon listening on listen (host:port,
// as admin.listen says; an unspecified host is reached on loopback), with
// token ("" for none).
func NewClient(listen, token string) (*Client, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("admin address %q: %w", listen, err)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	return &Client{base: "http://" + net.JoinHostPort(host, port), token: token, http: &http.Client{}}, nil
}

// URL is where the client reaches the daemon.
func (c *Client) URL() string { return c.base }

func (c *Client) get(ctx context.Context, path string, accept string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	req.Header.Set("Accept", accept)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("the daemon's admin listener at %s: %w (is `upstreamd run` running with this spec, and admin.listen set?)", c.base, err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		_ = resp.Body.Close()
		return nil, fmt.Errorf("GET %s%s: %s: %s", c.base, path, resp.Status, strings.TrimSpace(string(body)))
	}
	return resp, nil
}

// StatusJSON returns GET /api/v1/status as the daemon wrote it.
func (c *Client) StatusJSON(ctx context.Context) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := c.get(ctx, APIVersion+"/status", "application/json")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

// Status returns GET /api/v1/status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	data, err := c.StatusJSON(ctx)
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(data, &st)
}

// Events returns the events kept after since.
func (c *Client) Events(ctx context.Context, since int64) (Events, error) {
	var evs Events
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := c.get(ctx, fmt.Sprintf("%s/events?since=%d", APIVersion, since), "application/json")
	if err != nil {
		return evs, err
	}
	defer resp.Body.Close()
	return evs, json.NewDecoder(resp.Body).Decode(&evs)
}

// Follow streams the events after since to handle until ctx ends or the
// stream breaks (an error; nil when ctx ended). missed is called when
// the daemon no longer kept some.
func (c *Client) Follow(ctx context.Context, since int64, handle func(events.Event), missed func(int64)) error {
	resp, err := c.get(ctx, fmt.Sprintf("%s/events?since=%d", APIVersion, since), "text/event-stream")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	var kind string
	var data strings.Builder
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if err := dispatch(kind, data.String(), handle, missed); err != nil {
				return err
			}
			kind = ""
			data.Reset()
		case strings.HasPrefix(line, "event: "):
			kind = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			if data.Len() > 0 {
				data.WriteByte('\n')
			}
			data.WriteString(strings.TrimPrefix(line, "data: "))
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("event stream from %s: %w", c.base, err)
	}
	return errors.New("the daemon closed the event stream (it stopped?)")
}

func dispatch(kind, data string, handle func(events.Event), missed func(int64)) error {
	switch kind {
	case "event":
		var e events.Event
		if err := json.Unmarshal([]byte(data), &e); err != nil {
			return fmt.Errorf("event stream: %w", err)
		}
		handle(e)
	case "missed":
		var n int64
		_, _ = fmt.Sscan(data, &n)
		if missed != nil {
			missed(n)
		}
	}
	return nil
}
