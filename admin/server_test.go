package admin

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/upstreamd/upstreamd/internal/events"
	"github.com/upstreamd/upstreamd/nginx"
	"github.com/upstreamd/upstreamd/render"
)

func testStatus(backends ...Backend) Status {
	return Status{
		Project: "demo", Node: "n1", Version: "test", Started: time.Now().Add(-time.Minute), Now: time.Now(), Ready: true,
		Problems: []string{},
		Services: []Service{{Name: "apache", Replicas: 3, Local: 3, Backends: backends}},
		Proxy:    Proxy{Running: true, Container: "demo-proxy", ID: "abc"},
	}
}

func newTestServer(t *testing.T, token string, st Status) (*httptest.Server, *events.Journal) {
	t.Helper()
	j := events.New(0)
	srv := httptest.NewServer(NewServer(Config{
		Token: token, Journal: j, Heartbeat: time.Hour,
		Status:   func(context.Context) Status { return st },
		Problems: func() []string { return st.Problems },
		Ready:    func() bool { return st.Ready },
		Metrics:  http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "metrics\n") }),
	}))
	t.Cleanup(srv.Close)
	return srv, j
}

func get(t *testing.T, url string, header ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestToken(t *testing.T) {
	const token = "0123456789abcdef0123"
	srv, _ := newTestServer(t, token, testStatus())
	for _, path := range []string{"/", "/api/v1/status", "/api/v1/events", "/metrics"} {
		if code, body := get(t, srv.URL+path); code != http.StatusUnauthorized || !strings.Contains(body, "admin.token_file") {
			t.Errorf("GET %s without the token: %d %q; want 401 naming admin.token_file", path, code, body)
		}
		if code, _ := get(t, srv.URL+path, "Authorization", "Bearer wrong-token-wrong-token"); code != http.StatusUnauthorized {
			t.Errorf("GET %s with a wrong token: %d; want 401", path, code)
		}
		if code, _ := get(t, srv.URL+path, "Authorization", "Bearer "+token); code != http.StatusOK {
			t.Errorf("GET %s with the token: %d; want 200", path, code)
		}
	}
	if code, _ := get(t, srv.URL+"/?token="+token); code != http.StatusOK {
		t.Errorf("the page with ?token=: %d; want 200", code)
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, _ := get(t, srv.URL+path); code != http.StatusOK {
			t.Errorf("GET %s without the token: %d; want 200 (probes carry no token)", path, code)
		}
	}
}

func TestReadyz(t *testing.T) {
	st := testStatus()
	st.Ready = false
	srv, _ := newTestServer(t, "", st)
	if code, body := get(t, srv.URL+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "not ready") {
		t.Errorf("/readyz before ready: %d %q; want 503 saying not ready", code, body)
	}
	if code, _ := get(t, srv.URL+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz before ready: %d; want 200 (nothing is broken)", code)
	}
	st = testStatus()
	st.Problems = []string{"etcd: unreachable"}
	srv, _ = newTestServer(t, "", st)
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := get(t, srv.URL+path); code != http.StatusServiceUnavailable || !strings.Contains(body, "etcd: unreachable") {
			t.Errorf("%s with etcd down: %d %q; want 503 naming the problem", path, code, body)
		}
	}
}

func TestEventsAPI(t *testing.T) {
	srv, j := newTestServer(t, "", testStatus())
	for _, k := range []events.Kind{events.Died, events.Deregistered, events.PoolPushed} {
		j.Record(events.Event{Kind: k, Message: string(k)})
	}
	var evs Events
	_, body := get(t, srv.URL+"/api/v1/events")
	if err := json.Unmarshal([]byte(body), &evs); err != nil || len(evs.Events) != 3 || evs.Events[0].Kind != events.Died {
		t.Fatalf("events: %v %s; want died, deregistered, pool-pushed", err, body)
	}
	_, body = get(t, srv.URL+"/api/v1/events?since=2")
	if err := json.Unmarshal([]byte(body), &evs); err != nil || len(evs.Events) != 1 || evs.Events[0].Seq != 3 {
		t.Fatalf("events since 2: %s; want the third only", body)
	}
	if code, _ := get(t, srv.URL+"/api/v1/events?since=x"); code != http.StatusBadRequest {
		t.Errorf("since=x: %d; want 400", code)
	}

	// Following: what is kept after since, then each new event.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := NewClient(strings.TrimPrefix(srv.URL, "http://"), "")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan events.Event, 10)
	go func() { _ = c.Follow(ctx, j.Run()+"-1", func(e events.Event) { got <- e }, func(string) {}) }()
	for _, want := range []int64{2, 3} {
		if e := <-got; e.Seq != want {
			t.Fatalf("followed event %d; want %d", e.Seq, want)
		}
	}
	j.Record(events.Event{Kind: events.Started, Message: "new"})
	select {
	case e := <-got:
		if e.Seq != 4 || e.Kind != events.Started {
			t.Fatalf("followed %+v; want the new event 4", e)
		}
	case <-ctx.Done():
		t.Fatal("the new event never came")
	}
}

