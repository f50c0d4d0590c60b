package nginx

import (
	"context"
	"errors"
	"fmt"
	"path"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/containers"
)

// fakeProxy is a proxy container's file system plus the calls made to it.
// ExecWithStdin runs the Deliverer's script: it writes stdin to the staged
// file and, when exit is zero, moves it over the live one, as `mv -f` would.
type fakeProxy struct {
	mu        sync.Mutex
	files     map[string][]byte
	calls     []string // one line per call, e.g. "ReadFile /etc/nginx/nginx.conf"
	copies    [][]containers.File
	execs     [][]string
	stdins    []string
	signals   []string
	exit      int    // exit code of the next Execs (after writing the staged file)
	hupFails  bool   // the script's kill -HUP 1 fails (exit 94, after the swap)
	stderr    string // stderr of the next Execs
	readErr   error  // returned by ReadFile when set
	copyErr   error  // returned by CopyFiles when set
	execErr   error  // returned by Exec when set
	signalErr error  // returned by Signal when set
}

var _ dockerAPI = (*fakeProxy)(nil)

func newFakeProxy(files map[string]string) *fakeProxy {
	p := &fakeProxy{files: map[string][]byte{}}
	for k, v := range files {
		p.files[k] = []byte(v)
	}
	return p
}

func (p *fakeProxy) CopyFiles(_ context.Context, id, dir string, files []containers.File) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	names := make([]string, 0, len(files))
	for _, f := range files {
		names = append(names, f.Path)
	}
	p.calls = append(p.calls, fmt.Sprintf("CopyFiles %s %s %v", id, dir, names))
	if p.copyErr != nil {
		return p.copyErr
	}
	for _, f := range files {
		p.files[path.Join(dir, f.Path)] = append([]byte(nil), f.Data...)
	}
	p.copies = append(p.copies, files)
	return nil
}

func (p *fakeProxy) ReadFile(_ context.Context, id, file string) ([]byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls = append(p.calls, fmt.Sprintf("ReadFile %s %s", id, file))
	if p.readErr != nil {
		return nil, p.readErr
	}
	b, ok := p.files[file]
	if !ok {
		return nil, fmt.Errorf("read %s from container %s: %w", file, id, containers.ErrNotFound)
	}
	return append([]byte(nil), b...), nil
}

func (p *fakeProxy) ReadDir(_ context.Context, id, dir string) ([]string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls = append(p.calls, fmt.Sprintf("ReadDir %s %s", id, dir))
	var names []string
	for f := range p.files {
		if path.Dir(f) == dir {
			names = append(names, path.Base(f))
		}
	}
	sort.Strings(names)
	return names, nil
}

func (p *fakeProxy) ExecWithStdin(_ context.Context, id string, cmd []string, stdin []byte) (containers.ExecResult, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls = append(p.calls, fmt.Sprintf("Exec %s", id))
	p.execs = append(p.execs, cmd)
	p.stdins = append(p.stdins, string(stdin))
	if p.execErr != nil {
		return containers.ExecResult{}, p.execErr
	}
	switch cmd[3] { // sh -c script name args...
	case "upstreamd-write": // umask path
		p.files[cmd[5]] = append([]byte(nil), stdin...)
		return containers.ExecResult{}, nil
	case "upstreamd-prune": // dirs...
		return p.prune(cmd[4:], stdin), nil
	case "upstreamd-check": // check staged: the candidate is removed whatever nginx says
		if _, ok := p.files[cmd[4]]; !ok {
			return containers.ExecResult{ExitCode: exitNoCheck}, nil
		}
		return containers.ExecResult{ExitCode: p.exit, Stderr: []byte(p.stderr)}, nil
	}
	n := len(cmd) // sh -c script name check staged live
	check, staged, live := cmd[n-3], cmd[n-2], cmd[n-1]
	if _, ok := p.files[check]; !ok {
		return containers.ExecResult{ExitCode: exitNoCheck}, nil
	}
	p.files[staged] = append([]byte(nil), stdin...)
	if p.exit != 0 {
		return containers.ExecResult{ExitCode: p.exit, Stderr: []byte(p.stderr)}, nil
	}
	p.files[live] = p.files[staged]
	delete(p.files, staged)
	if p.hupFails {
		return containers.ExecResult{ExitCode: exitNoHUP, Stderr: []byte("kill: permission denied")}, nil
	}
	p.signals = append(p.signals, "HUP (script)")
	return containers.ExecResult{}, nil
}

