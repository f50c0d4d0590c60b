package orchestrator

import (
	"context"
	"sync"
)

// workers runs tasks for a runnable (Health's probers, the drainer's
// drains) under the context given to its Start, and waits for them when
// that context ends. Tasks started before Start wait for it.
type workers struct {
	mu      sync.Mutex
	ctx     context.Context // nil until Start
	pending []func(context.Context)
	wg      sync.WaitGroup
}

// Go runs task in its own goroutine, with the runnable's context.
func (w *workers) Go(task func(context.Context)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.wg.Add(1)
	if w.ctx == nil {
		w.pending = append(w.pending, task)
		return
	}
	w.launch(task)
}

// launch runs a task counted in wg already; w.mu is held.
func (w *workers) launch(task func(context.Context)) {
	ctx := w.ctx
	go func() {
		defer w.wg.Done()
		task(ctx)
	}()
}

// Start runs the tasks until ctx ends, then waits for them to return. It
// returns nil.
func (w *workers) Start(ctx context.Context) error {
	w.mu.Lock()
	w.ctx = ctx
	for _, task := range w.pending {
		w.launch(task)
	}
	w.pending = nil
	w.mu.Unlock()
	<-ctx.Done()
	w.wg.Wait()
	return nil
}

// idle waits until no task runs or waits to (tests).
func (w *workers) idle() { w.wg.Wait() }
