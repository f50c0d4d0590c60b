package nginx

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"

	"github.com/upstreamd/upstreamd/containers"
)

// How a config goes live, once per Session: a check config is written next
// to nginx's main config, the main config with its include of the live file
// pointed at a staging name instead (checkConfig). Each delivery is then one
// exec: the candidate arrives on stdin and is written under the staging
// name, `nginx -t` runs against the check config, and only if it passes is
// the candidate renamed over the live file (an atomic rename on the same
// volume); then nginx is sent SIGHUP. So the live file only ever holds
// configs that passed, and it stays the last good one when a check fails.

func (s *Session) stagedPath() string {
	return path.Join(path.Dir(s.cfg.MainPath), ".upstreamd-staged-"+path.Base(s.cfg.ConfigPath))
}

func (s *Session) checkPath() string {
	return path.Join(path.Dir(s.cfg.MainPath), ".upstreamd-check-"+path.Base(s.cfg.MainPath))
}

// tokenPath is where the pools API token lives in the proxy (the Lua
// module reads /etc/nginx/upstreamd/token).
func (s *Session) tokenPath() string {
	return path.Join(path.Dir(s.cfg.MainPath), "upstreamd", "token")
}

// liveConfig returns the config live in the proxy: from memory when this
// Session put it there or read it before, otherwise read from the
// container. found is false when there is no live file yet.
func (s *Session) liveConfig(ctx context.Context) (cfg []byte, found bool, err error) {
	if s.liveKnown {
		return s.live, true, nil
	}
	b, err := s.cfg.Docker.ReadFile(ctx, s.proxy.ID, s.cfg.ConfigPath)
	if containers.IsNotFound(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	s.live, s.liveKnown = b, true
	return b, true, nil
}

// Deliver makes cfg live in the proxy. It reports changed=false and does
// nothing when cfg is already live (unless the HUP after putting it there
// failed: then it sends that HUP). A config nginx rejects returns a
// *CheckError (matching ErrCheckFailed), and nothing live changes.
func (s *Session) Deliver(ctx context.Context, cfg []byte) (changed bool, err error) {
	live, found, err := s.liveConfig(ctx)
	if err != nil {
		return false, fmt.Errorf("deliver config: %w", err)
	}
	if found && bytes.Equal(live, cfg) {
		if !s.hupOwed {
			return false, nil
		}
		// The bytes went live but the HUP after them failed: send it now.
		return s.reload(ctx)
	}
	if err := s.ensureCheck(ctx); err != nil {
		return false, fmt.Errorf("deliver config: %w", err)
	}
	res, err := s.cfg.Docker.ExecWithStdin(ctx, s.proxy.ID, []string{"sh", "-c", deliverScript, "upstreamd-deliver",
		s.checkPath(), s.stagedPath(), s.cfg.ConfigPath}, cfg)
	if err != nil {
		return false, fmt.Errorf("deliver config: %w", err)
	}
	switch res.ExitCode {
	case 0:
	case exitRejected:
		return false, s.rejected(res)
	case exitNoCheck:
		s.checkWritten = false // written again on the retry
		return false, fmt.Errorf("deliver config: check config %s vanished from the proxy", s.checkPath())
	case exitNoHUP:
		// Live, but nginx was not told: the retry sends HUP through the
		// engine instead.
		s.live, s.liveKnown, s.hupOwed = cfg, true, true
		return true, fmt.Errorf("deliver config: reload: kill -HUP 1 in the proxy failed: %s", res.Output())
	default:
		return false, fmt.Errorf("deliver config: exit code %d: %s", res.ExitCode, res.Output())
	}
	s.live, s.liveKnown, s.hupOwed = cfg, true, false
	return true, nil
}

// rejected is the CheckError of a candidate nginx rejected with res.
func (s *Session) rejected(res containers.ExecResult) *CheckError {
	return &CheckError{Message: strings.ReplaceAll(res.Output(), s.stagedPath(), s.cfg.ConfigPath+" (candidate)")}
}

// deliverScript runs in the proxy with $1 the check config, $2 the staged
// candidate and $3 the live file: write the candidate from stdin, check it,
// only if nginx accepts it rename it over the live file (same volume, so
// atomic), and send nginx HUP: one round trip to the engine for a reload.
// nginx's master is the container's PID 1 (as for the engine's own kill).
// Each step has its own exit code.
const deliverScript = `[ -f "$1" ] || exit 93
cat > "$2" || exit 90
nginx -t -q -c "$1" || exit 91
mv -f "$2" "$3" || exit 92
kill -HUP 1 || exit 94`

// Exit codes of deliverScript that mean something to Deliver.
const (
	exitRejected = 91 // nginx -t failed: the candidate is invalid
	exitNoCheck  = 93 // the check config is missing
	exitNoHUP    = 94 // live, but the HUP failed
)

// Check runs `nginx -t` on cfg as the rendered file, as Deliver would,
// and changes nothing: the candidate is removed afterwards. A rejection
// is a *CheckError (matching ErrCheckFailed).
func (s *Session) Check(ctx context.Context, cfg []byte) error {
	if err := s.ensureCheck(ctx); err != nil {
		return fmt.Errorf("check config: %w", err)
	}
	res, err := s.cfg.Docker.ExecWithStdin(ctx, s.proxy.ID, []string{"sh", "-c", checkScript, "upstreamd-check",
		s.checkPath(), s.stagedPath()}, cfg)
	if err != nil {
		return fmt.Errorf("check config: %w", err)
	}
	switch res.ExitCode {
	case 0:
		return nil
	case exitRejected:
		return s.rejected(res)
	default:
		return fmt.Errorf("check config: exit code %d: %s", res.ExitCode, res.Output())
	}
}

// checkScript is deliverScript without the swap: the candidate is removed
// whatever nginx says.
const checkScript = `[ -f "$1" ] || exit 93
cat > "$2" || exit 90
nginx -t -q -c "$1" || { rm -f "$2"; exit 91; }
rm -f "$2"`

// ensureCheck writes the check config into the proxy, once per Session.
func (s *Session) ensureCheck(ctx context.Context) error {
	if s.checkWritten {
		return nil
	}
	if s.main == nil {
		main, err := s.cfg.Docker.ReadFile(ctx, s.proxy.ID, s.cfg.MainPath)
		if err != nil {
			return fmt.Errorf("read main config: %w", err)
		}
		s.main = main
	}
	check, err := checkConfig(checkInput{
		Main:       s.main,
		MainPath:   s.cfg.MainPath,
		ConfigPath: s.cfg.ConfigPath,
		StagedPath: s.stagedPath(),
		ListDir: func(dir string) ([]string, error) {
			return s.cfg.Docker.ReadDir(ctx, s.proxy.ID, dir)
		},
	})
	if err != nil {
		return err
	}
	if err := s.cfg.Docker.CopyFiles(ctx, s.proxy.ID, path.Dir(s.checkPath()), []containers.File{
		{Path: path.Base(s.checkPath()), Data: check},
	}); err != nil {
		return fmt.Errorf("write check config: %w", err)
	}
	s.checkWritten = true
	return nil
}

// reload sends HUP to the proxy. When that fails it records that a HUP is
// owed, so that the caller's retry of the same bytes sends it instead of
// finding them live and reporting no change.
func (s *Session) reload(ctx context.Context) (changed bool, err error) {
	err = s.cfg.Docker.Signal(ctx, s.proxy.ID, "HUP")
	s.hupOwed = err != nil
	if err != nil {
		return true, fmt.Errorf("deliver config: reload: %w", err)
	}
	return true, nil
}

// poolsToken returns the pools API token of the proxy's data volume,
// creating it when missing. It is random per volume and never logged.
func (s *Session) poolsToken(ctx context.Context) (string, error) {
	if s.token != "" {
		return s.token, nil
	}
	b, err := s.cfg.Docker.ReadFile(ctx, s.proxy.ID, s.tokenPath())
	switch {
	case err == nil && len(b) >= 16:
		s.token = string(b)
		return s.token, nil
	case err != nil && !containers.IsNotFound(err):
		return "", fmt.Errorf("read pools token: %w", err)
	}
	buf := make([]byte, 16)
	if _, err := rand.Read(buf); err != nil {
		return "", fmt.Errorf("make pools token: %w", err)
	}
	tok := hex.EncodeToString(buf)
	if err := s.cfg.Docker.CopyFiles(ctx, s.proxy.ID, path.Dir(s.cfg.MainPath), []containers.File{
		{Path: "upstreamd/token", Data: []byte(tok)},
	}); err != nil {
		return "", fmt.Errorf("write pools token: %w", err)
	}
	s.token = tok
	return tok, nil
}

// writeFileScript writes stdin to $2 through a temporary file, with umask
// $1: 077 (mode 0600) for keys, which nginx's workers must not read (the
// master reads them); 022 for what the workers serve.
const writeFileScript = `umask "$1"
mkdir -p "$(dirname "$2")" || exit 1
cat > "$2.tmp" || exit 1
mv -f "$2.tmp" "$2"`

// WriteFiles writes the files (by path) into the proxy, readable by root
// only, those this session has not written yet. Their names are their
// content's hash, so nothing the live config reads changes; the config
// that names them is delivered, and checked with them, after.
func (s *Session) WriteFiles(ctx context.Context, files map[string][]byte) error {
	return s.writeFiles(ctx, files, "077")
}

// WritePublicFiles is WriteFiles for files nginx's workers serve as they
// are (ACME challenge answers): readable by all.
func (s *Session) WritePublicFiles(ctx context.Context, files map[string][]byte) error {
	return s.writeFiles(ctx, files, "022")
}

func (s *Session) writeFiles(ctx context.Context, files map[string][]byte, umask string) error {
	for _, p := range slices.Sorted(maps.Keys(files)) {
		if s.written[p] {
			continue
		}
		res, err := s.cfg.Docker.ExecWithStdin(ctx, s.proxy.ID, []string{"sh", "-c", writeFileScript, "upstreamd-write", umask, p}, files[p])
		if err != nil {
			return fmt.Errorf("write %s: %w", p, err)
		}
		if res.ExitCode != 0 {
			return fmt.Errorf("write %s: exit code %d: %s", p, res.ExitCode, res.Output())
		}
		if s.written == nil {
			s.written = map[string]bool{}
		}
		s.written[p] = true
	}
	return nil
}
