package render

import (
	"bytes"
	"fmt"
	"regexp"
	"strings"
	"testing"
)

func TestFinish(t *testing.T) {
	rendered := []byte("upstream apache_pool {\n    server 10.0.0.1:80;\n}\n")
	hash := Hash(rendered)
	// The Lua setup and the pools API: only for dynamic pools.
	dynamicOnly := []string{
		"lua_shared_dict upstreamd 8m;",
		`lua_package_path "/usr/share/upstreamd/lua/?.lua;;";`,
		`init_worker_by_lua_block { require("upstreamd").init_worker() }`,
		"location = /upstreamd/pools {",
		`content_by_lua_block { require("upstreamd").api() }`,
	}
	tests := []struct {
		name       string
		view       View
		unchanged  bool     // Finish returns the rendered bytes as they are
		want       []string // lines of the trailer
		wantAbsent []string
	}{
		{name: "no status port", view: View{}, unchanged: true},
		{name: "dynamic without a status port", view: View{Dynamic: true}, unchanged: true},
		{
			name: "status port",
			view: View{StatusPort: 9145},
			want: []string{
				"listen 9145;",
				"location = /upstreamd/status {",
				`return 200 "config ` + hash + `\n";`,
			},
			wantAbsent: dynamicOnly,
		},
		{
			name: "status port, dynamic",
			view: View{StatusPort: 8081, Dynamic: true},
			want: append([]string{
				"listen 8081;",
				"location = /upstreamd/status {",
				`return 200 "config ` + hash + `\n";`,
			}, dynamicOnly...),
			wantAbsent: []string{"allow ", "deny all;"},
		},
		{
			name: "dynamic, the daemon's address known: only it may change the pools",
			view: View{StatusPort: 8081, Dynamic: true, Admin: "172.18.0.1"},
			want: append([]string{
				"allow 172.18.0.1;",
				"deny all;",
				"limit_conn upstreamd_status 8;",
			}, dynamicOnly...),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Finish(rendered, tt.view)
			if tt.unchanged {
				if !bytes.Equal(got, rendered) {
					t.Errorf("Finish =\n%s\nwant the rendered bytes unchanged:\n%s", got, rendered)
				}
				return
			}
			trailer, ok := bytes.CutPrefix(got, rendered)
			if !ok {
				t.Fatalf("Finish =\n%s\nwant it to start with the rendered bytes", got)
			}
			lines := map[string]bool{}
			for _, l := range strings.Split(string(trailer), "\n") {
				lines[strings.TrimSpace(l)] = true
			}
			for _, w := range tt.want {
				if !lines[w] {
					t.Errorf("trailer has no line %q:\n%s", w, trailer)
				}
			}
			for _, a := range tt.wantAbsent {
				if bytes.Contains(trailer, []byte(a)) {
					t.Errorf("trailer contains %q; want it only for dynamic pools:\n%s", a, trailer)
				}
			}
			// The trailer answers the hash of the rendered bytes, not of
			// the delivered ones (those contain the hash).
			if h := Hash(got); bytes.Contains(got, []byte(h)) {
				t.Errorf("trailer names the hash of the finished config %s; want the rendered one's", h)
			}
		})
	}
}

func TestHash(t *testing.T) {
	hexRE := regexp.MustCompile(`^[0-9a-f]{16}$`)
	inputs := [][]byte{nil, []byte(""), []byte("a"), []byte("b"), []byte("server 10.0.0.1:80;\n"), []byte("server 10.0.0.1:80; \n")}
	seen := map[string]string{}
	for _, in := range inputs {
		t.Run(fmt.Sprintf("%q", in), func(t *testing.T) {
			h := Hash(in)
			if !hexRE.MatchString(h) {
				t.Errorf("Hash(%q) = %q; want 16 hex digits", in, h)
			}
			if again := Hash(append([]byte(nil), in...)); again != h {
				t.Errorf("Hash(%q) = %q, then %q; want the same", in, h, again)
			}
			if prev, ok := seen[h]; ok && prev != string(in) {
				t.Errorf("Hash(%q) = Hash(%q) = %s; want different hashes", in, prev, h)
			}
			seen[h] = string(in)
		})
	}
}
