package render

import (
	"context"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/internal/wake"
	"github.com/upstreamd/upstreamd/nginx"
	"github.com/upstreamd/upstreamd/store"
)

// fakeSource is a store.Cache stand-in: a settable snapshot and a
// subscription with the cache's collapse-on-full semantics.
type fakeSource struct {
	mu      sync.Mutex
	snap    store.Snapshot
	ok      bool
	changed chan struct{}
}

var _ source = (*fakeSource)(nil)

func newFakeSource() *fakeSource { return &fakeSource{changed: make(chan struct{}, 1)} }

func (s *fakeSource) Subscribe() <-chan struct{} { return s.changed }

func (s *fakeSource) Snapshot() (store.Snapshot, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snap, s.ok
}

// notify signals a change without touching the snapshot.
func (s *fakeSource) notify() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// set installs a snapshot and signals the change.
func (s *fakeSource) set(snap store.Snapshot) {
	s.mu.Lock()
	s.snap, s.ok = snap, true
	s.mu.Unlock()
	s.notify()
}

// fakeHost is the orchestrator's side: readiness, the proxy (up or not,
// and restarted in place on demand) and the healthy counts.
type fakeHost struct {
	ready   <-chan struct{}
	healthy func(service string) int // nil: none healthy
	changed wake.Fanout

	mu    sync.Mutex
	proxy nginx.Proxy
	up    bool
	calls int // of Proxy
}

var _ Host = (*fakeHost)(nil)

func (h *fakeHost) Ready() <-chan struct{} { return h.ready }

func (h *fakeHost) Proxy() nginx.Proxy {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls++
	if !h.up {
		return nginx.Proxy{}
	}
	return h.proxy
}

func (h *fakeHost) SubscribeProxy() <-chan struct{} { return h.changed.Subscribe() }

func (h *fakeHost) HealthyBackends(service string) int {
	if h.healthy == nil {
		return 0
	}
	return h.healthy(service)
}

// update changes the proxy under the lock and announces it.
func (h *fakeHost) update(f func()) {
	h.mu.Lock()
	f()
	h.mu.Unlock()
	h.changed.Wake()
}

// setProxy makes the proxy run, or not.
func (h *fakeHost) setProxy(up bool) { h.update(func() { h.up = up }) }

// restart restarts nginx in place: same container, new Generation.
func (h *fakeHost) restart() { h.update(func() { h.proxy.Generation++ }) }

func (h *fakeHost) proxyCalls() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.calls
}

// eventLog records the calls made to the fakes in one sequence. A nil
// *eventLog records nothing.
type eventLog struct {
	mu     sync.Mutex
	events []string
}

func (l *eventLog) add(format string, args ...any) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, fmt.Sprintf(format, args...))
}

// take returns the events recorded so far and forgets them.
func (l *eventLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.events
	l.events = nil
	return e
}

type delivery struct {
	at      time.Time // on the bubble's clock
	id      string
	cfg     string
	changed bool
	err     error
}

// fakeNginx is a proxy container: its live config file, the nginx running
// in it and its status server. Deliver makes a config live (changed=false
// when the bytes equal the live ones); fail, when set, decides the error of
// each Deliver (n counts from 0). After a new config goes live, nginx keeps
// running the previous one for lag polls of its status server (a reload in
// progress), or for ever while stuck. Its pools API exists while the config
// it runs has one, and wants the token "token-" plus the container ID
// (token, when set, is the one the daemon sends instead). A status server
// needs statusPort.
type fakeNginx struct {
	log *eventLog
	// onPush and onPoll, when set, are called at the start of each push and
	// status poll, without any lock held.
	onPush, onPoll func()

	mu             sync.Mutex
	statusPort     int
	confirmTimeout time.Duration // zero: nginx.DefaultConfirmTimeout
	live           string
	calls          []delivery
	fail           func(n int, cfg string) error
	token          string
	sessions       []string // container IDs of the Sessions started
	lag            int
	stuck          bool
	running        string   // the config nginx runs
	loading        string   // the live config nginx is reloading to …
	polls          int      // … and the polls answered since it went live
	pushed         []string // the bodies the pools API accepted
	public         []string // the paths of the public files written

	// files are those in the proxy's volume, by path; prunes the calls
	// of Prune.
	files  map[string]bool
	prunes []prune
}

// prune is one Prune: what nginx ran then, and the files the live config
// names that were missing after it.
type prune struct {
	running, live string
	missing       []string
}

// filesIn returns the files of the proxy directly in dir, sorted.
func (n *fakeNginx) filesIn(dir string) []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for f := range n.files {
		if path.Dir(f) == dir {
			out = append(out, f)
		}
	}
	slices.Sort(out)
	return out
}

// newFakeNginx returns a fake proxy recording into a new event log.
func newFakeNginx() (*fakeNginx, *eventLog) {
	log := &eventLog{}
	return &fakeNginx{log: log}, log
}

