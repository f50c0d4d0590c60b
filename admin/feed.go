package admin

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/upstreamd/upstreamd/internal/events"
	"github.com/upstreamd/upstreamd/internal/wake"
)

// viewEvery bounds how often the status is computed again while events
// keep coming.
const viewEvery = 200 * time.Millisecond

// format is one way a stream shows the status.
type format int

const (
	statusJSON format = iota // /api/v1/stream's "status" messages
	pageView                 // /live's "view" messages: the page's live part
	formats
	noView format = -1 // a stream of events only
)

// frame is the status in one format, as a stream sends it.
type frame struct {
	gen  uint64 // the computation it comes from, counted from 1
	name string // the message's event name
	data []byte
}

// feed computes the status while some stream follows it, once per change
// (an event, at most every viewEvery) and at each heartbeat (the last
// probes and the "ago"s move on), renders it in every format, and hands
// the same frames to every stream: the cost of the status does not grow
// with the number of streams.
type feed struct {
	status    func(context.Context) Status
	journal   *events.Journal
	heartbeat time.Duration
	poke      wake.Signal // a new stream wants a fresh frame
	fresh     wake.Fanout // new frames are out

	mu       sync.Mutex
	streams  int
	stop     context.CancelFunc // ends the computing loop; nil while none runs
	gen      uint64             // computations done
	inflight bool               // computation gen+1 under way
	at       time.Time          // when the last one started
	frames   [formats]frame
}

func newFeed(status func(context.Context) Status, journal *events.Journal, heartbeat time.Duration) *feed {
	return &feed{status: status, journal: journal, heartbeat: heartbeat, poke: wake.New()}
}

// subscribe counts a stream in (the first starts the computing loop) and
// returns the first computation whose frames it may send: the last one
// when it is fresh, else the next (asked for at once); fresh receives
// after new frames are out, until ctx ends; leave counts the stream out
// (the last stops the loop).
func (f *feed) subscribe(ctx context.Context) (first uint64, fresh <-chan struct{}, leave func()) {
	fresh = f.fresh.SubscribeUntil(ctx)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.streams++
	switch {
	case f.stop == nil:
		ctx, cancel := context.WithCancel(context.Background())
		f.stop = cancel
		go f.run(ctx)
		first = f.gen + 1
	case f.inflight:
		first = f.gen + 1
	case f.gen > 0 && time.Since(f.at) < viewEvery:
		first = f.gen
	default:
		first = f.gen + 1
		f.poke.Wake()
	}
	return first, fresh, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.streams--; f.streams == 0 {
			f.stop()
			f.stop = nil
		}
	}
}

// latest returns the last frame in format v.
func (f *feed) latest(v format) frame {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.frames[v]
}

// run computes the status at once, after each change (at most every
// viewEvery), at each heartbeat and when a new stream asks, until ctx
// ends.
func (f *feed) run(ctx context.Context) {
	beat := time.NewTicker(f.heartbeat)
	defer beat.Stop()
	changed := f.journal.SubscribeUntil(ctx) // before computing: an event during it counts
	var last time.Time
	dirty := true
	for {
		if wait := viewEvery - time.Since(last); dirty && wait <= 0 {
			last = time.Now()
			f.compute(ctx, last)
			dirty = false
		}
		var later <-chan time.Time
		if dirty { // throttled: compute once the bound allows
			later = time.After(viewEvery - time.Since(last))
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
			dirty = true
		case <-f.poke.C():
			dirty = true
		case <-beat.C:
			dirty = true
		case <-later:
		}
	}
}

// compute computes the status once and publishes it in every format.
func (f *feed) compute(ctx context.Context, now time.Time) {
	f.mu.Lock()
	f.inflight, f.at = true, now
	f.mu.Unlock()

	st := f.status(ctx)
	var fr [formats]frame
	data, _ := json.Marshal(st)
	fr[statusJSON] = frame{name: "status", data: data}
	if out, err := renderPage("live", st, f.journal); err != nil {
		fr[pageView] = frame{name: "error", data: []byte(err.Error())}
	} else {
		fr[pageView] = frame{name: "view", data: out}
	}

	f.mu.Lock()
	f.inflight = false
	if ctx.Err() != nil {
		f.mu.Unlock()
		return // the last stream left while computing: ctx's reads failed
	}
	f.gen++
	for i := range fr {
		fr[i].gen = f.gen
	}
	f.frames = fr
	f.mu.Unlock()
	f.fresh.Wake()
}
