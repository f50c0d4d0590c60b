package render

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/upstreamd/upstreamd/store"
)

var update = flag.Bool("update", false, "rewrite render/testdata/*/want.conf from the current output")

// goldenInput is render/testdata/<case>/input.json: the etcd content under
// store.DefaultPrefix plus the spec's part of the View.
type goldenInput struct {
	Comment  string   `json:"comment"`
	Services []string `json:"services"`
	Default  string   `json:"default"`
	Listen   int      `json:"listen"`
	// Dynamic renders the pools for the Lua balancer; StatusPort, when
	// set, makes want.conf the delivered file (Finish appends the status
	// server and, when dynamic, the Lua setup).
	Dynamic    bool `json:"dynamic"`
	StatusPort int  `json:"status_port"`
	// Routes are the services' routes and proxy settings (durations in
	// nanoseconds).
	Routes  map[string]Route `json:"routes"`
	TLS     *TLS             `json:"tls"`
	Entries []struct {
		Key string `json:"key"`
		// Value is the registration as a JSON object, or a JSON string
		// holding the raw etcd value verbatim (for values that are not JSON).
		Value json.RawMessage `json:"value"`
		// Reject says store.ParseEntry must refuse this entry; it is then
		// left out, as store.Cache leaves it out.
		Reject bool `json:"reject"`
	} `json:"entries"`
}

// loadGolden reads a case's input and builds its View the way the
// Controller does, from entries validated by store.ParseEntry. Entries keep
// the file's order (store.Cache would sort them by key) so that the
// sorting done by NewView is what the golden file shows.
func loadGolden(t *testing.T, dir string) View {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "input.json"))
	if err != nil {
		t.Fatal(err)
	}
	var in goldenInput
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		t.Fatalf("decode %s/input.json: %v", dir, err)
	}
	var snap store.Snapshot
	for _, e := range in.Entries {
		value := []byte(e.Value)
		if len(value) > 0 && value[0] == '"' {
			var s string
			if err := json.Unmarshal(value, &s); err != nil {
				t.Fatalf("entry %q: string value: %v", e.Key, err)
			}
			value = []byte(s)
		}
		entry, err := store.ParseEntry(store.DefaultPrefix, e.Key, value)
		switch {
		case e.Reject && err == nil:
			t.Fatalf("entry %q = %q: ParseEntry accepted it; want it rejected", e.Key, value)
		case e.Reject:
			continue
		case err != nil:
			t.Fatalf("entry %q: ParseEntry: %v", e.Key, err)
		}
		snap.Entries = append(snap.Entries, entry)
	}
	return NewView(ViewInput{Projects: anyProject, Snapshot: snap, Services: in.Services, Default: in.Default, Listen: in.Listen,
		Dynamic: in.Dynamic, StatusPort: in.StatusPort, Routes: in.Routes, TLS: in.TLS})
}

