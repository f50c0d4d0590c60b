package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"

	"github.com/upstreamd/upstreamd/containers"
)

// Files of the daemon inside a host (StartDaemon's, and the entrypoint's
// with UPSTREAMD_AUTOSTART=1).
const (
	DaemonBinary = "/usr/local/bin/upstreamd"
	DaemonLog    = "/var/log/upstreamd.log"
	daemonPID    = "/run/upstreamd.pid"  // while it runs
	daemonExit   = "/run/upstreamd.exit" // its exit status, once it exited
)

// Host is one Docker host of the cluster: a container of HostImage whose
// engine holds the host's containers.
type Host struct {
	// Name is the container's name and hostname.
	Name string
	// ID is the container's ID on the machine's engine.
	ID string
	// Addr is the host's IPv4 address on the LAN.
	Addr string
	// DockerHost is its engine's endpoint, tcp://Addr:2375 (inside the
	// host: unix:///var/run/docker.sock).
	DockerHost string

	c      *Cluster
	docker *client.Client
}

// createHost creates the host's volume and container, not started.
func (c *Cluster) createHost(ctx context.Context, name, addr string) (*Host, error) {
	h := &Host{Name: name, Addr: addr, DockerHost: "tcp://" + addr + ":2375", c: c}
	var err error
	h.docker, err = client.NewClientWithOpts(client.WithHost(h.DockerHost), client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("host %s: docker client: %w", name, err)
	}
	vol := name + "-docker"
	if _, err := c.api.VolumeCreate(ctx, volume.CreateOptions{Name: vol, Labels: c.labels()}); err != nil {
		h.docker.Close()
		return nil, fmt.Errorf("host %s: create volume %s: %w", name, vol, err)
	}
	created, err := c.api.ContainerCreate(ctx,
		&container.Config{Image: HostImage, Hostname: name, Labels: c.labels()},
		&container.HostConfig{
			// --privileged is refused on our engines; this is what works.
			CapAdd:      []string{"SYS_ADMIN", "NET_ADMIN"},
			SecurityOpt: []string{"seccomp=unconfined", "apparmor=unconfined"},
			Mounts: []mount.Mount{
				{Type: mount.TypeBind, Source: "/sys/fs/cgroup", Target: "/sys/fs/cgroup"},
				// overlay2 on the outer fuse-overlayfs fails; on a volume it works.
				{Type: mount.TypeVolume, Source: vol, Target: "/var/lib/docker"},
			},
		},
		&network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{c.LAN: c.endpointOn(addr)}},
		nil, name)
	if err != nil {
		h.docker.Close()
		return nil, fmt.Errorf("host %s: create container from %s: %w", name, HostImage, err)
	}
	h.ID = created.ID
	return h, nil
}

// Docker returns a client of the host's engine (tcp://Addr:2375). The
// cluster owns it: Close closes it.
func (h *Host) Docker() *client.Client { return h.docker }

// Start starts the host (again, after Kill) and waits until its engine
// answers. The engine keeps its images and containers in the host's volume;
// the containers that ran are stopped, as after a reboot.
func (h *Host) Start(ctx context.Context) error {
	if err := h.c.api.ContainerStart(ctx, h.ID, container.StartOptions{}); err != nil {
		return fmt.Errorf("host %s: start: %w", h.Name, err)
	}
	return h.waitEngine(ctx)
}

// waitEngine waits until the host's engine answers.
func (h *Host) waitEngine(ctx context.Context) error {
	return h.c.waitFor(ctx, engineTimeout, h.ID, "host "+h.Name+": wait for engine at "+h.DockerHost,
		func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			_, err := h.docker.Ping(ctx)
			return err
		})
}

// Kill sends SIGKILL to the host and waits until its container stopped: the
// engine and every container in it vanish at once, and nobody receives an
// event about it. Start brings it back.
func (h *Host) Kill(ctx context.Context) error {
	return killContainer(ctx, h.c.api, h.ID, "host "+h.Name)
}

// Disconnect cuts the host off the LAN: neither the machine nor the other
// hosts nor etcd reach it, and it reaches none of them. Its address stays
// reserved for Reconnect.
func (h *Host) Disconnect(ctx context.Context) error {
	if err := h.c.api.NetworkDisconnect(ctx, h.c.LAN, h.ID, false); err != nil {
		return fmt.Errorf("host %s: disconnect from %s: %w", h.Name, h.c.LAN, err)
	}
	return nil
}

// Reconnect puts the host back on the LAN at the same address.
func (h *Host) Reconnect(ctx context.Context) error {
	if err := h.c.api.NetworkConnect(ctx, h.c.LAN, h.ID, h.c.endpointOn(h.Addr)); err != nil {
		return fmt.Errorf("host %s: reconnect to %s at %s: %w", h.Name, h.c.LAN, h.Addr, err)
	}
	return nil
}

// Exec runs cmd in the host (not in its engine's containers) and waits for
// it. A non-zero exit code is not an error; failing to run cmd is.
func (h *Host) Exec(ctx context.Context, cmd []string) (containers.ExecResult, error) {
	return h.execEnv(ctx, cmd, nil)
}

func (h *Host) execEnv(ctx context.Context, cmd, env []string) (containers.ExecResult, error) {
	// containers.Client has no Env: pass it through env(1).
	if len(env) > 0 {
		cmd = append(append([]string{"env"}, env...), cmd...)
	}
	res, err := h.c.exec.ExecWithStdin(ctx, h.ID, cmd, nil)
	if err != nil {
		return res, fmt.Errorf("host %s: %w", h.Name, err)
	}
	return res, nil
}