func (p *fakeProxy) Signal(_ context.Context, id, sig string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls = append(p.calls, fmt.Sprintf("Signal %s %s", id, sig))
	if p.signalErr != nil {
		return p.signalErr
	}
	p.signals = append(p.signals, sig)
	return nil
}

// take returns the calls recorded so far and forgets them.
func (p *fakeProxy) take() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.calls
	p.calls = nil
	return c
}

func (p *fakeProxy) file(name string) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b, ok := p.files[name]
	return string(b), ok
}

const testMainConf = "http {\n    include /etc/nginx/mime.types;\n    include /etc/nginx/conf.d/*.conf;\n}\n"

// newTestSession returns a Session with the proxy container id of p.
func newTestSession(p *fakeProxy, id string) *Session {
	return New(Config{Docker: p, ConfigPath: testConfig, MainPath: testMain, Logger: zerolog.Nop()}).Session(Proxy{ID: id})
}

func TestDeliverUnchanged(t *testing.T) {
	p := newFakeProxy(map[string]string{testMain: testMainConf, testConfig: "old"})
	d := newTestSession(p, "proxy-1")
	ctx := t.Context()
	for i, wantCalls := range [][]string{
		{"ReadFile proxy-1 " + testConfig}, // first time: read what is live
		nil,                                // then known from memory
	} {
		changed, err := d.Deliver(ctx, []byte("old"))
		if err != nil {
			t.Fatalf("Deliver #%d: %v", i, err)
		}
		if changed {
			t.Errorf("Deliver #%d changed = true; want false for the live bytes", i)
		}
		if got := p.take(); !slices.Equal(got, wantCalls) {
			t.Errorf("Deliver #%d calls = %q; want %q (no CopyFiles, Exec or Signal)", i, got, wantCalls)
		}
	}
}

func TestDeliverNewConfig(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		cfg   string
	}{
		{name: "replaces the live file", files: map[string]string{testMain: testMainConf, testConfig: "old", "/etc/nginx/conf.d/default.conf": "x"}, cfg: "new"},
		{name: "live file does not exist yet", files: map[string]string{testMain: testMainConf, "/etc/nginx/conf.d/default.conf": "x"}, cfg: "first"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newFakeProxy(tt.files)
			d := newTestSession(p, "proxy-1")
			changed, err := d.Deliver(t.Context(), []byte(tt.cfg))
			if err != nil {
				t.Fatalf("Deliver: %v", err)
			}
			if !changed {
				t.Errorf("changed = false; want true")
			}
			wantCalls := []string{
				"ReadFile proxy-1 " + testConfig,
				"ReadFile proxy-1 " + testMain,
				"ReadDir proxy-1 /etc/nginx/conf.d",
				"CopyFiles proxy-1 /etc/nginx [.upstreamd-check-nginx.conf]",
				"Exec proxy-1",
			}
			if got := p.take(); !slices.Equal(got, wantCalls) {
				t.Errorf("calls =\n%q\nwant\n%q", got, wantCalls)
			}
			if len(p.copies) != 1 || len(p.copies[0]) != 1 {
				t.Fatalf("copies = %v; want one copy of the check file", p.copies)
			}
			wantCheck := "http {\n    include /etc/nginx/mime.types;\n    include " + testStaged + "; include /etc/nginx/conf.d/default.conf;\n}\n"
			if got := string(p.copies[0][0].Data); got != wantCheck {
				t.Errorf("check file =\n%s\nwant\n%s", got, wantCheck)
			}
			wantExec := []string{"sh", "-c", deliverScript, "upstreamd-deliver", testCheck, testStaged, testConfig}
			if len(p.execs) != 1 || !slices.Equal(p.execs[0], wantExec) {
				t.Errorf("execs = %q; want one: %q", p.execs, wantExec)
			}
			if len(p.stdins) != 1 || p.stdins[0] != tt.cfg {
				t.Errorf("exec stdin = %q; want the candidate %q", p.stdins, tt.cfg)
			}
			if live, _ := p.file(testConfig); live != tt.cfg {
				t.Errorf("live file = %q; want %q", live, tt.cfg)
			}
			if !slices.Equal(p.signals, []string{"HUP (script)"}) {
				t.Errorf("signals = %q; want one HUP, from the delivery's own exec", p.signals)
			}
			// Delivering the same bytes again is a no-op.
			changed, err = d.Deliver(t.Context(), []byte(tt.cfg))
			if err != nil || changed {
				t.Errorf("second Deliver = %v, %v; want false, nil", changed, err)
			}
			if got := p.take(); len(got) != 0 {
				t.Errorf("second Deliver calls = %q; want none", got)
			}
		})
	}
}

