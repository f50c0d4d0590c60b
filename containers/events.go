package containers

import (
	"context"
	"fmt"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
)

// Event is a container event of a managed container.
type Event struct {
	// Action is the engine's action: "create", "start", "die", "kill",
	// "stop", "destroy", "pause", "unpause", "oom", ...
	Action string
	ID     string
	Name   string
	Role   Role
}

// Events streams the container events of a project from now on. The event
// channel is closed when the stream ends; the error channel then carries
// why (the context's error after cancellation, or the engine's).
func (c *Client) Events(ctx context.Context, project string) (<-chan Event, <-chan error) {
	out := make(chan Event, 64)
	errc := make(chan error, 1)
	msgs, errs := c.api.Events(ctx, events.ListOptions{
		Filters: filters.NewArgs(
			filters.Arg("type", string(events.ContainerEventType)),
			filters.Arg("label", LabelProject+"="+project),
		),
	})
	go func() {
		defer close(out)
		for {
			select {
			case m := <-msgs:
				ev := Event{
					Action: string(m.Action),
					ID:     m.Actor.ID,
					Name:   m.Actor.Attributes["name"],
					Role:   Role(m.Actor.Attributes[LabelRole]),
				}
				select {
				case out <- ev:
				case <-ctx.Done():
					errc <- ctx.Err()
					return
				}
			case err := <-errs:
				if err == nil {
					err = fmt.Errorf("event stream closed by the engine")
				}
				errc <- fmt.Errorf("docker events: %w", err)
				return
			case <-ctx.Done():
				errc <- ctx.Err()
				return
			}
		}
	}()
	return out, errc
}
