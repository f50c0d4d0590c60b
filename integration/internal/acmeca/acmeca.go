// Package acmeca runs an ACME test CA for tests: pebble, with
// pebble-challtestsrv as its DNS server, from the locally built
// upstreamd/pebble image (images/pebble), on the host network.
//
// Every name resolves to 127.0.0.1 (and has no AAAA record), so pebble
// validates HTTP-01 challenges by connecting to 127.0.0.1:Options.HTTPPort,
// where the test publishes its proxy. All the CA's own listeners are on free
// 127.0.0.1 ports picked by Run. Pebble makes a new issuing root on every
// start (see CA.Roots); the directory's TLS certificate is a fixed one from
// the image, verified by CA.CAFile.
package acmeca

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/testcontainers/testcontainers-go"
)

// DefaultImage is built by `make images`.
const DefaultImage = "upstreamd/pebble:latest"

// caPath is where the image keeps the CA of the directory's TLS certificate
// (which is valid for localhost, 127.0.0.1 and ::1).
const caPath = "/etc/pebble/ca.pem"

// startTimeout bounds the wait for the directory to answer.
const startTimeout = 60 * time.Second

// Options configure Run.
type Options struct {
	// HTTPPort is where pebble connects, on 127.0.0.1, to validate HTTP-01
	// challenges: the port the test's nginx is published on. Required.
	HTTPPort int
	// CertValidity is the lifetime of the certificates pebble issues,
	// rounded up to whole seconds; 0 keeps pebble's default of 5 years.
	CertValidity time.Duration
	// Dir is an existing directory (a test's t.TempDir()) where Run writes
	// CAFile. Required.
	Dir string
}

// CA is a running pebble.
type CA struct {
	// Directory is the ACME directory URL, https://127.0.0.1:<port>/dir.
	Directory string
	// CAFile is a PEM file with the CA that verifies the TLS certificate of
	// Directory and Management (not the certificates pebble issues).
	CAFile string
	// Management is pebble's management base URL (HTTPS, same certificate
	// as Directory): /roots/0, /intermediates/0, ...
	Management string
	// DNS is the address of the DNS server pebble resolves with
	// (pebble-challtestsrv, UDP and TCP), 127.0.0.1:<port>.
	DNS string
	// ChallTestSrv is pebble-challtestsrv's management base URL (plain
	// HTTP), e.g. for /add-a or /set-default-ipv4.
	ChallTestSrv string

	container *testcontainers.DockerContainer
	client    *http.Client // trusts CAFile
}

// Run starts the CA from image and waits until its directory and management
// interface answer over verified HTTPS. On error nothing is left running; the
// error then includes the container's logs.
func Run(ctx context.Context, image string, opts Options) (*CA, error) {
	if opts.HTTPPort <= 0 || opts.HTTPPort > 65535 {
		return nil, fmt.Errorf("acmeca: invalid Options.HTTPPort %d", opts.HTTPPort)
	}
	if opts.Dir == "" {
		return nil, errors.New("acmeca: Options.Dir is required")
	}
	ports, err := freePorts(5)
	if err != nil {
		return nil, err
	}
	addr := func(i int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[i])) }
	env := map[string]string{ // read by the image's entrypoint, see images/pebble
		"PEBBLE_LISTEN":           addr(0),
		"PEBBLE_MANAGEMENT":       addr(1),
		"PEBBLE_TLS_PORT":         strconv.Itoa(ports[2]),
		"DNS_PORT":                strconv.Itoa(ports[3]),
		"CHALLTESTSRV_MANAGEMENT": addr(4),
		"PEBBLE_HTTP_PORT":        strconv.Itoa(opts.HTTPPort),
	}
	if opts.CertValidity > 0 {
		env["PEBBLE_CERT_VALIDITY"] = strconv.FormatInt(int64((opts.CertValidity+time.Second-1)/time.Second), 10)
	}

	// No wait strategy: with host networking there are no mapped ports for
	// testcontainers' HTTP wait, and it could not verify our CA anyway.
	ctr, err := testcontainers.Run(ctx, image,
		testcontainers.WithEnv(env),
		testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) {
			hc.NetworkMode = "host"
		}))
	c := &CA{
		Directory:    "https://" + addr(0) + "/dir",
		CAFile:       filepath.Join(opts.Dir, "pebble-ca.pem"),
		Management:   "https://" + addr(1),
		DNS:          addr(3),
		ChallTestSrv: "http://" + addr(4),
		container:    ctr,
	}
	if err == nil {
		err = c.start(ctx)
	}
	if err != nil {
		err = fmt.Errorf("acmeca: run %s: %w", image, err)
		if ctr != nil {
			logs := c.Logs(context.WithoutCancel(ctx))
			_ = ctr.Terminate(context.WithoutCancel(ctx))
			err = fmt.Errorf("%w\ncontainer logs:\n%s", err, logs)
		}
		return nil, err
	}
	return c, nil
}

// start copies the CA out of the container and polls until the directory
// and the root certificate are served.
func (c *CA) start(ctx context.Context) error {
	rc, err := c.container.CopyFileFromContainer(ctx, caPath)
	if err != nil {
		return fmt.Errorf("copy %s: %w", caPath, err)
	}
	pem, err := io.ReadAll(rc)
	_ = rc.Close()
	if err != nil {
		return fmt.Errorf("copy %s: %w", caPath, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return fmt.Errorf("no certificate in %s", caPath)
	}
	if err := os.WriteFile(c.CAFile, pem, 0o644); err != nil {
		return err
	}
	c.client = &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}

	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	for {
		_, err = c.get(ctx, c.Directory)
		if err == nil {
			_, err = c.get(ctx, c.Management+"/roots/0")
		}
		if err == nil {
			return nil
		}
		// Fail fast if pebble or challtestsrv exited (so did the entrypoint).
		if st, serr := c.container.State(ctx); serr == nil && !st.Running {
			return fmt.Errorf("container exited (status %d) before the directory answered: %w", st.ExitCode, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("directory not answering after %s: %w", startTimeout, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// get fetches url over HTTPS verified with CAFile and wants 200.
func (c *CA) get(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return body, nil
}

// Roots returns a pool with pebble's issuing root (management /roots/0), to
// verify the certificates it issues. Pebble serves the leaf together with
// its intermediate, so the root alone verifies a served chain; the root is
// new on every start of the container.
func (c *CA) Roots(ctx context.Context) (*x509.CertPool, error) {
	pem, err := c.get(ctx, c.Management+"/roots/0")
	if err != nil {
		return nil, fmt.Errorf("acmeca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("acmeca: no certificate in /roots/0")
	}
	return pool, nil
}

// Logs returns the container's output (pebble's and challtestsrv's logs),
// for test failure messages; on error, the error's text instead.
func (c *CA) Logs(ctx context.Context) string {
	rc, err := c.container.Logs(ctx)
	if err != nil {
		return "acmeca: logs: " + err.Error()
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return string(b) + "\nacmeca: logs: " + err.Error()
	}
	return string(b)
}

// Terminate stops and removes the container.
func (c *CA) Terminate(ctx context.Context) error {
	return c.container.Terminate(ctx)
}

// freePorts returns n distinct free TCP ports on 127.0.0.1 (all listened on
// at once, then released; DNS also uses the same UDP port, assumed free).
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("acmeca: free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
