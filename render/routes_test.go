package render

import (
	"fmt"
	"strings"
	"testing"
)

// TestServers: what each host and path reaches, service by service.
func TestServers(t *testing.T) {
	svc := func(name string, hosts []string, prefix string) Service {
		return Service{Name: name, Configured: true, Hosts: hosts, PathPrefix: prefix}
	}
	services := []Service{
		svc("seed", nil, ""),                      // no route of its own
		svc("www", []string{"www.a", "a"}, ""),    // two hosts alike
		svc("docs", []string{"www.a"}, "/docs"),   // only on www.a
		svc("api", nil, "/api"),                   // every host
		svc("apiv2", []string{"a"}, "/api"),       // a's own /api wins
		{Name: "elsewhere", Hosts: []string{"x"}}, // not configured: ignored
		svc("deep", nil, "/api/v1"),               // longer prefix first
	}
	got := fmt.Sprint(servers(services, "seed"))
	want := "[" +
		"{[a] [{/api/v1 deep false} {/api apiv2 false}] www <nil>} " +
		"{[www.a] [{/api/v1 deep false} {/docs docs false} {/api api false}] www <nil>} " +
		"{[] [{/api/v1 deep false} {/api api false}] seed <nil>}]"
	if got != want {
		t.Errorf("servers:\n got %s\nwant %s", got, want)
	}
	if got := fmt.Sprint(servers(services[:2], "")); got != "[{[a www.a] [] www <nil>} {[] []  <nil>}]" {
		t.Errorf("hosts alike share a block, no default: %s", got)
	}
}

// TestServerNamesHash: nginx's server names hash is sized to the names
// the servers render. nginx's defaults (buckets of 64 bytes, 512 of them
// at most) hold names of up to 46 characters and, by measure, 32 names;
// beyond either, each bucket holds four of the longest name and the
// buckets may number four per name.
func TestServerNamesHash(t *testing.T) {
	names := func(n, length int) []string {
		out := make([]string, n)
		for i := range out {
			s := fmt.Sprintf("h%d.", i)
			out[i] = s + strings.Repeat("x", length-len(s))
		}
		return out
	}
	for _, tt := range []struct {
		name  string
		hosts []string
		want  *NamesHash // nil: nginx's defaults
	}{
		{"no names", nil, nil},
		{"32 names of 46 characters", names(32, 46), nil},
		{"a name of 47 characters", names(1, 47), &NamesHash{BucketSize: 512, MaxSize: 512}},
		{"a wildcard of 47 characters", []string{"*." + strings.Repeat("w", 45)}, &NamesHash{BucketSize: 512, MaxSize: 512}},
		{"the longest name", names(1, 253), &NamesHash{BucketSize: 2048, MaxSize: 512}},
		{"33 short names", names(33, 10), &NamesHash{BucketSize: 128, MaxSize: 512}},
		{"1000 names of 46 characters", names(1000, 46), &NamesHash{BucketSize: 256, MaxSize: 4000}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			v := NewView(ViewInput{Services: []string{"web"}, Routes: map[string]Route{"web": {Hosts: tt.hosts}}})
			got := v.ServerNamesHash
			if (got == nil) != (tt.want == nil) || got != nil && *got != *tt.want {
				t.Errorf("ServerNamesHash = %+v, want %+v", got, tt.want)
			}
		})
	}
}
