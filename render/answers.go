package render

import (
	"context"
	"fmt"
	"maps"
	"path"
	"slices"
	"sync"

	"github.com/upstreamd/upstreamd/internal/wake"
	"github.com/upstreamd/upstreamd/nginx"
)

// ChallengePrefix is the path the proxy serves HTTP-01 answers under
// (nginx's, which asks for them there).
const ChallengePrefix = nginx.ChallengePrefix

// ChallengePath is where, under View.ACME, the proxy serves the HTTP-01
// answer of token.
func ChallengePath(root, token string) string {
	return path.Join(root, ChallengePrefix, token)
}

// answers records the HTTP-01 answers written into the current proxy, for
// WaitAnswerLive.
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

// WaitAnswerLive returns once a pass wrote the HTTP-01 answer of token
// into the running proxy with a config that serves it live, or with ctx's
// error. Whether the proxy answers with it is for nginx.WaitAnswer to ask.
func (c *Controller) WaitAnswerLive(ctx context.Context, token string) error {
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
	return nil
}
