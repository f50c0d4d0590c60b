package spec

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRenderChecks: a template is rendered at start with no backend and
// with one made-up backend per service; a template that fails on either
// is refused, naming the file, the key and the view.
func TestRenderChecks(t *testing.T) {
	tests := []struct {
		name, template, want string
	}{
		{name: "built-in", template: ""},
		{name: "fails with no backend", template: `{{(index .Backends 0).Addr}}`, want: "proxy.template fails with no backend registered"},
		{name: "fails with a backend", template: `{{range .Backends}}{{.Nope}}{{end}}`, want: "proxy.template fails with one backend per service"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := "[[service]]\nname = \"apache\"\n[[service]]\nname = \"web\"\nimage = \"w\"\nport = 8080\n"
			if tt.template != "" {
				f := filepath.Join(t.TempDir(), "t.tmpl")
				if err := os.WriteFile(f, []byte(tt.template), 0o600); err != nil {
					t.Fatal(err)
				}
				body = "[proxy]\ntemplate = \"" + f + "\"\n" + body
			}
			cfg, files, err := Load(writeConfig(t, body), testHost)
			if err != nil {
				t.Fatal(err)
			}
			tmpl, err := cfg.LoadTemplate()
			if err != nil {
				t.Fatal(err)
			}
			tc, err := cfg.RenderChecks(tmpl, files)
			if tt.want != "" {
				if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), cfg.file) {
					t.Fatalf("error %v; want one naming %s and saying %q", err, cfg.file, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			// The sample has one backend per service, each on its port, of
			// this project (or the view would not take it).
			var got []string
			for _, e := range cfg.View(files, cfg.SampleSnapshot()).Services {
				for _, b := range e.Backends {
					got = append(got, e.Name+" "+b.Addr)
				}
			}
			if want := "apache 192.0.2.1:80,web 192.0.2.2:8080"; strings.Join(got, ",") != want {
				t.Errorf("sample view %v, want %s", got, want)
			}
			if len(tc.Empty) == 0 {
				t.Error("empty render is empty")
			}
		})
	}
}