func TestDefaultTemplateGolden(t *testing.T) {
	dirs, err := filepath.Glob(filepath.Join("testdata", "*", "input.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) < 5 {
		t.Fatalf("found %d golden cases under testdata; want at least 5", len(dirs))
	}
	tmpl := Default()
	for _, in := range dirs {
		dir := filepath.Dir(in)
		t.Run(filepath.Base(dir), func(t *testing.T) {
			view := loadGolden(t, dir)
			rendered, err := Render(tmpl, view)
			if err != nil {
				t.Fatalf("Render: %v", err)
			}
			got := Finish(rendered, view) // rendered itself without a status port
			wantPath := filepath.Join(dir, "want.conf")
			if *update {
				if err := os.WriteFile(wantPath, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(wantPath)
			if err != nil {
				t.Fatalf("%v (run go test ./render/ -run TestDefaultTemplateGolden -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("rendered config differs from %s (rerun with -update if the change is intended)\n%s\n--- got ---\n%s\n--- want ---\n%s",
					wantPath, firstDiff(got, want), got, want)
			}
			// Whatever the case, nothing hostile may reach the config.
			for _, bad := range []string{"9999", "Evil", "} server {"} {
				if bytes.Contains(got, []byte(bad)) {
					t.Errorf("rendered config contains %q", bad)
				}
			}
		})
	}
}

// TestDefaultTemplateUpstreams checks the golden cases' rules that a diff
// would not make obvious. Static: an upstream block is rendered exactly for
// the services that have backends (nginx refuses an empty upstream), with a
// server line per backend, and / answers 503 exactly when the default
// service has none. Dynamic: every service has its upstream, whose only
// server is the placeholder the Lua balancer replaces, and the 503 comes
// from Lua, so the pool can fill without a reload.
func TestDefaultTemplateUpstreams(t *testing.T) {
	tests := []struct {
		name          string
		dir           string
		wantUpstreams []string
		wantServers   []string // addresses of the upstreams' server lines
		want503       bool     // the static "return 503" location
		wantLua       bool     // balancer_by_lua_block and access_by_lua_block
	}{
		{name: "seed", dir: "seed-apache", wantUpstreams: []string{"apache_pool"},
			wantServers: []string{"10.132.248.177:8082", "10.132.249.206:8081", "10.132.249.212:8080"}},
		{name: "empty pool", dir: "empty-pool", wantUpstreams: nil, want503: true},
		{name: "two services", dir: "two-services", wantUpstreams: []string{"api_pool", "web_pool"},
			wantServers: []string{"172.18.0.10:9000", "172.18.0.3:80", "172.18.0.4:80"}},
		{name: "services only in etcd get no upstream", dir: "unconfigured-service", wantUpstreams: []string{"apache_pool"},
			wantServers: []string{"10.0.0.1:80"}},
		{name: "default empty, other not", dir: "default-without-backends", wantUpstreams: []string{"static_pool"},
			wantServers: []string{"10.0.1.1:8080"}, want503: true},
		{name: "seed, dynamic", dir: "seed-apache-dynamic", wantUpstreams: []string{"apache_pool"},
			wantServers: []string{"0.0.0.1:1"}, wantLua: true},
		{name: "empty pool, dynamic", dir: "empty-pool-dynamic", wantUpstreams: []string{"apache_pool"},
			wantServers: []string{"0.0.0.1:1"}, wantLua: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Render(Default(), loadGolden(t, filepath.Join("testdata", tt.dir)))
			if err != nil {
				t.Fatalf("Render: %v", err)
			}
			var upstreams, servers []string
			for _, line := range strings.Split(string(got), "\n") {
				if name, ok := strings.CutPrefix(line, "upstream "); ok {
					upstreams = append(upstreams, strings.TrimSuffix(name, " {"))
				}
				if rest, ok := strings.CutPrefix(line, "    server "); ok {
					servers = append(servers, strings.TrimRight(strings.Fields(rest)[0], ";"))
				}
			}
			if fmt.Sprint(upstreams) != fmt.Sprint(tt.wantUpstreams) {
				t.Errorf("upstream blocks = %v; want %v", upstreams, tt.wantUpstreams)
			}
			if fmt.Sprint(servers) != fmt.Sprint(tt.wantServers) {
				t.Errorf("server lines = %v; want %v", servers, tt.wantServers)
			}
			wantBalancers := 0
			if tt.wantLua {
				wantBalancers = len(tt.wantUpstreams)
			}
			if n := bytes.Count(got, []byte("balancer_by_lua_block")); n != wantBalancers {
				t.Errorf("balancer_by_lua_block appears %d times; want %d", n, wantBalancers)
			}
			if has := bytes.Contains(got, []byte("access_by_lua_block")); has != tt.wantLua {
				t.Errorf("renders access_by_lua_block: %v; want %v", has, tt.wantLua)
			}
			if got503 := bytes.Contains(got, []byte("return 503")); got503 != tt.want503 {
				t.Errorf("renders 503 location: %v; want %v", got503, tt.want503)
			}
			if got503 := bytes.Contains(got, []byte("proxy_pass")); got503 == tt.want503 {
				t.Errorf("renders proxy_pass: %v; want %v", got503, !tt.want503)
			}
		})
	}
}

// TestDefaultTemplateDynamicIgnoresMembership checks what dynamic pools
// rest on: with Dynamic, the backends do not reach the config, so a change
// of membership renders the same bytes and needs no reload.
func TestDefaultTemplateDynamicIgnoresMembership(t *testing.T) {
	tests := []struct {
		name string
		keys []string
	}{
		{name: "no backend"},
		{name: "one backend", keys: []string{"/services/apache/10.0.0.1:80"}},
		{name: "three backends", keys: []string{"/services/apache/10.0.0.1:80", "/services/apache/10.0.0.2:80", "/services/apache/10.0.0.3:80"}},
		{name: "other backends", keys: []string{"/services/apache/172.18.0.9:8080"}},
	}
	render := func(t *testing.T, keys []string) []byte {
		t.Helper()
		out, err := Render(Default(), NewView(ViewInput{Projects: anyProject, Snapshot: snapshotOf(t, keys...), Services: []string{"apache"},
			Default: "apache", Listen: 80, Dynamic: true, StatusPort: 9145}))
		if err != nil {
			t.Fatalf("Render: %v", err)
		}
		return out
	}
	first := render(t, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := render(t, tt.keys)
			if !bytes.Equal(got, first) {
				t.Errorf("dynamic config with %v differs from the one without backends:\n%s", tt.keys, firstDiff(got, first))
			}
			for _, k := range tt.keys {
				if addr := k[strings.LastIndexByte(k, '/')+1:]; bytes.Contains(got, []byte(addr)) {
					t.Errorf("dynamic config names backend %s", addr)
				}
			}
		})
	}
}

