package orchestrator

import (
	"context"
	"fmt"
	"maps"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing/synctest"
	"time"

	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/internal/health"
	"github.com/upstreamd/upstreamd/internal/wake"
)

// Fakes of the package's own small interfaces (containerAPI, dockerAPI,
// prober, pool, healthView); etcd as the registrar and the cluster use it
// (registry, registrations, etcdAPI, leases) is a storetest.Etcd and
// storetest.Leases. Docker's APIClient and etcd's KV are never faked:
// containers/ and store/ are tested against the real thing in
// integration/.

// advance moves the synctest bubble's fake clock on by d, then waits until
// every other goroutine in the bubble is blocked again. Inside a bubble the
// timer fires as soon as everything else is idle; no real time passes.
func advance(d time.Duration) {
	<-time.After(d)
	synctest.Wait()
}

// --- containerAPI / dockerAPI ---

type fakeContainer struct {
	c     containers.Container
	spec  containers.CreateSpec
	seq   int
	start int // Start calls
}

// fakeDocker is an in-memory engine: containers with IDs, states, labels and
// IPs. It records every mutating call.
type fakeDocker struct {
	mu      sync.Mutex
	byID    map[string]*fakeContainer
	seq     int
	streams int // event streams opened

	networks []string // "name/project" per EnsureNetwork call
	netCalls []time.Time
	netErrs  []error // returned by successive EnsureNetwork calls, then nil
	imageErr map[string]error

	creates []containers.CreateSpec
	starts  []string
	stops   []string
	graces  []time.Duration // the grace of each Stop call
	removes []string

	events chan containers.Event // what Events streams
	breaks chan error            // ends the open stream with this error
	// staleList overrides the state List reports (Inspect tells the truth),
	// as the engine's list view lags behind a container's exit.
	staleList map[string]string
	// ghosts are listed though gone: a listing taken just before a removal.
	ghosts map[string]containers.Container
	// files holds what CopyFiles wrote, by container ID and path; writes
	// records each write as "<id> <path>" in call order among creates.
	files  map[string]map[string][]byte
	writes []string
	// createDelay is how long each Create takes; inflight and maxInflight
	// count the Creates under way.
	createDelay           time.Duration
	inflight, maxInflight int
}

var (
	_ containerAPI = (*fakeDocker)(nil)
	_ dockerAPI    = (*fakeDocker)(nil)
)

func newFakeDocker() *fakeDocker {
	return &fakeDocker{
		byID:      map[string]*fakeContainer{},
		imageErr:  map[string]error{},
		events:    make(chan containers.Event),
		breaks:    make(chan error),
		staleList: map[string]string{},
		ghosts:    map[string]containers.Container{},
		files:     map[string]map[string][]byte{},
	}
}

var errFakeNotFound = fmt.Errorf("fake engine: %w", containers.ErrNotFound)

func cloneContainer(c containers.Container) containers.Container {
	c.IPs = maps.Clone(c.IPs)
	c.Labels = maps.Clone(c.Labels)
	return c
}

