package nginx

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestWaitAnswer: the proxy is asked for an HTTP-01 answer as the CA
// will (the challenge path, the host's name, a new connection each time)
// until three answers in a row are right: right after a reload, an old
// worker may still answer with the config before.
func TestWaitAnswer(t *testing.T) {
	const (
		token   = "tok_0123456789abcdef"
		keyAuth = token + ".thumbprint"
	)
	tests := []struct {
		name    string
		host    string
		answers []int // per request: 200 with keyAuth, 201 with another body, else that status; the last repeats
		timeout time.Duration
		want    int    // requests made
		wantErr string // "": WaitAnswer returns nil
	}{
		{name: "served", host: "a.example", answers: []int{200}, want: 3},
		{name: "no host: the proxy's address", answers: []int{200}, want: 3},
		{name: "served after a reload", host: "a.example", answers: []int{404, 404, 200}, want: 5},
		{name: "an old worker answers in between", host: "a.example", answers: []int{200, 200, 201, 200}, want: 6},
		{name: "never served", host: "a.example", answers: []int{404}, timeout: 300 * time.Millisecond,
			wantErr: "the proxy does not serve the answer of ACME token " + token + " for a.example: GET http://"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			var hosts []string
			conns := 0
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				n := len(hosts)
				hosts = append(hosts, r.Host)
				mu.Unlock()
				if r.URL.Path != ChallengePrefix+"/"+token {
					http.NotFound(w, r)
					return
				}
				switch code := tt.answers[min(n, len(tt.answers)-1)]; code {
				case 200:
					_, _ = w.Write([]byte(keyAuth))
				case 201:
					_, _ = w.Write([]byte("another answer"))
				default:
					w.WriteHeader(code)
				}
			}))
			srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
				if s == http.StateNew {
					mu.Lock()
					conns++
					mu.Unlock()
				}
			}
			srv.Start()
			defer srv.Close()
			addr := strings.TrimPrefix(srv.URL, "http://")
			ctx := t.Context()
			if tt.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.timeout)
				defer cancel()
			}
			err := WaitAnswer(ctx, addr, tt.host, token, keyAuth)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("WaitAnswer = %v; want nil", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, context.DeadlineExceeded)):
				t.Fatalf("WaitAnswer = %v; want an error saying %q and matching the deadline", err, tt.wantErr)
			}
			mu.Lock()
			defer mu.Unlock()
			if tt.wantErr == "" && len(hosts) != tt.want {
				t.Errorf("%d requests; want %d", len(hosts), tt.want)
			}
			if conns != len(hosts) {
				t.Errorf("%d connections for %d requests; want a new one each", conns, len(hosts))
			}
			wantHost := tt.host
			if wantHost == "" {
				wantHost = addr
			}
			for i, h := range hosts {
				if h != wantHost {
					t.Errorf("request %d named host %q; want %q", i, h, wantHost)
				}
			}
		})
	}
}