// firstDiff describes the first line where got and want differ.
func firstDiff(got, want []byte) string {
	g, w := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
	for i := 0; i < len(g) || i < len(w); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl || i >= len(g) || i >= len(w) {
			return fmt.Sprintf("first difference at line %d:\n got %q\nwant %q", i+1, gl, wl)
		}
	}
	return "no line differs"
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		text string
		// wantErr are substrings of the error: the template's name and the
		// line of the fault.
		wantErr []string
	}{
		{name: "unclosed action", text: "upstream {\n  server {{.Addr;\n}", wantErr: []string{"custom.tmpl:2"}},
		{name: "range without end", text: "a\nb\n{{range .Services}}", wantErr: []string{"custom.tmpl:3", "unexpected EOF"}},
		{name: "unknown function", text: "a\n{{lookupIP \"web\"}}", wantErr: []string{"custom.tmpl:2", `"lookupIP" not defined`}},
		{name: "stray end", text: "{{end}}", wantErr: []string{"custom.tmpl:1", "end"}},
		{name: "bad pipeline", text: "x\n\n\n{{if}}{{end}}", wantErr: []string{"custom.tmpl:4", "missing value for if"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmpl, err := Parse("custom.tmpl", tt.text)
			if err == nil {
				t.Fatalf("Parse = %v, nil; want an error", tmpl)
			}
			for _, want := range append([]string{"parse template custom.tmpl"}, tt.wantErr...) {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("Parse error = %q; want it to contain %q", err, want)
				}
			}
		})
	}
}

