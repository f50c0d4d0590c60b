package render

import (
	"strings"
	"testing"
)

// confdKVs is what a confd template sees for the seed: three apache
// secretaries' values, plus a second service.
var confdKVs = map[string]string{
	"/services/apache/10.132.249.212:8080": `{"host":"core-01","ipv4_addr":"10.132.249.212","port":8080}`,
	"/services/apache/10.132.249.206:8081": `{"host":"core-02","ipv4_addr":"10.132.249.206","port":8081}`,
	"/services/apache/10.132.248.177:8082": `{"host":"core-03","ipv4_addr":"10.132.248.177","port":8082}`,
	"/services/static/10.0.1.1:80":         `{"host":"static-1","port":80}`,
}

// TestConfdFunctions renders small templates written for confd against the
// same keys and checks that each function answers as confd's does (memkv
// and template_funcs.go), except that errors are returned where confd
// panics (div by zero).
func TestConfdFunctions(t *testing.T) {
	const (
		a1 = `{"host":"core-01","ipv4_addr":"10.132.249.212","port":8080}`
		a2 = `{"host":"core-02","ipv4_addr":"10.132.249.206","port":8081}`
		a3 = `{"host":"core-03","ipv4_addr":"10.132.248.177","port":8082}`
	)
	tests := []struct {
		name    string
		text    string
		want    string
		wantErr []string // substrings of the error; empty means success
	}{
		// Store functions.
		{name: "getv", text: `{{getv "/services/static/10.0.1.1:80"}}`, want: `{"host":"static-1","port":80}`},
		{name: "getv with default, key present", text: `{{getv "/services/static/10.0.1.1:80" "none"}}`, want: `{"host":"static-1","port":80}`},
		{name: "getv with default, key missing", text: `{{getv "/services/static/10.0.1.2:80" "none"}}`, want: "none"},
		{name: "getv missing key", text: `{{getv "/services/static/10.0.1.2:80"}}`, wantErr: []string{`"/services/static/10.0.1.2:80"`, "key does not exist"}},
		{name: "get", text: `{{with get "/services/static/10.0.1.1:80"}}{{.Key}} = {{.Value}}{{end}}`, want: `/services/static/10.0.1.1:80 = {"host":"static-1","port":80}`},
		{name: "get missing key", text: `{{get "/nope"}}`, wantErr: []string{`"/nope"`, "key does not exist"}},
		{
			name: "confd classic: gets and base",
			text: `{{range gets "/services/apache/*"}}server {{base .Key}};{{end}}`,
			want: "server 10.132.248.177:8082;server 10.132.249.206:8081;server 10.132.249.212:8080;",
		},
		{name: "gets sorted by key with values", text: `{{range gets "/services/*/*"}}{{.Key}}|{{end}}`, want: "/services/apache/10.132.248.177:8082|/services/apache/10.132.249.206:8081|/services/apache/10.132.249.212:8080|/services/static/10.0.1.1:80|"},
		{name: "gets no match", text: `[{{range gets "/services/nope/*"}}{{.Key}}{{end}}]`, want: "[]"},
		{name: "gets bad pattern", text: `{{gets "/services/["}}`, wantErr: []string{"gets", "syntax error in pattern"}},
		{
			name: "seed template: range getvs",
			text: "upstream apache_pool {\n{{ range getvs \"/services/apache/*\" }}\n    server {{ . }};\n{{ end }}\n}",
			// The seed's template prints the secretaries' JSON values: the
			// function works as in confd, sorted by value.
			want: "upstream apache_pool {\n\n    server " + a1 + ";\n\n    server " + a2 + ";\n\n    server " + a3 + ";\n\n}",
		},
		{
			name: "seed template fixed with json",
			text: `{{range getvs "/services/apache/*"}}{{$d := json .}}server {{$d.ipv4_addr}}:{{$d.port}};{{end}}`,
			want: "server 10.132.249.212:8080;server 10.132.249.206:8081;server 10.132.248.177:8082;",
		},
		{name: "getvs no match", text: `[{{range getvs "/nope/*"}}{{.}}{{end}}]`, want: "[]"},
		{name: "exists", text: `{{exists "/services/static/10.0.1.1:80"}} {{exists "/services/static"}} {{exists "/nope"}}`, want: "true false false"},
		{name: "ls of the root", text: `{{join (ls "/services") ","}}`, want: "apache,static"},
		{name: "ls with trailing slash", text: `{{join (ls "/services/") ","}}`, want: "apache,static"},
		{name: "ls of a service", text: `{{join (ls "/services/apache") ","}}`, want: "10.132.248.177:8082,10.132.249.206:8081,10.132.249.212:8080"},
		{name: "ls of a key lists the key, as confd's", text: `{{join (ls "/services/static/10.0.1.1:80") ","}}`, want: "10.0.1.1:80"},
		{name: "lsdir of a key is empty", text: `[{{join (lsdir "/services/static/10.0.1.1:80") ","}}]`, want: "[]"},
		{name: "ls missing", text: `[{{join (ls "/nope") ","}}]`, want: "[]"},
		{name: "lsdir of the root", text: `{{join (lsdir "/services") ","}}`, want: "apache,static"},
		{name: "lsdir of a service has no dirs", text: `[{{join (lsdir "/services/apache") ","}}]`, want: "[]"},
		{name: "lsdir of /", text: `{{join (lsdir "/") ","}}`, want: "services"},

		// Helpers.
		{name: "json", text: `{{$d := json (getv "/services/static/10.0.1.1:80")}}{{$d.host}}:{{$d.port}}`, want: "static-1:80"},
		{name: "json invalid", text: `{{json "not json"}}`, wantErr: []string{"json:"}},
		{name: "jsonArray", text: "{{range jsonArray `[\"a\",2,true]`}}{{.}};{{end}}", want: "a;2;true;"},
		{name: "jsonArray invalid", text: "{{jsonArray `{}`}}", wantErr: []string{"jsonArray:"}},
		{name: "base and dir", text: `{{base "/services/apache/10.0.0.1:80"}} {{dir "/services/apache/10.0.0.1:80"}}`, want: "10.0.0.1:80 /services/apache"},
		{name: "split", text: `{{$p := split "10.0.0.1:80" ":"}}{{index $p 0}} {{index $p 1}}`, want: "10.0.0.1 80"},
		{name: "join", text: `{{join (split "a,b,c" ",") "-"}}`, want: "a-b-c"},
		{name: "replace", text: `{{replace "10.0.0.1" "." "_" -1}} {{replace "a.b.c" "." "_" 1}}`, want: "10_0_0_1 a_b.c"},
		{name: "contains", text: `{{contains "apache_pool" "pool"}} {{contains "apache" "nginx"}}`, want: "true false"},
		{name: "toUpper and toLower", text: `{{toUpper "Apache"}} {{toLower "Apache"}}`, want: "APACHE apache"},
		{name: "trimPrefix and trimSuffix", text: `{{trimPrefix "/services/apache" "/services/"}} {{trimSuffix "apache_pool" "_pool"}}`, want: "apache apache"},
		{name: "seq", text: `{{range seq 1 5}}{{.}}{{end}}`, want: "12345"},
		{name: "seq empty", text: `[{{range seq 3 1}}{{.}}{{end}}]`, want: "[]"},
		{name: "arithmetic", text: `{{add 2 3}} {{sub 2 3}} {{mul 4 3}} {{div 7 2}} {{mod 7 2}}`, want: "5 -1 12 3 1"},
		{name: "div by zero", text: `{{div 1 0}}`, wantErr: []string{"div: division by zero"}},
		{name: "mod by zero", text: `{{mod 1 0}}`, wantErr: []string{"mod: division by zero"}},
		{name: "atoi", text: `{{add (atoi "41") 1}}`, want: "42"},
		{name: "atoi invalid", text: `{{atoi "4x"}}`, wantErr: []string{"atoi"}},
		{name: "parseBool", text: `{{if parseBool "true"}}on{{end}}`, want: "on"},
		{name: "reverse strings", text: `{{join (reverse (split "a,b,c" ",")) ","}}`, want: "c,b,a"},
		{name: "reverse pairs", text: `{{range reverse (gets "/services/apache/*")}}{{base .Key}} {{end}}`, want: "10.132.249.212:8080 10.132.249.206:8081 10.132.248.177:8082 "},
		{name: "reverse does not modify its input", text: `{{$s := ls "/services"}}{{$r := reverse $s}}{{join $s ","}}`, want: "apache,static"},
		{name: "reverse unsupported", text: `{{reverse 3}}`, wantErr: []string{"reverse: unsupported type int"}},
		{name: "sortByLength", text: `{{join (sortByLength (split "ccc,a,bb" ",")) ","}}`, want: "a,bb,ccc"},
		{name: "sortKVByLength", text: `{{range sortKVByLength (gets "/services/*/*")}}{{base .Key}} {{end}}`, want: "10.0.1.1:80 10.132.248.177:8082 10.132.249.206:8081 10.132.249.212:8080 "},
		{name: "base64", text: `{{base64Encode "apache"}} {{base64Decode "YXBhY2hl"}}`, want: "YXBhY2hl apache"},
		{name: "base64Decode invalid", text: `{{base64Decode "!"}}`, wantErr: []string{"base64Decode"}},
		{name: "map", text: `{{$m := map "name" "apache" "port" 80}}{{$m.name}}:{{$m.port}}`, want: "apache:80"},
		{name: "map odd arguments", text: `{{map "name"}}`, wantErr: []string{"map: odd number of arguments"}},
		{name: "map key not a string", text: `{{map 1 2}}`, wantErr: []string{"map: key 1 is not a string"}},
	}
	view := View{KVs: confdKVs}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmpl, err := Parse("confd.tmpl", tt.text)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			got, err := Render(tmpl, view)
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatalf("Render = %q, nil; want an error containing %q", got, tt.wantErr)
				}
				for _, want := range tt.wantErr {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("Render error = %q; want it to contain %q", err, want)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Render error = %v; want nil", err)
			}
			if string(got) != tt.want {
				t.Errorf("Render =\n%q\nwant\n%q", got, tt.want)
			}
		})
	}
}

// TestFuncsBoundPerRender checks that each Render sees its own view's keys:
// Parse declares the functions over no keys, and a render must not leak
// into the next.
func TestFuncsBoundPerRender(t *testing.T) {
	tmpl, err := Parse("confd.tmpl", `{{range gets "/services/*/*"}}{{base .Key}} {{end}}`)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		kvs  map[string]string
		want string
	}{
		{name: "first view", kvs: map[string]string{"/services/a/10.0.0.1:80": "{}"}, want: "10.0.0.1:80 "},
		{name: "second view", kvs: map[string]string{"/services/b/10.0.0.2:80": "{}"}, want: "10.0.0.2:80 "},
		{name: "no keys", kvs: nil, want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Render(tmpl, View{KVs: tt.kvs})
			if err != nil {
				t.Fatalf("Render: %v", err)
			}
			if string(got) != tt.want {
				t.Errorf("Render = %q; want %q", got, tt.want)
			}
		})
	}
}
