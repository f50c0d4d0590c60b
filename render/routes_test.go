package render

import (
	"fmt"
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
