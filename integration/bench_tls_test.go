//go:build integration && bench

package integration

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/stretchr/testify/require"
)

// tlsRow is one line of TestBenchTLS.
type tlsRow struct {
	Name       string  `json:"name"`
	Requests   int     `json:"requests"`
	Errors     int     `json:"errors"`
	PerSecond  float64 `json:"per_second"`
	LatencyP50 float64 `json:"latency_p50_ms"`
	LatencyP99 float64 `json:"latency_p99_ms"`
}

// hammer sends GETs from workers clients for d and returns the row.
func hammer(ctx context.Context, name string, workers int, d time.Duration, client func() *http.Client, url, host string) tlsRow {
	var mu sync.Mutex
	var lat []time.Duration
	errs := 0
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Go(func() {
			c := client()
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
				req.Host = host
				t0 := time.Now()
				resp, err := c.Do(req)
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
				}
				took := time.Since(t0)
				if ctx.Err() != nil {
					return // cut by the end of the run: not counted
				}
				mu.Lock()
				if err != nil || resp.StatusCode != http.StatusOK {
					errs++
				} else {
					lat = append(lat, took)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) float64 {
		if len(lat) == 0 {
			return 0
		}
		return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000
	}
	return tlsRow{Name: name, Requests: len(lat) + errs, Errors: errs, PerSecond: float64(len(lat)) / elapsed.Seconds(),
		LatencyP50: pct(0.50), LatencyP99: pct(0.99)}
}

// TestBenchTLS is part of `make bench`: through the real nginx with 3
// Apache backends, new connections and keep-alive requests per second
// over plain HTTP and over TLS (HTTP/1.1 and HTTP/2), side by side; then a
// certificate change (a daemon restarted with a new key pair) under load,
// counting failed requests. It prints a table and writes
// bench-tls.json (BENCH_TLS_OUT).
func TestBenchTLS(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	ca.issue(t, dir, "site", "site.example")
	tlsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	certs := fmt.Sprintf("[[tls.certificate]]\ncert_file = %q\nkey_file = %q\n", filepath.Join(dir, "site.pem"), filepath.Join(dir, "site.key"))
	s := newStack(t, withProxyTOML(fmt.Sprintf("publish_tls = %q", tlsAddr)), withExtraTOML(certs))
	d := s.startDaemon()
	s.waitConverged(3, 90*time.Second)
	eventually(t, 30*time.Second, "TLS answers", func() error {
		code, _, _, _, err := getTLS(t, ca, tlsAddr, "site.example")
		if err == nil && code != http.StatusOK {
			err = fmt.Errorf("status %d", code)
		}
		return err
	})

	const workers, each = 8, 5 * time.Second
	tlsCfg := &tls.Config{RootCAs: ca.Pool, ServerName: "site.example"}
	plainNew := func() *http.Client {
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	}
	plainKeep := func() *http.Client { return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{}} }
	tlsNew := func() *http.Client {
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg.Clone(), DisableKeepAlives: true,
			TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}}
	}
	tlsKeep := func() *http.Client {
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg.Clone(),
			TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}}
	}
	h2 := &http.Transport{TLSClientConfig: tlsCfg.Clone(), ForceAttemptHTTP2: true} // one connection, multiplexed
	tlsH2 := func() *http.Client { return &http.Client{Timeout: 5 * time.Second, Transport: h2} }
	plainURL, tlsURL := "http://"+s.publish+"/", "https://"+tlsAddr+"/"

	ctx := t.Context()
	rows := []tlsRow{
		hammer(ctx, "plain HTTP, a new connection per request", workers, each, plainNew, plainURL, "site.example"),
		hammer(ctx, "TLS, a new connection (full handshake) per request", workers, each, tlsNew, tlsURL, "site.example"),
		hammer(ctx, "plain HTTP/1.1 keep-alive", workers, each, plainKeep, plainURL, "site.example"),
		hammer(ctx, "TLS HTTP/1.1 keep-alive", workers, each, tlsKeep, tlsURL, "site.example"),
		hammer(ctx, "TLS HTTP/2, one connection", workers, each, tlsH2, tlsURL, "site.example"),
	}

	// A certificate change under load: new connections and keep-alive
	// ones through TLS while the daemon restarts with a new key pair.
	before, err := os.ReadFile(filepath.Join(dir, "site.pem"))
	require.NoError(t, err)
	var change tlsRow
	done := make(chan struct{})
	go func() {
		defer close(done)
		change = hammer(ctx, "certificate change under TLS load (new connections)", workers/2, 20*time.Second, tlsNew, tlsURL, "site.example")
	}()
	time.Sleep(2 * time.Second) // load before the change
	require.NoError(t, d.Stop(20*time.Second))
	ca.issue(t, dir, "site", "site.example")
	s.startDaemon()
	eventually(t, 15*time.Second, "the new certificate served", func() error {
		c := tlsNew()
		resp, err := c.Get(tlsURL)
		if err != nil {
			return err
		}
		_ = resp.Body.Close()
		if string(pemOf(resp.TLS.PeerCertificates[0].Raw)) == string(before) {
			return fmt.Errorf("still the old certificate")
		}
		return nil
	})
	<-done
	rows = append(rows, change)

	var sb strings.Builder
	tw := tabwriter.NewWriter(&sb, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SCENARIO (8 workers, 5 s)\tREQUESTS\tERRORS\tPER SECOND\tLAT p50/p99 ms")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.0f\t%.1f/%.1f\n", r.Name, r.Requests, r.Errors, r.PerSecond, r.LatencyP50, r.LatencyP99)
	}
	_ = tw.Flush()
	t.Logf("\n%s\nTLS/plain: new connections %.2f, keep-alive %.2f (HTTP/2 %.2f)", sb.String(),
		rows[1].PerSecond/rows[0].PerSecond, rows[3].PerSecond/rows[2].PerSecond, rows[4].PerSecond/rows[2].PerSecond)
	out := os.Getenv("BENCH_TLS_OUT")
	if out == "" {
		out = "../bench-tls.json"
	}
	data, _ := json.MarshalIndent(rows, "", "  ")
	require.NoError(t, os.WriteFile(out, data, 0o644))
	require.Zero(t, change.Errors, "requests failed while the certificate changed")
}

// pemOf is a DER certificate as the PEM file it was written to.
func pemOf(der []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}) }
