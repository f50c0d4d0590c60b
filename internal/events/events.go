// Package events is the daemon's journal of what happened to its
// containers, its registrations and its proxy: a bounded ring of typed
// events, newest last, which the admin API serves as a list and as a live
// stream. A component records an event next to the log line that says the
// same; the journal never blocks it, and a reader that falls behind the
// ring is told how many events it missed.
package events

import (
	"fmt"
	"sync"
	"time"
)

// Kind names what happened. The values are part of the admin API.
type Kind string

// The kinds, in roughly the order a killed backend produces them.
const (
	Died           Kind = "died"            // a container of the project died (docker's die event)
	HealthChanged  Kind = "health"          // a backend's health state flipped (From → To)
	Deregistered   Kind = "deregistered"    // a backend's key left etcd
	PoolPushed     Kind = "pool-pushed"     // nginx's dynamic pools were updated without a reload
	Reloaded       Kind = "reloaded"        // a new config went live and nginx confirmed the reload
	ConfigRejected Kind = "config-rejected" // nginx -t refused a rendered config (Message holds nginx's words)
	RenderFailed   Kind = "render-failed"   // a render pass failed on the way to nginx
	Started        Kind = "started"         // a backend was created and started (Reason says why)
	Registered     Kind = "registered"      // a healthy backend's key was written to etcd
	Draining       Kind = "draining"        // a backend is being taken out of service (Reason says why)
	Drained        Kind = "drained"         // a drained backend was stopped and removed
	ProxyCreated   Kind = "proxy-created"   // the proxy container was (re)created
	ProxyRemoved   Kind = "proxy-removed"   // the proxy was removed (another node leads)
	LeaderChanged  Kind = "leader"          // this node won or lost the project's election
	LeaseLost      Kind = "lease-lost"      // this node's etcd lease ended; it claims again
)

// DefaultCapacity is how many events a Journal made with capacity 0 keeps.
const DefaultCapacity = 500

// Event is one thing that happened. Empty fields do not apply.
type Event struct {
	// Seq numbers the journal's events from 1, without gaps.
	Seq       int64     `json:"seq"`
	Time      time.Time `json:"time"`
	Kind      Kind      `json:"kind"`
	Service   string    `json:"service,omitempty"`
	Container string    `json:"container,omitempty"` // the container's name
	ID        string    `json:"id,omitempty"`        // its short ID
	Addr      string    `json:"addr,omitempty"`      // the backend's address, as registered
	From      string    `json:"from,omitempty"`      // HealthChanged: the state before
	To        string    `json:"to,omitempty"`        // HealthChanged: the state after
	Reason    string    `json:"reason,omitempty"`
	// Message is one sentence for a person, complete on its own.
	Message string `json:"message"`
}

// String is the event as one terminal line.
func (e Event) String() string {
	return fmt.Sprintf("%s  %-15s %s", e.Time.Local().Format("15:04:05.000"), e.Kind, e.Message)
}

// Journal keeps the last events in a ring.
type Journal struct {
	mu      sync.Mutex
	ring    []Event
	next    int   // where the next event goes in ring
	seq     int64 // the last event's Seq
	changed chan struct{}
}

// New returns a Journal keeping the last capacity events (0: the default).
func New(capacity int) *Journal {
	if capacity <= 0 {
		capacity = DefaultCapacity
	}
	return &Journal{ring: make([]Event, 0, capacity), changed: make(chan struct{})}
}

// Record adds e, numbered and stamped now (when its Time is zero); a nil
// *Journal records nothing.
func (j *Journal) Record(e Event) {
	if j == nil {
		return
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	j.seq++
	e.Seq = j.seq
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	if len(j.ring) < cap(j.ring) {
		j.ring = append(j.ring, e)
	} else {
		j.ring[j.next] = e
	}
	j.next = (j.next + 1) % cap(j.ring)
	close(j.changed)
	j.changed = make(chan struct{})
}

// Since returns the events after seq that the ring still holds, oldest
// first, and how many after seq it no longer holds (a reader that fell
// behind). Changed is closed at the next Record: wait on it, then ask
// again from the last Seq seen.
func (j *Journal) Since(seq int64) (evs []Event, missed int64, changed <-chan struct{}) {
	j.mu.Lock()
	defer j.mu.Unlock()
	evs, missed = j.since(seq)
	return evs, missed, j.changed
}

// since is Since; the caller holds mu.
func (j *Journal) since(seq int64) (evs []Event, missed int64) {
	oldest := j.seq - int64(len(j.ring)) + 1 // Seq of the oldest held
	if seq+1 < oldest {
		missed = oldest - seq - 1
		seq = oldest - 1
	}
	n := int(j.seq - seq)
	if n > 0 {
		evs = make([]Event, 0, n)
		for i := len(j.ring) - n; i < len(j.ring); i++ {
			evs = append(evs, j.ring[j.index(i)])
		}
	}
	return evs, missed
}

// index maps i, counted from the oldest held event, to its place in ring.
// The caller holds mu.
func (j *Journal) index(i int) int {
	if len(j.ring) < cap(j.ring) {
		return i
	}
	return (j.next + i) % len(j.ring)
}

// LastSeq returns the Seq of the newest event (0: none yet).
func (j *Journal) LastSeq() int64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.seq
}

// Last returns the newest n events (all held when n <= 0), oldest first.
func (j *Journal) Last(n int) []Event {
	j.mu.Lock()
	defer j.mu.Unlock()
	seq := int64(0)
	if n > 0 {
		seq = max(0, j.seq-int64(n))
	}
	evs, _ := j.since(seq)
	return evs
}
