package certs

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/go-acme/lego/v5/acme"
	"github.com/go-acme/lego/v5/certcrypto"
	"github.com/go-acme/lego/v5/certificate"
	"github.com/go-acme/lego/v5/lego"
	legolog "github.com/go-acme/lego/v5/log"
	"github.com/go-acme/lego/v5/registration"
	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/internal/loop"
	"github.com/upstreamd/upstreamd/internal/retry"
	"github.com/upstreamd/upstreamd/store"
)

// Store is what the Manager needs of etcd (a *store.Client).
type Store interface {
	Get(ctx context.Context, key string) (store.KV, bool, error)
	Put(ctx context.Context, key, value string, lease int64) (int64, error)
	PutIfUnchanged(ctx context.Context, key, value string, modRev int64) (bool, error)
	Delete(ctx context.Context, key string) (int64, error)
	Lock(ctx context.Context, key string, ttl time.Duration) (lease int64, unlock func(), err error)
	orphanStore
}

var _ Store = (*store.Client)(nil)

// Responder is this node's proxy as the CA's HTTP-01 validation reaches
// it. The daemon wires it from where the proxy runs, the render loop that
// writes the answers into it, and nginx, which is asked for them.
type Responder interface {
	// Running reports whether this node runs the proxy the CA's
	// validation reaches (with a single proxy: only its node orders).
	Running() bool
	// SubscribeRunning returns a channel that receives after each change
	// of what Running says.
	SubscribeRunning() <-chan struct{}
	// ServesAnswer returns once the proxy serves keyAuth, the HTTP-01
	// answer of token, to a request naming host ("": its own address), or
	// with ctx's error.
	ServesAnswer(ctx context.Context, host, token, keyAuth string) error
}

// ManagerConfig configures a Manager.
type ManagerConfig struct {
	Project, Node string
	// Directory is the ACME directory URL; Email the account's contact.
	Directory, Email string
	// Roots verify the directory's HTTPS certificate; nil: the system's.
	Roots *x509.CertPool
	// Hosts get one certificate each.
	Hosts []string
	Store Store
	// Cache is the project's certificates, as the proxies serve them.
	Cache *Cache
	// Responder is this node's proxy: orders are made while it runs, and
	// wait until it serves their answers.
	Responder Responder
	// ProxyNodes, when set, lists the live nodes whose proxies the CA may
	// reach (placement = "every": every node): before the CA is told to
	// validate, each but this one must have acknowledged the answer in
	// etcd (an Acker on each). Unset: only this node's proxy is asked.
	ProxyNodes func(ctx context.Context) ([]string, error)
	// Observe, when set, is told of each order: the host and its error.
	Observe func(host string, err error)
	// RetryMin and RetryMax bound the backoff after a failed order: the
	// n-th failure in a row waits RetryMin×2^(n-1), at most RetryMax (15
	// min and 6 h by default: tries at 0, 15 and 45 min in the first
	// hour, under Let's Encrypt's 5 failed validations per host and hour).
	RetryMin, RetryMax time.Duration
	Logger             zerolog.Logger
}

// Manager orders the certificates of its hosts that are missing or due,
// while this node may order and holds the project's ACME lock, and keeps
// them in etcd, where every node's proxy finds them. A host whose order
// failed is tried again by the project's backoff, kept in etcd with the
// certificates (FailureKey), so that every node goes by it and shows it.
type Manager struct {
	cfg ManagerConfig
	log zerolog.Logger
	now func() time.Time
	// connect returns how to order from the CA, with challenges put
	// under lease (m.legoCA; tests replace it).
	connect func(ctx context.Context, lease int64) (obtainFunc, error)
	acks    <-chan struct{} // the Cache changed: an acknowledgement may have come

	mu sync.Mutex // guards what follows, which Failing reads
	// own is each host's failure as this node recorded it when etcd did
	// not take the record: what it goes by instead.
	own map[string]Failure
	// stalled are the hosts this node could not look at in etcd (the
	// lock, a read): retried on a backoff of their own, as the CA was
	// not asked.
	stalled map[string]*stall
}

// stall is the backoff of a host this node could not look at in etcd.
type stall struct {
	bo   *retry.Backoff
	next time.Time
	err  error
}

// Failing returns the hosts whose last order failed (Failure.Err says
// why; Next is when they are tried again), as the project's record in
// etcd says, or this node's own when later.
func (m *Manager) Failing() map[string]Failure {
	now := m.now()
	out := map[string]Failure{}
	for _, h := range m.cfg.Hosts {
		if f, ok := m.failure(h, now); ok {
			out[h] = f
		}
	}
	return out
}

