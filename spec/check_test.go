package spec

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/nginx"
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

// fakeNginx is nginx -t: it rejects the configs in reject, with err.
type fakeNginx struct {
	reject map[string]error // config → why
	files  map[string][]byte
}

func (f *fakeNginx) WriteFiles(_ context.Context, files map[string][]byte) error {
	f.files = files
	return nil
}

func (f *fakeNginx) Check(_ context.Context, config []byte) error { return f.reject[string(config)] }

// TestCheckWithNginx: what the template renders with a backend per
// service must pass nginx -t; with no backend it may fail (a warning):
// nginx keeps what it runs until a backend registers.
func TestCheckWithNginx(t *testing.T) {
	cfg, _, err := Load("", testHost)
	if err != nil {
		t.Fatal(err)
	}
	tc := TemplateCheck{Empty: []byte("empty"), Sample: []byte("sample"), Files: map[string][]byte{"/etc/nginx/x.pem": []byte("x")}}
	rejected := fmt.Errorf("%w: unknown directive", nginx.ErrCheckFailed)
	down := errors.New("no engine")
	for _, tt := range []struct {
		name   string
		reject map[string]error
		want   string // part of the error; "": none
		is     error
	}{
		{name: "both pass"},
		{name: "rejected with no backend: a warning", reject: map[string]error{"empty": rejected}},
		{name: "rejected with a backend per service", reject: map[string]error{"sample": rejected},
			want: "(defaults): proxy.template renders a config nginx rejects (checked with one made-up backend per service at 192.0.2.x): ", is: nginx.ErrCheckFailed},
		{name: "the check cannot run", reject: map[string]error{"empty": down}, want: "no engine", is: down},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeNginx{reject: tt.reject}
			err := cfg.CheckWithNginx(context.Background(), f, tc, zerolog.Nop())
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("error %v, want none", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, tt.is)):
				t.Errorf("error %v, want one with %q matching %v", err, tt.want, tt.is)
			}
			if len(f.files) != 1 {
				t.Errorf("files delivered before the check: %v", f.files)
			}
		})
	}
}
