package certs

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/upstreamd/upstreamd/internal/loop"
	"github.com/upstreamd/upstreamd/internal/wake"
	"github.com/upstreamd/upstreamd/store"
)

// watcher is etcd as the Cache reads it (a *store.Client).
type watcher interface {
	Watch(ctx context.Context, prefix string, handle func(store.Update)) error
}

var _ watcher = (*store.Client)(nil)

// Cache keeps a checked copy of a project's certificates, HTTP-01 answers
// (and their acknowledgements) and failed orders in etcd, through one
// watch. A value that is not a certificate,
// or a challenge that is not an ACME token, is left out and logged once
// per write. A certificate counts only while it is valid (ValidAt): one
// not valid yet is kept and counts from its NotBefore, one that expires
// stops counting at its NotAfter, and either change wakes the
// subscribers as a write would.
type Cache struct {
	cli     watcher
	project string
	log     zerolog.Logger
	now     func() time.Time

	changed wake.Fanout

	mu         sync.Mutex
	certs      map[string]Cert            // by etcd key, valid now or not (yet)
	valid      map[string]bool            // by etcd key: valid at the last look, for the log
	challenges map[string]Challenge       // by token
	acks       map[string]map[string]bool // by token: the nodes that serve its answer
	failures   map[string]Failure
	rev        int64
	loaded     bool
}

// NewCache returns the cache of project's certificates; Start fills it.
func NewCache(cli *store.Client, project string, log zerolog.Logger) *Cache {
	k := &Cache{cli: cli, project: project, log: log, now: time.Now}
	k.reset()
	return k
}

// reset forgets everything; k.mu is held (or k is new).
func (k *Cache) reset() {
	k.certs, k.valid, k.failures = map[string]Cert{}, map[string]bool{}, map[string]Failure{}
	k.challenges, k.acks = map[string]Challenge{}, map[string]map[string]bool{}
}

// Start loads and watches until ctx ends, and wakes the subscribers when
// a certificate becomes valid or expires. It returns nil on cancellation.
func (k *Cache) Start(ctx context.Context) error {
	grp, ctx := errgroup.WithContext(ctx)
	grp.Go(func() error { return k.cli.Watch(ctx, store.CertsPrefix(k.project), k.apply) })
	grp.Go(func() error { k.recheck(ctx); return nil })
	return grp.Wait()
}

// recheckAtLeast bounds the wait for the next NotBefore or NotAfter: a
// clock that jumped is seen within it.
const recheckAtLeast = time.Hour

// recheck looks at the certificates again whenever they change, and when
// one's validity changes with the clock, until ctx ends.
func (k *Cache) recheck(ctx context.Context) {
	l := loop.New(loop.Config{Triggers: []<-chan struct{}{k.changed.Subscribe()}, Log: k.log})
	_ = l.Run(ctx, func(context.Context) (loop.Result, error) { // nil: no pass fails
		next, moved := k.settle()
		if moved {
			k.changed.Wake()
		}
		wait := recheckAtLeast
		if !next.IsZero() {
			wait = min(wait, next.Sub(k.now()))
		}
		if wait <= 0 {
			return loop.Result{Again: true}, nil
		}
		return loop.Result{After: wait}, nil
	})
}

