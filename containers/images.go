package containers

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/image"
)

// EnsureImage makes sure ref is present locally, pulling it when absent.
// When it is absent and cannot be pulled the error matches ErrImageMissing
// and says how to build it; the failed pull is not tried again for a
// minute (the same error is returned meanwhile).
func (c *Client) EnsureImage(ctx context.Context, ref string) error {
	ictx, cancel := context.WithTimeout(ctx, c.timeout)
	_, err := c.api.ImageInspect(ictx, ref)
	cancel()
	if err == nil {
		return nil
	}
	if !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("inspect image %s: %w", ref, err)
	}
	c.mu.Lock()
	failed, ok := c.pullFailed[ref]
	c.mu.Unlock()
	if ok && time.Since(failed.at) < pullRetry {
		return failed.err // no registry hammering on every pass
	}
	err = c.pull(ctx, ref)
	c.mu.Lock()
	if err != nil {
		c.pullFailed[ref] = pullFailure{at: time.Now(), err: err}
	} else {
		delete(c.pullFailed, ref)
	}
	c.mu.Unlock()
	return err
}

// pullRetry is how long a failed pull is not tried again.
const pullRetry = time.Minute

type pullFailure struct {
	at  time.Time
	err error
}

func (c *Client) pull(ctx context.Context, ref string) error {
	c.log.Info().Str("image", ref).Msg("image not present locally; pulling")
	// Pulls can take minutes; they get their own, longer deadline.
	pctx, cancel := context.WithTimeout(ctx, 10*c.timeout)
	defer cancel()
	rc, err := c.api.ImagePull(pctx, ref, image.PullOptions{})
	if err != nil {
		return fmt.Errorf("image %s is not present and cannot be pulled (%w): %w; build it with `make images`", ref, err, ErrImageMissing)
	}
	defer rc.Close()
	// The pull reports failures inside the progress stream.
	dec := json.NewDecoder(rc)
	for {
		var msg struct {
			Error string `json:"error"`
		}
		if err := dec.Decode(&msg); err == io.EOF {
			break
		} else if err != nil {
			return fmt.Errorf("pull image %s: %w", ref, err)
		}
		if msg.Error != "" {
			return fmt.Errorf("image %s is not present and cannot be pulled (%s): %w; build it with `make images`", ref, msg.Error, ErrImageMissing)
		}
	}
	c.log.Info().Str("image", ref).Msg("image pulled")
	return nil
}