// failure is host's run of failed orders as this node goes by it: the
// project's, or its own record when later, or why it could not look at
// etcd, whichever lets the host be tried last; Next is at most RetryMax
// away (a record in etcd is untrusted input).
func (m *Manager) failure(host string, now time.Time) (Failure, bool) {
	f, ok := m.cfg.Cache.Failures()[host]
	m.mu.Lock()
	defer m.mu.Unlock()
	if own, mine := m.own[host]; mine && (!ok || own.Next.After(f.Next)) {
		if now.After(own.Next.Add(m.cfg.RetryMax)) {
			delete(m.own, host) // long over: the run ended, or another node holds it now
		} else {
			f, ok = own, true
		}
	}
	if st := m.stalled[host]; st != nil && (!ok || st.next.After(f.Next)) {
		f.Next, f.Err, f.Node, f.At, ok = st.next, st.err.Error(), m.cfg.Node, now, true
	}
	if ok {
		f.Next = m.bound(f.Next, now)
	}
	return f, ok
}

// bound is next, or RetryMax from now when later: no wait is longer.
func (m *Manager) bound(next, now time.Time) time.Time {
	if limit := now.Add(m.cfg.RetryMax); next.After(limit) {
		return limit
	}
	return next
}

// Hosts are the hosts the Manager keeps certificates for.
func (m *Manager) Hosts() []string { return slices.Clone(m.cfg.Hosts) }

// Default backoff after failed orders.
const (
	DefaultRetryMin = 15 * time.Minute
	DefaultRetryMax = 6 * time.Hour
)

// NewManager returns a Manager; Start runs it.
func NewManager(cfg ManagerConfig) *Manager {
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = DefaultRetryMin
	}
	if cfg.RetryMax < cfg.RetryMin {
		cfg.RetryMax = max(DefaultRetryMax, cfg.RetryMin)
	}
	routeLegoLog(cfg.Logger)
	m := &Manager{cfg: cfg, log: cfg.Logger, now: time.Now, own: map[string]Failure{}, stalled: map[string]*stall{}}
	m.connect = m.legoCA
	if cfg.Cache != nil {
		m.acks = cfg.Cache.Subscribe()
	}
	return m
}

// obtainFunc orders host's certificate from the CA, and returns it (PEM,
// its chain after it) and its private key (PEM).
type obtainFunc func(ctx context.Context, host string) (certPEM, keyPEM []byte, err error)

// legoCA orders with lego, as the project's account.
func (m *Manager) legoCA(ctx context.Context, lease int64) (obtainFunc, error) {
	client, err := m.client(ctx, lease)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, host string) ([]byte, []byte, error) {
		res, err := client.Certificate.Obtain(ctx, certificate.ObtainRequest{
			Domains: []string{host}, KeyType: certcrypto.EC256, Bundle: true,
		})
		if err != nil {
			return nil, nil, err
		}
		return res.Certificate, res.PrivateKey, nil
	}, nil
}

var legoLogOnce sync.Once

// routeLegoLog sends lego's log (process-wide, slog, stdout by default)
// to the daemon's log, at debug and above as the daemon's level allows.
func routeLegoLog(log zerolog.Logger) {
	legoLogOnce.Do(func() {
		legolog.SetDefault(slog.New(zerolog.NewSlogHandler(log.With().Str("lib", "lego").Logger())))
	})
}

// idleCheck is how often the Manager looks again with nothing due: the
// watch of the certificates wakes it for every change, this bounds the
// sleep (a clock that jumped, a renewal time far away).
const idleCheck = time.Hour

// Start runs until ctx ends; it returns nil then. It looks at once, then
// whenever the certificates in etcd or whether this node runs the proxy change, or the next host
// is due; after an order (or a failed one) it looks again at once.
func (m *Manager) Start(ctx context.Context) error {
	triggers := []<-chan struct{}{m.cfg.Cache.Subscribe(), m.cfg.Responder.SubscribeRunning()}
	m.log.Info().Strs("hosts", m.cfg.Hosts).Str("directory", m.cfg.Directory).Msg("ACME: keeping a certificate for each host in etcd")
	l := loop.New(loop.Config{Triggers: triggers, Log: m.log})
	return l.Run(ctx, func(ctx context.Context) (loop.Result, error) { return m.look(ctx), nil })
}

