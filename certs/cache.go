package certs

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/internal/wake"
	"github.com/upstreamd/upstreamd/store"
)

// Cache keeps a checked copy of a project's certificates and HTTP-01
// answers in etcd, through one watch. A value that is not a usable
// certificate, or a challenge that is not an ACME token, is left out and
// logged once per write.
type Cache struct {
	cli     *store.Client
	project string
	log     zerolog.Logger
	now     func() time.Time

	changed wake.Fanout

	mu         sync.Mutex
	certs      map[string]Cert   // by etcd key
	challenges map[string]string // key authorization by token
	rev        int64
	loaded     bool
}

// NewCache returns the cache of project's certificates; Start fills it.
func NewCache(cli *store.Client, project string, log zerolog.Logger) *Cache {
	return &Cache{cli: cli, project: project, log: log, now: time.Now,
		certs: map[string]Cert{}, challenges: map[string]string{}}
}

// Start loads and watches until ctx ends. It returns nil on cancellation.
func (k *Cache) Start(ctx context.Context) error {
	return k.cli.Watch(ctx, Prefix(k.project), k.apply)
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

// Certs returns the certificates, by name.
func (k *Cache) Certs() []Cert {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make([]Cert, 0, len(k.certs))
	for _, c := range k.certs {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Get returns the certificate kept under name.
func (k *Cache) Get(name string) (Cert, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	c, ok := k.certs[HostKey(k.project, name)]
	return c, ok
}

// Challenges returns the HTTP-01 answers being validated, by token.
func (k *Cache) Challenges() map[string]string {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make(map[string]string, len(k.challenges))
	for t, a := range k.challenges {
		out[t] = a
	}
	return out
}

// apply brings the copy to an update of the watch.
func (k *Cache) apply(u store.Update) {
	k.mu.Lock()
	if u.Reset {
		k.certs, k.challenges = map[string]Cert{}, map[string]string{}
	}
	for _, key := range u.Deleted {
		delete(k.certs, key)
		delete(k.challenges, strings.TrimPrefix(key, ChallengesPrefix(k.project)))
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

// put takes one written key; k.mu is held.
func (k *Cache) put(kv store.KV) {
	hosts, challenges := HostsPrefix(k.project), ChallengesPrefix(k.project)
	switch {
	case strings.HasPrefix(kv.Key, hosts):
		c, err := Parse(kv.Key, kv.Value, k.now())
		if err != nil {
			delete(k.certs, kv.Key)
			k.log.Warn().Str("key", kv.Key).Err(err).Msg("skipping the certificate in etcd: it cannot be served")
			return
		}
		k.certs[kv.Key] = c
	case strings.HasPrefix(kv.Key, challenges):
		token, auth := strings.TrimPrefix(kv.Key, challenges), string(kv.Value)
		if err := checkChallenge(token, auth); err != nil {
			delete(k.challenges, token)
			k.log.Warn().Str("key", kv.Key).Err(err).Msg("skipping the ACME challenge in etcd")
			return
		}
		k.challenges[token] = auth
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
