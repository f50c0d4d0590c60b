package cluster

import (
	"encoding/json"
	"maps"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/store"
)

// testServices is a spec's one service, apache, of 3 replicas.
var testServices = []Service{{Name: "apache", Replicas: 3}}

func TestParseReplicas(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    int
		wantErr string
	}{
		{name: "one", in: "1", want: 1},
		{name: "max", in: "1000", want: 1000},
		{name: "surrounding spaces", in: " 5 ", want: 5},
		{name: "trailing newline from etcdctl", in: "5\n", want: 5},
		{name: "zero", in: "0", wantErr: "replicas 0 out of range 1-1000"},
		{name: "negative", in: "-1", wantErr: "replicas -1 out of range 1-1000"},
		{name: "above max", in: "1001", wantErr: "replicas 1001 out of range 1-1000"},
		{name: "not a number", in: "x", wantErr: `replicas "x" is not a number`},
		{name: "empty", in: "", wantErr: `replicas "" is not a number`},
		{name: "float", in: "2.5", wantErr: `replicas "2.5" is not a number`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseReplicas(tt.in)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("ParseReplicas(%q) = %d, %v; want error %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseReplicas(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestOverrides(t *testing.T) {
	p := store.OverridesPrefix("up")
	kv := func(key, value string) store.KV { return store.KV{Key: p + key, Value: []byte(value)} }
	reset := func(kvs ...store.KV) store.Update { return store.Update{Reset: true, KVs: kvs} }
	tests := []struct {
		name    string
		updates []store.Update
		want    map[string]int
	}{
		{name: "none", updates: []store.Update{reset()}, want: map[string]int{}},
		{name: "valid override", updates: []store.Update{reset(kv("apache", "5"))}, want: map[string]int{"apache": 5}},
		{name: "invalid count is skipped", updates: []store.Update{reset(kv("apache", "0"))}, want: map[string]int{}},
		{name: "garbage is skipped", updates: []store.Update{reset(kv("apache", "lots"))}, want: map[string]int{}},
		{name: "service not in the spec is skipped", updates: []store.Update{reset(kv("nosuch", "3"))}, want: map[string]int{}},
		{name: "a write replaces", updates: []store.Update{reset(kv("apache", "5")), {KVs: []store.KV{kv("apache", "2")}}},
			want: map[string]int{"apache": 2}},
		{name: "an invalid write drops the previous override", updates: []store.Update{reset(kv("apache", "5")), {KVs: []store.KV{kv("apache", "-1")}}},
			want: map[string]int{}},
		{name: "a delete drops it", updates: []store.Update{reset(kv("apache", "5")), {Deleted: []string{p + "apache"}}},
			want: map[string]int{}},
		{name: "a reload replaces everything", updates: []store.Update{reset(kv("apache", "5")), reset()}, want: map[string]int{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wakes := 0
			o := newOverrides("up", testServices, func() { wakes++ }, zerolog.Nop())
			if got, ok := o.Counts(); ok || got != nil {
				t.Fatalf("Counts before any update = %v, %v; want nil, false", got, ok)
			}
			for _, u := range tt.updates {
				o.apply(u)
			}
			got, ok := o.Counts()
			if !ok || !maps.Equal(got, tt.want) {
				t.Errorf("Counts = %v, %v; want %v, true", got, ok, tt.want)
			}
			select {
			case <-o.Loaded():
			default:
				t.Error("Loaded not closed after an update")
			}
			if wakes != len(tt.updates) {
				t.Errorf("%d wakes for %d updates; want one each", wakes, len(tt.updates))
			}
		})
	}
}

// TestOverridesAreSaid: an override in force is logged when first read
// (so a start-up log shows it), when it changes and when it goes; an
// update that leaves it as it was says nothing.
func TestOverridesAreSaid(t *testing.T) {
	p := store.OverridesPrefix("up")
	var logs strings.Builder
	o := newOverrides("up", testServices, func() {}, zerolog.New(&logs))
	steps := []struct {
		u    store.Update
		want string // the message logged, "" for none
	}{
		{store.Update{Reset: true, KVs: []store.KV{{Key: p + "apache", Value: []byte("5")}}},
			"replica override in force: apache runs 5 replicas, not the spec's 3 (`upstreamd scale apache --reset` removes it)"},
		{store.Update{Reset: true, KVs: []store.KV{{Key: p + "apache", Value: []byte("5")}}}, ""},
		{store.Update{KVs: []store.KV{{Key: p + "apache", Value: []byte("4")}}},
			"replica override in force: apache runs 4 replicas, not the spec's 3 (`upstreamd scale apache --reset` removes it)"},
		{store.Update{Deleted: []string{p + "apache"}}, "replica override removed; the spec's count applies"},
	}
	for i, st := range steps {
		logs.Reset()
		o.apply(st.u)
		got := ""
		if logs.Len() > 0 {
			var m map[string]any
			if err := json.Unmarshal([]byte(logs.String()), &m); err != nil {
				t.Fatalf("step %d: %v: %s", i, err, logs.String())
			}
			got, _ = m["message"].(string)
		}
		if got != st.want {
			t.Errorf("step %d logged %q, want %q", i, got, st.want)
		}
	}
}
