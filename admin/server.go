package admin

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/internal/events"
)

// DefaultListen is where the admin listener answers by default.
const DefaultListen = "127.0.0.1:9180"

// The listener's limits. WriteTimeout cannot be the server's: the
// streams last; each answer and each write of a stream has writeTimeout.
const (
	readHeaderTimeout = 5 * time.Second
	// readTimeout bounds reading a whole request (the API takes no body).
	readTimeout = 10 * time.Second
	// idleTimeout closes a kept-alive connection that sends nothing more.
	idleTimeout    = 30 * time.Second
	writeTimeout   = 10 * time.Second
	maxHeaderBytes = 64 << 10
)

// Config configures a Server.
type Config struct {
	// Token, when set, is required of every request but /healthz and
	// /readyz: "Authorization: Bearer <token>", or ?token= (what a browser
	// opening the page can send). Without one, every request must be
	// addressed (Host) to a loopback name or Listen's host: a page of
	// another site cannot reach the listener through DNS rebinding. With
	// one, the token is the check, and the listener answers any name.
	Token string
	// Listen is admin.listen: without a token, requests must name it
	// (its host) or a loopback name in their Host header.
	Listen string
	// Status assembles the daemon's status at each request.
	Status func(ctx context.Context) Status
	// Problems lists what is wrong now (empty: healthy).
	Problems func() []string
	// Ready reports whether etcd reflects this node's backends.
	Ready func() bool
	// Journal holds the events.
	Journal *events.Journal
	// Metrics answers /metrics; nil: 404.
	Metrics http.Handler
	// MaxStreams bounds the streams open at once (/live, /api/v1/stream,
	// followed /api/v1/events, together); zero means 32.
	MaxStreams int
	// Heartbeat is how often an idle stream sends a comment, so that
	// proxies and browsers keep it open; zero means 15 s.
	Heartbeat time.Duration
	Logger    zerolog.Logger
}

// Server answers the admin endpoints.
type Server struct {
	cfg     Config
	feed    *feed // the status, once for every stream
	mux     *http.ServeMux
	hosts   []string      // the names a request must address without a token
	streams chan struct{} // one token per stream open
}

// defaultMaxStreams is MaxStreams when unset.
const defaultMaxStreams = 32

// retryStream is how long a stream refused for the limit is told to wait.
const retryStream = 10 * time.Second

// NewServer returns a Server.
func NewServer(cfg Config) *Server {
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = 15 * time.Second
	}
	if cfg.MaxStreams <= 0 {
		cfg.MaxStreams = defaultMaxStreams
	}
	s := &Server{cfg: cfg, mux: http.NewServeMux(), hosts: []string{"localhost", "127.0.0.1", "::1"},
		streams: make(chan struct{}, cfg.MaxStreams), feed: newFeed(cfg.Status, cfg.Journal, cfg.Heartbeat)}
	if host, _, err := net.SplitHostPort(cfg.Listen); err == nil {
		if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) && !slices.Contains(s.hosts, strings.ToLower(host)) {
			s.hosts = append(s.hosts, strings.ToLower(host))
		}
	}
	s.mux.HandleFunc("GET /healthz", s.healthz)
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.mux.Handle("GET /metrics", s.auth(s.metrics()))
	s.mux.Handle("GET "+APIVersion+"/status", s.auth(http.HandlerFunc(s.status)))
	s.mux.Handle("GET "+APIVersion+"/events", s.auth(http.HandlerFunc(s.events)))
	s.mux.Handle("GET "+APIVersion+"/stream", s.auth(http.HandlerFunc(s.stream)))
	s.mux.Handle("GET /{$}", s.auth(http.HandlerFunc(s.page)))
	s.mux.Handle("GET /live", s.auth(http.HandlerFunc(s.live)))
	return s
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	// The server's WriteTimeout, per answer: the streams push theirs on
	// at each write.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(writeTimeout))
	if s.cfg.Token == "" && !s.addressed(r.Host) {
		http.Error(w, fmt.Sprintf("403 forbidden: this admin listener has no token (admin.token_file), so it answers only requests "+
			"addressed to %s (any port), not to %q: a page of another site could reach it through a name that resolves to this host "+
			"(DNS rebinding). To reach it under other names, set admin.token_file",
			strings.Join(s.hostNames(), ", "), r.Host), http.StatusForbidden)
		return
	}
	s.mux.ServeHTTP(w, r)
}

