package nginx

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// statusRequest is what a test status server received.
type statusRequest struct {
	method, path, token, contentType, body string
}

// newStatusServer serves status and body for every request and records
// the requests. It returns the server's host:port.
func newStatusServer(t *testing.T, status int, body string) (string, func() []statusRequest) {
	t.Helper()
	var mu sync.Mutex
	var reqs []statusRequest
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("read request body: %v", err)
		}
		mu.Lock()
		reqs = append(reqs, statusRequest{method: r.Method, path: r.URL.Path, token: r.Header.Get("X-Upstreamd-Token"),
			contentType: r.Header.Get("Content-Type"), body: string(b)})
		mu.Unlock()
		w.WriteHeader(status)
		if _, err := io.WriteString(w, body); err != nil {
			t.Errorf("write response: %v", err)
		}
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), func() []statusRequest {
		mu.Lock()
		defer mu.Unlock()
		return append([]statusRequest(nil), reqs...)
	}
}

// closedAddr returns a host:port where nothing listens any more.
func closedAddr(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.NotFoundHandler())
	addr := strings.TrimPrefix(srv.URL, "http://")
	srv.Close()
	return addr
}

func TestStatusPushPools(t *testing.T) {
	const (
		token = "0123456789abcdef0123456789abcdef"
		body  = "7\napache 10.0.0.1:80 10.0.0.2:80\nstatic\n"
	)
	tests := []struct {
		name         string
		status       int    // 0: nothing listens
		answer       string // response body
		wantErr      bool
		wantNoServer bool     // the error matches ErrNoStatusServer
		wantInErr    []string // substrings of the error
	}{
		{name: "accepted", status: http.StatusOK, answer: "ok 7\n"},
		{name: "no pools API in the live config", status: http.StatusNotFound, wantErr: true, wantNoServer: true, wantInErr: []string{"404"}},
		{name: "a static config's status server", status: http.StatusMethodNotAllowed, answer: "<html>405 Not Allowed</html>", wantErr: true, wantNoServer: true, wantInErr: []string{"405"}},
		{name: "wrong token", status: http.StatusForbidden, answer: "<html>403 Forbidden</html>\n", wantErr: true, wantInErr: []string{"403"}},
		{name: "bad body", status: http.StatusBadRequest, wantErr: true, wantInErr: []string{"status 400"}},
		{name: "server error", status: http.StatusInternalServerError, answer: "lua error", wantErr: true, wantInErr: []string{"status 500", "lua error"}},
		{name: "connection refused", wantErr: true, wantNoServer: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, requests := closedAddr(t), func() []statusRequest { return nil }
			if tt.status != 0 {
				addr, requests = newStatusServer(t, tt.status, tt.answer)
			}
			c := newStatusClient(5 * time.Second)
			err := c.pushPools(t.Context(), addr, token, []byte(body))
			if (err != nil) != tt.wantErr {
				t.Fatalf("pushPools = %v; want error: %v", err, tt.wantErr)
			}
			if err != nil {
				if got := errors.Is(err, ErrNoStatusServer); got != tt.wantNoServer {
					t.Errorf("errors.Is(%v, ErrNoStatusServer) = %v; want %v", err, got, tt.wantNoServer)
				}
				for _, want := range append([]string{"push pools", addr}, tt.wantInErr...) {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error = %q; want it to contain %q", err, want)
					}
				}
				if strings.Contains(err.Error(), token) {
					t.Errorf("error = %q; want it without the token", err)
				}
			}
			if tt.status == 0 {
				return
			}
			want := statusRequest{method: http.MethodPut, path: "/upstreamd/pools", token: token, contentType: "text/plain", body: body}
			if got := requests(); len(got) != 1 || got[0] != want {
				t.Errorf("requests = %+v; want one: %+v", got, want)
			}
		})
	}
}

func TestStatusConfigHash(t *testing.T) {
	tests := []struct {
		name         string
		status       int // 0: nothing listens
		answer       string
		want         string
		wantErr      bool
		wantNoServer bool
	}{
		{name: "hash", status: http.StatusOK, answer: "config d15d50c6a95aaec1\n", want: "d15d50c6a95aaec1"},
		{name: "hash without newline", status: http.StatusOK, answer: "config d15d50c6a95aaec1", want: "d15d50c6a95aaec1"},
		{name: "another server answers", status: http.StatusOK, answer: "<html>Welcome to nginx!</html>", wantErr: true},
		{name: "empty answer", status: http.StatusOK, answer: "", wantErr: true},
		{name: "no status location", status: http.StatusNotFound, answer: "not found", wantErr: true, wantNoServer: true},
		{name: "connection refused", wantErr: true, wantNoServer: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, requests := closedAddr(t), func() []statusRequest { return nil }
			if tt.status != 0 {
				addr, requests = newStatusServer(t, tt.status, tt.answer)
			}
			c := newStatusClient(5 * time.Second)
			got, err := c.configHash(t.Context(), addr)
			if (err != nil) != tt.wantErr {
				t.Fatalf("configHash = %q, %v; want error: %v", got, err, tt.wantErr)
			}
			if err != nil {
				if isNo := errors.Is(err, ErrNoStatusServer); isNo != tt.wantNoServer {
					t.Errorf("errors.Is(%v, ErrNoStatusServer) = %v; want %v", err, isNo, tt.wantNoServer)
				}
				if !strings.Contains(err.Error(), addr) {
					t.Errorf("error = %q; want it to name %s", err, addr)
				}
			} else if got != tt.want {
				t.Errorf("configHash = %q; want %q", got, tt.want)
			}
			if tt.status == 0 {
				return
			}
			if r := requests(); len(r) != 1 || r[0].method != http.MethodGet || r[0].path != "/upstreamd/status" {
				t.Errorf("requests = %+v; want one GET /upstreamd/status", r)
			}
		})
	}
}

