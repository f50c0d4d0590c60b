package spec

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestHostName: the host's name is the default node name (made a valid
// name) and the proxy's announced host when it publishes on every address
// and no node address is set.
func TestHostName(t *testing.T) {
	host := testHost
	host.Name = "Web_1.example"
	s, _, err := Load(writeConfig(t, "[proxy]\npublish = \"0.0.0.0:8080\"\n"), host)
	if err != nil {
		t.Fatal(err)
	}
	if s.Node.Name != "web-1-example" {
		t.Errorf("node %q, want web-1-example", s.Node.Name)
	}
	if got := s.OrchestratorConfig().ProxyAddress; got != "Web_1.example:8080" {
		t.Errorf("proxy address %q, want Web_1.example:8080", got)
	}
}

// TestHostAddrs: network.node_address must be one of the host's
// addresses, as the host lists them.
func TestHostAddrs(t *testing.T) {
	for _, tt := range []struct {
		name, addr string
		addrs      func() ([]net.Addr, error)
		want       string // part of the error; "": accepted
	}{
		{name: "an address of the host", addr: "10.1.2.3", addrs: testHost.Addrs},
		{name: "another", addr: "192.0.2.77", addrs: testHost.Addrs,
			want: "FILE:3:1: network.node_address: 192.0.2.77 is not an address of this host (it has 10.1.2.3)"},
		{name: "the list fails", addr: "10.1.2.3", addrs: func() ([]net.Addr, error) { return nil, errors.New("no interfaces") },
			want: "FILE:3:1: network.node_address: cannot list this host's addresses to check 10.1.2.3: no interfaces"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			host := testHost
			host.Addrs = tt.addrs
			file := writeConfig(t, "[network]\nadvertise = \"host\"\nnode_address = \""+tt.addr+"\"\n")
			_, _, err := Load(file, host)
			switch want := strings.ReplaceAll(tt.want, "FILE", file); {
			case want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case want != "" && (err == nil || err.Error() != want):
				t.Errorf("error %v\nwant %s", err, want)
			}
		})
	}
}

// TestHostClock: a certificate is checked against the host's clock.
func TestHostClock(t *testing.T) {
	dir := t.TempDir()
	notAfter := time.Now().Add(30 * 24 * time.Hour)
	selfSigned(t, dir, "a", []string{"a.example"}, notAfter)
	file := filepath.Join(dir, "upstreamd.toml")
	body := "[proxy]\npublish_tls = \"127.0.0.1:8443\"\n[[tls.certificate]]\ncert_file = \"a.pem\"\nkey_file = \"a.key\"\n"
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		now  time.Time
		want string
	}{
		{"before its expiry", notAfter.Add(-time.Hour), ""},
		{"after", notAfter.Add(time.Hour), file + ":3:3: tls.certificate[0]: a.pem and a.key: expired on "},
	} {
		t.Run(tt.name, func(t *testing.T) {
			host := testHost
			host.Now = func() time.Time { return tt.now }
			_, files, err := Load(file, host)
			switch {
			case tt.want == "" && (err != nil || len(files.Certs) != 1):
				t.Errorf("error %v, %d certificates; want it served", err, len(files.Certs))
			case tt.want != "" && (err == nil || !strings.HasPrefix(err.Error(), tt.want)):
				t.Errorf("error %v, want %s…", err, tt.want)
			}
		})
	}
}

// TestValidationReadsNoFile: Parse checks the text and the host alone;
// the files the spec names are ReadFiles', whose errors name the line
// and key as validation's do.
func TestValidationReadsNoFile(t *testing.T) {
	body := "[admin]\ntoken_file = \"token\"\n[proxy]\ntemplate = \"proxy.tmpl\"\npublish_tls = \":8443\"\n" +
		"[[tls.certificate]]\ncert_file = \"a.pem\"\nkey_file = \"a.key\"\n[etcd]\nusername = \"u\"\npassword_file = \"secret\"\n"
	name := filepath.Join(t.TempDir(), "upstreamd.toml") // nothing there
	s, err := Parse(name, []byte(body), testHost)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	_, err = s.ReadFiles(time.Now())
	if err == nil {
		t.Fatal("ReadFiles found every file")
	}
	want := []string{
		name + ":2:1: admin.token_file: open ",
		name + ":4:1: proxy.template: stat ",
		name + ":6:3: tls.certificate[0]: cert_file: open ",
		name + ":11:1: etcd.password_file: stat ",
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != len(want) {
		t.Fatalf("%d errors, want %d:\n%v", len(lines), len(want), err)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) || !strings.Contains(lines[i], "no such file") {
			t.Errorf("error %d: %s\nwant %s… no such file", i, lines[i], w)
		}
	}
}
