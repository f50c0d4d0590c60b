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

	"github.com/upstreamd/upstreamd/internal/retry"
	"github.com/upstreamd/upstreamd/store"
)

// Store is what the Manager needs of etcd (a *store.Client).
type Store interface {
	Get(ctx context.Context, key string) (store.KV, bool, error)
	Put(ctx context.Context, key, value string, lease int64) (int64, error)
	Delete(ctx context.Context, key string) (int64, error)
	Lock(ctx context.Context, key string, ttl time.Duration) (lease int64, unlock func(), err error)
}

var _ Store = (*store.Client)(nil)

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
	// CanOrder reports whether this node runs the proxy the CA's
	// validation reaches (with a single proxy: only its node orders), and
	// a channel closed when that changes.
	CanOrder func() (bool, <-chan struct{})
	// WaitAnswer returns once this node's proxy serves keyAuth, the
	// HTTP-01 answer of token, for host (the render Controller's
	// WaitAnswer).
	WaitAnswer func(ctx context.Context, host, token, keyAuth string) error
	// Observe, when set, is told of each order: the host and its error.
	Observe func(host string, err error)
	// RetryMin and RetryMax bound the backoff after a failed order (1 min
	// and 6 h by default: Let's Encrypt allows 5 failed validations per
	// host and hour).
	RetryMin, RetryMax time.Duration
	Logger             zerolog.Logger
}

// Manager orders the certificates of its hosts that are missing or due,
// while this node may order and holds the project's ACME lock, and keeps
// them in etcd, where every node's proxy finds them.
type Manager struct {
	cfg ManagerConfig
	log zerolog.Logger
	now func() time.Time

	mu      sync.Mutex            // guards failing, which Failing reads
	failing map[string]*hostRetry // written by Start's goroutine only
}

// hostRetry is the backoff of a host whose last order failed.
type hostRetry struct {
	bo   *retry.Backoff
	next time.Time
	err  error
}

// Failure is why a host's last order failed, and when it is tried again.
type Failure struct {
	Err  error
	Next time.Time
}

// Failing returns the hosts whose last order failed.
func (m *Manager) Failing() map[string]Failure {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]Failure, len(m.failing))
	for h, r := range m.failing {
		out[h] = Failure{Err: r.err, Next: r.next}
	}
	return out
}

// Hosts are the hosts the Manager keeps certificates for.
func (m *Manager) Hosts() []string { return slices.Clone(m.cfg.Hosts) }

// NewManager returns a Manager; Start runs it.
func NewManager(cfg ManagerConfig) *Manager {
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = time.Minute
	}
	if cfg.RetryMax < cfg.RetryMin {
		cfg.RetryMax = max(6*time.Hour, cfg.RetryMin)
	}
	routeLegoLog(cfg.Logger)
	return &Manager{cfg: cfg, log: cfg.Logger, now: time.Now, failing: map[string]*hostRetry{}}
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