func TestDeliverCheckFailed(t *testing.T) {
	p := newFakeProxy(map[string]string{testMain: testMainConf, testConfig: "good"})
	d := newTestSession(p, "proxy-1")
	ctx := t.Context()
	p.exit = exitRejected
	p.stderr = `nginx: [emerg] host not found in upstream "nope:80" in ` + testStaged + ":3\nnginx: configuration file " + testCheck + " test failed\n"

	changed, err := d.Deliver(ctx, []byte("bad"))
	if !errors.Is(err, ErrCheckFailed) {
		t.Fatalf("Deliver error = %v; want it to match ErrCheckFailed", err)
	}
	if changed {
		t.Errorf("changed = true; want false")
	}
	for _, want := range []string{`host not found in upstream "nope:80"`, testConfig + " (candidate):3"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error = %q; want it to contain %q", err, want)
		}
	}
	if strings.Contains(err.Error(), testStaged) {
		t.Errorf("error = %q; want the staging name replaced by the live file's", err)
	}
	// nginx's own words, without the sentinel's text in front, for the
	// status and the events.
	wantMsg := `nginx: [emerg] host not found in upstream "nope:80" in ` + testConfig + " (candidate):3\nnginx: configuration file " + testCheck + " test failed"
	var ce *CheckError
	if !errors.As(err, &ce) {
		t.Fatalf("Deliver error = %#v; want a *CheckError", err)
	}
	if ce.Message != wantMsg {
		t.Errorf("CheckError.Message = %q; want %q", ce.Message, wantMsg)
	}
	if want := "nginx rejected the config: " + wantMsg; err.Error() != want {
		t.Errorf("error = %q; want %q", err, want)
	}
	p.take()
	if err := d.Check(ctx, []byte("bad")); !errors.As(err, &ce) || ce.Message != wantMsg {
		t.Errorf("Check error = %#v; want a *CheckError saying %q", err, wantMsg)
	}
	if len(p.signals) != 0 {
		t.Errorf("signals = %q; want none after a failed check", p.signals)
	}
	if live, _ := p.file(testConfig); live != "good" {
		t.Errorf("live file = %q; want the last good config", live)
	}

	// The last good config is still known live; a different config goes
	// through once nginx accepts it.
	p.take()
	p.exit, p.stderr = 0, ""
	changed, err = d.Deliver(ctx, []byte("fixed"))
	if err != nil || !changed {
		t.Fatalf("Deliver after a failed check = %v, %v; want true, nil", changed, err)
	}
	wantCalls := []string{
		"Exec proxy-1",
	}
	if got := p.take(); !slices.Equal(got, wantCalls) {
		t.Errorf("calls = %q; want %q (check config, main config and live file remembered)", got, wantCalls)
	}
	if live, _ := p.file(testConfig); live != "fixed" {
		t.Errorf("live file = %q; want %q", live, "fixed")
	}
	// And the good config, being no longer live, is delivered again.
	if changed, err := d.Deliver(ctx, []byte("good")); err != nil || !changed {
		t.Errorf("Deliver of the previous config = %v, %v; want true, nil", changed, err)
	}
}

