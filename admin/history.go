package admin

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/pmezard/go-difflib/difflib"

	"github.com/upstreamd/upstreamd/internal/events"
	"github.com/upstreamd/upstreamd/nginx"
	"github.com/upstreamd/upstreamd/render"
)

// History follows the render loop's passes (Observe is the render
// Controller's Observe): the config nginx serves and the one before it,
// the last push, the last rejected config, and it records the passes that
// changed something as events.
type History struct {
	journal *events.Journal

	mu       sync.Mutex
	live     []byte // the config nginx serves
	liveHash string
	diff     string // the unified diff of the config before it against it
	changed  time.Time
	confirm  time.Duration
	pushed   time.Time
	pools    map[string][]string // what nginx was last given
	rejected *Rejected
	failed   string // the last render error said, to say each once
}

// NewHistory returns a History that records events in j.
func NewHistory(j *events.Journal) *History { return &History{journal: j} }

// Observe records one render pass.
func (h *History) Observe(o render.Outcome) {
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	switch o.Result {
	case render.ResultRejected:
		msg := o.Err.Error()
		if ce := (*nginx.CheckError)(nil); errors.As(o.Err, &ce) {
			msg = ce.Message // nginx's own words
		}
		if h.rejected != nil && h.rejected.Hash == o.Hash {
			return // said already
		}
		h.rejected = &Rejected{Time: now, Hash: o.Hash, Message: msg}
		h.journal.Record(events.Event{Kind: events.ConfigRejected, Reason: msg,
			Message: fmt.Sprintf("nginx -t rejected config %s; the last good config stays live: %s", o.Hash, msg)})
		return
	case render.ResultWaiting:
		return
	case render.ResultError:
		if msg := o.Err.Error(); msg != h.failed {
			h.failed = msg
			h.journal.Record(events.Event{Kind: events.RenderFailed, Reason: msg, Message: "render pass failed; nginx keeps what it serves: " + msg})
		}
		return
	}
	h.failed = ""
	whole := o.Result != render.ResultRefused // a refused pass kept a pool as it was
	if o.Changed {
		if h.live != nil {
			// Once per config change, not at every read of the status.
			h.diff, _ = difflib.GetUnifiedDiffString(difflib.UnifiedDiff{
				A: difflib.SplitLines(string(h.live)), B: difflib.SplitLines(string(o.Config)),
				FromFile: "before", ToFile: "live " + o.Hash, Context: 2,
			})
		}
		h.live, h.liveHash = o.Config, o.Hash
		h.changed, h.confirm, h.rejected = now, o.Confirmed, nil
		h.journal.Record(events.Event{Kind: events.Reloaded,
			Message: fmt.Sprintf("nginx reloaded with config %s (%s), confirmed after %s", o.Hash, poolsText(o.Pools), o.Confirmed.Round(time.Millisecond))})
	}
	if o.Pushed {
		h.pushed = now
		if !o.Changed {
			h.journal.Record(events.Event{Kind: events.PoolPushed, Message: "pools pushed to nginx without a reload: " + poolsText(o.Pools)})
		}
	}
	if o.Changed || o.Pushed {
		h.pools = o.Pools
	}
	if h.liveHash == "" && o.Hash != "" && whole {
		// The first pass found nginx serving this config already (a
		// restart): it is what is live.
		h.live, h.liveHash, h.changed = o.Config, o.Hash, now
	}
	if h.pools == nil && whole && o.Hash != "" {
		h.pools = o.Pools // likewise its pools
	}
}

// poolsText is "apache: 3 backends, web: none".
func poolsText(pools map[string][]string) string {
	names := make([]string, 0, len(pools))
	for n := range pools {
		names = append(names, n)
	}
	sort.Strings(names)
	parts := make([]string, 0, len(names))
	for _, n := range names {
		switch len(pools[n]) {
		case 0:
			parts = append(parts, n+": none")
		case 1:
			parts = append(parts, n+": 1 backend")
		default:
			parts = append(parts, fmt.Sprintf("%s: %d backends", n, len(pools[n])))
		}
	}
	return strings.Join(parts, ", ")
}

// Fill writes what History knows into p.
func (h *History) Fill(p *Proxy) {
	h.mu.Lock()
	defer h.mu.Unlock()
	p.Hash = h.liveHash
	if !h.changed.IsZero() {
		t := h.changed
		p.ConfigChanged = &t
	}
	p.ConfirmedMS = ms(h.confirm)
	if !h.pushed.IsZero() {
		t := h.pushed
		p.Pushed = &t
	}
	if h.rejected != nil {
		r := *h.rejected
		p.Rejected = &r
	}
	p.RenderError = h.failed
	p.Diff = h.diff
}

// Served returns the addresses nginx was last given, by service.
func (h *History) Served() map[string][]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.pools
}

// ms is d in milliseconds, to the microsecond.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
