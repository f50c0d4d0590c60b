package store

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// DefaultTimeout bounds one etcd request when Config.Timeout is zero.
const DefaultTimeout = 5 * time.Second

// ErrLeaseLost: the lease expired or was revoked; grant a new one.
var ErrLeaseLost = errors.New("lease lost")

// Config configures a Client.
type Config struct {
	// Endpoints are etcd client URLs.
	Endpoints []string
	// DialTimeout bounds the initial connection; zero means 5 s.
	DialTimeout time.Duration
	// Timeout bounds each request; zero means DefaultTimeout.
	Timeout time.Duration
	// Username and Password enable etcd authentication when Username is set.
	Username string
	Password string
	// CAFile, CertFile and KeyFile enable TLS; CertFile and KeyFile are the
	// client certificate, CAFile verifies the server.
	CAFile, CertFile, KeyFile string
	// Logger receives the client's own messages.
	Logger zerolog.Logger
}

// Client wraps an etcd v3 client.
type Client struct {
	cfg     clientv3.Config
	timeout time.Duration
	log     zerolog.Logger

	// slot is a lock that waits with a context: whoever holds it may read
	// or set cli and closed.
	slot   chan struct{}
	cli    *clientv3.Client
	closed bool
}

// errClosed: the Client was closed.
var errClosed = errors.New("etcd client closed")

// New returns a Client. It does not wait for etcd to answer; requests do.
// The connection is made by the first request, and made again by the next
// one while it fails: with a user name, connecting authenticates, and a
// wrong password or an etcd that is down must be an error the caller logs
// and retries, not a daemon that cannot start.
func New(cfg Config) (*Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcd: no endpoints")
	}
	dial := cfg.DialTimeout
	if dial <= 0 {
		dial = 5 * time.Second
	}
	tlsCfg, err := cfg.tlsConfig()
	if err != nil {
		return nil, err
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &Client{
		cfg: clientv3.Config{
			Endpoints:            cfg.Endpoints,
			DialTimeout:          dial,
			DialKeepAliveTime:    10 * time.Second,
			DialKeepAliveTimeout: 3 * time.Second,
			Username:             cfg.Username,
			Password:             cfg.Password,
			TLS:                  tlsCfg,
			Logger:               zap.NewNop(),
			DialOptions: []grpc.DialOption{grpc.WithContextDialer(dialEtcd), grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: reconnectMaxDelay},
				MinConnectTimeout: dial,
			})},
		},
		timeout: timeout,
		log:     cfg.Logger,
		slot:    make(chan struct{}, 1),
	}, nil
}

// reconnectMaxDelay bounds the wait between two tries to connect to an
// etcd member that is away (gRPC's default grows to 2 minutes): a client
// must be back within a second of etcd, while the leases etcd gives their
// TTL again when it returns are still there to be resumed.
const reconnectMaxDelay = time.Second

// deadMemberTimeout is how long data sent to an etcd member may go
// unacknowledged before the connection is dropped and another member is
// used: well under the shortest lease TTL (2 s), well over a LAN's or a
// loaded host's round trip.
const deadMemberTimeout = 800 * time.Millisecond

// dialEtcd opens a connection to an etcd member (host:port, or unix:path).
func dialEtcd(ctx context.Context, addr string) (net.Conn, error) {
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}
	d := net.Dialer{Control: userTimeout(deadMemberTimeout)}
	return d.DialContext(ctx, "tcp", addr)
}

// etcd returns the connected client, connecting first when there is none.
// With a user name, connecting authenticates, which takes up to
// DialTimeout when etcd does not answer.
func (c *Client) etcd(ctx context.Context) (*clientv3.Client, error) {
	select {
	case c.slot <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-c.slot }()
	switch {
	case c.closed:
		return nil, errClosed
	case c.cli != nil:
		return c.cli, nil
	}
	cli, err := clientv3.New(c.cfg)
	if err != nil {
		as := ""
		if c.cfg.Username != "" {
			as = " as user " + c.cfg.Username
		}
		return nil, fmt.Errorf("etcd connect to %v%s: %w", c.cfg.Endpoints, as, err)
	}
	c.cli = cli
	return cli, nil
}

func (cfg Config) tlsConfig() (*tls.Config, error) {
	if cfg.CAFile == "" && cfg.CertFile == "" && cfg.KeyFile == "" {
		return nil, nil
	}
	t := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("etcd CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd CA file %s: no PEM certificates", cfg.CAFile)
		}
		t.RootCAs = pool
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return nil, errors.New("etcd TLS: cert_file and key_file must be given together")
	}
	if cfg.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("etcd client certificate: %w", err)
		}
		t.Certificates = []tls.Certificate{cert}
	}
	return t, nil
}

