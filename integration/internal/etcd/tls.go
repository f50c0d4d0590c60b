package etcd

import (
	"context"
	"fmt"
	"time"

	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/upstreamd/upstreamd/integration/internal/pki"
)

// TLSContainer is an etcd node that serves clients over TLS only and
// requires a client certificate signed by the test CA.
type TLSContainer struct {
	*testcontainers.DockerContainer
}

// Where RunTLS puts the certificates inside the container.
const (
	tlsDir        = "/etc/etcd-tls"
	tlsCA         = tlsDir + "/ca.pem"
	tlsServerCert = tlsDir + "/server.pem"
	tlsServerKey  = tlsDir + "/server-key.pem"
)

// RunTLS starts etcd from image (not through the etcd module, whose command
// line is plain http) with the server certificate and CA of certs, and
// waits until it serves clients: over TLS, etcd 3.4 logs "serving client
// traffic securely" ("ready to serve client requests" is for plain http).
// On error the returned container, if not nil, must still be terminated.
func RunTLS(ctx context.Context, image string, certs pki.Files) (*TLSContainer, error) {
	c, err := testcontainers.Run(ctx, image,
		testcontainers.WithExposedPorts("2379/tcp"),
		testcontainers.WithFiles(
			testcontainers.ContainerFile{HostFilePath: certs.CA, ContainerFilePath: tlsCA, FileMode: 0o644},
			testcontainers.ContainerFile{HostFilePath: certs.ServerCert, ContainerFilePath: tlsServerCert, FileMode: 0o644},
			testcontainers.ContainerFile{HostFilePath: certs.ServerKey, ContainerFilePath: tlsServerKey, FileMode: 0o600},
		),
		testcontainers.WithCmd("etcd", "--name", "tls", "--data-dir", "/tmp/etcd",
			"--listen-client-urls", "https://0.0.0.0:2379",
			"--advertise-client-urls", "https://127.0.0.1:2379",
			"--cert-file", tlsServerCert, "--key-file", tlsServerKey,
			"--trusted-ca-file", tlsCA, "--client-cert-auth"),
		testcontainers.WithWaitStrategy(wait.ForLog("serving client traffic securely").
			WithStartupTimeout(60*time.Second).WithPollInterval(50*time.Millisecond)),
	)
	var out *TLSContainer
	if c != nil {
		out = &TLSContainer{c}
	}
	if err != nil {
		return out, fmt.Errorf("run etcd with TLS from %s: %w", image, err)
	}
	return out, nil
}

// ClientURL returns the https client URL on 127.0.0.1, the address the
// server certificate names.
func (c *TLSContainer) ClientURL(ctx context.Context) (string, error) {
	p, err := c.MappedPort(ctx, "2379/tcp")
	if err != nil {
		return "", fmt.Errorf("etcd client port: %w", err)
	}
	return "https://127.0.0.1:" + p.Port(), nil
}
