package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// fakeEtcdEndpoint listens where a spec can point etcd and counts the
// connections made, so a test can show that etcd was never contacted.
func fakeEtcdEndpoint(t *testing.T) (endpoint string, conns *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	conns = &atomic.Int32{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed
			}
			conns.Add(1)
			if err := c.Close(); err != nil {
				t.Errorf("close: %v", err)
			}
		}
	}()
	t.Cleanup(func() {
		if err := ln.Close(); err != nil {
			t.Errorf("close listener: %v", err)
		}
	})
	return "http://" + ln.Addr().String(), conns
}

// TestRun runs the command line; nothing here may need etcd or Docker.
// FILE in args and want stands for a spec file written for the case.
func TestRun(t *testing.T) {
	endpoint, conns := fakeEtcdEndpoint(t)
	good := fmt.Sprintf("[etcd]\nendpoints = [%q]\n", endpoint)
	tests := []struct {
		name       string
		spec       string // written to FILE
		args       []string
		wantCode   int
		wantStdout string // exact
		wantStderr []string
	}{
		{name: "version", args: []string{"version"}, wantCode: 0, wantStdout: "upstreamd dev\n"},
		{name: "unknown flag", args: []string{"--nope", "version"}, wantCode: 2, wantStderr: []string{"unknown flag: --nope"}},
		{name: "extra argument", args: []string{"version", "now"}, wantCode: 2, wantStderr: []string{`"now"`}},
		{name: "bad log format", args: []string{"--log-format", "xml", "render"}, wantCode: 2, wantStderr: []string{`--log-format "xml"`}},
		{name: "bad log level", args: []string{"--log-level", "loud", "render"}, wantCode: 2, wantStderr: []string{`--log-level "loud"`}},
		{name: "zerolog's trace is not one of ours", args: []string{"--log-level", "trace", "version"}, wantCode: 2, wantStderr: []string{`--log-level "trace": want debug, info, warn or error`}},
		{name: "flags are checked for version too", args: []string{"--log-format", "xml", "version"}, wantCode: 2, wantStderr: []string{`--log-format "xml"`}},
		{name: "--version", args: []string{"--version"}, wantCode: 0, wantStdout: "upstreamd version dev\n"},
		{name: "unknown command is a usage error", args: []string{"nosuch"}, wantCode: 2, wantStderr: []string{`unknown command "nosuch"`}},
		{name: "no command", args: nil, wantCode: 2, wantStderr: []string{"no command given"}},
		{
			name: "a negative number is an argument, not a flag",
			spec: good, args: []string{"-c", "FILE", "scale", "apache", "-1"},
			wantCode: 2, wantStderr: []string{"-1: a negative number is not a valid argument (replicas are 1-1000)"},
		},
		{
			name: "scale to 0 is refused before contacting etcd",
			spec: good, args: []string{"-c", "FILE", "scale", "apache", "0"},
			wantCode: 2, wantStderr: []string{"replicas 0 out of range 1-1000"},
		},
		{
			name: "scale to a non-number is refused before contacting etcd",
			spec: good, args: []string{"-c", "FILE", "scale", "apache", "many"},
			wantCode: 2, wantStderr: []string{`replicas "many" is not a number`},
		},
		{
			name: "scale of an unknown service",
			spec: good, args: []string{"-c", "FILE", "scale", "nosuch", "3"},
			wantCode: 2, wantStderr: []string{`service "nosuch" is not in FILE`, "apache"},
		},
		{
			name: "scale with neither replicas nor --reset",
			spec: good, args: []string{"-c", "FILE", "scale", "apache"},
			wantCode: 2, wantStderr: []string{"give either REPLICAS or --reset"},
		},
		{
			name: "scale with both replicas and --reset",
			spec: good, args: []string{"-c", "FILE", "scale", "--reset", "apache", "3"},
			wantCode: 2, wantStderr: []string{"give either REPLICAS or --reset"},
		},
		{
			name: "scale with too many arguments",
			spec: good, args: []string{"-c", "FILE", "scale", "apache", "3", "4"},
			wantCode: 2, wantStderr: []string{"accepts between 1 and 2 arg(s)"},
		},
		{
			name: "render with a bad spec file",
			spec: good + "[[service]]\nname = \"apache\"\nreplicas = 0\n", args: []string{"-c", "FILE", "render"},
			wantCode: 1, wantStderr: []string{"FILE:5:1: service[0] (apache).replicas"},
		},
		{
			name:     "render with a missing spec file",
			args:     []string{"-c", "FILE.missing", "render"},
			wantCode: 1, wantStderr: []string{"FILE.missing"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "upstreamd.toml")
			if err := os.WriteFile(file, []byte(tt.spec), 0o600); err != nil {
				t.Fatal(err)
			}
			args := make([]string, len(tt.args))
			for i, a := range tt.args {
				args[i] = strings.ReplaceAll(a, "FILE", file)
			}
			before := conns.Load()
			var stdout, stderr bytes.Buffer
			code := run(args, &stdout, &stderr)
			if code != tt.wantCode {
				t.Errorf("run(%q) = %d, want %d; stderr:\n%s", args, code, tt.wantCode, stderr.String())
			}
			if tt.wantStdout != "" || code == 0 {
				if got := stdout.String(); got != tt.wantStdout {
					t.Errorf("stdout %q, want %q", got, tt.wantStdout)
				}
			}
			for _, w := range tt.wantStderr {
				if w := strings.ReplaceAll(w, "FILE", file); !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr does not contain %q:\n%s", w, stderr.String())
				}
			}
			if n := conns.Load() - before; n != 0 {
				t.Errorf("%d connections to etcd; a command-line error must be found before connecting", n)
			}
		})
	}
}