// Close closes the connection; it waits for a connection attempt in
// progress.
func (c *Client) Close() error {
	c.slot <- struct{}{}
	defer func() { <-c.slot }()
	c.closed = true
	if c.cli == nil {
		return nil
	}
	return c.cli.Close()
}

// Ping checks that etcd answers.
func (c *Client) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	cli, err := c.etcd(ctx)
	if err != nil {
		return err
	}
	if _, err := cli.Get(ctx, PingKey, clientv3.WithCountOnly()); err != nil {
		return fmt.Errorf("etcd at %v: %w", c.cfg.Endpoints, err)
	}
	return nil
}

// IsUnreachable reports whether err says only that etcd could not be
// reached (timed out, unavailable), not that it refused a request.
func IsUnreachable(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || status.Code(err) == codes.Unavailable
}

// KV is one raw key and value with its lease.
type KV struct {
	Key   string
	Value []byte
	Lease int64
	// ModRevision is the revision of the key's last write (Get, List):
	// what PutIfUnchanged compares.
	ModRevision int64
	// Created is the revision that created the key (etcd's create
	// revision): the older of two keys has the lower one.
	Created int64
}

// kvOf converts etcd's key-value.
func kvOf(kv *mvccpb.KeyValue) KV {
	return KV{Key: string(kv.Key), Value: kv.Value, Lease: kv.Lease, ModRevision: kv.ModRevision, Created: kv.CreateRevision}
}

// List returns every key under prefix and the store revision it was read at.
func (c *Client) List(ctx context.Context, prefix string) ([]KV, int64, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	cli, err := c.etcd(ctx)
	if err != nil {
		return nil, 0, err
	}
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("etcd get %s*: %w", prefix, err)
	}
	out := make([]KV, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out = append(out, kvOf(kv))
	}
	return out, resp.Header.Revision, nil
}

// Get reads one key; ok is false when it does not exist.
func (c *Client) Get(ctx context.Context, key string) (kv KV, ok bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	cli, err := c.etcd(ctx)
	if err != nil {
		return KV{}, false, err
	}
	resp, err := cli.Get(ctx, key)
	if err != nil {
		return KV{}, false, fmt.Errorf("etcd get %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return KV{}, false, nil
	}
	return kvOf(resp.Kvs[0]), true, nil
}

// Put writes key=value, attached to lease when lease is non-zero, and
// returns the store revision after the write.
func (c *Client) Put(ctx context.Context, key, value string, lease int64) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var opts []clientv3.OpOption
	if lease != 0 {
		opts = append(opts, clientv3.WithLease(clientv3.LeaseID(lease)))
	}
	cli, err := c.etcd(ctx)
	if err != nil {
		return 0, err
	}
	resp, err := cli.Put(ctx, key, value, opts...)
	if err != nil {
		if isLeaseNotFound(err) {
			return 0, fmt.Errorf("etcd put %s: %w", key, ErrLeaseLost)
		}
		return 0, fmt.Errorf("etcd put %s: %w", key, err)
	}
	return resp.Header.Revision, nil
}

// PutIfUnchanged writes key=value (with no lease) only if the key's last
// write is still the one at modRev (a KV's ModRevision; 0: only if the
// key does not exist): the write of a read-modify-write, which must not
// replace what someone else wrote in between. ok is false when the key
// changed; nothing is written then.
func (c *Client) PutIfUnchanged(ctx context.Context, key, value string, modRev int64) (ok bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	cli, err := c.etcd(ctx)
	if err != nil {
		return false, err
	}
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", modRev)).
		Then(clientv3.OpPut(key, value)).
		Commit()
	if err != nil {
		return false, fmt.Errorf("etcd put %s if unchanged since revision %d: %w", key, modRev, err)
	}
	return resp.Succeeded, nil
}

// Delete removes a key (a missing key is not an error) and returns the
// revision of the deletion, which a watch of the key shows; 0 when there
// was no such key: etcd then writes no revision and a watch sees nothing,
// so a caller that waits for its watch to reach the revision it wrote
// must not wait for one.
func (c *Client) Delete(ctx context.Context, key string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	cli, err := c.etcd(ctx)
	if err != nil {
		return 0, err
	}
	resp, err := cli.Delete(ctx, key)
	if err != nil {
		return 0, fmt.Errorf("etcd delete %s: %w", key, err)
	}
	if resp.Deleted == 0 {
		return 0, nil
	}
	return resp.Header.Revision, nil
}