func TestRenderErrors(t *testing.T) {
	view := NewView(ViewInput{
		Projects: anyProject,
		Snapshot: snapshotOf(t, "/services/apache/10.0.0.1:80"),
		Services: []string{"apache"},
		Default:  "apache",
		Listen:   80,
	})
	tests := []struct {
		name    string
		text    string
		wantErr []string
	}{
		{name: "missing map key", text: "line one\n{{.KVs.nope}}", wantErr: []string{"custom.tmpl:2", `map has no entry for key "nope"`}},
		{name: "getv of a missing key", text: `{{getv "/services/apache/10.0.0.9:80"}}`, wantErr: []string{"custom.tmpl:1", "/services/apache/10.0.0.9:80", "key does not exist"}},
		{name: "get of a missing key", text: `{{get "/nope"}}`, wantErr: []string{"/nope", "key does not exist"}},
		{name: "unknown field", text: "{{.Nope}}", wantErr: []string{"custom.tmpl:1", "Nope"}},
		{name: "index out of range", text: "{{index .Services 5}}", wantErr: []string{"index out of range"}},
		{name: "nil pointer-like field on empty service", text: `{{(index (.Service "none").Backends 0).Addr}}`, wantErr: []string{"index out of range"}},
		{name: "division by zero", text: "{{div 1 0}}", wantErr: []string{"division by zero"}},
		{name: "slice out of range", text: `{{slice "abc" 5}}`, wantErr: []string{"custom.tmpl:1"}},
		{name: "json of a non-object", text: `{{json "[1]"}}`, wantErr: []string{"json"}},
		{name: "seq too long", text: "{{seq 1 100000000}}", wantErr: []string{"too many"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmpl, err := Parse("custom.tmpl", tt.text)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			var out []byte
			func() {
				defer func() {
					if r := recover(); r != nil {
						t.Fatalf("Render panicked: %v", r)
					}
				}()
				out, err = Render(tmpl, view)
			}()
			if err == nil {
				t.Fatalf("Render = %q, nil; want an error", out)
			}
			for _, want := range append([]string{"render custom.tmpl"}, tt.wantErr...) {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("Render error = %q; want it to contain %q", err, want)
				}
			}
		})
	}
}

// snapshotOf returns a snapshot holding a minimal valid registration for
// each key, in the order given.
func snapshotOf(tb testing.TB, keys ...string) store.Snapshot {
	tb.Helper()
	var snap store.Snapshot
	for _, k := range keys {
		e, err := store.ParseEntry(store.DefaultPrefix, k, []byte(`{"port":80}`))
		if err != nil {
			tb.Fatal(err)
		}
		snap.Entries = append(snap.Entries, e)
	}
	return snap
}

// bigSnapshot returns n backends spread over a few services, shuffled by r.
func bigSnapshot(tb testing.TB, n int, r *rand.Rand) store.Snapshot {
	tb.Helper()
	services := []string{"apache", "api", "static", "legacy"}
	var snap store.Snapshot
	for i := range n {
		svc := services[i%len(services)]
		addr := fmt.Sprintf("10.%d.%d.%d:%d", i>>16&0xff, i>>8&0xff, i&0xff, 8000+i%100)
		reg := store.Registration{Host: fmt.Sprintf("%s-%d", svc, i), IPv4: addr[:strings.IndexByte(addr, ':')], Port: 8000 + i%100, Container: fmt.Sprintf("upstreamd-%s-%d", svc, i), Node: "node-a"}
		e, err := store.ParseEntry(store.DefaultPrefix, store.ServiceKey(store.DefaultPrefix, svc, addr), []byte(reg.Encode()))
		if err != nil {
			tb.Fatal(err)
		}
		snap.Entries = append(snap.Entries, e)
	}
	if r != nil {
		r.Shuffle(len(snap.Entries), func(i, j int) { snap.Entries[i], snap.Entries[j] = snap.Entries[j], snap.Entries[i] })
	}
	return snap
}

