package admin

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/upstreamd/upstreamd/internal/events"
)

// pipeListener is a net.Listener of in-memory connections (net.Pipe):
// the admin server runs in a synctest bubble, on its fake clock, with its
// real timeouts.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

// dial connects to the listener.
func (l *pipeListener) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	srv, cli := net.Pipe()
	select {
	case l.conns <- srv:
		return cli, nil
	case <-l.done:
		return nil, net.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

// bubbleServer serves cfg (its Journal and Status filled in when unset)
// through Serve on a pipeListener; call it inside synctest.Test. The
// server stops at the test's end.
func bubbleServer(t *testing.T, cfg Config) (*http.Client, *pipeListener) {
	t.Helper()
	if cfg.Journal == nil {
		cfg.Journal = events.New(0)
	}
	if cfg.Status == nil {
		cfg.Status = func(context.Context) Status { return testStatus() }
	}
	if cfg.Problems == nil {
		cfg.Problems = func() []string { return nil }
	}
	l := newPipeListener()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- NewServer(cfg).Serve(ctx, l) }()
	tr := &http.Transport{DialContext: l.dial}
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
		tr.CloseIdleConnections()
	})
	return &http.Client{Transport: tr}, l
}

// rawRequest sends a GET of path (more: header lines) on a new
// connection, and returns the connection.
func rawRequest(t *testing.T, l *pipeListener, path string, more string) net.Conn {
	t.Helper()
	c, err := l.dial(t.Context(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	go func() { _, _ = io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: localhost\r\n"+more+"\r\n") }()
	return c
}

// closedWithin waits (on the bubble's clock) for the server to close c,
// reading and dropping what it sends; it returns how long that took, or
// fails when c is still open after limit.
func closedWithin(t *testing.T, c net.Conn, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	closed := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, c)
		closed <- err
	}()
	select {
	case err := <-closed:
		if err != nil && !errors.Is(err, io.ErrClosedPipe) {
			t.Errorf("reading until closed: %v", err)
		}
		return time.Since(start)
	case <-time.After(limit):
		_ = c.Close()
		if err := <-closed; err != nil {
			t.Logf("reading after the close: %v", err)
		}
		t.Fatalf("the connection is still open after %s", limit)
		return 0
	}
}

// TestConnectionTimeouts: a connection that sends nothing more is closed,
// authenticated or not: kept alive and idle, or a request whose body
// never comes.
func TestConnectionTimeouts(t *testing.T) {
	for _, c := range []struct {
		name, path, more string
		within           time.Duration
	}{
		{name: "idle after a refused request", path: "/api/v1/status", within: idleTimeout},
		{name: "idle after an answered one", path: "/healthz", within: idleTimeout},
		{name: "a body that never comes", path: "/healthz", more: "Content-Length: 100\r\n", within: readTimeout},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				_, l := bubbleServer(t, Config{Token: "0123456789abcdef0123"})
				conn := rawRequest(t, l, c.path, c.more)
				if took := closedWithin(t, conn, 10*time.Minute); took > c.within {
					t.Errorf("closed after %s; want within %s", took, c.within)
				}
			})
		})
	}
}

// sseReader reads the messages of an SSE stream in the background: their
// event names, one per message.
func sseReader(body io.Reader) <-chan string {
	out := make(chan string, 100)
	go func() {
		defer close(out)
		sc := bufio.NewScanner(body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		kind := ""
		for sc.Scan() {
			switch line := sc.Text(); {
			case line == "" && kind != "":
				out <- kind
				kind = ""
			case strings.HasPrefix(line, "event: "):
				kind = strings.TrimPrefix(line, "event: ")
			}
		}
	}()
	return out
}

// TestStreamOutlivesReadTimeout: the read timeouts bound reading a
// request, not how long a stream lasts.
func TestStreamOutlivesReadTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client, _ := bubbleServer(t, Config{Heartbeat: 15 * time.Second})
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://localhost/live", nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		msgs := sseReader(resp.Body)
		time.Sleep(10 * (readTimeout + idleTimeout))
		synctest.Wait()
		n := 0
	read:
		for {
			select {
			case m, ok := <-msgs:
				if !ok {
					break read
				}
				n++
				if m != "view" {
					t.Errorf("message %q; want view", m)
				}
			default:
				t.Logf("%d views in %s", n, 10*(readTimeout+idleTimeout))
				return
			}
		}
		t.Fatalf("the stream ended after %d views", n)
	})
}

// openStream GETs path with a context of its own; close cancels it.
func openStream(t *testing.T, client *http.Client, path string) stream {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://localhost"+path, nil)
	resp, err := client.Do(req) //nolint:bodyclose // closed by st.close: by the test, or at its cleanup
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	st := stream{StatusCode: resp.StatusCode, Status: resp.Status, Header: resp.Header, Body: resp.Body,
		close: func() {
			cancel()
			_ = resp.Body.Close()
		}}
	t.Cleanup(st.close)
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		st.text = string(b)
	}
	return st
}

