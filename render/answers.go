package render

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"path"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/upstreamd/upstreamd/internal/wake"
)

// ChallengePrefix is the path the proxy serves HTTP-01 answers under.
const ChallengePrefix = "/.well-known/acme-challenge"

// ChallengePath is where, under View.ACME, the proxy serves the HTTP-01
// answer of token.
func ChallengePath(root, token string) string {
	return path.Join(root, ChallengePrefix, token)
}

// answers records the HTTP-01 answers written into the current proxy, for
// WaitAnswer.
type answers struct {
	changed wake.Fanout // after each set

	mu      sync.Mutex
	written map[string]bool
}

func (a *answers) reset() {
	a.mu.Lock()
	a.written = nil
	a.mu.Unlock()
}

// set records tokens as the answers written, and served: those of the
// challenges in etcd (the files of the others are removed).
func (a *answers) set(tokens []string) {
	a.mu.Lock()
	a.written = make(map[string]bool, len(tokens))
	for _, t := range tokens {
		a.written[t] = true
	}
	a.mu.Unlock()
	a.changed.Wake()
}

// has reports whether token's answer is written.
func (a *answers) has(token string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.written[token]
}

// writeAnswers writes the HTTP-01 answers into the proxy (each file once
// per proxy), before any config of the pass; nginx serves them as they
// are, without a reload, once a config with their location is live. It
// returns their tokens.
func (c *Controller) writeAnswers(ctx context.Context) ([]string, error) {
	if c.cfg.Certs == nil || c.cfg.View.ACME == "" {
		return nil, nil
	}
	all := c.cfg.Certs.Challenges()
	if len(all) == 0 {
		return nil, nil
	}
	files := make(map[string][]byte, len(all))
	for token, auth := range all {
		files[ChallengePath(c.cfg.View.ACME, token)] = []byte(auth)
	}
	if err := c.state.session.WritePublicFiles(ctx, files); err != nil {
		return nil, fmt.Errorf("write ACME challenge answers: %w", err)
	}
	return slices.Collect(maps.Keys(all)), nil
}

// WaitAnswer returns once the running proxy serves keyAuth, the HTTP-01
// answer of token, for host, or with ctx's error. It waits for a pass to
// have written the answer with a config that serves it live, then asks
// the proxy itself, as the CA will, until three new connections in a row
// get the answer: right after a reload, nginx's old workers may still
// take a connection with the config before. With host "", the request
// names the proxy's address (the built-in template serves the answers in
// its default server too).
func (c *Controller) WaitAnswer(ctx context.Context, host, token, keyAuth string) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	changed := c.answers.changed.SubscribeUntil(wctx)
	for !c.answers.has(token) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("the proxy does not serve the answer of ACME token %s yet: %w", token, ctx.Err())
		case <-changed:
		}
	}
	proxy := c.cfg.Host.Proxy()
	if proxy.IP == "" {
		return nil // not reachable from here: the pass's word is all there is
	}
	url := "http://" + net.JoinHostPort(proxy.IP, strconv.Itoa(c.cfg.View.Listen)) + ChallengePrefix + "/" + token
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	var last error
	for good := 0; good < 3; {
		if last = askAnswer(ctx, client, url, host, keyAuth); last == nil {
			good++
		} else {
			good = 0
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the proxy does not serve the answer of ACME token %s for %s: %w", token, host, errors.Join(last, ctx.Err()))
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// askAnswer GETs url with Host host and checks the body is keyAuth.
func askAnswer(ctx context.Context, client *http.Client, url, host, keyAuth string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Host = host
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || string(body) != keyAuth {
		return fmt.Errorf("GET %s (Host %s) answered %s", url, host, resp.Status)
	}
	return nil
}