func (f *fakeDocker) List(_ context.Context, project string) ([]containers.Container, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []containers.Container
	for _, fc := range f.byID {
		if fc.c.Labels[containers.LabelProject] == project {
			c := cloneContainer(fc.c)
			if st, ok := f.staleList[c.ID]; ok {
				c.State = st
			}
			out = append(out, c)
		}
	}
	for _, g := range f.ghosts {
		out = append(out, cloneContainer(g))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func (f *fakeDocker) EnsureNetwork(_ context.Context, name, project string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.networks = append(f.networks, name+"/"+project)
	f.netCalls = append(f.netCalls, time.Now())
	if len(f.netErrs) > 0 {
		err := f.netErrs[0]
		f.netErrs = f.netErrs[1:]
		return "", err
	}
	return "net-" + name, nil
}

func (f *fakeDocker) EnsureImage(_ context.Context, ref string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.imageErr[ref]
}

// add puts a container on the engine, as Create does, and returns its ID.
func (f *fakeDocker) add(spec containers.CreateSpec, state string) string {
	f.seq++
	id := fmt.Sprintf("%012x", f.seq) + strings.Repeat("f", 52)
	labels := maps.Clone(spec.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	c := containers.Container{
		ID:       id,
		Name:     spec.Name,
		Image:    spec.Image,
		Service:  labels[containers.LabelService],
		Role:     containers.Role(labels[containers.LabelRole]),
		SpecHash: labels[containers.LabelSpec],
		State:    state,
		IPs:      map[string]string{},
		Created:  time.Date(2024, 1, 1, 0, 0, f.seq, 0, time.UTC),
		Labels:   labels,
	}
	fc := &fakeContainer{c: c, spec: spec, seq: f.seq}
	if state == containers.StateRunning {
		fc.assignIPs()
	}
	f.byID[id] = fc
	return id
}

// assignIPs gives the container an address on its network, as the engine
// does at start, and one on the default bridge that must never be probed.
func (fc *fakeContainer) assignIPs() {
	if fc.spec.Network != "" {
		fc.c.IPs[fc.spec.Network] = fmt.Sprintf("172.18.0.%d", fc.seq+1)
	}
	fc.c.IPs["bridge"] = fmt.Sprintf("172.17.0.%d", fc.seq+1)
}

func (f *fakeDocker) Create(_ context.Context, spec containers.CreateSpec) (containers.Container, error) {
	f.mu.Lock()
	delay := f.createDelay
	f.inflight++
	f.maxInflight = max(f.maxInflight, f.inflight)
	f.mu.Unlock()
	if delay > 0 {
		time.Sleep(delay) // the engine at work; fake time in a synctest bubble
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.inflight--
	for _, fc := range f.byID {
		if fc.c.Name == spec.Name {
			return containers.Container{}, fmt.Errorf("fake engine: name %s in use", spec.Name)
		}
	}
	f.creates = append(f.creates, spec)
	id := f.add(spec, containers.StateCreated)
	return cloneContainer(f.byID[id].c), nil
}

func (f *fakeDocker) Start(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.starts = append(f.starts, id)
	fc, ok := f.byID[id]
	if !ok {
		return errFakeNotFound
	}
	fc.start++
	fc.c.State = containers.StateRunning
	fc.assignIPs()
	return nil
}

func (f *fakeDocker) Stop(_ context.Context, id string, grace time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stops = append(f.stops, id)
	f.graces = append(f.graces, grace)
	fc, ok := f.byID[id]
	if !ok {
		return errFakeNotFound
	}
	fc.c.State = containers.StateExited
	return nil
}

func (f *fakeDocker) Remove(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.removes = append(f.removes, id)
	if _, ok := f.byID[id]; !ok {
		return errFakeNotFound
	}
	delete(f.byID, id)
	return nil
}

func (f *fakeDocker) Inspect(_ context.Context, id string) (containers.Container, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fc, ok := f.byID[id]
	if !ok {
		return containers.Container{}, errFakeNotFound
	}
	return cloneContainer(fc.c), nil
}

func (f *fakeDocker) ReadFile(_ context.Context, id, file string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.byID[id]; !ok {
		return nil, errFakeNotFound
	}
	b, ok := f.files[id][file]
	if !ok {
		return nil, fmt.Errorf("fake engine: no file %s: %w", file, containers.ErrNotFound)
	}
	return b, nil
}

func (f *fakeDocker) CopyFiles(_ context.Context, id, dir string, files []containers.File) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.byID[id]; !ok {
		return errFakeNotFound
	}
	if f.files[id] == nil {
		f.files[id] = map[string][]byte{}
	}
	for _, file := range files {
		p := path.Join(dir, file.Path)
		f.files[id][p] = file.Data
		f.writes = append(f.writes, id+" "+p)
	}
	return nil
}

// EngineID is the fake engine's ID.
func (f *fakeDocker) EngineID(context.Context) (string, error) { return "engine-1", nil }

// Events streams what the test sends on f.events until ctx ends, or the
// test sends an error on f.breaks.
func (f *fakeDocker) Events(ctx context.Context, _ string) (<-chan containers.Event, <-chan error) {
	f.mu.Lock()
	f.streams++
	f.mu.Unlock()
	out := make(chan containers.Event)
	errc := make(chan error, 1)
	go func() {
		defer close(out)
		for {
			select {
			case <-ctx.Done():
				errc <- ctx.Err()
				return
			case err := <-f.breaks:
				errc <- err
				return
			case ev := <-f.events:
				select {
				case out <- ev:
				case <-ctx.Done():
					errc <- ctx.Err()
					return
				}
			}
		}
	}()
	return out, errc
}

// passes returns the times of the EnsureNetwork calls: one per pass.
func (f *fakeDocker) passes() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.netCalls)
}

// resetCalls forgets the recorded calls.
func (f *fakeDocker) resetCalls() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.networks, f.creates, f.starts, f.stops, f.graces, f.removes = nil, nil, nil, nil, nil, nil
}