// stream is an answer openStream got: its body stays open until close
// (or the test's end).
type stream struct {
	StatusCode int
	Status     string
	Header     http.Header
	Body       io.Reader
	text       string // the body of an answer other than 200
	close      func()
}

// TestStreamLimit: beyond MaxStreams streams (of every kind together), a
// new one gets a 503 that says the limit and when to try again; the
// other answers go on, and a stream that ends frees its place.
func TestStreamLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client, _ := bubbleServer(t, Config{MaxStreams: 2, Heartbeat: 15 * time.Second})
		live := openStream(t, client, "/live")
		follow := openStream(t, client, "/api/v1/events?follow=1")
		for _, r := range []stream{live, follow} {
			if r.StatusCode != http.StatusOK {
				t.Fatalf("GET a stream: %s; want 200 (under the limit)", r.Status)
			}
		}
		for _, path := range []string{"/api/v1/stream", "/live", "/api/v1/events?follow=1"} {
			resp := openStream(t, client, path)
			body := resp.text
			if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" ||
				!strings.Contains(body, "at most 2 streams") {
				t.Errorf("GET %s beyond the limit: %s, Retry-After %q, %q; want 503 with Retry-After, saying the limit",
					path, resp.Status, resp.Header.Get("Retry-After"), body)
			}
		}
		if resp := openStream(t, client, "/api/v1/status"); resp.StatusCode != http.StatusOK {
			t.Errorf("GET /api/v1/status with the streams full: %s; want 200", resp.Status)
		}
		live.close()
		synctest.Wait()
		if resp := openStream(t, client, "/api/v1/stream"); resp.StatusCode != http.StatusOK {
			t.Errorf("GET /api/v1/stream once a stream ended: %s %q; want 200", resp.Status, resp.text)
		}
	})
}

// TestStreamWriteDeadline: a client that stops reading its stream loses
// it within writeTimeout of the write it does not take, and its place
// among MaxStreams with it; so does a slow reader of any other answer.
func TestStreamWriteDeadline(t *testing.T) {
	for _, path := range []string{"/api/v1/events?follow=1", "/live", "/api/v1/stream", "/api/v1/status"} {
		t.Run(path, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				client, l := bubbleServer(t, Config{MaxStreams: 1, Heartbeat: 15 * time.Second})
				stuck := rawRequest(t, l, path, "") // and never read
				time.Sleep(writeTimeout)
				synctest.Wait()
				if resp := openStream(t, client, "/api/v1/events?follow=1"); resp.StatusCode != http.StatusOK {
					t.Errorf("a stream %s after a client stopped reading %s: %s %q; want 200 (its place freed)",
						writeTimeout, path, resp.Status, resp.text)
				}
				if took := closedWithin(t, stuck, time.Minute); took > 0 {
					t.Errorf("the stuck connection was closed %s later; want by then", took)
				}
			})
		})
	}
}

// TestStreamsShareTheStatus: with many streams open (/live and
// /api/v1/stream alike), the status is computed once per change and
// once per heartbeat, and every stream gets that one, not one computed
// for each stream.
func TestStreamsShareTheStatus(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var computed atomic.Int64
		j := events.New(0)
		client, _ := bubbleServer(t, Config{Journal: j, Heartbeat: 15 * time.Second,
			Status: func(context.Context) Status { computed.Add(1); return testStatus() }})
		var streams []<-chan string
		for range 10 {
			for _, path := range []string{"/live", "/api/v1/stream"} {
				resp := openStream(t, client, path)
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("GET %s: %s", path, resp.Status)
				}
				streams = append(streams, sseReader(resp.Body))
			}
		}
		// each waits until every stream had the status again.
		each := func(when string) {
			t.Helper()
			for i, msgs := range streams {
				for m := ""; m != "view" && m != "status"; {
					select {
					case m = <-msgs:
					case <-time.After(time.Minute):
						t.Fatalf("%s: stream %d had no status within a minute", when, i)
					}
				}
			}
		}
		var before int64 // computed before the change
		for _, c := range []struct {
			when   string
			change func()
		}{
			{"at once", func() {}},
			{"after an event", func() { j.Record(events.Event{Kind: events.Died}) }},
			{"after three events", func() {
				for range 3 {
					j.Record(events.Event{Kind: events.Died})
				}
			}},
			{"at the heartbeat", func() { time.Sleep(15 * time.Second) }},
		} {
			c.change()
			each(c.when)
			synctest.Wait()
			if n := computed.Load() - before; n != 1 {
				t.Errorf("%s: the status was computed %d times for %d streams; want once", c.when, n, len(streams))
			}
			before = computed.Load()
		}
	})
}