func TestPage(t *testing.T) {
	now := time.Now()
	st := testStatus(
		Backend{Container: "demo-apache-1", Addr: "172.18.0.2:80", State: "healthy", Since: now, LastProbe: &now, Registered: true, Served: true},
		Backend{Container: "demo-apache-2", Addr: "172.18.0.3:80", State: "healthy", Since: now},
		Backend{Container: `<script>alert(1)</script>`, Addr: "172.18.0.4:80", State: "unhealthy", Since: now, ProbeError: "connection refused"},
	)
	st.Proxy.Rejected = &Rejected{Time: now, Hash: "abc", Message: `unknown directive "bogus"`}
	next := now.Add(90 * time.Second)
	st.Certificates = []Certificate{{Source: "acme", Names: []string{"a.example"}, NotAfter: now.Add(89*24*time.Hour + time.Minute)},
		{Source: "file", Names: []string{"old.example", "*.old.example"}, NotAfter: now.Add(3*24*time.Hour + time.Minute)}}
	st.ACME = []ACMEHost{{Host: "a.example"}, {Host: "b.example", Error: "the CA said no", NextTry: &next}}
	srv, j := newTestServer(t, "", st)
	j.Record(events.Event{Kind: events.Died, Message: "backend demo-apache-9 died"})
	code, page := get(t, srv.URL+"/")
	if code != http.StatusOK {
		t.Fatalf("GET /: %d", code)
	}
	for _, want := range []string{
		`data-state="healthy" data-container="demo-apache-1"`, `data-state="unhealthy"`, "connection refused",
		"config rejected", "unknown directive &#34;bogus&#34;", "backend demo-apache-9 died", "new EventSource(",
		"&lt;script&gt;alert(1)&lt;/script&gt;",
		"<td>a.example</td><td>acme</td>", ">in 89d</td>", `class="bad">in 3d</td>`, "<td>old.example, *.old.example</td>",
		"ACME cannot order for b.example (next try in 1m): the CA said no",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	if strings.Contains(page, "cannot order for a.example") {
		t.Error("a host whose last order went through is shown failing")
	}
	if strings.Contains(page, "<script>alert(1)") {
		t.Error("a container name went into the page unescaped")
	}
	if n := strings.Count(page, `class="backend"`); n != 3 {
		t.Errorf("%d backend rows; want 3", n)
	}

	// The live part comes through /live as "view" messages.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/live", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("/live: Content-Type %q", ct)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	if !sc.Scan() || sc.Text() != "event: view" {
		t.Fatalf("/live starts with %q; want a view", sc.Text())
	}
	var view strings.Builder
	for sc.Scan() && sc.Text() != "" {
		view.WriteString(strings.TrimPrefix(sc.Text(), "data: ") + "\n")
	}
	if n := strings.Count(view.String(), `class="backend"`); n != 3 || strings.Contains(view.String(), "<html") {
		t.Errorf("the view has %d backend rows (want 3) and must not be a whole page", n)
	}
}