func TestDeliverErrors(t *testing.T) {
	tests := []struct {
		name      string
		files     map[string]string
		setup     func(p *fakeProxy)
		wantErr   []string
		wantCheck bool // error matches ErrCheckFailed
		wantCalls []string
	}{
		{
			name:      "reading the live file fails",
			files:     map[string]string{testMain: testMainConf},
			setup:     func(p *fakeProxy) { p.readErr = errors.New("engine unreachable") },
			wantErr:   []string{"deliver config", "engine unreachable"},
			wantCalls: []string{"ReadFile proxy-1 " + testConfig},
		},
		{
			name:      "main config missing",
			files:     map[string]string{testConfig: "old"},
			wantErr:   []string{"read main config", testMain},
			wantCalls: []string{"ReadFile proxy-1 " + testConfig, "ReadFile proxy-1 " + testMain},
		},
		{
			name:      "main config does not include the live file",
			files:     map[string]string{testMain: "http { include /etc/nginx/sites-enabled/*; }", testConfig: "old"},
			wantErr:   []string{testMain, testConfig},
			wantCalls: []string{"ReadFile proxy-1 " + testConfig, "ReadFile proxy-1 " + testMain},
		},
		{
			name:    "exec fails to run",
			files:   map[string]string{testMain: testMainConf, testConfig: "old"},
			setup:   func(p *fakeProxy) { p.execErr = errors.New("exec: container not running") },
			wantErr: []string{"deliver config", "container not running"},
			wantCalls: []string{"ReadFile proxy-1 " + testConfig, "ReadFile proxy-1 " + testMain, "ReadDir proxy-1 /etc/nginx/conf.d",
				"CopyFiles proxy-1 /etc/nginx [.upstreamd-check-nginx.conf]", "Exec proxy-1"},
		},
		{
			name:      "nginx -t fails",
			files:     map[string]string{testMain: testMainConf, testConfig: "old"},
			setup:     func(p *fakeProxy) { p.exit, p.stderr = exitRejected, "nginx: [emerg] unexpected \"}\"" },
			wantErr:   []string{`unexpected "}"`},
			wantCheck: true,
			wantCalls: []string{"ReadFile proxy-1 " + testConfig, "ReadFile proxy-1 " + testMain, "ReadDir proxy-1 /etc/nginx/conf.d",
				"CopyFiles proxy-1 /etc/nginx [.upstreamd-check-nginx.conf]", "Exec proxy-1"},
		},
		{
			name:    "renaming the candidate fails: not a rejection, retried",
			files:   map[string]string{testMain: testMainConf, testConfig: "old"},
			setup:   func(p *fakeProxy) { p.exit, p.stderr = 92, "mv: cannot move: No space left on device" },
			wantErr: []string{"exit code 92", "No space left"},
			wantCalls: []string{"ReadFile proxy-1 " + testConfig, "ReadFile proxy-1 " + testMain, "ReadDir proxy-1 /etc/nginx/conf.d",
				"CopyFiles proxy-1 /etc/nginx [.upstreamd-check-nginx.conf]", "Exec proxy-1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newFakeProxy(tt.files)
			if tt.setup != nil {
				tt.setup(p)
			}
			d := newTestSession(p, "proxy-1")
			changed, err := d.Deliver(t.Context(), []byte("new"))
			if err == nil {
				t.Fatalf("Deliver = %v, nil; want an error", changed)
			}
			if changed {
				t.Errorf("changed = true; want false")
			}
			if got := errors.Is(err, ErrCheckFailed); got != tt.wantCheck {
				t.Errorf("errors.Is(%v, ErrCheckFailed) = %v; want %v", err, got, tt.wantCheck)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error = %q; want it to contain %q", err, want)
				}
			}
			if got := p.take(); !slices.Equal(got, tt.wantCalls) {
				t.Errorf("calls =\n%q\nwant\n%q (never a Signal)", got, tt.wantCalls)
			}
		})
	}
}

func TestDeliverSignalFailureIsRetried(t *testing.T) {
	p := newFakeProxy(map[string]string{testMain: testMainConf, testConfig: "old"})
	d := newTestSession(p, "proxy-1")
	ctx := t.Context()
	p.hupFails = true
	p.signalErr = errors.New("engine timeout")
	changed, err := d.Deliver(ctx, []byte("new"))
	if err == nil || !strings.Contains(err.Error(), "reload") || errors.Is(err, ErrCheckFailed) {
		t.Fatalf("Deliver error = %v; want a reload error that is not ErrCheckFailed", err)
	}
	if !changed {
		t.Errorf("changed = false; want true (the live file was replaced)")
	}
	// The file is live but nginx never got its HUP: delivering the same
	// bytes again must send it, not report "unchanged".
	p.take()
	p.signalErr = nil
	changed, err = d.Deliver(ctx, []byte("new"))
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	if got, want := p.take(), []string{"Signal proxy-1 HUP"}; !slices.Equal(got, want) {
		t.Errorf("retry calls = %q; want %q", got, want)
	}
	if !changed {
		t.Errorf("retry changed = false; want true (nginx was reloaded)")
	}
	// Now it is really live.
	if changed, err := d.Deliver(ctx, []byte("new")); err != nil || changed {
		t.Errorf("third Deliver = %v, %v; want false, nil", changed, err)
	}
	if got := p.take(); len(got) != 0 {
		t.Errorf("third Deliver calls = %q; want none", got)
	}
}

