package nginx

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
)

const (
	testMain   = "/etc/nginx/nginx.conf"
	testConfig = "/etc/nginx/conf.d/upstreamd.conf"
	testStaged = "/etc/nginx/.upstreamd-staged-upstreamd.conf"
	testCheck  = "/etc/nginx/.upstreamd-check-nginx.conf"
)

func TestCheckConfig(t *testing.T) {
	// The image's nginx.conf: quotes with # and nested quotes in log_format,
	// a glob include that does not match, then the one that does.
	imageMain, err := os.ReadFile("../images/nginx/nginx.conf")
	if err != nil {
		t.Fatal(err)
	}
	confD := []string{"00-first.conf", "default.conf", "notes.txt", "upstreamd.conf", "zz-last.conf"}
	tests := []struct {
		name       string
		main       string
		mainPath   string // testMain when empty
		configPath string // testConfig when empty
		dirs       map[string][]string
		listErr    error
		want       string
		wantErr    []string // substrings of the error; empty means success
		wantLists  []string // directories ListDir must have been asked for
	}{
		{
			name: "exact path",
			main: "http {\n    include /etc/nginx/mime.types;\n    include /etc/nginx/conf.d/upstreamd.conf;\n}\n",
			want: "http {\n    include /etc/nginx/mime.types;\n    include " + testStaged + ";\n}\n",
		},
		{
			name:      "glob keeps the directory's other files",
			main:      "http {\n    include /etc/nginx/conf.d/*.conf;\n}\n",
			dirs:      map[string][]string{"/etc/nginx/conf.d": confD},
			want:      "http {\n    include " + testStaged + "; include /etc/nginx/conf.d/00-first.conf; include /etc/nginx/conf.d/default.conf; include /etc/nginx/conf.d/zz-last.conf;\n}\n",
			wantLists: []string{"/etc/nginx/conf.d"},
		},
		{
			name:      "glob with only the live file",
			main:      "http { include /etc/nginx/conf.d/*.conf; }",
			dirs:      map[string][]string{"/etc/nginx/conf.d": {"upstreamd.conf"}},
			want:      "http { include " + testStaged + "; }",
			wantLists: []string{"/etc/nginx/conf.d"},
		},
		{
			name:      "glob before the live file exists",
			main:      "http { include /etc/nginx/conf.d/*.conf; }",
			dirs:      map[string][]string{"/etc/nginx/conf.d": {"default.conf"}},
			want:      "http { include " + testStaged + "; include /etc/nginx/conf.d/default.conf; }",
			wantLists: []string{"/etc/nginx/conf.d"},
		},
		{
			name:      "relative glob resolves against the main config's directory",
			main:      "http {\n\tinclude conf.d/*.conf;\n}\n",
			dirs:      map[string][]string{"/etc/nginx/conf.d": confD},
			want:      "http {\n\tinclude " + testStaged + "; include /etc/nginx/conf.d/00-first.conf; include /etc/nginx/conf.d/default.conf; include /etc/nginx/conf.d/zz-last.conf;\n}\n",
			wantLists: []string{"/etc/nginx/conf.d"},
		},
		{
			name: "relative exact path",
			main: "http { include conf.d/upstreamd.conf; }",
			want: "http { include " + testStaged + "; }",
		},
		{
			name:       "relative path with another main directory",
			main:       "http { include sites/upstreamd.conf; }",
			mainPath:   "/usr/local/nginx/conf/nginx.conf",
			configPath: "/usr/local/nginx/conf/sites/upstreamd.conf",
			want:       "http { include " + testStaged + "; }",
		},
		{
			name: "includes in comments are ignored",
			main: "http {\n    # include /etc/nginx/conf.d/upstreamd.conf;\n    #include /etc/nginx/conf.d/*.conf;\n    include /etc/nginx/conf.d/upstreamd.conf; # include /etc/nginx/conf.d/upstreamd.conf;\n}\n",
			want: "http {\n    # include /etc/nginx/conf.d/upstreamd.conf;\n    #include /etc/nginx/conf.d/*.conf;\n    include " + testStaged + "; # include /etc/nginx/conf.d/upstreamd.conf;\n}\n",
		},
		{
			name:    "only a commented-out include",
			main:    "http {\n    # include /etc/nginx/conf.d/*.conf;\n}\n",
			wantErr: []string{testMain, testConfig},
		},
		{
			name: "hash inside quotes is not a comment",
			main: "http {\n    log_format x '# not a comment \"q\"'; include /etc/nginx/conf.d/upstreamd.conf;\n}\n",
			want: "http {\n    log_format x '# not a comment \"q\"'; include " + testStaged + ";\n}\n",
		},
		{
			name: "double-quoted argument",
			main: "http {\n    include \"/etc/nginx/conf.d/upstreamd.conf\";\n}\n",
			want: "http {\n    include " + testStaged + ";\n}\n",
		},
		{
			name:      "single-quoted glob",
			main:      "http {\n    include '/etc/nginx/conf.d/*.conf' ;\n}\n",
			dirs:      map[string][]string{"/etc/nginx/conf.d": confD},
			want:      "http {\n    include " + testStaged + "; include /etc/nginx/conf.d/00-first.conf; include /etc/nginx/conf.d/default.conf; include /etc/nginx/conf.d/zz-last.conf ;\n}\n",
			wantLists: []string{"/etc/nginx/conf.d"},
		},
		{
			name:    "no matching include",
			main:    "http {\n    include /etc/nginx/mime.types;\n    include /etc/nginx/sites-enabled/*;\n}\n",
			wantErr: []string{testMain, testConfig},
		},
		{
			name:    "similar name is not the live file",
			main:    "http { include /etc/nginx/conf.d/upstreamd.conf.bak; include /etc/nginx/conf.d/upstreamd; }",
			wantErr: []string{testMain, testConfig},
		},
		{
			name:    "include as part of another word",
			main:    "http { xinclude /etc/nginx/conf.d/upstreamd.conf; }",
			wantErr: []string{testMain, testConfig},
		},
		{
			name:      "glob that does not match is left untouched",
			main:      "include /etc/nginx/modules-enabled/*.conf;\nhttp {\n    include /etc/nginx/sites-enabled/*;\n    include /etc/nginx/conf.d/*.conf;\n}\n",
			dirs:      map[string][]string{"/etc/nginx/conf.d": {"upstreamd.conf"}},
			want:      "include /etc/nginx/modules-enabled/*.conf;\nhttp {\n    include /etc/nginx/sites-enabled/*;\n    include " + testStaged + ";\n}\n",
			wantLists: []string{"/etc/nginx/conf.d"},
		},
		{
			name:      "include at the start of the file",
			main:      "include /etc/nginx/conf.d/*.conf;",
			dirs:      map[string][]string{"/etc/nginx/conf.d": {"upstreamd.conf"}},
			want:      "include " + testStaged + ";",
			wantLists: []string{"/etc/nginx/conf.d"},
		},
		{
			name: "includes on one line",
			main: "http {include mime.types;include conf.d/upstreamd.conf;}",
			want: "http {include mime.types;include " + testStaged + ";}",
		},
		{
			name:      "listing the glob's directory fails",
			main:      "http { include /etc/nginx/conf.d/*.conf; }",
			listErr:   errors.New("container gone"),
			wantErr:   []string{"/etc/nginx/conf.d", "container gone"},
			wantLists: []string{"/etc/nginx/conf.d"},
		},
		{
			name:      "the image's nginx.conf",
			main:      string(imageMain),
			dirs:      map[string][]string{"/etc/nginx/conf.d": {"upstreamd.conf"}},
			want:      strings.Replace(string(imageMain), "include /etc/nginx/conf.d/*.conf;", "include "+testStaged+";", 1),
			wantLists: []string{"/etc/nginx/conf.d"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := checkInput{Main: []byte(tt.main), MainPath: tt.mainPath, ConfigPath: tt.configPath, StagedPath: testStaged}
			if in.MainPath == "" {
				in.MainPath = testMain
			}
			if in.ConfigPath == "" {
				in.ConfigPath = testConfig
			}
			var lists []string
			in.ListDir = func(dir string) ([]string, error) {
				lists = append(lists, dir)
				if tt.listErr != nil {
					return nil, tt.listErr
				}
				return tt.dirs[dir], nil
			}
			got, err := checkConfig(in)
			if fmt.Sprint(lists) != fmt.Sprint(tt.wantLists) {
				t.Errorf("ListDir called for %q; want %q", lists, tt.wantLists)
			}
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatalf("checkConfig = %q, nil; want an error", got)
				}
				for _, want := range tt.wantErr {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("checkConfig error = %q; want it to contain %q", err, want)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("checkConfig error = %v; want nil", err)
			}
			if string(got) != tt.want {
				t.Errorf("checkConfig =\n%s\nwant\n%s\n%s", got, tt.want, firstDiff(got, []byte(tt.want)))
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