func TestRenderDeterministic(t *testing.T) {
	// A template that walks every map-backed function, so any dependence on
	// map iteration order would show.
	custom, err := Parse("custom.tmpl", `{{range lsdir "/services"}}{{$svc := .}}[{{.}}]{{range ls (printf "/services/%s" .)}} {{.}}{{end}}
{{range gets (printf "/services/%s/*" $svc)}}{{$d := json .Value}}{{base .Key}}={{$d.host}} {{end}}
{{range getvs (printf "/services/%s/*" $svc)}}{{.}}{{end}}
{{end}}{{range $k, $v := .KVs}}{{$k}}{{end}}`)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		tmpl *Template
	}{
		{name: "default template", tmpl: Default()},
		{name: "confd functions", tmpl: custom},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := ViewInput{Projects: anyProject, Services: []string{"static", "apache"}, Default: "apache", Listen: 80}
			in.Snapshot = bigSnapshot(t, 200, nil)
			first, err := Render(tt.tmpl, NewView(in))
			if err != nil {
				t.Fatalf("Render: %v", err)
			}
			r := rand.New(rand.NewPCG(1, 2))
			for i := range 20 {
				in.Snapshot = bigSnapshot(t, 200, r) // same entries, new order
				got, err := Render(tt.tmpl, NewView(in))
				if err != nil {
					t.Fatalf("Render #%d: %v", i, err)
				}
				if !bytes.Equal(got, first) {
					t.Fatalf("Render #%d differs from the first render:\n%s", i, firstDiff(got, first))
				}
			}
		})
	}
}

func BenchmarkRender(b *testing.B) {
	tmpl := Default()
	for _, n := range []int{10, 100, 1000, 10000} {
		b.Run(fmt.Sprintf("backends=%d", n), func(b *testing.B) {
			view := NewView(ViewInput{
				Projects: anyProject,
				Snapshot: bigSnapshot(b, n, nil),
				Services: []string{"apache", "api", "static", "legacy"},
				Default:  "apache",
				Listen:   80,
			})
			b.ReportAllocs()
			var size int
			for b.Loop() {
				out, err := Render(tmpl, view)
				if err != nil {
					b.Fatal(err)
				}
				size = len(out)
			}
			b.ReportMetric(float64(size), "bytes/config")
		})
	}
}

// TestViewTakesOnlyItsProjects: two projects on one etcd do not see each
// other's registrations (not in pools, not through confd's functions)
// unless a project is listed; AnyProject takes all, those without a
// project included.
func TestViewTakesOnlyItsProjects(t *testing.T) {
	var snap store.Snapshot
	for _, r := range []struct{ project, addr string }{{"a", "10.0.0.1:80"}, {"b", "10.0.0.2:80"}, {"", "10.0.0.3:80"}} {
		reg := store.Registration{IPv4: r.addr[:strings.IndexByte(r.addr, ':')], Port: 80, Project: r.project}
		e, err := store.ParseEntry(store.DefaultPrefix, store.ServiceKey(store.DefaultPrefix, "apache", r.addr), []byte(reg.Encode()))
		if err != nil {
			t.Fatal(err)
		}
		snap.Entries = append(snap.Entries, e)
	}
	tmpl, err := Parse("t", `{{range gets "/services/apache/*"}}{{base .Key}} {{end}}`)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		projects []string
		want     string
	}{
		{[]string{"a"}, "10.0.0.1:80 "},
		{[]string{"b"}, "10.0.0.2:80 "},
		{[]string{"a", "b"}, "10.0.0.1:80 10.0.0.2:80 "},
		{[]string{store.AnyProject}, "10.0.0.1:80 10.0.0.2:80 10.0.0.3:80 "},
		{nil, ""},
	} {
		view := NewView(ViewInput{Snapshot: snap, Projects: tt.projects, Services: []string{"apache"}, Default: "apache", Listen: 80})
		var pool []string
		for _, b := range view.Backends() {
			pool = append(pool, b.Addr+" ")
		}
		if got := strings.Join(pool, ""); got != tt.want {
			t.Errorf("projects %q: pool %q, want %q", tt.projects, got, tt.want)
		}
		out, err := Render(tmpl, view)
		if err != nil {
			t.Fatal(err)
		}
		if string(out) != tt.want {
			t.Errorf("projects %q: gets rendered %q, want %q", tt.projects, out, tt.want)
		}
	}
}