func TestDeliverNewSession(t *testing.T) {
	p := newFakeProxy(map[string]string{testMain: testMainConf, testConfig: "old"})
	d := newTestSession(p, "proxy-1")
	ctx := t.Context()
	if _, err := d.Deliver(ctx, []byte("v1")); err != nil {
		t.Fatal(err)
	}
	p.take()

	// The proxy's volume is recreated behind the Deliverer's back: the live
	// file is gone and the main config changed.
	p.mu.Lock()
	delete(p.files, testConfig)
	p.files[testMain] = []byte("http { include /etc/nginx/conf.d/upstreamd.conf; }")
	p.mu.Unlock()

	// The old Session trusts its memory.
	if changed, err := d.Deliver(ctx, []byte("v1")); err != nil || changed {
		t.Fatalf("Deliver before a new Session = %v, %v; want false, nil", changed, err)
	}
	if got := p.take(); len(got) != 0 {
		t.Errorf("calls before a new Session = %q; want none", got)
	}

	d = newTestSession(p, "proxy-1")
	changed, err := d.Deliver(ctx, []byte("v1"))
	if err != nil || !changed {
		t.Fatalf("Deliver in a new Session = %v, %v; want true, nil", changed, err)
	}
	wantCalls := []string{
		"ReadFile proxy-1 " + testConfig, // read the live file again
		"ReadFile proxy-1 " + testMain,   // and the main config
		"CopyFiles proxy-1 /etc/nginx [.upstreamd-check-nginx.conf]",
		"Exec proxy-1",
	}
	if got := p.take(); !slices.Equal(got, wantCalls) {
		t.Errorf("calls in a new Session =\n%q\nwant\n%q", got, wantCalls)
	}
	if got, want := string(p.copies[len(p.copies)-1][0].Data), "http { include "+testStaged+"; }"; got != want {
		t.Errorf("check file = %q; want %q (from the new main config)", got, want)
	}

	// A new Session reads a live file that already holds the bytes and
	// recognises them: no reload.
	d = newTestSession(p, "proxy-1")
	if changed, err := d.Deliver(ctx, []byte("v1")); err != nil || changed {
		t.Errorf("Deliver of the live bytes in a new Session = %v, %v; want false, nil", changed, err)
	}
	if got, want := p.take(), []string{"ReadFile proxy-1 " + testConfig}; !slices.Equal(got, want) {
		t.Errorf("calls = %q; want %q", got, want)
	}
}

func TestDeliverNewProxy(t *testing.T) {
	p := newFakeProxy(map[string]string{testMain: testMainConf, testConfig: "old"})
	d := newTestSession(p, "proxy-1")
	ctx := t.Context()
	if _, err := d.Deliver(ctx, []byte("v1")); err != nil {
		t.Fatal(err)
	}
	p.take()
	// A different container ID is a different proxy: its live file is read.
	changed, err := newTestSession(p, "proxy-2").Deliver(ctx, []byte("v1"))
	if err != nil {
		t.Fatal(err)
	}
	if changed {
		t.Errorf("changed = true; want false (the shared volume already holds v1)")
	}
	if got, want := p.take(), []string{"ReadFile proxy-2 " + testConfig}; !slices.Equal(got, want) {
		t.Errorf("calls = %q; want %q", got, want)
	}
}

func TestDeliverRewritesVanishedCheckConfig(t *testing.T) {
	p := newFakeProxy(map[string]string{testMain: testMainConf, testConfig: "old"})
	d := newTestSession(p, "proxy-1")
	ctx := t.Context()
	if _, err := d.Deliver(ctx, []byte("v1")); err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	delete(p.files, testCheck) // someone cleaned the volume
	p.mu.Unlock()
	p.take()

	_, err := d.Deliver(ctx, []byte("v2"))
	if err == nil || errors.Is(err, ErrCheckFailed) || !strings.Contains(err.Error(), "vanished") {
		t.Fatalf("Deliver error = %v; want a retryable error saying the check config vanished", err)
	}
	if live, _ := p.file(testConfig); live != "v1" {
		t.Errorf("live file = %q; want v1 untouched", live)
	}
	changed, err := d.Deliver(ctx, []byte("v2"))
	if err != nil || !changed {
		t.Fatalf("retry = %v, %v; want true, nil", changed, err)
	}
	want := []string{"Exec proxy-1", "ReadDir proxy-1 /etc/nginx/conf.d", "CopyFiles proxy-1 /etc/nginx [.upstreamd-check-nginx.conf]", "Exec proxy-1"}
	if got := p.take(); !slices.Equal(got, want) {
		t.Errorf("calls = %q; want %q (the check config written again)", got, want)
	}
}