// look orders what is due, and says when to look again.
func (m *Manager) look(ctx context.Context) loop.Result {
	_, loaded := m.cfg.Cache.Loaded()
	if !loaded || !m.cfg.Responder.Running() {
		return loop.Result{After: idleCheck}
	}
	due, next := m.due()
	if (len(due) > 0 || m.hasOrphans()) && m.orderUnderLock(ctx, due) {
		return loop.Result{Again: true} // look again: the cache has what was stored, or the backoff
	}
	if len(due) > 0 {
		// etcd holds them fresh, or failed (another node tried), and this
		// node's watch has not shown it yet: wait for it.
		next = m.now().Add(time.Second)
	} else {
		m.log.Debug().Time("next", next).Msg("ACME: nothing to order now")
	}
	if wait := min(idleCheck, next.Sub(m.now())); wait > 0 {
		return loop.Result{After: wait}
	}
	return loop.Result{Again: true}
}

// due returns the hosts to order now, and when the next is due.
func (m *Manager) due() (due []string, next time.Time) {
	now := m.now()
	next = now.Add(idleCheck)
	imported := []Cert{}
	for _, c := range m.cfg.Cache.Certs() {
		if c.Source != SourceACME {
			imported = append(imported, c)
		}
	}
	for _, h := range m.cfg.Hosts {
		if slices.ContainsFunc(imported, func(c Cert) bool { return c.Leaf.VerifyHostname(h) == nil }) {
			continue // the operator's certificate is served for it
		}
		at := now
		if c, ok := m.cfg.Cache.Get(h); ok {
			at = c.renewalFor(h, now)
		}
		if f, ok := m.failure(h, now); ok && f.Next.After(at) {
			at = f.Next
		}
		if !at.After(now) {
			due = append(due, h)
		} else if at.Before(next) {
			next = at
		}
	}
	return due, next
}

// lockTTL is the lease of the ACME lock and of the challenges put under
// it: a node that dies while it orders frees them after this.
const lockTTL = 15 * time.Second

// orderUnderLock takes the project's ACME lock, deletes the certificates
// of hosts no longer ordered (deleteOrphans), then orders each host that
// is still due (another node may have just stored it, or failed it). It
// reports whether it ordered, or failed to, any host: false when etcd held
// them all fresh or failed.
func (m *Manager) orderUnderLock(ctx context.Context, hosts []string) (acted bool) {
	lease, unlock, err := m.cfg.Store.Lock(ctx, store.ACMELockKey(m.cfg.Project), lockTTL)
	if err != nil {
		if ctx.Err() == nil {
			for _, h := range hosts {
				m.stall(h, fmt.Errorf("take the ACME lock: %w", err))
			}
		}
		return true
	}
	defer unlock()
	m.deleteOrphans(ctx)
	var (
		obtain     obtainFunc
		connectErr error
	)
	for _, h := range hosts {
		if ctx.Err() != nil {
			return true
		}
		st, err := m.stored(ctx, h)
		if err != nil {
			m.stall(h, err)
			acted = true
			continue
		}
		m.unstall(h, st.fresh)
		if st.fresh || st.failed.Next.After(m.now()) {
			continue
		}
		acted = true
		if obtain == nil && connectErr == nil {
			obtain, connectErr = m.connect(ctx, lease)
		}
		if connectErr != nil {
			m.failed(ctx, h, st.failed, connectErr)
			continue
		}
		m.order(ctx, obtain, h, st)
	}
	return acted
}

// stored is a host's state in etcd itself, read under the lock (the watch
// may lag behind the node that held the lock before).
type stored struct {
	// fresh: its certificate is not due; rev is the mod revision of its
	// key (0: none), what the new one is written against.
	fresh bool
	rev   int64
	// failed is its run of failed orders (Count 0: none).
	failed Failure
}

// stored reads host's certificate and failures from etcd.
func (m *Manager) stored(ctx context.Context, host string) (stored, error) {
	var st stored
	now := m.now()
	kv, ok, err := m.cfg.Store.Get(ctx, store.CertHostKey(m.cfg.Project, host))
	if err != nil {
		return st, err
	}
	if ok {
		st.rev = kv.ModRevision
		if c, err := Parse(kv.Key, kv.Value, now); err == nil { // not usable: order it
			st.fresh = c.renewalFor(host, now).After(now)
		}
	}
	kv, ok, err = m.cfg.Store.Get(ctx, store.ACMEFailureKey(m.cfg.Project, host))
	if err != nil {
		return st, err
	}
	if ok {
		if f, err := ParseFailure(host, kv.Value); err == nil { // unreadable: as if none
			st.failed = f
			st.failed.Next = m.bound(f.Next, now)
		}
	}
	return st, nil
}