// dockerCalls is a copy of the mutating calls recorded since resetCalls.
type dockerCalls struct {
	creates                []containers.CreateSpec
	starts, stops, removes []string
	graces                 []time.Duration // per Stop call
}

// recorded returns the mutating calls made since resetCalls; safe while
// drains run.
func (f *fakeDocker) recorded() dockerCalls {
	f.mu.Lock()
	defer f.mu.Unlock()
	return dockerCalls{
		creates: slices.Clone(f.creates),
		starts:  slices.Clone(f.starts), stops: slices.Clone(f.stops), removes: slices.Clone(f.removes),
		graces: slices.Clone(f.graces),
	}
}

// calls returns how many mutating calls were made since resetCalls.
func (f *fakeDocker) calls() (creates, starts, stops, removes int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.creates), len(f.starts), len(f.stops), len(f.removes)
}

// withRole returns the containers of a role (and service, when not
// empty), oldest first.
func (f *fakeDocker) withRole(role containers.Role, service string) []containers.Container {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []containers.Container
	for _, fc := range f.byID {
		if fc.c.Role == role && (service == "" || fc.c.Service == service) {
			out = append(out, cloneContainer(fc.c))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out
}

// specOf returns the CreateSpec a container was created from.
func (f *fakeDocker) specOf(id string) containers.CreateSpec {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fc, ok := f.byID[id]; ok {
		return fc.spec
	}
	return containers.CreateSpec{}
}

// startsOf returns how often a container was started.
func (f *fakeDocker) startsOf(id string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fc, ok := f.byID[id]; ok {
		return fc.start
	}
	return 0
}

// edit changes a container in place, as something outside the daemon would.
func (f *fakeDocker) edit(id string, change func(c *containers.Container)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	change(&f.byID[id].c)
}

// drop deletes a container behind the daemon's back (docker rm).
func (f *fakeDocker) drop(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.byID, id)
}

// --- prober ---

// fakeProber records what the Reconciler reports; State answers what the
// test set.
type fakeProber struct {
	mu      sync.Mutex
	syncs   [][]Target
	dead    []string // dropped because they died
	retired []string // dropped to be drained
	states  map[string]health.State
	added   []string // IDs Add was called with
}

var _ probes = (*fakeProber)(nil)

func newFakeProber() *fakeProber {
	return &fakeProber{states: map[string]health.State{}}
}

func (p *fakeProber) Sync(targets []Target) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.syncs = append(p.syncs, slices.Clone(targets))
}

func (p *fakeProber) Add(t Target) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.added = append(p.added, t.ID)
}

func (p *fakeProber) Drop(id, why string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case strings.Contains(why, "died"):
		p.dead = append(p.dead, id)
	case strings.Contains(why, "retired"):
		p.retired = append(p.retired, id)
	default:
		panic("fakeProber: Drop for an unknown reason: " + why)
	}
}