func TestDeliverToken(t *testing.T) {
	const (
		tokenFile = "/etc/nginx/upstreamd/token"
		existing  = "00112233445566778899aabbccddeeff"
	)
	readToken := "ReadFile proxy-1 " + tokenFile
	writeToken := "CopyFiles proxy-1 /etc/nginx [upstreamd/token]"
	hex32 := regexp.MustCompile(`^[0-9a-f]{32}$`)
	tests := []struct {
		name      string
		files     map[string]string
		setup     func(p *fakeProxy)
		want      string   // the token; empty: a new random one
		wantErr   []string // substrings of the error; empty means success
		wantCalls []string
	}{
		{name: "existing token is read", files: map[string]string{tokenFile: existing}, want: existing, wantCalls: []string{readToken}},
		{name: "missing token is created", wantCalls: []string{readToken, writeToken}},
		{name: "too short a token is replaced", files: map[string]string{tokenFile: "short"}, wantCalls: []string{readToken, writeToken}},
		{
			name:      "reading fails",
			files:     map[string]string{tokenFile: existing},
			setup:     func(p *fakeProxy) { p.readErr = errors.New("engine unreachable") },
			wantErr:   []string{"read pools token", "engine unreachable"},
			wantCalls: []string{readToken},
		},
		{
			name:      "writing fails",
			setup:     func(p *fakeProxy) { p.copyErr = errors.New("no space left on device") },
			wantErr:   []string{"write pools token", "no space left"},
			wantCalls: []string{readToken, writeToken},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newFakeProxy(tt.files)
			if tt.setup != nil {
				tt.setup(p)
			}
			d := newTestSession(p, "proxy-1")
			tok, err := d.poolsToken(t.Context())
			if got := p.take(); !slices.Equal(got, tt.wantCalls) {
				t.Errorf("calls = %q; want %q", got, tt.wantCalls)
			}
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatalf("Token = %q, nil; want an error", tok)
				}
				for _, want := range tt.wantErr {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error = %q; want it to contain %q", err, want)
					}
				}
				// A failure is not remembered: the next call tries again.
				p.readErr, p.copyErr = nil, nil
				if _, err := d.poolsToken(t.Context()); err != nil {
					t.Errorf("Token after the failure went away = %v; want nil", err)
				}
				if got := p.take(); len(got) == 0 || got[0] != readToken {
					t.Errorf("calls after a failure = %q; want the token read again", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			switch {
			case tt.want != "" && tok != tt.want:
				t.Errorf("Token = %q; want %q", tok, tt.want)
			case tt.want == "" && !hex32.MatchString(tok):
				t.Errorf("Token = %q; want 32 hex digits", tok)
			}
			if f, _ := p.file(tokenFile); f != tok {
				t.Errorf("%s holds %q; want the token %q", tokenFile, f, tok)
			}
			// Cached: the second call asks the proxy nothing.
			if again, err := d.poolsToken(t.Context()); err != nil || again != tok {
				t.Errorf("second Token = %q, %v; want %q, nil", again, err, tok)
			}
			if got := p.take(); len(got) != 0 {
				t.Errorf("second Token calls = %q; want none", got)
			}
			// A new Session reads the file again (and does not rewrite it).
			if again, err := newTestSession(p, "proxy-1").poolsToken(t.Context()); err != nil || again != tok {
				t.Errorf("Token in a new Session = %q, %v; want %q, nil", again, err, tok)
			}
			if got := p.take(); !slices.Equal(got, []string{readToken}) {
				t.Errorf("calls in a new Session = %q; want %q", got, []string{readToken})
			}
		})
	}
}

func TestDeliverTokenRandomPerVolume(t *testing.T) {
	seen := map[string]bool{}
	for i := range 5 {
		tok, err := newTestSession(newFakeProxy(nil), "proxy-1").poolsToken(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if seen[tok] {
			t.Fatalf("token #%d %q was made before; want a random token per volume", i, tok)
		}
		seen[tok] = true
	}
}

func TestDeliverTokenPerContainer(t *testing.T) {
	p := newFakeProxy(map[string]string{"/etc/nginx/upstreamd/token": "00112233445566778899aabbccddeeff"})
	for _, id := range []string{"proxy-1", "proxy-2"} {
		if _, err := newTestSession(p, id).poolsToken(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	// Another container has its own volume: its token is read, not taken
	// from the first one's.
	want := []string{"ReadFile proxy-1 /etc/nginx/upstreamd/token", "ReadFile proxy-2 /etc/nginx/upstreamd/token"}
	if got := p.take(); !slices.Equal(got, want) {
		t.Errorf("calls = %q; want %q", got, want)
	}
}