func TestHistory(t *testing.T) {
	j := events.New(0)
	h := NewHistory(j)
	pools := map[string][]string{"apache": {"a:80", "b:80"}}
	h.Observe(render.Outcome{Result: render.ResultReload, Changed: true, Config: []byte("upstream a {\n  server a:80;\n}\n"), Hash: "h1", Pools: pools})
	h.Observe(render.Outcome{Result: render.ResultReload, Changed: true, Config: []byte("upstream a {\n  server b:80;\n}\n"), Hash: "h2", Pools: pools, Confirmed: 30 * time.Millisecond})
	h.Observe(render.Outcome{Result: render.ResultPush, Pushed: true, Hash: "h2", Pools: map[string][]string{"apache": {"b:80"}}})
	bad := &nginx.CheckError{Message: `nginx: [emerg] unknown directive "bogus"`}
	h.Observe(render.Outcome{Result: render.ResultRejected, Err: bad, Hash: "h3"})
	h.Observe(render.Outcome{Result: render.ResultRejected, Err: bad, Hash: "h3"}) // said once
	h.Observe(render.Outcome{Result: render.ResultWaiting, Err: fmt.Errorf("%w: no proxy", render.ErrNotReady)})
	h.Observe(render.Outcome{Result: render.ResultError, Err: errors.New("push pools: status 403")})

	var p Proxy
	h.Fill(&p)
	if p.Hash != "h2" || !strings.Contains(p.Diff, "-  server a:80;") || !strings.Contains(p.Diff, "+  server b:80;") {
		t.Errorf("live %q, diff %q; want h2 and the change from a to b", p.Hash, p.Diff)
	}
	if p.Rejected == nil || p.Rejected.Hash != "h3" || p.Rejected.Message != bad.Message {
		t.Errorf("rejected %+v; want h3 with nginx's message", p.Rejected)
	}
	if p.Pushed == nil || p.ConfirmedMS != 30 || p.RenderError != "push pools: status 403" {
		t.Errorf("pushed %v, confirmed %v, render error %q", p.Pushed, p.ConfirmedMS, p.RenderError)
	}
	if got := h.Served()["apache"]; len(got) != 1 || got[0] != "b:80" {
		t.Errorf("served %v; want the pushed pool [b:80]", got)
	}
	var kinds []events.Kind
	for _, e := range j.Last(0) {
		kinds = append(kinds, e.Kind)
	}
	want := []events.Kind{events.Reloaded, events.Reloaded, events.PoolPushed, events.ConfigRejected, events.RenderFailed}
	if fmt.Sprint(kinds) != fmt.Sprint(want) {
		t.Errorf("events %v; want %v", kinds, want)
	}
}

// TestHistoryRefusedPass: a pass that kept a pool nginx serves (refused
// to empty it) but pushed the others records the push, and is not taken
// for the config live at start-up; no error is said.
func TestHistoryRefusedPass(t *testing.T) {
	j := events.New(0)
	h := NewHistory(j)
	pools := map[string][]string{"apache": {"a:80"}, "api": {}}
	h.Observe(render.Outcome{Result: render.ResultRefused, Pushed: true, Hash: "h1", Pools: pools,
		Err: fmt.Errorf("%w of service api", render.ErrWouldEmpty)})
	var p Proxy
	h.Fill(&p)
	if p.Hash != "" || p.Pushed == nil || p.RenderError != "" {
		t.Errorf("live %q, pushed %v, render error %q; want no live config, a push, no error", p.Hash, p.Pushed, p.RenderError)
	}
	if evs := j.Last(0); len(evs) != 1 || evs[0].Kind != events.PoolPushed {
		t.Errorf("events %+v; want one pool push", evs)
	}
	h.Observe(render.Outcome{Result: render.ResultUnchanged, Hash: "h1", Pools: pools})
	if h.Fill(&p); p.Hash != "h1" {
		t.Errorf("live %q after a whole pass; want h1", p.Hash)
	}
}

func TestIsLoopback(t *testing.T) {
	for listen, want := range map[string]bool{
		"127.0.0.1:9180": true, "127.1.2.3:1": true, "[::1]:9180": true, "localhost:9180": true,
		"0.0.0.0:9180": false, ":9180": false, "[::]:9180": false, "10.0.0.1:9180": false, "nonsense": false,
	} {
		if got := IsLoopback(listen); got != want {
			t.Errorf("IsLoopback(%q) = %v; want %v", listen, got, want)
		}
	}
}

func TestClientAddress(t *testing.T) {
	for listen, want := range map[string]string{
		"127.0.0.1:9180": "http://127.0.0.1:9180", "0.0.0.0:9180": "http://127.0.0.1:9180",
		":9180": "http://127.0.0.1:9180", "[::]:9180": "http://[::1]:9180", "10.0.0.1:80": "http://10.0.0.1:80",
	} {
		c, err := NewClient(listen, "")
		if err != nil || c.URL() != want {
			t.Errorf("NewClient(%q): %v, %v; want %s", listen, c.URL(), err, want)
		}
	}
	if _, err := NewClient("nope", ""); err == nil {
		t.Error("NewClient(\"nope\"): no error")
	}
}

