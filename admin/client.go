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
	"net/url"
	"strings"
	"time"

	"github.com/upstreamd/upstreamd/internal/events"
	"github.com/upstreamd/upstreamd/internal/retry"
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
		return nil, &statusError{url: c.base + path, code: resp.StatusCode, status: resp.Status, body: strings.TrimSpace(string(body))}
	}
	return resp, nil
}

// statusError is an answer of the daemon other than 200.
type statusError struct {
	url, status, body string
	code              int
}

func (e *statusError) Error() string { return fmt.Sprintf("GET %s: %s: %s", e.url, e.status, e.body) }

// refused reports whether err is an answer that asking again will not
// change (4xx: the token, the address).
func refused(err error) bool {
	var se *statusError
	return errors.As(err, &se) && se.code >= 400 && se.code < 500
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

// Events returns the events kept after since (an event's Cursor; "" for
// all).
func (c *Client) Events(ctx context.Context, since string) (Events, error) {
	var evs Events
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := c.get(ctx, APIVersion+"/events?since="+url.QueryEscape(since), "application/json")
	if err != nil {
		return evs, err
	}
	defer resp.Body.Close()
	return evs, json.NewDecoder(resp.Body).Decode(&evs)
}

// Follow streams the events after since (an event's Cursor; "" for every
// one kept) to handle until ctx ends (then nil). When the stream breaks
// (the daemon stopped or restarted) it connects again until it can,
// resuming after the last event handled; a daemon that restarted in
// between sends its new run's events from the first. say is told, in a
// sentence, what a reader should know besides the events: some were
// missed, the stream broke, it is back. An answer that will not change
// (401: the token) ends it with an error.
func (c *Client) Follow(ctx context.Context, since string, handle func(events.Event), say func(string)) error {
	if say == nil {
		say = func(string) {}
	}
	run, _, _ := strings.Cut(since, "-")
	var broken time.Time
	bo := retry.New(500*time.Millisecond, 5*time.Second)
	for {
		opened := false
		err := c.follow(ctx, since, func() {
			opened = true
			if bo.Succeeded() {
				say(fmt.Sprintf("the event stream is back after %s", time.Since(broken).Round(time.Second)))
			}
		}, func(e events.Event) {
			if e.Run != run && run != "" {
				say("the daemon restarted: the events of its new run follow, from the first it kept")
			}
			run, since = e.Run, e.Cursor()
			handle(e)
		}, say)
		if ctx.Err() != nil {
			return nil
		}
		if refused(err) {
			return err
		}
		wait, first := bo.Failed()
		if first {
			broken = time.Now()
			if opened {
				say(fmt.Sprintf("the event stream broke (%v): connecting again", err))
			} else {
				say(fmt.Sprintf("the event stream: %v: connecting again", err))
			}
		}
		if !retry.Wait(ctx, wait) {
			return nil
		}
	}
}

// follow reads one event stream until it breaks (an error) or ctx ends;
// opened is called once the daemon answered.
func (c *Client) follow(ctx context.Context, since string, opened func(), handle func(events.Event), say func(string)) error {
	resp, err := c.get(ctx, APIVersion+"/events?since="+url.QueryEscape(since), "text/event-stream")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	opened()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	var kind string
	var data strings.Builder
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if err := dispatch(kind, data.String(), handle, say); err != nil {
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
	if err := sc.Err(); err != nil {
		return fmt.Errorf("event stream from %s: %w", c.base, err)
	}
	return errors.New("the daemon closed it (it stopped?)")
}

func dispatch(kind, data string, handle func(events.Event), say func(string)) error {
	switch kind {
	case "event":
		var e events.Event
		if err := json.Unmarshal([]byte(data), &e); err != nil {
			return fmt.Errorf("event stream: %w", err)
		}
		handle(e)
	case "missed":
		say(data + " events went by faster than they could be read")
	}
	return nil
}