// session starts a Session with p (the Controller's Sessions).
func (n *fakeNginx) session(p nginx.Proxy) Session {
	n.mu.Lock()
	n.sessions = append(n.sessions, p.ID)
	n.mu.Unlock()
	n.log.add("Session %s", p.ID)
	return &fakeSession{n: n, p: p}
}

func (n *fakeNginx) set(f func(n *fakeNginx)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	f(n)
}

func (n *fakeNginx) liveConfig() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.live
}

func (n *fakeNginx) started() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.sessions...)
}

func (n *fakeNginx) snapshot() (live string, calls []delivery) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.live, append([]delivery(nil), n.calls...)
}

func (n *fakeNginx) pushes() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.pushed...)
}

// fakeSession is a Session with a fakeNginx.
type fakeSession struct {
	n *fakeNginx
	p nginx.Proxy
}

var _ Session = (*fakeSession)(nil)

func (s *fakeSession) addr() string { return fmt.Sprintf("%s:%d", s.p.IP, s.n.statusPort) }

func (s *fakeSession) HasStatus() bool { return s.n.statusPort > 0 && s.p.IP != "" }

func (s *fakeSession) Admin() string { return "" }

func (s *fakeSession) WriteFiles(_ context.Context, files map[string][]byte) error {
	s.n.mu.Lock()
	defer s.n.mu.Unlock()
	s.n.add(files)
	return nil
}

func (s *fakeSession) WritePublicFiles(_ context.Context, files map[string][]byte) error {
	s.n.mu.Lock()
	defer s.n.mu.Unlock()
	for p := range files {
		if !slices.Contains(s.n.public, p) {
			s.n.public = append(s.n.public, p)
		}
	}
	s.n.add(files)
	return nil
}

// add records files as in the volume; n.mu is held.
func (n *fakeNginx) add(files map[string][]byte) {
	if n.files == nil {
		n.files = map[string]bool{}
	}
	for p := range files {
		n.files[p] = true
	}
}

// tlsFileRE finds the certificate files a config names.
var tlsFileRE = regexp.MustCompile(`/[^ ;]*/` + TLSDir + `/[0-9a-f]+\.(?:crt|key)`)

// Prune removes the files directly in dirs that keep does not name, as
// nginx.Session.Prune does, and records what nginx ran then and which
// files the live config names that are gone.
func (s *fakeSession) Prune(_ context.Context, dirs []string, keep map[string]bool) ([]string, error) {
	n := s.n
	n.mu.Lock()
	defer n.mu.Unlock()
	var removed []string
	for f := range n.files {
		if slices.Contains(dirs, path.Dir(f)) && !keep[f] {
			delete(n.files, f)
			removed = append(removed, f)
		}
	}
	slices.Sort(removed)
	pr := prune{running: n.running, live: n.live}
	for _, f := range tlsFileRE.FindAllString(n.live, -1) {
		if !n.files[f] {
			pr.missing = append(pr.missing, f)
		}
	}
	n.prunes = append(n.prunes, pr)
	return removed, nil
}

func (s *fakeSession) Deliver(_ context.Context, cfg []byte) (bool, error) {
	n := s.n
	n.mu.Lock()
	defer n.mu.Unlock()
	var err error
	if n.fail != nil {
		err = n.fail(len(n.calls), string(cfg))
	}
	if err != nil {
		n.calls = append(n.calls, delivery{at: time.Now(), id: s.p.ID, cfg: string(cfg), err: err})
		n.log.add("Deliver %s: %v", s.p.ID, err)
		return false, err
	}
	changed := n.live != string(cfg)
	n.live = string(cfg)
	n.calls = append(n.calls, delivery{at: time.Now(), id: s.p.ID, cfg: string(cfg), changed: changed})
	n.log.add("Deliver %s changed=%v", s.p.ID, changed)
	return changed, nil
}

// statusHashRE finds the hash in the status server that Finish appends.
var statusHashRE = regexp.MustCompile(`return 200 "config ([0-9a-f]+)\\n";`)

