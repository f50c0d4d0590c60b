package render

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"regexp"
	"strings"
	"sync"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/containers"
)

// ErrCheckFailed: `nginx -t` rejected a candidate config. Retrying the same
// bytes cannot help; the live config was left untouched.
var ErrCheckFailed = errors.New("nginx rejected the config")

// proxyAPI is what the Deliverer needs from the Docker engine.
type proxyAPI interface {
	CopyFiles(ctx context.Context, id, dir string, files []containers.File) error
	ReadFile(ctx context.Context, id, file string) ([]byte, error)
	ReadDir(ctx context.Context, id, dir string) ([]string, error)
	ExecWithStdin(ctx context.Context, id string, cmd []string, stdin []byte) (containers.ExecResult, error)
	Signal(ctx context.Context, id, sig string) error
}

var _ proxyAPI = (*containers.Client)(nil)

// DelivererConfig configures a Deliverer.
type DelivererConfig struct {
	// API reaches the proxy container.
	API proxyAPI
	// ConfigPath is the live rendered file inside the proxy, e.g.
	// /etc/nginx/conf.d/upstreamd.conf.
	ConfigPath string
	// MainPath is nginx's main config inside the proxy, which includes
	// ConfigPath directly or through a glob; e.g. /etc/nginx/nginx.conf.
	MainPath string
	// Logger gets one line per reload and per rejected config.
	Logger zerolog.Logger
}

// Deliverer puts configs live in a proxy container: stage, check, swap, HUP.
//
// Once per proxy container it writes a check config next to nginx's main
// config: the main config with its include of the live file pointed at a
// staging name instead. Each delivery is then one exec: the candidate
// arrives on stdin and is written under the staging name, `nginx -t` runs
// against the check config, and only if it passes is the candidate renamed
// over the live file (an atomic rename on the same volume); then nginx is
// sent SIGHUP. So the live file only ever holds configs that passed, and it
// stays the last good one when a check fails.
type Deliverer struct {
	cfg DelivererConfig
	log zerolog.Logger

	mu    sync.Mutex
	live  map[string][]byte // container ID → bytes known live there
	main  map[string][]byte // container ID → main config
	check map[string][]byte // container ID → check config written there
	token map[string]string // container ID → pools API token
	// hupOwed is a container whose live file was replaced but whose HUP
	// failed: nginx there still runs the previous config.
	hupOwed string
}

// NewDeliverer returns a Deliverer.
func NewDeliverer(cfg DelivererConfig) *Deliverer {
	return &Deliverer{cfg: cfg, log: cfg.Logger, live: map[string][]byte{}, main: map[string][]byte{}, check: map[string][]byte{}, token: map[string]string{}}
}

func (d *Deliverer) stagedPath() string {
	return path.Join(path.Dir(d.cfg.MainPath), ".upstreamd-staged-"+path.Base(d.cfg.ConfigPath))
}

func (d *Deliverer) checkPath() string {
	return path.Join(path.Dir(d.cfg.MainPath), ".upstreamd-check-"+path.Base(d.cfg.MainPath))
}

// Live returns the config live in the container: from memory when this
// Deliverer put it there, otherwise read from the container. found is false
// when there is no live file yet.
func (d *Deliverer) Live(ctx context.Context, id string) (cfg []byte, found bool, err error) {
	d.mu.Lock()
	b, ok := d.live[id]
	d.mu.Unlock()
	if ok {
		return b, true, nil
	}
	b, err = d.cfg.API.ReadFile(ctx, id, d.cfg.ConfigPath)
	if containers.IsNotFound(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	d.remember(id, b)
	return b, true, nil
}

func (d *Deliverer) remember(id string, cfg []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for k := range d.live { // only the current proxy matters
		delete(d.live, k)
	}
	d.live[id] = cfg
}

// Forget drops what is known of a container, so the next Deliver reads the
// live file again (after the proxy or its data volume was recreated).
func (d *Deliverer) Forget(id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.live, id)
	delete(d.main, id)
	delete(d.check, id)
	delete(d.token, id)
}