// renewalFor is when c, kept under host's name, is to be ordered again:
// its RenewAt (two thirds into its lifetime unless `certs renew` asked
// sooner); now when it is not an ACME certificate valid for host.
func (c Cert) renewalFor(host string, now time.Time) time.Time {
	if c.Source != SourceACME || c.Leaf.VerifyHostname(host) != nil {
		return now
	}
	if c.RenewAt.IsZero() {
		return RenewAt(c.Leaf)
	}
	return c.RenewAt
}

// order orders one host's certificate and stores it.
func (m *Manager) order(ctx context.Context, obtain obtainFunc, host string, st stored) {
	start := m.now()
	m.log.Info().Str("host", host).Int("failed_before", st.failed.Count).Msg("ACME: ordering a certificate")
	certPEM, keyPEM, err := obtain(ctx, host)
	if err != nil {
		m.failed(ctx, host, st.failed, fmt.Errorf("order: %w", err))
		return
	}
	leaf, err := Check(certPEM, keyPEM, m.now())
	if errors.Is(err, ErrNotYetValid) {
		err = fmt.Errorf("%w: this node's clock is more than %s behind the CA's (check its time sync)", err, Skew)
	}
	if err != nil {
		m.failed(ctx, host, st.failed, fmt.Errorf("the CA's certificate: %w", err))
		return
	}
	rec := Record{Cert: string(certPEM), Key: string(keyPEM), Source: SourceACME,
		RenewAt: RenewAt(leaf).UTC(), Directory: m.cfg.Directory, Node: m.cfg.Node, Stored: m.now().UTC()}
	if err := m.store(ctx, host, rec, st.rev); err != nil {
		m.failed(ctx, host, st.failed, err)
		return
	}
	m.succeeded(ctx, host)
	m.log.Info().Str("host", host).Str("serial", leaf.SerialNumber.Text(16)).
		Time("not_after", leaf.NotAfter).Time("renew_at", rec.RenewAt).Stringer("took", m.now().Sub(start).Round(time.Millisecond)).
		Msg("ACME: certificate issued and stored in etcd")
}

// store writes host's new certificate over what was read at rev, unless
// an operator's certificate was imported under its name meanwhile, which
// is kept.
func (m *Manager) store(ctx context.Context, host string, rec Record, rev int64) error {
	key := store.CertHostKey(m.cfg.Project, host)
	for range 3 {
		written, err := m.cfg.Store.PutIfUnchanged(ctx, key, rec.Encode(), rev)
		if err != nil || written {
			if err != nil {
				err = fmt.Errorf("store the certificate: %w", err)
			}
			return err
		}
		kv, ok, err := m.cfg.Store.Get(ctx, key)
		if err != nil {
			return fmt.Errorf("store the certificate: %w", err)
		}
		rev = 0
		if ok {
			if r, err := Decode(kv.Value); err == nil && r.Source != SourceACME {
				m.log.Warn().Str("host", host).Str("key", key).
					Msg("ACME: a certificate was imported under this name while ordering; keeping it, not the new one")
				return nil
			}
			rev = kv.ModRevision // `certs renew`, or removed and put back: the new one is newer
		}
	}
	return fmt.Errorf("store the certificate: %s keeps changing in etcd", key)
}

// failed records a failed order of host, which had failed prev.Count
// times in a row before, and when to try again, in etcd for the whole
// project (the ACME lock is held).
func (m *Manager) failed(ctx context.Context, host string, prev Failure, err error) {
	now := m.now()
	m.mu.Lock()
	if own, ok := m.own[host]; ok && own.Count > prev.Count && !now.After(own.Next.Add(m.cfg.RetryMax)) {
		prev = own // etcd did not get this node's last record
	}
	f := Failure{Count: prev.Count + 1, Err: printable(err.Error(), maxFailureErr), Node: m.cfg.Node, At: now.UTC()}
	wait := m.backoff(f.Count)
	f.Next = now.Add(wait).UTC()
	m.mu.Unlock()
	_, perr := m.cfg.Store.Put(ctx, store.ACMEFailureKey(m.cfg.Project, host), f.Encode(), 0)
	m.mu.Lock()
	if perr != nil {
		m.own[host] = f
	} else {
		delete(m.own, host)
	}
	m.mu.Unlock()
	if perr != nil {
		m.log.Warn().Err(perr).Str("host", host).Msg("ACME: cannot keep the failure in etcd; this node backs off by its own record")
	}
	if m.cfg.Observe != nil {
		m.cfg.Observe(host, err)
	}
	m.log.Error().Err(err).Str("host", host).Int("failures", f.Count).Stringer("retry_in", wait).Time("next_try", f.Next).
		Msg("ACME: no certificate; the one served now (if any) stays, retrying with backoff")
}

