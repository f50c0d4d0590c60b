package render

import (
	"context"
	"fmt"
	"sort"
	"sync"

	"github.com/upstreamd/upstreamd/internal/wake"
)

// Served is what nginx is known to serve: per service, the addresses of the
// backends in the pools it runs. The Controller sets it once a push went
// through or a reload was confirmed; drains wait on it before stopping a
// backend, and rolling updates before retiring an old one. Until then
// nothing is known (Known is open): "unknown" is never "not served", so a
// drain waits for Known before it waits for the backend to leave.
type Served struct {
	changed wake.Fanout // after each change

	mu    sync.Mutex
	set   map[string]map[string]bool // service → addresses
	known chan struct{}              // closed at the first update
}

// NewServed returns a Served that knows nothing yet.
func NewServed() *Served {
	return &Served{set: map[string]map[string]bool{}, known: make(chan struct{})}
}

// Known is closed once nginx is known to serve something (possibly empty
// pools): from then on, an address not served is really not served.
func (s *Served) Known() <-chan struct{} { return s.known }

// Serves reports whether nginx is known to send traffic for service to addr.
func (s *Served) Serves(service, addr string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.set[service][addr]
}

// Subscribe returns a channel that receives after each change of what is
// served (several may collapse into one).
func (s *Served) Subscribe() <-chan struct{} { return s.changed.Subscribe() }

// WaitServes waits until Serves(service, addr) == want, or ctx ends.
func (s *Served) WaitServes(ctx context.Context, service, addr string, want bool) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	changed := s.changed.SubscribeUntil(wctx)
	for s.Serves(service, addr) != want {
		select {
		case <-ctx.Done():
			verb := "stop serving"
			if want {
				verb = "serve"
			}
			return fmt.Errorf("wait for nginx to %s %s of %s: %w", verb, addr, service, ctx.Err())
		case <-changed:
		}
	}
	return nil
}

// Set returns what nginx serves, service → addresses (sorted); nil while
// nothing is known.
func (s *Served) Set() map[string][]string {
	select {
	case <-s.known:
	default:
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string][]string, len(s.set))
	for svc, addrs := range s.set {
		list := make([]string, 0, len(addrs))
		for a := range addrs {
			list = append(list, a)
		}
		sort.Strings(list)
		out[svc] = list
	}
	return out
}

// Mirror makes s say what another Served's Set said: what the nginx of
// another node serves, as that node published it.
func (s *Served) Mirror(set map[string][]string) {
	m := make(map[string]map[string]bool, len(set))
	for svc, addrs := range set {
		m[svc] = make(map[string]bool, len(addrs))
		for _, a := range addrs {
			m[svc][a] = true
		}
	}
	s.replace(m)
}

// update records that nginx serves the pools of v.
func (s *Served) update(v View) {
	set := make(map[string]map[string]bool, len(v.Services))
	for _, svc := range v.Services {
		if !svc.Configured { // nothing routes to it, nothing is pushed for it
			continue
		}
		addrs := make(map[string]bool, len(svc.Backends))
		for _, b := range svc.Backends {
			addrs[b.Addr] = true
		}
		set[svc.Name] = addrs
	}
	s.replace(set)
}

// replace sets what is served and tells the waiters.
func (s *Served) replace(set map[string]map[string]bool) {
	s.mu.Lock()
	s.set = set
	select {
	case <-s.known:
	default:
		close(s.known)
	}
	s.mu.Unlock()
	s.changed.Wake()
}
