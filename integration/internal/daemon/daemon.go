// Package daemon builds the upstreamd binary once and runs it as a child
// process for tests, capturing its logs.
package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Build compiles ./cmd/upstreamd of the module at root into dir.
func Build(ctx context.Context, root, dir string) (string, error) {
	bin := filepath.Join(dir, "upstreamd")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/upstreamd")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/upstreamd: %w\n%s", err, out)
	}
	return bin, nil
}

// Process is a running daemon.
type Process struct {
	cmd  *exec.Cmd
	logs *syncBuffer
	done chan struct{}
	err  error
}

// Start runs bin with args; its stderr and stdout go to the log buffer and,
// when not nil, to echo.
func Start(bin string, args []string, echo io.Writer) (*Process, error) {
	p := &Process{logs: &syncBuffer{}, done: make(chan struct{})}
	var w io.Writer = p.logs
	if echo != nil {
		w = io.MultiWriter(p.logs, echo)
	}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout = w
	p.cmd.Stderr = w
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Logs returns everything the process wrote so far.
func (p *Process) Logs() string { return p.logs.String() }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err returns how the process exited (nil for exit status 0); call it once
// Done is closed.
func (p *Process) Err() error {
	<-p.done
	return p.err
}

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) error {
	select {
	case <-p.done:
		return errors.New("process already exited")
	default:
	}
	return p.cmd.Process.Signal(sig)
}

// Stop sends SIGTERM and waits up to timeout for the exit, then kills it.
// It returns the process's exit error (nil for a clean exit).
func (p *Process) Stop(timeout time.Duration) error {
	_ = p.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("daemon did not stop within %s after SIGTERM", timeout)
	}
}

// Kill sends SIGKILL and waits for the exit.
func (p *Process) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// WaitLog waits until the logs contain substr, or the timeout passes.
func (p *Process) WaitLog(ctx context.Context, substr string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		changed := p.logs.changed() // before reading, so no write is missed
		if strings.Contains(p.Logs(), substr) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("daemon logs do not contain %q after %s", substr, timeout)
		case <-p.done:
			return fmt.Errorf("daemon exited (%w) before logging %q", p.err, substr)
		case <-changed:
		}
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent writes and reads, with a
// notification on each write.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	ch  chan struct{}
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ch != nil {
		close(b.ch)
		b.ch = nil
	}
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *syncBuffer) changed() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ch == nil {
		b.ch = make(chan struct{})
	}
	return b.ch
}

// Pid returns the process ID.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// RSS returns the resident set size of the process in bytes, from /proc.
func (p *Process) RSS() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Pid()))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb int64
			if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%d kB", &kb); err != nil {
				return 0, fmt.Errorf("parse VmRSS %q: %w", rest, err)
			}
			return kb * 1024, nil
		}
	}
	return 0, errors.New("no VmRSS in /proc status")
}
