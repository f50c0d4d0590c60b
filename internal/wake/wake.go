// Package wake is the one way a part of upstreamd says that something
// changed, and wakes a loop: a channel of capacity one and a send that
// never blocks, so any number of wake-ups before the loop looks collapse
// into one, and the loop then reads the current state afresh
// (level-triggered). Fanout does the same for several loops that watch one
// thing.
//
// Whoever waits for a change subscribes first, then reads the state, then
// waits on the subscription: a change between the reading and the wait is
// kept in the channel, so none is lost.
package wake

import (
	"context"
	"slices"
	"sync"
)

// Signal wakes one loop, which receives from C.
type Signal struct{ c chan struct{} }

// New returns a Signal with no wake-up pending.
func New() Signal { return Signal{c: make(chan struct{}, 1)} }

// Wake makes C ready, unless a wake-up is pending already.
func (s Signal) Wake() {
	select {
	case s.c <- struct{}{}:
	default:
	}
}

// C receives once per run of wake-ups.
func (s Signal) C() <-chan struct{} { return s.c }

// Fanout wakes every loop that subscribed. The zero value is ready.
type Fanout struct {
	mu   sync.Mutex
	subs []Signal
}

// Subscribe returns a channel that receives after each Wake (several may
// collapse into one), for as long as the Fanout lives: a loop's.
func (f *Fanout) Subscribe() <-chan struct{} {
	s := New()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.subs = append(f.subs, s)
	return s.C()
}

// SubscribeUntil is Subscribe for a wait that ends with ctx: the
// subscription is dropped when ctx ends.
func (f *Fanout) SubscribeUntil(ctx context.Context) <-chan struct{} {
	s := New()
	f.mu.Lock()
	f.subs = append(f.subs, s)
	f.mu.Unlock()
	context.AfterFunc(ctx, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.subs = slices.DeleteFunc(f.subs, func(x Signal) bool { return x == s })
	})
	return s.C()
}

// Wake wakes every subscriber.
func (f *Fanout) Wake() {
	f.mu.Lock()
	subs := f.subs
	f.mu.Unlock()
	for _, s := range subs {
		s.Wake()
	}
}

// subscribers counts the subscriptions (tests).
func (f *Fanout) subscribers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.subs)
}