// statusSession returns a Session whose status server is addr (a test
// server on 127.0.0.1) and whose proxy holds the pools token.
func statusSession(t *testing.T, addr string, confirm time.Duration) (*Session, *fakeProxy) {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	p := newFakeProxy(map[string]string{"/etc/nginx/upstreamd/token": "00112233445566778899aabbccddeeff"})
	c := New(Config{Docker: p, ConfigPath: testConfig, MainPath: testMain, StatusPort: n, ConfirmTimeout: confirm})
	return c.Session(Proxy{ID: "proxy-1", IP: host}), p
}

func TestSessionPushPools(t *testing.T) {
	addr, requests := newStatusServer(t, http.StatusOK, "ok 3\n")
	s, p := statusSession(t, addr, time.Second)
	for range 2 {
		if err := s.PushPools(t.Context(), []byte("3\napache 10.0.0.1:80\n")); err != nil {
			t.Fatalf("PushPools: %v", err)
		}
	}
	reqs := requests()
	if len(reqs) != 2 || reqs[0].token != "00112233445566778899aabbccddeeff" || reqs[1].token != reqs[0].token {
		t.Errorf("requests = %+v; want two PUTs with the volume's token", reqs)
	}
	if got, want := p.take(), []string{"ReadFile proxy-1 /etc/nginx/upstreamd/token"}; !slices.Equal(got, want) {
		t.Errorf("docker calls = %q; want %q (the token read once per Session)", got, want)
	}

	noAddr := New(Config{Docker: p, ConfigPath: testConfig, MainPath: testMain, StatusPort: 8099}).Session(Proxy{ID: "proxy-1"})
	if noAddr.HasStatus() {
		t.Error("HasStatus = true for a proxy without an address; want false")
	}
	if err := noAddr.PushPools(t.Context(), []byte("1\n")); !errors.Is(err, ErrNoStatusServer) {
		t.Errorf("PushPools without an address = %v; want ErrNoStatusServer", err)
	}
}

func TestSessionWaitConfig(t *testing.T) {
	addr, _ := newStatusServer(t, http.StatusOK, "config 1111111111111111\n")
	s, _ := statusSession(t, addr, 200*time.Millisecond)
	if _, err := s.WaitConfig(t.Context(), "1111111111111111"); err != nil {
		t.Errorf("WaitConfig of the running hash = %v; want nil", err)
	}
	_, err := s.WaitConfig(t.Context(), "2222222222222222")
	if err == nil {
		t.Fatal("WaitConfig of a hash nginx never answers = nil; want an error")
	}
	for _, want := range []string{"2222222222222222", "200ms", "1111111111111111"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error = %q; want it to contain %q", err, want)
		}
	}
}

// TestSessionPushPoolsTokenRefused: a 403 drops the cached token, so the
// retry reads the volume's token again (it changed behind the Session).
func TestSessionPushPoolsTokenRefused(t *testing.T) {
	addr, _ := newStatusServer(t, http.StatusForbidden, "")
	s, p := statusSession(t, addr, time.Second)
	for range 2 {
		if err := s.PushPools(t.Context(), []byte("1\n")); err == nil {
			t.Fatal("PushPools = nil; want the 403")
		}
	}
	want := []string{"ReadFile proxy-1 /etc/nginx/upstreamd/token", "ReadFile proxy-1 /etc/nginx/upstreamd/token"}
	if got := p.take(); !slices.Equal(got, want) {
		t.Errorf("docker calls = %q; want %q (the token read again after the 403)", got, want)
	}
}

func TestParseEjections(t *testing.T) {
	tests := []struct {
		body    string
		want    Ejections
		wantErr bool
	}{
		{body: "ejections 0\n", want: Ejections{}},
		{body: "ejections 7\ndown 172.18.0.3:80\ndown [fd00::3]:8080\n", want: Ejections{Total: 7, Down: []string{"172.18.0.3:80", "[fd00::3]:8080"}}},
		{body: "ejections 2\ndown 10.0.0.5:32768\ndown-host 10.0.0.5\n", want: Ejections{Total: 2, Down: []string{"10.0.0.5:32768"}, DownHosts: []string{"10.0.0.5"}}},
		{body: "nonsense\n", wantErr: true},
		{body: "ejections many\n", wantErr: true},
	}
	for _, tt := range tests {
		got, err := parseEjections(tt.body)
		if (err != nil) != tt.wantErr {
			t.Errorf("parseEjections(%q) error %v, want error %v", tt.body, err, tt.wantErr)
			continue
		}
		if got.Total != tt.want.Total || strings.Join(got.Down, ",") != strings.Join(tt.want.Down, ",") {
			t.Errorf("parseEjections(%q) = %+v, want %+v", tt.body, got, tt.want)
		}
	}
}
