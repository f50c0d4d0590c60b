// Package load is a small, bounded HTTP/1.1 keep-alive load generator for
// tests and benchmarks. Each worker keeps one raw TCP connection and sends
// GET requests on it one after another, the way wrk does: unlike
// net/http's client it never retries silently, so a keep-alive connection
// that the server closes under a request is counted as a transport error.
package load

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Config bounds a load run.
type Config struct {
	// Addr is host:port, e.g. 127.0.0.1:8080.
	Addr string
	// Path is the request path; default "/".
	Path string
	// Workers is the number of connections; default 4.
	Workers int
	// Duration bounds the run; default 10 s, at most 10 minutes.
	Duration time.Duration
	// MaxRequests bounds the total; default 1,000,000.
	MaxRequests int
	// Timeout bounds one request; default 5 s.
	Timeout time.Duration
	// Pause is a wait between a worker's requests; zero means none.
	Pause time.Duration
}

// Sample is one request's outcome.
type Sample struct {
	At      time.Time     // when the request was sent
	Latency time.Duration // until the response was read
	Status  int           // 0 on a transport error
	Host    string        // backend hostname parsed from the body
	Err     string        // transport error
}

// Result summarises a run.
type Result struct {
	Requests  int
	OK        int // 2xx
	Non2xx    int
	Errors    int // transport errors (connect, reset, EOF, timeout)
	ByHost    map[string]int
	ErrorKind map[string]int
	Samples   []Sample
	Elapsed   time.Duration
}

// Failed is non-2xx plus transport errors.
func (r Result) Failed() int { return r.Non2xx + r.Errors }

// Percentile returns the p-th percentile (0-100) of latencies.
func (r Result) Percentile(p float64) time.Duration {
	if len(r.Samples) == 0 {
		return 0
	}
	l := make([]time.Duration, 0, len(r.Samples))
	for _, s := range r.Samples {
		l = append(l, s.Latency)
	}
	sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	i := int(p / 100 * float64(len(l)-1))
	return l[i]
}

// String is a one-line summary.
func (r Result) String() string {
	return fmt.Sprintf("%d requests in %s: %d ok, %d non-2xx, %d transport errors %v; hosts %v",
		r.Requests, r.Elapsed.Round(time.Millisecond), r.OK, r.Non2xx, r.Errors, r.ErrorKind, r.ByHost)
}

// Runner is a load run in the background.
type Runner struct {
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	res    Result
	start  time.Time
}

// Start begins a run; Stop ends it and returns the result.
func Start(ctx context.Context, cfg Config) *Runner {
	if cfg.Path == "" {
		cfg.Path = "/"
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 4
	}
	if cfg.Duration <= 0 {
		cfg.Duration = 10 * time.Second
	}
	cfg.Duration = min(cfg.Duration, 10*time.Minute)
	if cfg.MaxRequests <= 0 {
		cfg.MaxRequests = 1_000_000
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	r := &Runner{cancel: cancel, done: make(chan struct{}), start: time.Now(),
		res: Result{ByHost: map[string]int{}, ErrorKind: map[string]int{}}}
	budget := &atomic.Int64{}
	budget.Store(int64(cfg.MaxRequests))
	var wg sync.WaitGroup
	for i := 0; i < cfg.Workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.worker(ctx, cfg, budget)
		}()
	}
	go func() {
		wg.Wait()
		r.mu.Lock()
		r.res.Elapsed = time.Since(r.start)
		r.mu.Unlock()
		close(r.done)
	}()
	return r
}

// Run runs to completion (duration or request bound) and returns the result.
func Run(ctx context.Context, cfg Config) Result {
	r := Start(ctx, cfg)
	<-r.done
	return r.Result()
}

// Stop ends the run and returns its result.
func (r *Runner) Stop() Result {
	r.cancel()
	<-r.done
	return r.Result()
}

// Result returns a copy of the result so far.
func (r *Runner) Result() Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.res
	out.ByHost = make(map[string]int, len(r.res.ByHost))
	for k, v := range r.res.ByHost {
		out.ByHost[k] = v
	}
	out.ErrorKind = make(map[string]int, len(r.res.ErrorKind))
	for k, v := range r.res.ErrorKind {
		out.ErrorKind[k] = v
	}
	out.Samples = append([]Sample(nil), r.res.Samples...)
	if out.Elapsed == 0 {
		out.Elapsed = time.Since(r.start)
	}
	return out
}

func (r *Runner) record(s Sample) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.res.Requests++
	r.res.Samples = append(r.res.Samples, s)
	switch {
	case s.Err != "":
		r.res.Errors++
		r.res.ErrorKind[s.Err]++
	case s.Status >= 200 && s.Status < 300:
		r.res.OK++
		r.res.ByHost[s.Host]++
	default:
		r.res.Non2xx++
		r.res.ErrorKind[fmt.Sprintf("status %d", s.Status)]++
	}
}

var hostMarker = []byte("hostname: ")

func (r *Runner) worker(ctx context.Context, cfg Config, budget *atomic.Int64) {
	req := []byte("GET " + cfg.Path + " HTTP/1.1\r\nHost: " + cfg.Addr + "\r\nUser-Agent: upstreamd-load\r\n\r\n")
	var conn net.Conn
	var br *bufio.Reader
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	for {
		if ctx.Err() != nil || budget.Add(-1) < 0 {
			return
		}
		if conn == nil {
			d := net.Dialer{Timeout: cfg.Timeout}
			c, err := d.DialContext(ctx, "tcp", cfg.Addr)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				r.record(Sample{At: time.Now(), Err: "connect: " + classify(err)})
				pause(ctx, 10*time.Millisecond) // do not spin on a refused port
				continue
			}
			conn, br = c, bufio.NewReader(c)
		}
		at := time.Now()
		_ = conn.SetDeadline(at.Add(cfg.Timeout))
		s := Sample{At: at}
		keep := false
		if _, err := conn.Write(req); err != nil {
			s.Err = "write: " + classify(err)
		} else if resp, err := http.ReadResponse(br, nil); err != nil {
			s.Err = "read: " + classify(err)
		} else {
			body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			if err != nil {
				s.Err = "body: " + classify(err)
			} else {
				s.Status = resp.StatusCode
				s.Host = parseHost(body)
				keep = !resp.Close
			}
		}
		s.Latency = time.Since(at)
		if ctx.Err() != nil && s.Err != "" {
			return // the run ended under this request: not the server's fault
		}
		r.record(s)
		if !keep {
			conn.Close()
			conn = nil
		}
		if cfg.Pause > 0 {
			pause(ctx, cfg.Pause)
		}
	}
}

func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func parseHost(body []byte) string {
	i := bytes.Index(body, hostMarker)
	if i < 0 {
		return ""
	}
	rest := body[i+len(hostMarker):]
	if j := bytes.IndexAny(rest, "\r\n<"); j >= 0 {
		rest = rest[:j]
	}
	return string(bytes.TrimSpace(rest))
}

// classify names an error by kind so results group well.
func classify(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "EOF"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		var se interface{ Unwrap() error }
		if errors.As(op.Err, &se) {
			return se.Unwrap().Error()
		}
		return op.Err.Error()
	}
	return err.Error()
}