// Start runs until ctx ends; it returns nil then.
func (m *Manager) Start(ctx context.Context) error {
	changed := m.cfg.Cache.Subscribe()
	m.log.Info().Strs("hosts", m.cfg.Hosts).Str("directory", m.cfg.Directory).Msg("ACME: keeping a certificate for each host in etcd")
	for ctx.Err() == nil {
		can, canChanged := m.cfg.CanOrder()
		_, loaded := m.cfg.Cache.Loaded()
		wait := idleCheck
		if loaded && can {
			due, next := m.due()
			if len(due) > 0 && m.orderUnderLock(ctx, due) {
				continue // look again: the cache has what was stored, or the backoff
			}
			if len(due) > 0 {
				// etcd holds them fresh (another node ordered them) and
				// this node's watch has not shown it yet: wait for it.
				next = m.now().Add(time.Second)
			} else {
				m.log.Debug().Time("next", next).Msg("ACME: nothing to order now")
			}
			wait = min(wait, time.Until(next))
		}
		timer := time.NewTimer(max(wait, 0))
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-changed:
		case <-canChanged:
		case <-timer.C:
		}
		timer.Stop()
	}
	return nil
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
		if r := m.failing[h]; r != nil && r.next.After(at) {
			at = r.next
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

// orderUnderLock takes the project's ACME lock, then orders each host that
// is still due (another node may have just stored it). It reports whether
// it ordered, or failed to, any host: false when etcd held them all fresh.
func (m *Manager) orderUnderLock(ctx context.Context, hosts []string) (acted bool) {
	lease, unlock, err := m.cfg.Store.Lock(ctx, LockKey(m.cfg.Project), lockTTL)
	if err != nil {
		if ctx.Err() == nil {
			for _, h := range hosts {
				m.failed(h, fmt.Errorf("take the ACME lock: %w", err))
			}
		}
		return true
	}
	defer unlock()
	var client *lego.Client
	for _, h := range hosts {
		if ctx.Err() != nil {
			return true
		}
		if fresh, err := m.storedFresh(ctx, h); err != nil || fresh {
			if err != nil {
				m.failed(h, err)
				acted = true
			}
			continue
		}
		acted = true
		if client == nil {
			if client, err = m.client(ctx, lease); err != nil {
				for _, h := range hosts {
					m.failed(h, err)
				}
				return true
			}
		}
		m.order(ctx, client, h)
	}
	return acted
}

// storedFresh reads host's certificate from etcd itself (the watch may lag
// behind the node that held the lock before) and reports whether it is
// not due.
func (m *Manager) storedFresh(ctx context.Context, host string) (bool, error) {
	kv, ok, err := m.cfg.Store.Get(ctx, HostKey(m.cfg.Project, host))
	if err != nil || !ok {
		return false, err
	}
	now := m.now()
	c, err := Parse(kv.Key, kv.Value, now)
	if err != nil {
		return false, nil //nolint:nilerr // not usable: order it
	}
	return c.renewalFor(host, now).After(now), nil
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
func (m *Manager) order(ctx context.Context, client *lego.Client, host string) {
	start := m.now()
	m.log.Info().Str("host", host).Msg("ACME: ordering a certificate")
	res, err := client.Certificate.Obtain(ctx, certificate.ObtainRequest{
		Domains: []string{host}, KeyType: certcrypto.EC256, Bundle: true,
	})
	if err != nil {
		m.failed(host, fmt.Errorf("order: %w", err))
		return
	}
	leaf, err := Check(res.Certificate, res.PrivateKey, m.now())
	if errors.Is(err, ErrNotYetValid) {
		err = fmt.Errorf("%w: this node's clock is more than %s behind the CA's (check its time sync)", err, Skew)
	}
	if err != nil {
		m.failed(host, fmt.Errorf("the CA's certificate: %w", err))
		return
	}
	rec := Record{Cert: string(res.Certificate), Key: string(res.PrivateKey), Source: SourceACME,
		RenewAt: RenewAt(leaf).UTC(), Directory: m.cfg.Directory, Node: m.cfg.Node, Stored: m.now().UTC()}
	if _, err := m.cfg.Store.Put(ctx, HostKey(m.cfg.Project, host), rec.Encode(), 0); err != nil {
		m.failed(host, fmt.Errorf("store the certificate: %w", err))
		return
	}
	m.mu.Lock()
	delete(m.failing, host)
	m.mu.Unlock()
	if m.cfg.Observe != nil {
		m.cfg.Observe(host, nil)
	}
	m.log.Info().Str("host", host).Str("serial", leaf.SerialNumber.Text(16)).
		Time("not_after", leaf.NotAfter).Time("renew_at", rec.RenewAt).Stringer("took", m.now().Sub(start).Round(time.Millisecond)).
		Msg("ACME: certificate issued and stored in etcd")
}

// failed records a failed order of host and when to try again.
func (m *Manager) failed(host string, err error) {
	m.mu.Lock()
	r := m.failing[host]
	if r == nil {
		r = &hostRetry{bo: retry.New(m.cfg.RetryMin, m.cfg.RetryMax)}
		m.failing[host] = r
	}
	wait, _ := r.bo.Failed()
	r.next, r.err = m.now().Add(wait), err
	m.mu.Unlock()
	if m.cfg.Observe != nil {
		m.cfg.Observe(host, err)
	}
	m.log.Error().Err(err).Str("host", host).Stringer("retry_in", wait).
		Msg("ACME: no certificate; the one served now (if any) stays, retrying with backoff")
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
	kv, ok, err := m.cfg.Store.Get(ctx, AccountKey(m.cfg.Project))
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
	if _, err := m.cfg.Store.Put(ctx, AccountKey(m.cfg.Project), string(b), 0); err != nil {
		return fmt.Errorf("store the ACME account: %w", err)
	}
	return nil
}

// provider answers HTTP-01 challenges through etcd: every node's proxy
// serves what is under ChallengesPrefix, without a reload.
type provider struct {
	m     *Manager
	lease int64
}

// answerWait bounds how long Present waits for this node's proxy.
const answerWait = 30 * time.Second

func (p *provider) Present(ctx context.Context, domain, token, keyAuth string) error {
	if err := checkChallenge(token, keyAuth); err != nil {
		return err
	}
	if _, err := p.m.cfg.Store.Put(ctx, ChallengesPrefix(p.m.cfg.Project)+token, keyAuth, p.lease); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, answerWait)
	defer cancel()
	if err := p.m.cfg.WaitAnswer(ctx, domain, token, keyAuth); err != nil {
		return err
	}
	p.m.log.Debug().Str("host", domain).Str("token", token).Msg("ACME: the proxy serves the challenge answer")
	return nil
}

func (p *provider) CleanUp(ctx context.Context, _, token, _ string) error {
	_, err := p.m.cfg.Store.Delete(ctx, ChallengesPrefix(p.m.cfg.Project)+token)
	return err
}
