package nginx

import (
	"errors"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/upstreamd/upstreamd/containers"
)

// prune is pruneScript on the fake's files: it removes the files directly
// in dirs that no line of stdin names, and prints their paths.
func (p *fakeProxy) prune(dirs []string, stdin []byte) containers.ExecResult {
	keep := map[string]bool{}
	for _, l := range strings.Split(string(stdin), "\n") {
		keep[l] = true
	}
	var out strings.Builder
	for _, f := range slices.Sorted(func(yield func(string) bool) {
		for f := range p.files {
			if !yield(f) {
				return
			}
		}
	}) {
		if slices.Contains(dirs, path.Dir(f)) && !keep[f] {
			delete(p.files, f)
			out.WriteString(f + "\n")
		}
	}
	return containers.ExecResult{Stdout: []byte(out.String())}
}

const (
	testTLSDir     = "/etc/nginx/upstreamd-tls"
	testAnswersDir = "/etc/nginx/upstreamd-acme/.well-known/acme-challenge"
)

// TestSessionPrune: the first Prune of a Session removes, in one exec,
// every file of the directories that keep does not name (left by an
// earlier daemon or proxy session); after that, a Prune with nothing this
// Session wrote to remove makes no call at all, and a file it removed is
// written again when asked.
func TestSessionPrune(t *testing.T) {
	ctx := t.Context()
	tls := func(name string) string { return path.Join(testTLSDir, name) }
	answer := func(token string) string { return path.Join(testAnswersDir, token) }
	p := newFakeProxy(map[string]string{
		testMain:             testMainConf,
		tls("live.crt"):      "live cert",
		tls("live.key"):      "live key",
		tls("old.crt"):       "old cert",
		tls("old.key"):       "old key",
		tls("half.key.tmp"):  "a write cut short",
		answer("tok_done"):   "done.x",
		answer("tok_asked"):  "asked.x",
		"/etc/nginx/x.conf":  "not ours",
		"/etc/nginx/tls.key": "not in the directories",
	})
	s := newTestSession(p, "proxy-1")
	dirs := []string{testTLSDir, testAnswersDir}
	if err := s.WriteFiles(ctx, map[string][]byte{tls("new.crt"): []byte("new cert"), tls("new.key"): []byte("new key")}); err != nil {
		t.Fatal(err)
	}
	p.take()
	keep := map[string]bool{tls("live.crt"): true, tls("live.key"): true, tls("new.crt"): true, tls("new.key"): true, answer("tok_asked"): true}

	removed, err := s.Prune(ctx, dirs, keep)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{answer("tok_done"), tls("half.key.tmp"), tls("old.crt"), tls("old.key")}; !slices.Equal(removed, want) {
		t.Errorf("removed %q; want %q", removed, want)
	}
	if got := p.take(); !slices.Equal(got, []string{"Exec proxy-1"}) {
		t.Errorf("calls %q; want one exec", got)
	}
	for f := range keep {
		if _, ok := p.file(f); !ok {
			t.Errorf("%s, kept, was removed", f)
		}
	}
	for _, f := range []string{"/etc/nginx/x.conf", "/etc/nginx/tls.key", testMain} {
		if _, ok := p.file(f); !ok {
			t.Errorf("%s, outside the directories, was removed", f)
		}
	}

	// Nothing new to remove: no call.
	for range 3 {
		if removed, err := s.Prune(ctx, dirs, keep); err != nil || len(removed) != 0 {
			t.Errorf("Prune again = %q, %v; want nothing", removed, err)
		}
	}
	if got := p.take(); len(got) != 0 {
		t.Errorf("calls %q with nothing to remove; want none", got)
	}

	// The certificate replaced: its files go, in one exec.
	delete(keep, tls("new.crt"))
	delete(keep, tls("new.key"))
	removed, err = s.Prune(ctx, dirs, keep)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{tls("new.crt"), tls("new.key")}; !slices.Equal(removed, want) {
		t.Errorf("removed %q; want %q", removed, want)
	}
	if got := p.take(); !slices.Equal(got, []string{"Exec proxy-1"}) {
		t.Errorf("calls %q; want one exec", got)
	}
	// Asked for again, it is written again.
	if err := s.WriteFiles(ctx, map[string][]byte{tls("new.key"): []byte("new key")}); err != nil {
		t.Fatal(err)
	}
	if got, ok := p.file(tls("new.key")); !ok || got != "new key" {
		t.Errorf("new.key = %q, %v after writing it again", got, ok)
	}

	// A failed exec is an error, and the next Prune tries again.
	p.take()
	p.execErr = errors.New("engine gone")
	if _, err := s.Prune(ctx, dirs, keep); err == nil || !strings.Contains(err.Error(), "engine gone") {
		t.Errorf("Prune with the engine gone = %v", err)
	}
	p.execErr = nil
	removed, err = s.Prune(ctx, dirs, keep)
	if err != nil || !slices.Equal(removed, []string{tls("new.key")}) {
		t.Errorf("Prune after the failure = %q, %v; want new.key removed", removed, err)
	}

	// A new Session (a restarted daemon) sweeps again, once.
	p.take()
	s = newTestSession(p, "proxy-1")
	if _, err := s.Prune(ctx, dirs, keep); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Prune(ctx, dirs, keep); err != nil {
		t.Fatal(err)
	}
	if got := p.take(); !slices.Equal(got, []string{"Exec proxy-1"}) {
		t.Errorf("a new Session's calls %q; want one exec", got)
	}
}

// TestPruneScript runs pruneScript with sh on real directories: what
// stdin does not name goes, and only that.
func TestPruneScript(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh here")
	}
	root := t.TempDir()
	tlsDir, answers, missing := filepath.Join(root, "tls"), filepath.Join(root, "acme"), filepath.Join(root, "none")
	for _, d := range []string{tlsDir, answers, filepath.Join(tlsDir, "sub")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := []string{"tls/a.crt", "tls/a.key", "tls/b.crt", "tls/b.key", "tls/b.key.tmp", "tls/sub/c.key", "acme/tok_1", "acme/tok-2", "x.key"}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(root, f), []byte(f), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	keep := strings.Join([]string{filepath.Join(tlsDir, "a.crt"), filepath.Join(tlsDir, "a.key"), filepath.Join(answers, "tok-2"), filepath.Join(root, "x.key")}, "\n") + "\n"
	cmd := exec.Command(sh, "-c", pruneScript, "upstreamd-prune", tlsDir, answers, missing)
	cmd.Stdin = strings.NewReader(keep)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pruneScript: %v: %s", err, out)
	}
	want := []string{filepath.Join(tlsDir, "b.crt"), filepath.Join(tlsDir, "b.key"), filepath.Join(tlsDir, "b.key.tmp"), filepath.Join(answers, "tok_1")}
	slices.Sort(want)
	got := strings.Fields(string(out))
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("removed %q; want %q", got, want)
	}
	for _, f := range files {
		_, err := os.Stat(filepath.Join(root, f))
		if gone := slices.Contains(want, filepath.Join(root, f)); gone != errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: gone=%v, stat error %v", f, gone, err)
		}
	}
}
