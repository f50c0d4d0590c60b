package spec

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestProjectEncode: the project's part encodes canonically (Parse reads
// the encoding back to a part that encodes alike, with the same Hash), a
// node's part does not change it, and a project's key does.
func TestProjectEncode(t *testing.T) {
	dir := t.TempDir()
	const rich = "project = \"shop\"\n[etcd]\nendpoints = [\"http://10.0.0.1:2379\"]\ninclude_projects = [\"other\"]\nlease_ttl = \"30s\"\n" +
		"[proxy]\npublish = \"0.0.0.0:80\"\npublish_tls = \"0.0.0.0:443\"\nmemory = \"64m\"\ncpus = 0.5\n" +
		"[acme]\nemail = \"ops@a.example\"\n" +
		"[[service]]\nname = \"web\"\nimage = \"w\"\nreplicas = 5\nmax_per_node = 2\nenv = [\"A=1\"]\ncommand = [\"serve\", \"--port\", \"80\"]\n" +
		"hosts = [\"b.example\", \"a.example\"]\nhttps_redirect = true\nresponse_headers = { X-Z = \"1\", X-A = \"$host\" }\n" +
		"[service.health]\npath = \"/healthz\"\nrise = 3\n" +
		"[[service]]\nname = \"api\"\nimage = \"a\"\npath_prefix = \"/api\"\nstrip_prefix = true\nread_timeout = \"2m\"\n"
	for _, tt := range []struct{ name, body string }{
		{"the defaults", ""},
		{"the example", "EXAMPLE"},
		{"every kind of key", rich},
	} {
		t.Run(tt.name, func(t *testing.T) {
			file := exampleFile
			if tt.body != "EXAMPLE" {
				file = filepath.Join(dir, "upstreamd.toml")
				if err := os.WriteFile(file, []byte(tt.body), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			s, err := Parse(file, mustRead(t, file), testHost)
			if err != nil {
				t.Fatal(err)
			}
			enc := s.Project.Encode()
			again, err := Parse("revision", enc, testHost)
			if err != nil {
				t.Fatalf("Parse of the encoding: %v\n%s", err, enc)
			}
			if got := again.Project.Encode(); !bytes.Equal(got, enc) {
				t.Errorf("encoding read back encodes as\n%s\nwant\n%s", got, enc)
			}
			if again.Project.Hash() != s.Project.Hash() {
				t.Errorf("hash %s read back, want %s", again.Project.Hash(), s.Project.Hash())
			}
			if k := nodeKey.Find(enc); k != nil {
				t.Errorf("a node's key in the project's encoding: %q\n%s", k, enc)
			}
		})
	}
	t.Run("a node's keys do not change the hash, a project's do", func(t *testing.T) {
		hash := func(body string) string {
			s, err := Parse("upstreamd.toml", []byte(body), testHost)
			if err != nil {
				t.Fatal(err)
			}
			return s.Project.Hash()
		}
		base := hash(rich)
		other := "node = \"b\"\n" + strings.Replace(rich, "10.0.0.1", "10.0.0.9", 1) +
			"[docker]\nhost = \"tcp://10.0.0.2:2375\"\n[admin]\nlisten = \"\"\n"
		if h := hash(other); h != base {
			t.Errorf("another node's part changed the hash: %s, want %s", h, base)
		}
		if h := hash(strings.Replace(rich, "replicas = 5", "replicas = 6", 1)); h == base {
			t.Error("another replicas left the hash as it was")
		}
	})
}

// nodeKey finds a key of the node's part in an encoding.
var nodeKey = regexp.MustCompile(`(?m)^(node|endpoints|dial_timeout|username|password|node_address) =|^\[(docker|admin|metrics)\]`)

func mustRead(t *testing.T, file string) []byte {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