// settle notes which certificates are valid now, saying so for each that
// became valid or expired since the last look (an expired one is dropped:
// it never becomes valid again), and returns when the next changes.
func (k *Cache) settle() (next time.Time, moved bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := k.now()
	for key, c := range k.certs {
		err := ValidAt(c.Leaf, now)
		if valid := err == nil; valid != k.valid[key] {
			moved = true
			k.valid[key] = valid
			if valid {
				k.log.Info().Str("key", key).Strs("names", c.Names()).Msg("the certificate in etcd is valid now: serving it")
			} else {
				k.log.Warn().Str("key", key).Strs("names", c.Names()).Err(err).Msg("the certificate in etcd has expired: no longer serving it")
			}
		}
		at, ok := validity(c.Leaf, now)
		if !ok {
			delete(k.certs, key)
			delete(k.valid, key)
			continue
		}
		if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	return next, moved
}

// Subscribe returns a channel that receives after each change (several
// may collapse into one).
func (k *Cache) Subscribe() <-chan struct{} { return k.changed.Subscribe() }

// Loaded reports whether the first load went through, and the revision
// the copy reflects.
func (k *Cache) Loaded() (rev int64, ok bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.rev, k.loaded
}

// Certs returns the certificates valid now, by name.
func (k *Cache) Certs() []Cert {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := k.now()
	out := make([]Cert, 0, len(k.certs))
	for _, c := range k.certs {
		if ValidAt(c.Leaf, now) == nil {
			out = append(out, c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Get returns the certificate kept under name, if it is valid now.
func (k *Cache) Get(name string) (Cert, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	c, ok := k.certs[store.CertHostKey(k.project, name)]
	if !ok || ValidAt(c.Leaf, k.now()) != nil {
		return Cert{}, false
	}
	return c, true
}

// Challenges returns the HTTP-01 answers being validated, by token.
func (k *Cache) Challenges() map[string]string {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make(map[string]string, len(k.challenges))
	for t, c := range k.challenges {
		out[t] = c.Auth
	}
	return out
}

// Challenge is an HTTP-01 answer being validated, as kept in etcd.
type Challenge struct {
	Token, Auth string
	// Lease is the one it lives under (the orderer's ACME lock's), which
	// its acknowledgements are put under too.
	Lease int64
}

// Pending returns the HTTP-01 answers being validated, by token.
func (k *Cache) Pending() []Challenge {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := slices.Collect(maps.Values(k.challenges))
	slices.SortFunc(out, func(a, b Challenge) int { return strings.Compare(a.Token, b.Token) })
	return out
}

// Acked returns the nodes that acknowledged the answer of token.
func (k *Cache) Acked(token string) []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Sorted(maps.Keys(k.acks[token]))
}

// Failures returns the hosts whose last order failed, as etcd holds
// them for the whole project.
func (k *Cache) Failures() map[string]Failure {
	k.mu.Lock()
	defer k.mu.Unlock()
	return maps.Clone(k.failures)
}

// apply brings the copy to an update of the watch.
func (k *Cache) apply(u store.Update) {
	k.mu.Lock()
	if u.Reset {
		k.reset()
	}
	for _, key := range u.Deleted {
		k.drop(key)
	}
	for _, kv := range u.KVs {
		k.put(kv)
	}
	k.rev, k.loaded = u.Revision, true
	k.mu.Unlock()
	k.changed.Wake()
}

// tokenRE is what an ACME token and key authorization are made of
// (base64url, RFC 8555 section 8.1 and 8.3): safe as a file name and body.
var tokenRE = regexp.MustCompile(`^[A-Za-z0-9_-]{16,256}$`)
var keyAuthRE = regexp.MustCompile(`^[A-Za-z0-9_-]{16,256}\.[A-Za-z0-9_-]{16,256}$`)

// drop forgets a key; k.mu is held.
func (k *Cache) drop(key string) {
	delete(k.certs, key)
	delete(k.valid, key)
	if token, ok := strings.CutPrefix(key, store.ACMEChallengesPrefix(k.project)); ok {
		delete(k.challenges, token)
	}
	if rest, ok := strings.CutPrefix(key, store.ACMEAcksPrefix(k.project)); ok {
		token, node, _ := strings.Cut(rest, "/")
		if delete(k.acks[token], node); len(k.acks[token]) == 0 {
			delete(k.acks, token)
		}
	}
	if host, ok := strings.CutPrefix(key, store.ACMEFailuresPrefix(k.project)); ok {
		delete(k.failures, host)
	}
}

// put takes one written key; k.mu is held.
func (k *Cache) put(kv store.KV) {
	k.drop(kv.Key)
	hosts, challenges := store.CertHostsPrefix(k.project), store.ACMEChallengesPrefix(k.project)
	switch {
	case strings.HasPrefix(kv.Key, hosts):
		c, err := Read(kv.Key, kv.Value)
		if err == nil {
			err = ValidAt(c.Leaf, k.now())
		}
		switch {
		case errors.Is(err, ErrNotYetValid):
			k.log.Warn().Str("key", kv.Key).Err(err).Msg("the certificate in etcd is not valid yet: serving it from then")
		case err != nil:
			k.log.Warn().Str("key", kv.Key).Err(err).Msg("skipping the certificate in etcd: it cannot be served")
			return
		}
		k.certs[kv.Key], k.valid[kv.Key] = c, err == nil
	case strings.HasPrefix(kv.Key, challenges):
		token, auth := strings.TrimPrefix(kv.Key, challenges), string(kv.Value)
		if err := checkChallenge(token, auth); err != nil {
			k.log.Warn().Str("key", kv.Key).Err(err).Msg("skipping the ACME challenge in etcd")
			return
		}
		k.challenges[token] = Challenge{Token: token, Auth: auth, Lease: kv.Lease}
	case strings.HasPrefix(kv.Key, store.ACMEAcksPrefix(k.project)):
		token, node, _ := strings.Cut(strings.TrimPrefix(kv.Key, store.ACMEAcksPrefix(k.project)), "/")
		if !tokenRE.MatchString(token) || store.ValidName(node) != nil {
			k.log.Warn().Str("key", kv.Key).Msg("skipping the ACME acknowledgement in etcd: not <token>/<node>")
			return
		}
		if k.acks[token] == nil {
			k.acks[token] = map[string]bool{}
		}
		k.acks[token][node] = true
	case strings.HasPrefix(kv.Key, store.ACMEFailuresPrefix(k.project)):
		host := strings.TrimPrefix(kv.Key, store.ACMEFailuresPrefix(k.project))
		f, err := ParseFailure(host, kv.Value)
		if err != nil {
			k.log.Warn().Str("key", kv.Key).Err(err).Msg("skipping the ACME failure record in etcd")
			return
		}
		k.failures[host] = f
	}
}

// checkChallenge checks an HTTP-01 token and its key authorization.
func checkChallenge(token, auth string) error {
	if !tokenRE.MatchString(token) {
		return fmt.Errorf("token %q is not base64url", clip(token))
	}
	if !keyAuthRE.MatchString(auth) || !strings.HasPrefix(auth, token+".") {
		return fmt.Errorf("key authorization %q is not <token>.<thumbprint>", clip(auth))
	}
	return nil
}

// clip shortens what is quoted from etcd in a log line.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}