// backoff is the wait after the n-th failed order in a row: RetryMin,
// doubled at each failure, at most RetryMax. No jitter: the schedule is
// what keeps a host under the CA's limit.
func (m *Manager) backoff(n int) time.Duration {
	d := m.cfg.RetryMin
	for i := 1; i < n && d < m.cfg.RetryMax; i++ {
		d *= 2
	}
	return min(d, m.cfg.RetryMax)
}

// succeeded clears host's failures, in etcd and here.
func (m *Manager) succeeded(ctx context.Context, host string) {
	m.mu.Lock()
	delete(m.own, host)
	delete(m.stalled, host)
	m.mu.Unlock()
	if _, err := m.cfg.Store.Delete(ctx, store.ACMEFailureKey(m.cfg.Project, host)); err != nil {
		m.log.Warn().Err(err).Str("host", host).Msg("ACME: cannot clear the failures in etcd; the next order waits for their next try")
	}
	if m.cfg.Observe != nil {
		m.cfg.Observe(host, nil)
	}
}

// stallMax bounds the backoff of a host this node could not look at in
// etcd: it is tried within this of etcd answering again.
const stallMax = time.Minute

// stall records that host could not be looked at in etcd: it is tried
// again soon (the CA was not asked), on a backoff of its own.
func (m *Manager) stall(host string, err error) {
	m.mu.Lock()
	st := m.stalled[host]
	if st == nil {
		st = &stall{bo: retry.New(5*time.Second, stallMax)}
		m.stalled[host] = st
	}
	wait, first := st.bo.Failed()
	st.next, st.err = m.now().Add(wait), err
	m.mu.Unlock()
	if m.cfg.Observe != nil {
		m.cfg.Observe(host, err)
	}
	ev := m.log.Debug()
	if first {
		ev = m.log.Error()
	}
	ev.Err(err).Str("host", host).Stringer("retry_in", wait).Msg("ACME: cannot look at the host's certificate in etcd; retrying with backoff")
}

// unstall forgets that host could not be looked at in etcd, and this
// node's own record of its failures once it has a fresh certificate
// (another node ordered it).
func (m *Manager) unstall(host string, fresh bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.stalled, host)
	if fresh {
		delete(m.own, host)
	}
}

// account is the ACME account as kept in etcd.
type account struct {
	Directory    string                `json:"directory"`
	Email        string                `json:"email,omitempty"`
	Key          string                `json:"key"` // PEM, PKCS#8
	Registration *acme.ExtendedAccount `json:"registration"`
}

// user is the account as lego takes it.
type user struct {
	email string
	reg   *acme.ExtendedAccount
	key   crypto.Signer
}

func (u *user) GetEmail() string                       { return u.email }
func (u *user) GetRegistration() *acme.ExtendedAccount { return u.reg }
func (u *user) GetPrivateKey() crypto.Signer           { return u.key }

