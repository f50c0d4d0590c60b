// Package events is the daemon's journal of what happened to its
// containers, its registrations and its proxy: a bounded ring of typed
// events, newest last, which the admin API serves as a list and as a live
// stream. A component records an event next to the log line that says the
// same; the journal never blocks it, and a reader that falls behind the
// ring is told how many events it missed.
//
// The numbering starts again at each run of the daemon: a journal has a
// random run id, every event carries it, and an event's cursor (RUN-SEQ,
// the stream's "id:") tells a reader that comes back after a restart that
// the numbers it knew are another run's.
package events

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/upstreamd/upstreamd/internal/health"
	"github.com/upstreamd/upstreamd/internal/wake"
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
	// Seq numbers the journal's events from 1, without gaps; Run is the
	// journal's run id (a daemon's run: Seq starts again at the next).
	Seq       int64        `json:"seq"`
	Run       string       `json:"run"`
	Time      time.Time    `json:"time"`
	Kind      Kind         `json:"kind"`
	Service   string       `json:"service,omitempty"`
	Container string       `json:"container,omitempty"` // the container's name
	ID        string       `json:"id,omitempty"`        // its short ID
	Addr      string       `json:"addr,omitempty"`      // the backend's address, as registered
	From      health.State `json:"from,omitempty"`      // HealthChanged: the state before
	To        health.State `json:"to,omitempty"`        // HealthChanged: the state after
	Reason    string       `json:"reason,omitempty"`
	// Message is one sentence for a person, complete on its own.
	Message string `json:"message"`
}

// String is the event as one terminal line.
func (e Event) String() string {
	return fmt.Sprintf("%s  %-15s %s", e.Time.Local().Format("15:04:05.000"), e.Kind, e.Message)
}

// Cursor is where a reader that saw e resumes: RUN-SEQ.
func (e Event) Cursor() string { return e.Run + "-" + strconv.FormatInt(e.Seq, 10) }

// Journal keeps the last events in a ring.
type Journal struct {
	run     string      // random: tells this run's numbering from another's
	changed wake.Fanout // after each Record

	mu   sync.Mutex
	ring []Event
	next int   // where the next event goes in ring
	seq  int64 // the last event's Seq
}

// New returns a Journal keeping the last capacity events (0: the default).
func New(capacity int) *Journal {
	if capacity <= 0 {
		capacity = DefaultCapacity
	}
	id := make([]byte, 4)
	_, _ = rand.Read(id) // never fails
	return &Journal{run: hex.EncodeToString(id), ring: make([]Event, 0, capacity)}
}

// Run is the journal's run id, which its events carry.
func (j *Journal) Run() string { return j.run }

// ErrCursor is a cursor that is neither RUN-SEQ nor a SEQ.
var ErrCursor = errors.New("not an event's cursor (RUN-SEQ, or a sequence number from 0)")

// After returns the Seq after which a reader resumes that last saw cursor:
// an event's Cursor (RUN-SEQ), or a bare SEQ taken to be this run's; ""
// is 0, from the first event. A cursor of another run (the daemon
// restarted since), or a SEQ this run never reached (only a previous run
// numbered so far), resumes at 0: this run's events are all new to the
// reader.
func (j *Journal) After(cursor string) (int64, error) {
	if cursor == "" {
		return 0, nil
	}
	run, num, ok := strings.Cut(cursor, "-")
	if !ok {
		run, num = j.run, cursor
	}
	seq, err := strconv.ParseInt(num, 10, 64)
	if err != nil || seq < 0 || run == "" {
		return 0, fmt.Errorf("%q: %w", cursor, ErrCursor)
	}
	if run != j.run || seq > j.LastSeq() {
		return 0, nil
	}
	return seq, nil
}

// Record adds e, numbered and stamped now (when its Time is zero); a nil
// *Journal records nothing.
func (j *Journal) Record(e Event) {
	if j == nil {
		return
	}
	j.mu.Lock()
	j.seq++
	e.Seq, e.Run = j.seq, j.run
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	if len(j.ring) < cap(j.ring) {
		j.ring = append(j.ring, e)
	} else {
		j.ring[j.next] = e
	}
	j.next = (j.next + 1) % cap(j.ring)
	j.mu.Unlock()
	j.changed.Wake()
}

// SubscribeUntil returns a channel that receives after each Record, until
// ctx ends. A reader subscribes, then asks Since, then waits on it and
// asks again from the last Seq seen: no event is missed between.
func (j *Journal) SubscribeUntil(ctx context.Context) <-chan struct{} {
	return j.changed.SubscribeUntil(ctx)
}

// Since returns the events after seq that the ring still holds, oldest
// first, and how many after seq it no longer holds (a reader that fell
// behind).
func (j *Journal) Since(seq int64) (evs []Event, missed int64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.since(seq)
}

// since is Since; the caller holds mu. A seq below 0 counts from 0, and
// one above the last returns nothing.
func (j *Journal) since(seq int64) (evs []Event, missed int64) {
	seq = min(max(seq, 0), j.seq)
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
