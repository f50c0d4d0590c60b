package orchestrator

import (
	"slices"
	"testing"
	"time"

	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/internal/health"
)

// pb is a backend for planService tables: a name, its state, whether it is
// ready, and its age (a larger age is older).
func pb(name string, state health.State, ready bool, age int) backend {
	return backend{
		c:     containers.Container{ID: name, Name: name, Created: time.Unix(1000-int64(age), 0)},
		state: state,
		ready: ready,
	}
}

func names(cs []containers.Container) []string {
	out := make([]string, 0, len(cs))
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

func TestPlanService(t *testing.T) {
	h, p, u := health.Healthy, health.Pending, health.Unhealthy
	tests := []struct {
		name        string
		n           int
		g           classified
		wantCreate  int
		wantDrain   []string
		wantAlive   []string
		wantRolling string
		wantRequeue bool
	}{
		{name: "converged", n: 2, g: classified{upToDate: []backend{pb("a", h, true, 2), pb("b", h, true, 1)}},
			wantAlive: []string{"a", "b"}},
		{name: "missing ones are created", n: 3, g: classified{upToDate: []backend{pb("a", h, true, 1)}},
			wantCreate: 2, wantAlive: []string{"a"}},
		{name: "from nothing", n: 3, wantCreate: 3, wantAlive: []string{}},
		{name: "scale down drains unhealthy first, then pending, then the newest",
			n: 2, g: classified{upToDate: []backend{pb("old", h, true, 9), pb("new", h, true, 1), pb("sick", u, false, 5), pb("young", p, false, 0)}},
			wantDrain: []string{"sick", "young"}, wantAlive: []string{"new", "old"}},
		{name: "scale down among equals drains the newest", n: 1, g: classified{upToDate: []backend{pb("old", h, true, 9), pb("new", h, true, 1)}},
			wantDrain: []string{"new"}, wantAlive: []string{"old"}},
		{name: "replicas unknown: keep what runs", n: unknownReplicas, g: classified{upToDate: []backend{pb("a", h, true, 2), pb("b", h, true, 1)}},
			wantAlive: []string{"a", "b"}},
		{name: "busy: look again soon", n: 1, g: classified{upToDate: []backend{pb("a", h, true, 1)}, busy: true},
			wantAlive: []string{"a"}, wantRequeue: true},
		{name: "rolling update starts one new backend", n: 2, g: classified{outdated: []backend{pb("o1", h, true, 9), pb("o2", h, true, 8)}},
			wantCreate: 1, wantRolling: "start", wantAlive: []string{"o1", "o2"}, wantRequeue: true},
		{name: "rolling update waits for the new backend", n: 2,
			g:           classified{upToDate: []backend{pb("n1", p, false, 0)}, outdated: []backend{pb("o1", h, true, 9), pb("o2", h, true, 8)}},
			wantRolling: "wait", wantAlive: []string{"n1", "o1", "o2"}, wantRequeue: true},
		{name: "rolling update drains one old backend once the new one is ready", n: 2,
			g:         classified{upToDate: []backend{pb("n1", h, true, 0)}, outdated: []backend{pb("o1", h, true, 9), pb("o2", u, false, 8)}},
			wantDrain: []string{"o2"}, wantAlive: []string{"n1", "o1"}, wantRequeue: true},
		{name: "rolling update: all old ones go once n are new", n: 2,
			g:         classified{upToDate: []backend{pb("n1", h, true, 1), pb("n2", h, true, 0)}, outdated: []backend{pb("o1", h, true, 9), pb("o2", h, true, 8)}},
			wantDrain: []string{"o2", "o1"}, wantAlive: []string{"n1", "n2"}, wantRequeue: true},
		{name: "rolling update replaces the dead at once", n: 3, g: classified{upToDate: []backend{pb("n1", p, false, 0)}, outdated: []backend{pb("o1", h, true, 9)}},
			wantCreate: 1, wantAlive: []string{"n1", "o1"}, wantRequeue: true},
		{name: "rolling update above the count after a scale-down drains an old one", n: 2,
			g:         classified{upToDate: []backend{pb("n1", h, true, 0)}, outdated: []backend{pb("o1", h, true, 9), pb("o2", h, true, 8), pb("o3", h, true, 7)}},
			wantDrain: []string{"o3"}, wantAlive: []string{"n1", "o1", "o2"}, wantRequeue: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := planService(tt.n, tt.g)
			if got.create != tt.wantCreate {
				t.Errorf("create = %d; want %d", got.create, tt.wantCreate)
			}
			if d := names(got.drain); !slices.Equal(d, tt.wantDrain) && len(d)+len(tt.wantDrain) > 0 {
				t.Errorf("drain = %v; want %v", d, tt.wantDrain)
			}
			alive := names(got.alive)
			slices.Sort(alive)
			if !slices.Equal(alive, tt.wantAlive) && len(alive)+len(tt.wantAlive) > 0 {
				t.Errorf("alive = %v; want %v", alive, tt.wantAlive)
			}
			if got.rolling != tt.wantRolling || got.requeue != tt.wantRequeue {
				t.Errorf("rolling, requeue = %q, %v; want %q, %v", got.rolling, got.requeue, tt.wantRolling, tt.wantRequeue)
			}
		})
	}
}