// WriteFile writes data to file in the host (mode 0644, owned by root),
// creating missing directories; not under /run (see ReadFile).
func (h *Host) WriteFile(ctx context.Context, file string, data []byte) error {
	return h.writeFile(ctx, file, data, 0o644)
}

// CopyFile copies the local file src to dst in the host with the given
// permission bits, creating missing directories: e.g. the daemon binary to
// DaemonBinary with 0755.
func (h *Host) CopyFile(ctx context.Context, src, dst string, perm os.FileMode) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("host %s: copy %s: %w", h.Name, src, err)
	}
	return h.writeFile(ctx, dst, data, perm)
}

func (h *Host) writeFile(ctx context.Context, file string, data []byte, perm os.FileMode) error {
	if !path.IsAbs(file) {
		return fmt.Errorf("host %s: write %s: not an absolute path", h.Name, file)
	}
	// Relative to /, so that the engine makes the missing parents.
	f := containers.File{Path: strings.TrimPrefix(path.Clean(file), "/"), Data: data, Mode: int64(perm.Perm())}
	if err := h.c.exec.CopyFiles(ctx, h.ID, "/", []containers.File{f}); err != nil {
		return fmt.Errorf("host %s: write %s: %w", h.Name, file, err)
	}
	return nil
}

// ReadFile returns the content of a file in the host (not under /run, a
// tmpfs the archive API does not see: use Exec there).
func (h *Host) ReadFile(ctx context.Context, file string) ([]byte, error) {
	data, err := h.c.exec.ReadFile(ctx, h.ID, file)
	if err != nil {
		return nil, fmt.Errorf("host %s: %w", h.Name, err)
	}
	return data, nil
}

// startDaemon is run by sh -c with the daemon's arguments: it starts the
// daemon in the background unless one runs, with its output appended to
// the log, its pid in daemonPID while it runs and its exit status in
// daemonExit after, and returns once the pid file is written.
const startDaemon = `set -u
if pid=$(cat ` + daemonPID + ` 2>/dev/null) && kill -0 "$pid" 2>/dev/null; then
	echo "upstreamd already runs as pid $pid" >&2; exit 1
fi
rm -f ` + daemonPID + ` ` + daemonExit + `
(
	` + DaemonBinary + ` "$@" >>` + DaemonLog + ` 2>&1 </dev/null &
	echo $! >` + daemonPID + `
	wait $!
	echo $? >` + daemonExit + `
	rm -f ` + daemonPID + `
) </dev/null >/dev/null 2>&1 &
for _ in $(seq 1000); do
	[ -s ` + daemonPID + ` ] || [ -e ` + daemonExit + ` ] && exit 0
	sleep 0.01
done
echo "no pid file after 10 s" >&2; exit 1`

// StartDaemon starts DaemonBinary (copied in with CopyFile) in the host with
// args and the extra env (KEY=VALUE; UPSTREAMD_CONFIG is set to
// /etc/upstreamd/upstreamd.toml by the image) and returns once it runs. Its
// stdout and stderr are appended to DaemonLog. One daemon at a time.
func (h *Host) StartDaemon(ctx context.Context, args, env []string) error {
	res, err := h.execEnv(ctx, append([]string{"sh", "-c", startDaemon, "sh"}, args...), env)
	if err != nil {
		return fmt.Errorf("start daemon: %w", err)
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("host %s: start daemon: exit status %d: %s", h.Name, res.ExitCode, res.Output())
	}
	return nil
}

// stopDaemon is run by sh -c with a signal number and a number of 50 ms
// waits: it signals the daemon, waits until it exited and prints its exit
// status. (/run is a tmpfs in the host, seen by exec but not by the archive
// API, hence a script rather than ReadFile.)
const stopDaemon = `pid=$(cat ` + daemonPID + ` 2>/dev/null) || { echo "upstreamd is not running" >&2; exit 1; }
kill -"$1" "$pid" || exit 1
i=0
until [ -e ` + daemonExit + ` ]; do
	i=$((i+1)); [ $i -gt "$2" ] && { echo "upstreamd (pid $pid) still runs" >&2; exit 1; }
	sleep 0.05
done
cat ` + daemonExit

// StopDaemon sends sig to the daemon started by StartDaemon (or the
// entrypoint) and waits until it exited, at most until ctx's deadline or a
// minute. It returns the daemon's exit status as a shell reports it (128+n
// after signal n).
func (h *Host) StopDaemon(ctx context.Context, sig syscall.Signal) (int, error) {
	wait := time.Minute
	if d, ok := ctx.Deadline(); ok {
		wait = time.Until(d)
	}
	waits := strconv.Itoa(int(wait / (50 * time.Millisecond)))
	res, err := h.Exec(ctx, []string{"sh", "-c", stopDaemon, "sh", strconv.Itoa(int(sig)), waits})
	if err != nil {
		return 0, fmt.Errorf("stop daemon: %w", err)
	}
	if res.ExitCode != 0 {
		return 0, fmt.Errorf("host %s: stop daemon with %s: %s", h.Name, sig, res.Output())
	}
	code, err := strconv.Atoi(strings.TrimSpace(string(res.Stdout)))
	if err != nil {
		return 0, fmt.Errorf("host %s: stop daemon: exit status %q: %w", h.Name, res.Stdout, err)
	}
	return code, nil
}

// DaemonLogs returns everything the daemon wrote to DaemonLog; empty when
// it never ran.
func (h *Host) DaemonLogs(ctx context.Context) (string, error) {
	data, err := h.c.exec.ReadFile(ctx, h.ID, DaemonLog)
	if errors.Is(err, containers.ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("host %s: daemon logs: %w", h.Name, err)
	}
	return string(data), nil
}
