package cluster

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"
)

// waitFor polls ready every 100 ms until it returns nil. It gives up when
// the container id stops or timeout passes, with the container's last
// output in the error; what names the wait.
func (c *Cluster) waitFor(ctx context.Context, timeout time.Duration, id, what string, ready func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		err := ready(ctx)
		if err == nil {
			return nil
		}
		ins, ierr := c.api.ContainerInspect(ctx, id)
		switch {
		case ierr != nil:
			return fmt.Errorf("%s: inspect: %w", what, ierr)
		case !ins.State.Running:
			return fmt.Errorf("%s: container exited with status %d; its last output:\n%s",
				what, ins.State.ExitCode, c.tail(context.WithoutCancel(ctx), id, 20))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last: %w); its last output:\n%s",
				what, ctx.Err(), err, c.tail(context.WithoutCancel(ctx), id, 20))
		case <-tick.C:
		}
	}
}

// tail returns the last n lines of a container's output, for errors.
func (c *Cluster) tail(ctx context.Context, id string, n int) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rc, err := c.api.ContainerLogs(ctx, id, container.LogsOptions{ShowStdout: true, ShowStderr: true, Tail: strconv.Itoa(n)})
	if err != nil {
		return fmt.Sprintf("(no logs: %v)", err)
	}
	defer rc.Close()
	var out bytes.Buffer
	if _, err := stdcopy.StdCopy(&out, &out, rc); err != nil {
		return fmt.Sprintf("%s(reading logs: %v)", out.String(), err)
	}
	return out.String()
}

// killContainer sends SIGKILL and waits until the container stopped.
func killContainer(ctx context.Context, api *client.Client, id, what string) error {
	// Subscribe before the kill, so the stop cannot be missed.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopped, werr := api.ContainerWait(wctx, id, container.WaitConditionNotRunning)
	if err := api.ContainerKill(ctx, id, "KILL"); err != nil {
		return fmt.Errorf("%s: kill: %w", what, err)
	}
	select {
	case <-stopped:
		return nil
	case err := <-werr:
		return fmt.Errorf("%s: wait for the kill: %w", what, err)
	}
}