// addressed reports whether hostport, a request's Host header, names
// this listener: a loopback name or the host of admin.listen, with any
// port (an SSH tunnel's local port, a published one). Without a Host
// (HTTP/1.0) the request comes from no browser: it is let through.
func (s *Server) addressed(hostport string) bool {
	if hostport == "" {
		return true
	}
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	return slices.Contains(s.hosts, host)
}

// hostNames are the names addressed accepts, as a Host header says them.
func (s *Server) hostNames() []string {
	out := make([]string, len(s.hosts))
	for i, h := range s.hosts {
		if strings.Contains(h, ":") {
			h = "[" + h + "]"
		}
		out[i] = h
	}
	return out
}

// Serve answers on l until ctx ends, and returns once the connections
// closed (the streams end with ctx).
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	shut := make(chan struct{})
	go func() {
		defer close(shut)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	<-shut
	return nil
}

// auth requires the token, when there is one.
func (s *Server) auth(h http.Handler) http.Handler {
	if s.cfg.Token == "" {
		return h
	}
	want := []byte(s.cfg.Token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := r.URL.Query().Get("token")
		if v, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
			got = v
		}
		if subtle.ConstantTimeCompare([]byte(got), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="upstreamd"`)
			http.Error(w, "401 unauthorized: this listener requires the token of admin.token_file (Authorization: Bearer <token>, or ?token=<token>)", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func (s *Server) metrics() http.Handler {
	if s.cfg.Metrics == nil {
		return http.NotFoundHandler()
	}
	return s.cfg.Metrics
}

// healthz: 200 "ok" while the Docker engine, etcd and the render loop
// work; else 503 with one line per problem.
func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	s.answer(w, s.cfg.Problems(), nil)
}

// readyz: healthz, and etcd reflects this node's backends (the daemon
// finished its first reconcile and probes); 503 with the reasons while
// not.
func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	var waiting []string
	if s.cfg.Ready != nil && !s.cfg.Ready() {
		waiting = append(waiting, "not ready: etcd does not reflect this node's backends yet (first reconcile and probes under way)")
	}
	s.answer(w, s.cfg.Problems(), waiting)
}

func (s *Server) answer(w http.ResponseWriter, problems, more []string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if all := append(problems, more...); len(all) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(strings.Join(all, "\n") + "\n"))
		return
	}
	_, _ = w.Write([]byte("ok\n"))
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, s.cfg.Status(r.Context()))
}

// events: GET /api/v1/events[?since=<seq>][&limit=<n>] lists the events
// kept, oldest first. With Accept: text/event-stream (or ?follow=1) it
// streams them instead: what is kept first, then each as it happens.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	since, err := s.cfg.Journal.After(q.Get("since"))
	if err != nil {
		http.Error(w, "since: "+err.Error(), http.StatusBadRequest)
		return
	}
	limit, err := intParam(q.Get("limit"), 0)
	if err != nil || limit < 0 {
		http.Error(w, "limit: not a count", http.StatusBadRequest)
		return
	}
	if q.Get("follow") != "" || strings.Contains(r.Header.Get("Accept"), "text/event-stream") {
		s.follow(w, r, since, true, noView)
		return
	}
	evs, missed := s.cfg.Journal.Since(since)
	if limit > 0 && len(evs) > int(limit) {
		evs = evs[len(evs)-int(limit):]
	}
	if evs == nil {
		evs = []events.Event{}
	}
	writeJSON(w, Events{Run: s.cfg.Journal.Run(), Events: evs, Missed: missed})
}

// stream is GET /api/v1/stream: the events, as follow streams them, and
// the whole Status ("status" messages) at once and after each change.
func (s *Server) stream(w http.ResponseWriter, r *http.Request) {
	since, err := s.cfg.Journal.After(r.URL.Query().Get("since"))
	if err != nil {
		http.Error(w, "since: "+err.Error(), http.StatusBadRequest)
		return
	}
	s.follow(w, r, since, true, statusJSON)
}

// follow streams Server-Sent Events: with sendEvents, each event after
// since as an "event" message whose id is its Cursor (a reconnecting
// EventSource resumes where it was, or from the first event of a run that
// began since); with a view, the status in that format, at once and after
// each change, as the feed computes it for every stream.
func (s *Server) follow(w http.ResponseWriter, r *http.Request, since int64, sendEvents bool, view format) {
	if _, ok := w.(http.Flusher); !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	select {
	case s.streams <- struct{}{}:
		defer func() { <-s.streams }()
	default:
		w.Header().Set("Retry-After", strconv.Itoa(int(retryStream.Seconds())))
		http.Error(w, fmt.Sprintf("503 service unavailable: this admin listener serves at most %d streams at once "+
			"(/live, /api/v1/stream and followed /api/v1/events together) and that many are open; "+
			"try again in %s, or close one", s.cfg.MaxStreams, retryStream), http.StatusServiceUnavailable)
		return
	}
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		// A reconnecting EventSource: the last id it saw, this run's or
		// (the daemon restarted) another's; one that makes no sense is
		// ignored.
		if seq, err := s.cfg.Journal.After(id); err == nil {
			since = seq
		}
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	out := &sse{w: w, rc: http.NewResponseController(w)}
	ctx := r.Context()
	var first, sent uint64
	var changed, fresh <-chan struct{} // subscribed before reading
	if sendEvents {
		changed = s.cfg.Journal.SubscribeUntil(ctx)
	}
	if view != noView {
		var leave func()
		first, fresh, leave = s.feed.subscribe(ctx)
		defer leave()
	}
	var beat <-chan time.Time
	if view == noView { // else the feed's frames keep the stream busy
		t := time.NewTicker(s.cfg.Heartbeat)
		defer t.Stop()
		beat = t.C
	}
	for {
		if sendEvents {
			evs, missed := s.cfg.Journal.Since(since)
			if missed > 0 {
				out.message("", "missed", []byte(strconv.FormatInt(missed, 10)))
			}
			for _, e := range evs {
				data, _ := json.Marshal(e)
				out.message(e.Cursor(), "event", data)
			}
			if len(evs) > 0 {
				since = evs[len(evs)-1].Seq
			}
		}
		if view != noView {
			if f := s.feed.latest(view); f.gen >= first && f.gen > sent {
				out.message("", f.name, f.data)
				sent = f.gen
			}
		}
		if err := out.send(); err != nil {
			return // gone, or not reading
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-fresh:
		case <-beat:
			out.comment("keep-alive")
		}
	}
}

// sse writes a Server-Sent Events answer: messages gather and go out
// together, each batch within writeTimeout.
type sse struct {
	w   http.ResponseWriter
	rc  *http.ResponseController
	buf bytes.Buffer
}

// message adds one message; data may hold several lines.
func (e *sse) message(id, event string, data []byte) {
	if id != "" {
		e.buf.WriteString("id: " + id + "\n")
	}
	e.buf.WriteString("event: " + event + "\n")
	for _, line := range strings.Split(string(data), "\n") {
		e.buf.WriteString("data: " + strings.TrimSuffix(line, "\r") + "\n")
	}
	e.buf.WriteString("\n")
}

// comment adds a comment, which keeps the connection busy.
func (e *sse) comment(text string) { e.buf.WriteString(": " + text + "\n\n") }

// send writes what was added and flushes it. A client that does not take
// it within writeTimeout loses the stream (an error, as when it is gone):
// a stuck reader must not hold a stream and its goroutine for ever.
func (e *sse) send() error {
	_ = e.rc.SetWriteDeadline(time.Now().Add(writeTimeout))
	if _, err := e.w.Write(e.buf.Bytes()); err != nil {
		return err
	}
	e.buf.Reset()
	return e.rc.Flush()
}

func intParam(v string, def int64) (int64, error) {
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a number", v)
	}
	return n, nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// IsLoopback reports whether listen (host:port) binds loopback addresses
// only: "localhost", 127.0.0.0/8 or ::1. An empty host binds them all.
func IsLoopback(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil || host == "" {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