// sseEvents reads the "event" messages of an SSE stream until it has n,
// with the id of each.
func sseEvents(t *testing.T, body io.Reader, n int) (ids []string, evs []events.Event) {
	t.Helper()
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var id, kind, data string
	for len(evs) < n && sc.Scan() {
		switch line := sc.Text(); {
		case line == "":
			if kind == "event" {
				var e events.Event
				if err := json.Unmarshal([]byte(data), &e); err != nil {
					t.Fatalf("event %q: %v", data, err)
				}
				ids, evs = append(ids, id), append(evs, e)
			}
			id, kind, data = "", "", ""
		case strings.HasPrefix(line, "id: "):
			id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "event: "):
			kind = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			data += strings.TrimPrefix(line, "data: ")
		}
	}
	if len(evs) < n {
		t.Fatalf("the stream ended after %d events (%v); want %d", len(evs), sc.Err(), n)
	}
	return ids, evs
}

// TestEventsAfterRestart: a reader that comes back after the daemon
// restarted, with the last id or seq of the run before (above the new
// numbering), gets the new run's events from the first, not nothing.
func TestEventsAfterRestart(t *testing.T) {
	srv, j := newTestServer(t, "", testStatus())
	for _, k := range []events.Kind{events.Started, events.Registered, events.Reloaded} {
		j.Record(events.Event{Kind: k, Message: string(k)})
	}
	previous := events.New(0)
	for range 50 {
		previous.Record(events.Event{Kind: events.Died})
	}
	last := previous.Last(1)[0]
	seqsOf := func(evs []events.Event) []int64 {
		var out []int64
		for _, e := range evs {
			out = append(out, e.Seq)
		}
		return out
	}
	for _, since := range []string{"50", last.Cursor()} {
		var evs Events
		code, body := get(t, srv.URL+"/api/v1/events?since="+since)
		if err := json.Unmarshal([]byte(body), &evs); code != http.StatusOK || err != nil || fmt.Sprint(seqsOf(evs.Events)) != "[1 2 3]" {
			t.Errorf("events?since=%s of the run before: %d %s; want this run's 1, 2, 3", since, code, body)
		}
		if evs.Run != j.Run() {
			t.Errorf("events?since=%s: run %q; want %q", since, evs.Run, j.Run())
		}
	}
	for _, id := range []string{"50", last.Cursor()} {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/api/v1/events?follow=1", nil)
		req.Header.Set("Last-Event-ID", id)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		ids, evs := sseEvents(t, resp.Body, 3)
		_ = resp.Body.Close()
		cancel()
		if fmt.Sprint(seqsOf(evs)) != "[1 2 3]" || ids[0] != j.Run()+"-1" {
			t.Errorf("followed with Last-Event-ID %s of the run before: %v, ids %v; want 1, 2, 3 with ids %s-SEQ", id, seqsOf(evs), ids, j.Run())
		}
	}
	for _, since := range []string{"-9223372036854775808", "-1", "x", "abc-x"} {
		if code, body := get(t, srv.URL+"/api/v1/events?since="+since); code != http.StatusBadRequest || !strings.Contains(body, "since") {
			t.Errorf("events?since=%s: %d %q; want 400 naming since", since, code, body)
		}
	}
}

// swapHandler serves what it holds: a daemon restarted behind one address.
type swapHandler struct{ h atomic.Pointer[Server] }

func (s *swapHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.h.Load().ServeHTTP(w, r) }