// configHash is one poll of the status server.
func (s *fakeSession) configHash() (string, error) {
	n := s.n
	if n.onPoll != nil {
		n.onPoll()
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.live != n.running {
		if n.live != n.loading {
			n.loading, n.polls = n.live, 0
		}
		n.polls++
		if !n.stuck && n.polls > n.lag {
			n.running = n.live
		}
	}
	m := statusHashRE.FindStringSubmatch(n.running)
	if m == nil {
		n.log.add("ConfigHash %s: no status server", s.addr())
		return "", fmt.Errorf("read config hash from %s: %w: connection refused", s.addr(), nginx.ErrNoStatusServer)
	}
	n.log.add("ConfigHash %s = %s", s.addr(), m[1])
	return m[1], nil
}

// WaitConfig polls like nginx.Session.WaitConfig: at once, then every 5 ms.
func (s *fakeSession) WaitConfig(ctx context.Context, hash string) (time.Duration, error) {
	timeout := s.n.confirmTimeout
	if timeout == 0 {
		timeout = nginx.DefaultConfirmTimeout
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		if got, err := s.configHash(); err == nil && got == hash {
			return time.Since(start), nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("nginx did not run config %s within %s", hash, timeout)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (s *fakeSession) PushPools(_ context.Context, body []byte) error {
	n := s.n
	if n.onPush != nil {
		n.onPush()
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	version, _, _ := strings.Cut(string(body), "\n")
	token := n.token
	if token == "" {
		token = "token-" + s.p.ID
	}
	switch {
	case !statusHashRE.MatchString(n.running):
		n.log.add("PushPools %s v%s: no status server", s.addr(), version)
		return fmt.Errorf("push pools to %s: %w: connection refused", s.addr(), nginx.ErrNoStatusServer)
	case !strings.Contains(n.running, "location = /upstreamd/pools"):
		n.log.add("PushPools %s v%s: 404", s.addr(), version)
		return fmt.Errorf("push pools to %s: %w: 404", s.addr(), nginx.ErrNoStatusServer)
	case token != "token-"+testProxyID:
		n.log.add("PushPools %s v%s: 403", s.addr(), version)
		return fmt.Errorf("push pools to %s: status 403", s.addr())
	}
	n.pushed = append(n.pushed, string(body))
	n.log.add("PushPools %s v%s", s.addr(), version)
	return nil
}

// The proxy the test controllers find, and its status server.
const (
	testProxyID    = "proxy-1"
	testProxyIP    = "172.18.0.2"
	testStatusPort = 9145
	testStatusAddr = "172.18.0.2:9145"
)

// harness runs a Controller inside the current synctest bubble.
type harness struct {
	src   *fakeSource
	host  *fakeHost
	nginx *fakeNginx
	ctrl  *Controller

	mu       sync.Mutex
	outcomes []Outcome
}

// observed returns the outcomes of the passes that got past waiting for a
// snapshot and a proxy.
func (h *harness) observed() []Outcome {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []Outcome
	for _, o := range h.outcomes {
		if o.Result != ResultWaiting {
			out = append(out, o)
		}
	}
	return out
}

// waited counts the passes that found no snapshot or no proxy.
func (h *harness) waited() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, o := range h.outcomes {
		if o.Result == ResultWaiting {
			n++
		}
	}
	return n
}

// start starts a Controller with tmpl in front of n; it is stopped, and its
// return value checked, when the test ends. Call it inside synctest.Test.
func start(t *testing.T, tmpl *Template, n *fakeNginx) *harness {
	t.Helper()
	return startWith(t, harnessConfig{tmpl: tmpl, nginx: n})
}

// harnessConfig is what startWith varies; the rest is as in start.
type harnessConfig struct {
	tmpl        *Template
	nginx       *fakeNginx
	dynamic     bool
	statusPort  int
	services    []string        // the configured services; nil: apache alone
	certs       Certificates    // nil: none
	tls         *TLS            // the configured TLS (certificates from files)
	acme        string          // View.ACME
	configDir   string          // ControllerConfig.ConfigDir
	ready       <-chan struct{} // nil: ready at once
	healthyHere func(service string) int
}

// startWith is start with a status server, dynamic pools, more services,
// a Ready channel or a HealthyHere count. Call it inside synctest.Test.
func startWith(t *testing.T, hc harnessConfig) *harness {
	t.Helper()
	ready := hc.ready
	if ready == nil {
		r := make(chan struct{})
		close(r)
		ready = r
	}
	hc.nginx.statusPort = hc.statusPort
	h := &harness{src: newFakeSource(), nginx: hc.nginx, host: &fakeHost{
		ready: ready, healthy: hc.healthyHere, up: true,
		proxy: nginx.Proxy{ID: testProxyID, IP: testProxyIP, Generation: 1},
	}}
	services := hc.services
	if services == nil {
		services = []string{"apache"}
	}
	h.ctrl = NewController(ControllerConfig{
		Template: hc.tmpl,
		Source:   h.src,
		Host:     h.host,
		Sessions: hc.nginx.session,
		View: ViewInput{Projects: anyProject, Services: services, Default: "apache", Listen: 80,
			Dynamic: hc.dynamic, StatusPort: hc.statusPort, TLS: hc.tls, ACME: hc.acme},
		Certs:     hc.certs,
		ConfigDir: hc.configDir,
		Logger:    zerolog.Nop(),
		Observe: func(o Outcome) {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.outcomes = append(h.outcomes, o)
		},
	})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- h.ctrl.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Start returned %v after cancellation; want nil", err)
		}
	})
	return h
}

// advance lets d pass on the synctest bubble's fake clock and then waits
// for the bubble's goroutines to settle. The timer fires as soon as every
// goroutine in the bubble is blocked, so no real time passes; only call it
// inside synctest.Test.
func advance(d time.Duration) {
	<-time.After(d)
	synctest.Wait()
}

// anyProject takes every registration, whichever project wrote it.
var anyProject = []string{store.AnyProject}
