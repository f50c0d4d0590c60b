package store

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
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
	cli     *clientv3.Client
	timeout time.Duration
	log     zerolog.Logger
}

// New returns a Client. It does not wait for etcd to answer; requests do.
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
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
		DialTimeout:          dial,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
		Username:             cfg.Username,
		Password:             cfg.Password,
		TLS:                  tlsCfg,
		Logger:               zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %v: %w", cfg.Endpoints, err)
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &Client{cli: cli, timeout: timeout, log: cfg.Logger}, nil
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

// Close closes the connection.
func (c *Client) Close() error { return c.cli.Close() }

// Ping checks that etcd answers.
func (c *Client) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	if _, err := c.cli.Get(ctx, "upstreamd-ping", clientv3.WithCountOnly()); err != nil {
		return fmt.Errorf("etcd at %v: %w", c.cli.Endpoints(), err)
	}
	return nil
}

// KV is one raw key and value with its lease.
type KV struct {
	Key   string
	Value []byte
	Lease int64
}

// List returns every key under prefix and the store revision it was read at.
func (c *Client) List(ctx context.Context, prefix string) ([]KV, int64, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	resp, err := c.cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("etcd get %s*: %w", prefix, err)
	}
	out := make([]KV, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out = append(out, KV{Key: string(kv.Key), Value: kv.Value, Lease: kv.Lease})
	}
	return out, resp.Header.Revision, nil
}

// Get returns one value; found is false when the key does not exist.
func (c *Client) Get(ctx context.Context, key string) (value []byte, found bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	resp, err := c.cli.Get(ctx, key)
	if err != nil {
		return nil, false, fmt.Errorf("etcd get %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, false, nil
	}
	return resp.Kvs[0].Value, true, nil
}

// Put writes key=value, attached to lease when lease is non-zero.
func (c *Client) Put(ctx context.Context, key, value string, lease int64) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var opts []clientv3.OpOption
	if lease != 0 {
		opts = append(opts, clientv3.WithLease(clientv3.LeaseID(lease)))
	}
	if _, err := c.cli.Put(ctx, key, value, opts...); err != nil {
		if isLeaseNotFound(err) {
			return fmt.Errorf("etcd put %s: %w", key, ErrLeaseLost)
		}
		return fmt.Errorf("etcd put %s: %w", key, err)
	}
	return nil
}

// Delete removes a key; a missing key is not an error.
func (c *Client) Delete(ctx context.Context, key string) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	if _, err := c.cli.Delete(ctx, key); err != nil {
		return fmt.Errorf("etcd delete %s: %w", key, err)
	}
	return nil
}
