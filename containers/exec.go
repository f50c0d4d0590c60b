package containers

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"
)

// ExecResult is the outcome of a command run inside a container.
type ExecResult struct {
	ExitCode int
	Stdout   []byte
	Stderr   []byte
}

// Output returns stderr and stdout together, trimmed, for error messages
// (nginx writes `nginx -t` results on stderr; exec failures arrive on stdout).
func (r ExecResult) Output() string {
	return string(bytes.TrimSpace(append(append([]byte{}, r.Stderr...), r.Stdout...)))
}

// maxExecOutput bounds how much of a command's output is kept.
const maxExecOutput = 1 << 20

// ExecWithStdin runs cmd in a running container, with stdin fed from the
// given bytes (then closed; nil: no stdin), so a file can be written and
// used in one round trip, and waits for it to finish. A non-zero exit code
// is not an error; failing to run the command is.
func (c *Client) ExecWithStdin(ctx context.Context, id string, cmd []string, stdin []byte) (ExecResult, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	created, err := c.api.ContainerExecCreate(ctx, id, container.ExecOptions{
		Cmd:          cmd,
		AttachStdin:  stdin != nil,
		AttachStdout: true,
		AttachStderr: true,
	})
	if err != nil {
		return ExecResult{}, fmt.Errorf("exec %q in container %s: %w", cmd[0], ShortID(id), wrapNotFound(err))
	}
	att, err := c.api.ContainerExecAttach(ctx, created.ID, container.ExecAttachOptions{})
	if err != nil {
		return ExecResult{}, fmt.Errorf("attach exec %q in container %s: %w", cmd[0], ShortID(id), err)
	}
	defer att.Close()
	// The deadline bounds the hijacked stream too, not only the dial: a
	// command that hangs (nginx -t on a stuck volume) is cut off with it.
	defer context.AfterFunc(ctx, att.Close)()
	werr := make(chan error, 1)
	if stdin != nil {
		// Write concurrently with reading, so a command that writes output
		// before reading all of its input cannot deadlock us.
		go func() {
			_, err := att.Conn.Write(stdin)
			if cerr := att.CloseWrite(); err == nil {
				err = cerr
			}
			werr <- err
		}()
	} else {
		werr <- nil
	}
	var stdout, stderr bytes.Buffer
	if _, err := stdcopy.StdCopy(&limitWriter{w: &stdout, n: maxExecOutput}, &limitWriter{w: &stderr, n: maxExecOutput}, att.Reader); err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return ExecResult{}, fmt.Errorf("read exec %q output in container %s: %w", cmd[0], ShortID(id), err)
	}
	if err := <-werr; err != nil {
		return ExecResult{}, fmt.Errorf("write exec %q input in container %s: %w", cmd[0], ShortID(id), err)
	}
	// The stream ends when the process exits, but the engine may record the
	// exit code a moment later.
	for {
		ins, err := c.api.ContainerExecInspect(ctx, created.ID)
		if err != nil {
			return ExecResult{}, fmt.Errorf("inspect exec %q in container %s: %w", cmd[0], ShortID(id), err)
		}
		if !ins.Running {
			return ExecResult{ExitCode: ins.ExitCode, Stdout: stdout.Bytes(), Stderr: stderr.Bytes()}, nil
		}
		select {
		case <-ctx.Done():
			return ExecResult{}, fmt.Errorf("exec %q in container %s: %w", cmd[0], ShortID(id), ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

type limitWriter struct {
	w io.Writer
	n int
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.n <= 0 {
		return len(p), nil
	}
	q := p
	if len(q) > l.n {
		q = q[:l.n]
	}
	l.n -= len(q)
	if _, err := l.w.Write(q); err != nil {
		return 0, err
	}
	return len(p), nil
}

// File is one regular file to copy into a container.
type File struct {
	// Path is relative to the destination directory given to CopyFiles.
	Path string
	Data []byte
	Mode int64 // permission bits; zero means 0644
}

// CopyFiles writes files into a container (running or not) under dir, which
// must exist. Files are owned by root. The engine writes each file in place:
// callers that need an atomic switch stage under another name and rename.
func (c *Client) CopyFiles(ctx context.Context, id, dir string, files []File) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Now()
	for _, f := range files {
		mode := f.Mode
		if mode == 0 {
			mode = 0o644
		}
		hdr := &tar.Header{
			Name:     path.Clean(f.Path),
			Mode:     mode,
			Size:     int64(len(f.Data)),
			ModTime:  now,
			Typeflag: tar.TypeReg,
			Format:   tar.FormatPAX,
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("copy into container %s: tar %s: %w", ShortID(id), f.Path, err)
		}
		if _, err := tw.Write(f.Data); err != nil {
			return fmt.Errorf("copy into container %s: tar %s: %w", ShortID(id), f.Path, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("copy into container %s: %w", ShortID(id), err)
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	if err := c.api.CopyToContainer(ctx, id, dir, &buf, container.CopyToContainerOptions{}); err != nil {
		return fmt.Errorf("copy into container %s at %s: %w", ShortID(id), dir, wrapNotFound(err))
	}
	return nil
}

// ReadFile returns the content of a regular file in a container (running or
// not). A missing file is an error matching ErrNotFound.
func (c *Client) ReadFile(ctx context.Context, id, file string) ([]byte, error) {
	what := fmt.Sprintf("read %s from container %s", file, ShortID(id))
	var data []byte
	err := c.readArchive(ctx, id, file, what, func(tr *tar.Reader) error {
		hdr, err := tr.Next()
		switch {
		case errors.Is(err, io.EOF):
			return fmt.Errorf("empty archive: %w", ErrNotFound)
		case err != nil:
			return err
		case hdr.Typeflag != tar.TypeReg:
			return errors.New("not a regular file")
		}
		data, err = io.ReadAll(io.LimitReader(tr, 64<<20))
		return err
	})
	return data, err
}

// ReadDir returns the names of the regular files (and symlinks) directly in
// a directory of a container, sorted.
func (c *Client) ReadDir(ctx context.Context, id, dir string) ([]string, error) {
	var names []string
	err := c.readArchive(ctx, id, dir, fmt.Sprintf("list %s in container %s", dir, ShortID(id)), func(tr *tar.Reader) error {
		for {
			hdr, err := tr.Next()
			if errors.Is(err, io.EOF) {
				sort.Strings(names)
				return nil
			}
			if err != nil {
				return err
			}
			// Entries are named <base of dir>/<name>[/...].
			_, rest, ok := strings.Cut(strings.TrimSuffix(hdr.Name, "/"), "/")
			if !ok || strings.Contains(rest, "/") {
				continue
			}
			if hdr.Typeflag == tar.TypeReg || hdr.Typeflag == tar.TypeSymlink {
				names = append(names, rest)
			}
		}
	})
	return names, err
}

// readArchive hands the tar archive of path in a container to read; its
// errors are wrapped in what.
func (c *Client) readArchive(ctx context.Context, id, path, what string, read func(*tar.Reader) error) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	rc, _, err := c.api.CopyFromContainer(ctx, id, path)
	if err != nil {
		return fmt.Errorf("%s: %w", what, wrapNotFound(err))
	}
	defer rc.Close()
	if err := read(tar.NewReader(rc)); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}