func (p *fakeProber) State(id string) (health.State, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.states[id]
	return s, ok
}

// setState sets the state State reports: "healthy", "pending" or
// "unhealthy".
func (p *fakeProber) setState(id, s string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !slices.Contains(health.States(), health.State(s)) {
		panic("fakeProber: no state " + s)
	}
	p.states[id] = health.State(s)
}

func (p *fakeProber) lastSync() []Target {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.syncs) == 0 {
		return nil
	}
	return p.syncs[len(p.syncs)-1]
}

func (p *fakeProber) deadIDs() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.dead)
}

func (p *fakeProber) retiredIDs() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.retired)
}

func (p *fakeProber) resetCalls() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.syncs, p.dead, p.retired = nil, nil, nil
}

// --- pool ---

// poolWait is one WaitServes call.
type poolWait struct {
	service, addr string
	want          bool
}

// fakePool is the renderer as the Reconciler asks it: which addresses
// nginx serves, per service, as the test sets them. WaitServes blocks
// until the test sets the address to the wanted state, or ctx ends.
// Create it inside a synctest bubble when the test waits on drains, so a
// blocked WaitServes counts as durably blocked.
type fakePool struct {
	changed wake.Fanout // after every set

	mu     sync.Mutex
	served map[poolWait]bool // by service and addr; want unused
	waits  []poolWait        // every WaitServes call
	active map[poolWait]int  // WaitServes calls in progress
	known  chan struct{}     // nil: known (closed on first use)
}

var _ pool = (*fakePool)(nil)

func newFakePool() *fakePool {
	return &fakePool{served: map[poolWait]bool{}, active: map[poolWait]int{}}
}

// Known is closed: the fake pool's answers are known from the start,
// unless unknown is set before the first use.
func (p *fakePool) Known() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.known == nil {
		p.known = make(chan struct{})
		close(p.known)
	}
	return p.known
}

// learn makes a pool created unknown known.
func (p *fakePool) learn() {
	p.mu.Lock()
	defer p.mu.Unlock()
	close(p.known)
}

func (p *fakePool) Subscribe() <-chan struct{} { return p.changed.Subscribe() }

func (p *fakePool) Serves(service, addr string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.served[poolWait{service: service, addr: addr}]
}

func (p *fakePool) WaitServes(ctx context.Context, service, addr string, want bool) error {
	w := poolWait{service: service, addr: addr, want: want}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	changed := p.changed.SubscribeUntil(wctx)
	p.mu.Lock()
	p.waits = append(p.waits, w)
	p.active[w]++
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.active[w]--; p.active[w] == 0 {
			delete(p.active, w)
		}
	}()
	for p.Serves(service, addr) != want {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
	return nil
}

// set makes nginx serve addr, or stop serving it, and wakes the waiters.
func (p *fakePool) set(service, addr string, served bool) {
	p.mu.Lock()
	p.served[poolWait{service: service, addr: addr}] = served
	p.mu.Unlock()
	p.changed.Wake()
}

// waiting returns the WaitServes calls in progress, by address.
func (p *fakePool) waiting() []poolWait {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := slices.Collect(maps.Keys(p.active))
	sort.Slice(out, func(i, j int) bool { return out[i].addr < out[j].addr })
	return out
}

// allWaits returns every WaitServes call made.
func (p *fakePool) allWaits() []poolWait {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.waits)
}

// --- healthView ---

type fakeHealthView struct {
	mu               sync.Mutex
	healthy, pending []Target
	changed          chan struct{}
}

var _ healthView = (*fakeHealthView)(nil)

func (h *fakeHealthView) Subscribe() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.changed == nil {
		h.changed = make(chan struct{}, 1)
	}
	return h.changed
}

func (h *fakeHealthView) Snapshot() (healthy, pending []Target) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.healthy), slices.Clone(h.pending)
}

func (h *fakeHealthView) set(healthy, pending []Target) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.healthy, h.pending = healthy, pending
}
