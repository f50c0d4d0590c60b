package wake

import "testing"

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