// client returns a lego client of the project's account, registering one
// (and keeping it in etcd) when there is none for this directory and
// e-mail. Challenges are put in etcd under lease.
func (m *Manager) client(ctx context.Context, lease int64) (*lego.Client, error) {
	u, stored, err := m.account(ctx)
	if err != nil {
		return nil, err
	}
	cfg := lego.NewConfig(u)
	cfg.CADirURL = m.cfg.Directory
	cfg.UserAgent = "upstreamd"
	cfg.Certificate.Timeout = 60 * time.Second
	// A client of its own: lego makes the one it is given HTTPS-only.
	cfg.HTTPClient = &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
		Proxy: http.ProxyFromEnvironment, TLSHandshakeTimeout: 15 * time.Second, ResponseHeaderTimeout: 30 * time.Second,
		TLSClientConfig: &tls.Config{RootCAs: m.cfg.Roots, MinVersion: tls.VersionTLS12}}}
	client, err := lego.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("ACME directory %s: %w", m.cfg.Directory, err)
	}
	if err := client.Challenge.SetHTTP01Provider(&provider{m: m, lease: lease}); err != nil {
		return nil, err
	}
	if !stored {
		reg, err := client.Registration.Register(ctx, registration.RegisterOptions{TermsOfServiceAgreed: true})
		if err != nil {
			return nil, fmt.Errorf("register an ACME account at %s: %w", m.cfg.Directory, err)
		}
		u.reg = reg
		if err := m.storeAccount(ctx, u); err != nil {
			return nil, err
		}
		m.log.Info().Str("account", reg.Location).Str("email", m.cfg.Email).Msg("ACME: account registered and stored in etcd")
		return client, nil
	}
	// The CA may have forgotten it (a test CA restarted): register again.
	if _, err := client.Registration.QueryRegistration(ctx); err != nil {
		var pd *acme.ProblemDetails
		if !errors.As(err, &pd) || pd.Type != acme.AccountDoesNotExistErrorType {
			return nil, fmt.Errorf("ACME account %s: %w", u.reg.Location, err)
		}
		m.log.Warn().Str("account", u.reg.Location).Msg("ACME: the CA does not know the stored account; registering it again")
		u.reg = nil
		return m.client(ctx, lease) // stored=false now: the account is replaced
	}
	return client, nil
}

// account reads the project's account from etcd; stored is false when a
// new one is to be registered (none, or another directory or e-mail).
func (m *Manager) account(ctx context.Context) (u *user, stored bool, err error) {
	u = &user{email: m.cfg.Email}
	kv, ok, err := m.cfg.Store.Get(ctx, store.ACMEAccountKey(m.cfg.Project))
	if err != nil {
		return nil, false, err
	}
	var a account
	if ok {
		if err := json.Unmarshal(kv.Value, &a); err != nil {
			m.log.Warn().Err(err).Str("key", kv.Key).Msg("ACME: the stored account is unreadable; registering a new one")
			ok = false
		}
	}
	if ok && a.Directory == m.cfg.Directory && a.Email == m.cfg.Email && a.Registration != nil {
		key, err := certcrypto.ParsePEMPrivateKey([]byte(a.Key))
		if err == nil {
			u.key, u.reg = key, a.Registration
			return u, true, nil
		}
		m.log.Warn().Err(err).Str("key", kv.Key).Msg("ACME: the stored account key is unreadable; registering a new one")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, false, err
	}
	u.key = key
	return u, false, nil
}

// storeAccount keeps the account in etcd.
func (m *Manager) storeAccount(ctx context.Context, u *user) error {
	b, err := json.Marshal(account{Directory: m.cfg.Directory, Email: m.cfg.Email,
		Key: string(certcrypto.PEMEncode(u.key)), Registration: u.reg})
	if err != nil {
		return err
	}
	if _, err := m.cfg.Store.Put(ctx, store.ACMEAccountKey(m.cfg.Project), string(b), 0); err != nil {
		return fmt.Errorf("store the ACME account: %w", err)
	}
	return nil
}

// provider answers HTTP-01 challenges through etcd: every node's proxy
// serves what is under store.ACMEChallengesPrefix, without a reload.
type provider struct {
	m     *Manager
	lease int64
}

// answerWait bounds how long Present waits for the proxies to serve an
// answer.
const answerWait = 30 * time.Second

func (p *provider) Present(ctx context.Context, domain, token, keyAuth string) error {
	if err := checkChallenge(token, keyAuth); err != nil {
		return err
	}
	if _, err := p.m.cfg.Store.Put(ctx, store.ACMEChallengeKey(p.m.cfg.Project, token), keyAuth, p.lease); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, answerWait)
	defer cancel()
	if err := p.m.cfg.Responder.ServesAnswer(ctx, domain, token, keyAuth); err != nil {
		return err
	}
	if err := p.m.confirmed(ctx, domain, token); err != nil {
		return err
	}
	p.m.log.Debug().Str("host", domain).Str("token", token).Msg("ACME: the proxies serve the challenge answer")
	return nil
}

func (p *provider) CleanUp(ctx context.Context, _, token, _ string) error {
	_, err := p.m.cfg.Store.Delete(ctx, store.ACMEChallengeKey(p.m.cfg.Project, token))
	return err
}
