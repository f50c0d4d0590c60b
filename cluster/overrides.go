package cluster

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/store"
)

// MaxReplicas bounds replicas in the spec and in overrides.
const MaxReplicas = 1000

// ParseReplicas validates a replica count from etcd or the command line.
func ParseReplicas(s string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("replicas %q is not a number", s)
	}
	if n < 1 || n > MaxReplicas {
		return 0, fmt.Errorf("replicas %d out of range 1-%d", n, MaxReplicas)
	}
	return n, nil
}

// replicas is svc's replica count in the cluster: its override when there
// is one, else the spec's.
func (svc Service) replicas(ov map[string]int) int {
	if n, set := ov[svc.Name]; set {
		return n
	}
	return svc.Replicas
}

// Overrides is the one copy of the replica overrides in etcd, kept by a
// store.Watch of store.OverridesPrefix. Passes read it from memory, so an
// etcd outage never slows them down.
type Overrides struct {
	project  string
	prefix   string // store.OverridesPrefix(project)
	services []Service
	log      zerolog.Logger
	wake     func() // after every change

	mu     sync.Mutex
	raw    map[string]string // key → value, as in etcd
	counts map[string]int    // service → valid override
	loaded chan struct{}     // closed by the first load
}

func newOverrides(project string, services []Service, wake func(), log zerolog.Logger) *Overrides {
	return &Overrides{project: project, prefix: store.OverridesPrefix(project), services: services, log: log, wake: wake,
		raw: map[string]string{}, counts: map[string]int{}, loaded: make(chan struct{})}
}

// Loaded is closed once the overrides were read from etcd.
func (o *Overrides) Loaded() <-chan struct{} { return o.loaded }

// Counts returns the replica overrides by service, and false while they
// were never read.
func (o *Overrides) Counts() (map[string]int, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	select {
	case <-o.loaded:
		return o.counts, true
	default:
		return nil, false
	}
}

// apply brings the copy to an update from store.Watch; invalid overrides
// are logged (once per write) and skipped.
func (o *Overrides) apply(u store.Update) {
	o.mu.Lock()
	if u.Reset {
		o.raw = map[string]string{}
	}
	for _, k := range u.Deleted {
		delete(o.raw, k)
	}
	for _, kv := range u.KVs {
		if o.valid(kv) {
			o.raw[kv.Key] = string(kv.Value)
		} else {
			delete(o.raw, kv.Key)
		}
	}
	counts := make(map[string]int, len(o.raw))
	for k, v := range o.raw {
		n, _ := ParseReplicas(v) // valid
		counts[strings.TrimPrefix(k, o.prefix)] = n
	}
	o.said(counts)
	o.counts = counts
	select {
	case <-o.loaded:
	default:
		close(o.loaded)
	}
	o.mu.Unlock()
	o.wake()
}

func (o *Overrides) valid(kv store.KV) bool {
	if _, err := ParseReplicas(string(kv.Value)); err != nil {
		o.log.Warn().Str("key", kv.Key).Err(err).Msg("ignoring replica override")
		return false
	}
	name := strings.TrimPrefix(kv.Key, o.prefix)
	if !slices.ContainsFunc(o.services, func(s Service) bool { return s.Name == name }) {
		o.log.Warn().Str("key", kv.Key).Msg("ignoring replica override of a service not in the spec")
		return false
	}
	return true
}

// said logs each override that appeared, changed or went away since the
// last copy (the first load included: an override in force at start-up is
// in the start-up log). The caller holds mu.
func (o *Overrides) said(counts map[string]int) {
	for _, svc := range o.services {
		n, ok := counts[svc.Name]
		old, had := o.counts[svc.Name]
		switch {
		case ok && (!had || n != old):
			o.log.Info().Str("service", svc.Name).Int("replicas", n).Int("spec_replicas", svc.Replicas).Str("key", store.OverrideKey(o.project, svc.Name)).
				Msgf("replica override in force: %s runs %d replicas, not the spec's %d (`upstreamd scale %s --reset` removes it)", svc.Name, n, svc.Replicas, svc.Name)
		case !ok && had:
			o.log.Info().Str("service", svc.Name).Int("replicas", svc.Replicas).Msg("replica override removed; the spec's count applies")
		}
	}
}