// Deliver makes cfg live in the proxy container id. It reports changed=false
// and does nothing when cfg is already live (unless the HUP after putting it
// there failed: then it sends that HUP). A config nginx rejects returns
// an error matching ErrCheckFailed with nginx's message, and nothing live
// changes.
func (d *Deliverer) Deliver(ctx context.Context, id string, cfg []byte) (changed bool, err error) {
	live, found, err := d.Live(ctx, id)
	if err != nil {
		return false, fmt.Errorf("deliver config: %w", err)
	}
	if found && bytes.Equal(live, cfg) {
		d.mu.Lock()
		owed := d.hupOwed == id
		d.mu.Unlock()
		if !owed {
			return false, nil
		}
		// The bytes went live but the HUP after them failed: send it now.
		return d.reload(ctx, id)
	}
	if err := d.ensureCheck(ctx, id); err != nil {
		return false, fmt.Errorf("deliver config: %w", err)
	}
	// One exec does the rest: the candidate arrives on stdin.
	res, err := d.cfg.API.ExecWithStdin(ctx, id, []string{"sh", "-c", deliverScript, "upstreamd-deliver",
		d.checkPath(), d.stagedPath(), d.cfg.ConfigPath}, cfg)
	if err != nil {
		return false, fmt.Errorf("deliver config: %w", err)
	}
	switch res.ExitCode {
	case 0:
	case exitRejected:
		return false, fmt.Errorf("%w: %s", ErrCheckFailed, strings.ReplaceAll(res.Output(), d.stagedPath(), d.cfg.ConfigPath+" (candidate)"))
	case exitNoCheck:
		d.mu.Lock()
		delete(d.check, id) // written again on the retry
		d.mu.Unlock()
		return false, fmt.Errorf("deliver config: check config %s vanished from the proxy", d.checkPath())
	default:
		return false, fmt.Errorf("deliver config: exit code %d: %s", res.ExitCode, res.Output())
	}
	d.remember(id, cfg)
	return d.reload(ctx, id)
}

// deliverScript runs in the proxy with $1 the check config, $2 the staged
// candidate and $3 the live file: write the candidate from stdin, check it,
// and only if nginx accepts it rename it over the live file (same volume,
// so atomic). Each step has its own exit code.
const deliverScript = `[ -f "$1" ] || exit 93
cat > "$2" || exit 90
nginx -t -q -c "$1" || exit 91
mv -f "$2" "$3" || exit 92`

// Exit codes of deliverScript that mean something to Deliver.
const (
	exitRejected = 91 // nginx -t failed: the candidate is invalid
	exitNoCheck  = 93 // the check config is missing
)

// tokenPath is where the pools API token lives in the proxy (the Lua
// module reads /etc/nginx/upstreamd/token).
func (d *Deliverer) tokenPath() string {
	return path.Join(path.Dir(d.cfg.MainPath), "upstreamd", "token")
}

// Token returns the pools API token of the proxy's data volume, creating
// it when missing. It is random per volume and never logged.
func (d *Deliverer) Token(ctx context.Context, id string) (string, error) {
	d.mu.Lock()
	tok, ok := d.token[id]
	d.mu.Unlock()
	if ok {
		return tok, nil
	}
	b, err := d.cfg.API.ReadFile(ctx, id, d.tokenPath())
	switch {
	case err == nil && len(b) >= 16:
		tok = string(b)
	case err == nil || containers.IsNotFound(err):
		buf := make([]byte, 16)
		if _, err := rand.Read(buf); err != nil {
			return "", fmt.Errorf("make pools token: %w", err)
		}
		tok = hex.EncodeToString(buf)
		if err := d.cfg.API.CopyFiles(ctx, id, path.Dir(d.cfg.MainPath), []containers.File{
			{Path: "upstreamd/token", Data: []byte(tok)},
		}); err != nil {
			return "", fmt.Errorf("write pools token: %w", err)
		}
	default:
		return "", fmt.Errorf("read pools token: %w", err)
	}
	d.mu.Lock()
	d.token[id] = tok
	d.mu.Unlock()
	return tok, nil
}

// ensureCheck writes the check config into the proxy once per container.
func (d *Deliverer) ensureCheck(ctx context.Context, id string) error {
	d.mu.Lock()
	_, ok := d.check[id]
	d.mu.Unlock()
	if ok {
		return nil
	}
	check, err := d.checkConfig(ctx, id)
	if err != nil {
		return err
	}
	if err := d.cfg.API.CopyFiles(ctx, id, path.Dir(d.checkPath()), []containers.File{
		{Path: path.Base(d.checkPath()), Data: check},
	}); err != nil {
		return fmt.Errorf("write check config: %w", err)
	}
	d.mu.Lock()
	d.check[id] = check
	d.mu.Unlock()
	return nil
}