// TestFollowAcrossRestart: `upstreamd events` (Client.Follow) keeps
// following when the daemon restarts: it connects again and prints the
// new run's events from its first.
func TestFollowAcrossRestart(t *testing.T) {
	server := func(j *events.Journal) *Server {
		return NewServer(Config{Journal: j, Heartbeat: time.Hour, Status: func(context.Context) Status { return testStatus() }})
	}
	before, after := events.New(0), events.New(0)
	for range 5 {
		before.Record(events.Event{Kind: events.Died})
	}
	var swap swapHandler
	swap.h.Store(server(before))
	srv := httptest.NewServer(&swap)
	t.Cleanup(srv.Close)
	c, err := NewClient(strings.TrimPrefix(srv.URL, "http://"), "")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	got := make(chan events.Event, 10)
	notes := make(chan string, 10)
	done := make(chan error, 1)
	go func() {
		done <- c.Follow(ctx, before.Run()+"-3", func(e events.Event) { got <- e }, func(n string) { notes <- n })
	}()
	for _, want := range []int64{4, 5} {
		if e := <-got; e.Seq != want || e.Run != before.Run() {
			t.Fatalf("followed %s; want %s-%d", e.Cursor(), before.Run(), want)
		}
	}
	// The restart: a new journal behind the address, the stream cut.
	after.Record(events.Event{Kind: events.Started})
	after.Record(events.Event{Kind: events.Registered})
	swap.h.Store(server(after))
	srv.CloseClientConnections()
	for _, want := range []int64{1, 2} {
		select {
		case e := <-got:
			if e.Seq != want || e.Run != after.Run() {
				t.Fatalf("after the restart: followed %s; want %s-%d", e.Cursor(), after.Run(), want)
			}
		case err := <-done:
			t.Fatalf("Follow ended at the restart: %v", err)
		case <-ctx.Done():
			t.Fatal("the new run's events never came")
		}
	}
	var said []string
	for len(notes) > 0 {
		said = append(said, <-notes)
	}
	if s := strings.Join(said, "\n"); !strings.Contains(s, "restarted") {
		t.Errorf("Follow said %q; want it to say the daemon restarted", s)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Follow after ctx ended: %v; want nil", err)
	}
}

// TestHostCheck: a listener without a token answers only requests
// addressed to it by a loopback name or its listen address; a page of
// another site that a browser on this host reaches through a name
// rebound to 127.0.0.1 (DNS rebinding) is refused. With a token the
// token is the check (the compose and cluster demos reach it by other
// names).
func TestHostCheck(t *testing.T) {
	st := testStatus()
	server := func(token, listen string) *Server {
		return NewServer(Config{Token: token, Listen: listen, Journal: events.New(0), Heartbeat: time.Hour,
			Status: func(context.Context) Status { return st }, Problems: func() []string { return nil }})
	}
	for _, c := range []struct {
		name, token, listen, host string
		want                      int
	}{
		{"localhost", "", "127.0.0.1:9180", "localhost:9180", http.StatusOK},
		{"localhost without the port", "", "127.0.0.1:9180", "localhost", http.StatusOK},
		{"LOCALHOST.", "", "127.0.0.1:9180", "LOCALHOST.:9180", http.StatusOK},
		{"127.0.0.1", "", "127.0.0.1:9180", "127.0.0.1:9180", http.StatusOK},
		{"127.0.0.1 through a tunnel's port", "", "127.0.0.1:9180", "127.0.0.1:19180", http.StatusOK},
		{"[::1]", "", "[::1]:9180", "[::1]:9180", http.StatusOK},
		{"[::1] without the port", "", "127.0.0.1:9180", "[::1]", http.StatusOK},
		{"the listen address", "", "127.0.0.2:9180", "127.0.0.2:9180", http.StatusOK},
		{"no Host (HTTP/1.0)", "", "127.0.0.1:9180", "", http.StatusOK},
		{"a rebound name", "", "127.0.0.1:9180", "attacker.example:9180", http.StatusForbidden},
		{"a rebound name without the port", "", "127.0.0.1:9180", "attacker.example", http.StatusForbidden},
		{"localhost as a subdomain", "", "127.0.0.1:9180", "localhost.attacker.example:9180", http.StatusForbidden},
		{"another loopback address", "", "127.0.0.1:9180", "127.0.0.2:9180", http.StatusForbidden},
		{"with a token, any name", "0123456789abcdef0123", "0.0.0.0:9180", "admin.example:9180", http.StatusOK},
	} {
		t.Run(c.name, func(t *testing.T) {
			for _, path := range []string{"/", "/api/v1/status", "/api/v1/events", "/healthz", "/metrics"} {
				req := httptest.NewRequest(http.MethodGet, path, nil)
				req.Host = c.host
				if c.token != "" {
					req.Header.Set("Authorization", "Bearer "+c.token)
				}
				rec := httptest.NewRecorder()
				server(c.token, c.listen).ServeHTTP(rec, req)
				got := rec.Code
				if got == http.StatusNotFound { // /metrics without a handler
					got = http.StatusOK
				}
				if got != c.want {
					t.Errorf("GET %s with Host %q: %d %.80q; want %d", path, c.host, rec.Code, rec.Body.String(), c.want)
				}
				if c.want == http.StatusForbidden && !strings.Contains(rec.Body.String(), "admin.token_file") {
					t.Errorf("GET %s with Host %q: %q; want it to say why, and admin.token_file", path, c.host, rec.Body.String())
				}
			}
		})
	}
}
