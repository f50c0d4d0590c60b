package wake

import (
	"context"
	"testing"
	"testing/synctest"
)

func pending(c <-chan struct{}) int {
	n := 0
	for {
		select {
		case <-c:
			n++
		default:
			return n
		}
	}
}

func TestSignalCollapses(t *testing.T) {
	s := New()
	if got := pending(s.C()); got != 0 {
		t.Fatalf("a new Signal has %d wake-ups pending; want 0", got)
	}
	for range 3 {
		s.Wake()
	}
	if got := pending(s.C()); got != 1 {
		t.Errorf("after 3 Wakes: %d wake-ups; want 1", got)
	}
	s.Wake()
	if got := pending(s.C()); got != 1 {
		t.Errorf("after a Wake once read: %d wake-ups; want 1", got)
	}
}

func TestFanout(t *testing.T) {
	var f Fanout
	f.Wake() // nobody listens: nothing blocks
	a, b := f.Subscribe(), f.Subscribe()
	f.Wake()
	f.Wake()
	if ga, gb := pending(a), pending(b); ga != 1 || gb != 1 {
		t.Errorf("subscribers got %d and %d wake-ups; want 1 each", ga, gb)
	}
}

// TestSubscribeUntil: a subscription for a wait receives wake-ups like any
// other and is dropped once its context ends, so that waits that come and
// go (one per request, one per drain) leave nothing behind.
func TestSubscribeUntil(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var f Fanout
		ctx, cancel := context.WithCancel(t.Context())
		c := f.SubscribeUntil(ctx)
		f.Wake()
		if got := pending(c); got != 1 {
			t.Errorf("%d wake-ups; want 1", got)
		}
		if got := f.subscribers(); got != 1 {
			t.Fatalf("%d subscribers; want 1", got)
		}
		cancel()
		synctest.Wait()
		if got := f.subscribers(); got != 0 {
			t.Errorf("%d subscribers after the wait ended; want 0", got)
		}
	})
}