// reload sends HUP to the proxy. When that fails it records that a HUP is
// owed, so that the caller's retry of the same bytes sends it instead of
// finding them live and reporting no change.
func (d *Deliverer) reload(ctx context.Context, id string) (changed bool, err error) {
	err = d.cfg.API.Signal(ctx, id, "HUP")
	d.mu.Lock()
	if err != nil {
		d.hupOwed = id
	} else if d.hupOwed == id {
		d.hupOwed = ""
	}
	d.mu.Unlock()
	if err != nil {
		return true, fmt.Errorf("deliver config: reload: %w", err)
	}
	return true, nil
}

// checkConfig returns the check config for container id: its main config
// with the include of the live file pointed at the staged candidate.
func (d *Deliverer) checkConfig(ctx context.Context, id string) ([]byte, error) {
	d.mu.Lock()
	main, ok := d.main[id]
	d.mu.Unlock()
	if !ok {
		var err error
		main, err = d.cfg.API.ReadFile(ctx, id, d.cfg.MainPath)
		if err != nil {
			return nil, fmt.Errorf("read main config: %w", err)
		}
		d.mu.Lock()
		d.main[id] = main
		d.mu.Unlock()
	}
	return CheckConfig(CheckInput{
		Main:       main,
		MainPath:   d.cfg.MainPath,
		ConfigPath: d.cfg.ConfigPath,
		StagedPath: d.stagedPath(),
		ListDir: func(dir string) ([]string, error) {
			return d.cfg.API.ReadDir(ctx, id, dir)
		},
	})
}

// CheckInput is what CheckConfig rewrites.
type CheckInput struct {
	Main       []byte // the main config's text
	MainPath   string // where it lives; relative includes resolve from its directory
	ConfigPath string // the live rendered file
	StagedPath string // the candidate that replaces it in the check
	// ListDir lists the file names in a directory; it is called only for a
	// glob include that matches ConfigPath, to keep the glob's other files.
	ListDir func(dir string) ([]string, error)
}

// includeRE finds include directives: the word include, an argument (maybe
// quoted), then a semicolon.
var includeRE = regexp.MustCompile(`(^|[\s;{}])include\s+("[^"]*"|'[^']*'|[^\s;'"]+)\s*;`)

// CheckConfig rewrites a main config so that it includes StagedPath where it
// included ConfigPath, either by name or through a glob (whose other
// matching files stay included). It fails when nothing in the main config
// includes ConfigPath: then the rendered file would never be read.
func CheckConfig(in CheckInput) ([]byte, error) {
	text := stripComments(in.Main)
	base := path.Dir(in.MainPath)
	var out bytes.Buffer
	last, found := 0, false
	// Search again from the end of each argument, not of each match: the
	// match ends with the ';' that may be all that precedes the next
	// include ("include a;include b;").
	for pos := 0; ; {
		m := includeRE.FindSubmatchIndex(text[pos:])
		if m == nil {
			break
		}
		argStart, argEnd := pos+m[4], pos+m[5]
		pos = argEnd
		arg := strings.Trim(string(text[argStart:argEnd]), `"'`)
		full := arg
		if !path.IsAbs(full) {
			full = path.Join(base, full)
		}
		var repl string
		switch {
		case full == in.ConfigPath:
			repl = in.StagedPath
		case hasGlob(full):
			ok, err := path.Match(full, in.ConfigPath)
			if err != nil || !ok {
				continue
			}
			names, err := in.ListDir(path.Dir(full))
			if err != nil {
				return nil, fmt.Errorf("list %s for the check config: %w", path.Dir(full), err)
			}
			parts := []string{in.StagedPath}
			for _, n := range names {
				p := path.Join(path.Dir(full), n)
				if p == in.ConfigPath {
					continue
				}
				if ok, _ := path.Match(full, p); ok {
					parts = append(parts, p)
				}
			}
			repl = strings.Join(parts, "; include ")
		default:
			continue
		}
		found = true
		out.Write(in.Main[last:argStart])
		out.WriteString(repl)
		last = argEnd
	}
	if !found {
		return nil, fmt.Errorf("main config %s includes neither %s nor a glob matching it, so nginx would never read the rendered config", in.MainPath, in.ConfigPath)
	}
	out.Write(in.Main[last:])
	return out.Bytes(), nil
}

func hasGlob(p string) bool { return strings.ContainsAny(p, "*?[") }

// stripComments blanks out # comments (outside quotes) without moving any
// byte, so offsets in the result index the original.
func stripComments(b []byte) []byte {
	out := append([]byte(nil), b...)
	var quote byte
	for i := 0; i < len(out); i++ {
		c := out[i]
		switch {
		case quote != 0:
			if c == '\\' {
				i++
			} else if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '#':
			for ; i < len(out) && out[i] != '\n'; i++ {
				out[i] = ' '
			}
		}
	}
	return out
}
