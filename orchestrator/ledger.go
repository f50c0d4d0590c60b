package orchestrator

import "sync"

// fate is what the daemon knows of a backend that a container listing may
// not show yet.
type fate uint8

const (
	// fateDied: the engine sent "die". Its listing may still show the
	// container running for a moment, so a pass asks the engine directly.
	fateDied fate = iota + 1
	// fateDraining: the backend leaves on purpose (scale-down, rolling
	// update, service removed): deregistered, not counted, and stopped
	// once nginx no longer sends to it.
	fateDraining
)

// ledger is the one record, by container ID, of the backends that are gone
// or going although a listing may show them running: Health does not probe
// them and the Reconciler does not count them. Health, the Reconciler, the
// drainer and the event handler share it.
type ledger struct {
	mu    sync.Mutex
	fates map[string]fate
}

func newLedger() *ledger { return &ledger{fates: map[string]fate{}} }

// mark records f for id and reports whether it changed anything: a
// draining backend stays draining (a drain is never started twice, and a
// death during a drain is the drain's to handle).
func (l *ledger) mark(id string, f fate) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if cur := l.fates[id]; cur == f || cur == fateDraining {
		return false
	}
	l.fates[id] = f
	return true
}

// clear forgets id: it runs again (restarted), or it is gone for good.
func (l *ledger) clear(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.fates, id)
}

// of returns id's fate; zero when none is recorded.
func (l *ledger) of(id string) fate {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.fates[id]
}

// forgetAbsent drops the fate of every container a listing no longer
// shows: from then on no listing can bring it back. (A drain's mark stays
// until then, so that a pass acting on a listing taken just before the
// drain removed its backend cannot drain it a second time.)
func (l *ledger) forgetAbsent(listed map[string]bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for id := range l.fates {
		if !listed[id] {
			delete(l.fates, id)
		}
	}
}

// gone reports whether id died or is draining: not to be probed.
func (l *ledger) gone(id string) bool { return l.of(id) != 0 }
