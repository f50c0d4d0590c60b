package store_test

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/upstreamd/upstreamd/store"
)

// mentions reports whether an error message names part, either verbatim or
// as it appears inside a %q-quoted string (newlines and quotes escaped).
func mentions(msg, part string) bool {
	q := strconv.Quote(part)
	return strings.Contains(msg, part) || strings.Contains(msg, q[1:len(q)-1])
}

func TestParseAddr(t *testing.T) {
	tests := []struct {
		name     string
		addr     string
		wantHost string
		wantPort int
		// wantErr is empty for a valid address, otherwise the part of the
		// input (or the reason) the error must name.
		wantErr string
	}{
		{name: "ipv4", addr: "172.18.0.3:80", wantHost: "172.18.0.3", wantPort: 80},
		{name: "ipv4 lowest port", addr: "10.0.0.1:1", wantHost: "10.0.0.1", wantPort: 1},
		{name: "ipv4 highest port", addr: "10.0.0.1:65535", wantHost: "10.0.0.1", wantPort: 65535},
		{name: "seed backend", addr: "10.132.249.212:8080", wantHost: "10.132.249.212", wantPort: 8080},
		{name: "leading zero port is not canonical", addr: "10.0.0.1:080", wantErr: "canonical form 10.0.0.1:80"},
		{name: "ipv6 loopback", addr: "[::1]:80", wantErr: "loopback"},
		{name: "ipv4 loopback", addr: "127.0.0.1:80", wantErr: "loopback"},
		{name: "unspecified", addr: "0.0.0.0:80", wantErr: "unspecified"},
		{name: "multicast", addr: "224.0.0.1:80", wantErr: "multicast"},
		{name: "link-local", addr: "169.254.1.1:80", wantErr: "link-local"},
		{name: "ipv6 not canonical", addr: "[2001:DB8:0::1]:80", wantErr: "canonical form [2001:db8::1]:80"},
		{name: "ipv6 documentation", addr: "[2001:db8::1]:8443", wantHost: "2001:db8::1", wantPort: 8443},
		{name: "ipv4-mapped ipv6", addr: "[::ffff:10.0.0.1]:80", wantErr: "register 10.0.0.1:80"},
		{name: "host name", addr: "apache:80", wantErr: "host names are not accepted"},
		{name: "dns fqdn", addr: "backend-1.example.com:8080", wantErr: "backend-1.example.com"},
		{name: "numeric name a resolver reads as an IP", addr: "123:80", wantErr: `"123" is not an IP address`},
		{name: "short dotted number", addr: "1.2.3:80", wantErr: `"1.2.3" is not an IP address`},
		{name: "hex dotted number", addr: "0x7f.1:80", wantErr: `"0x7f.1" is not an IP address`},

		{name: "config injection", addr: "1.2.3.4:80; } server { listen 9999; }", wantErr: "80; } server { listen 9999; }"},
		{name: "injection in host", addr: "1.2.3.4;}server{listen 9999;}#:80", wantErr: "1.2.3.4;}server{listen 9999;}#"},
		{name: "newline in port", addr: "1.2.3.4:80\nlisten 9999;", wantErr: "80\nlisten 9999;"},
		{name: "newline in host", addr: "web\n1:80", wantErr: "web\n1"},
		{name: "carriage return", addr: "1.2.3.4:80\r", wantErr: "80\r"},
		{name: "tab in host", addr: "web\t1:80", wantErr: "web\t1"},
		{name: "brace in host", addr: "web}:80", wantErr: "web}"},
		{name: "semicolon in host", addr: "web;:80", wantErr: "web;"},
		{name: "double quote in host", addr: `"web":80`, wantErr: `"web"`},
		{name: "single quote in host", addr: "'web':80", wantErr: "'web'"},
		{name: "dollar in host", addr: "$host:80", wantErr: "$host"},
		{name: "hash in host", addr: "web#1:80", wantErr: "web#1"},
		{name: "space before port", addr: "1.2.3.4: 80", wantErr: " 80"},
		{name: "space after port", addr: "1.2.3.4:80 ", wantErr: "80 "},
		{name: "space in host", addr: "web 1:80", wantErr: "web 1"},
		{name: "plus sign port", addr: "1.2.3.4:+80", wantErr: "+80"},
		{name: "minus sign port", addr: "1.2.3.4:-80", wantErr: "-80"},
		{name: "port zero", addr: "1.2.3.4:0", wantErr: "port 0 out of range"},
		{name: "port too large", addr: "1.2.3.4:65536", wantErr: "port 65536 out of range"},
		{name: "port six digits", addr: "1.2.3.4:000080", wantErr: "000080"},
		{name: "port not decimal", addr: "1.2.3.4:08x", wantErr: "08x"},
		{name: "port hex", addr: "1.2.3.4:0x50", wantErr: "0x50"},
		{name: "port empty", addr: "1.2.3.4:", wantErr: `port ""`},
		{name: "port unicode digit", addr: "1.2.3.4:٨٠", wantErr: "٨٠"},
		{name: "no port", addr: "1.2.3.4", wantErr: `"1.2.3.4" is not ip:port`},
		{name: "empty", addr: "", wantErr: `"" is not ip:port`},
		{name: "empty host", addr: ":80", wantErr: `"" is not an IP address`},
		{name: "unbracketed ipv6", addr: "::1:80", wantErr: `"::1:80" is not ip:port`},
		{name: "unbracketed ipv6 full", addr: "2001:db8::1:443", wantErr: "2001:db8::1:443"},
		{name: "ipv6 with zone", addr: "[::1%eth0]:80", wantErr: "::1%eth0"},
		{name: "ipv4 in brackets", addr: "[1.2.3.4]:80", wantErr: "1.2.3.4"},
		{name: "name in brackets", addr: "[web]:80", wantErr: "web"},
		{name: "empty brackets", addr: "[]:80", wantErr: "[]:80"},
		{name: "unclosed bracket", addr: "[::1:80", wantErr: "[::1:80"},
		{name: "ipv4 with zone", addr: "1.2.3.4%eth0:80", wantErr: "1.2.3.4%eth0"},
		{name: "underscore", addr: "web_1:80", wantErr: "web_1"},
		{name: "url scheme", addr: "http://web:80", wantErr: "http://web:80"},
		{name: "unix socket", addr: "unix:/tmp/x.sock", wantErr: "unix:/tmp/x.sock"},
		{name: "not utf-8", addr: "web\xff:80", wantErr: "not UTF-8"},
		{name: "too long", addr: strings.Repeat("a.", 200) + "com:80", wantErr: "too long"},
		{name: "nul byte", addr: "1.2.3.4:80\x00", wantErr: "80\x00"},
		{name: "non-ascii host", addr: "wéb:80", wantErr: "wéb"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host, port, err := store.ParseAddr(tt.addr)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseAddr(%q) = %q, %d, nil; want an error naming %q", tt.addr, host, port, tt.wantErr)
				}
				if !mentions(err.Error(), tt.wantErr) {
					t.Errorf("ParseAddr(%q) error = %q; want it to name %q", tt.addr, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseAddr(%q) error = %v; want nil", tt.addr, err)
			}
			if host != tt.wantHost || port != tt.wantPort {
				t.Errorf("ParseAddr(%q) = %q, %d; want %q, %d", tt.addr, host, port, tt.wantHost, tt.wantPort)
			}
		})
	}
}

// validValue is a registration as the health prober writes it.
var validValue = store.Registration{
	Host:      "web-1",
	IPv4:      "172.18.0.3",
	Port:      80,
	Container: "upstreamd-apache-1",
	Node:      "node-a",
}.Encode()

func TestParseEntry(t *testing.T) {
	const prefix = store.DefaultPrefix
	tests := []struct {
		name   string
		prefix string // store.DefaultPrefix when empty
		key    string
		value  string
		want   store.Entry // checked when wantErr is empty; Value is filled in
		// wantErr is empty for a valid entry, otherwise the offending part
		// the error must name.
		wantErr string
	}{
		{
			name:  "ipv4",
			key:   "/services/apache/172.18.0.3:80",
			value: validValue,
			want: store.Entry{Key: "/services/apache/172.18.0.3:80", Service: "apache", Addr: "172.18.0.3:80",
				Reg: store.Registration{Host: "web-1", IPv4: "172.18.0.3", Port: 80, Container: "upstreamd-apache-1", Node: "node-a"}},
		},
		{
			name:  "seed secretary value",
			key:   "/services/apache/10.132.249.212:8080",
			value: `{"host": "core-01", "ipv4_addr": "10.132.249.212", "port": 8080}`,
			want: store.Entry{Key: "/services/apache/10.132.249.212:8080", Service: "apache", Addr: "10.132.249.212:8080",
				Reg: store.Registration{Host: "core-01", IPv4: "10.132.249.212", Port: 8080}},
		},
		{
			name:  "ipv6",
			key:   "/services/apache/[2001:db8::7]:80",
			value: `{"port":80}`,
			want:  store.Entry{Key: "/services/apache/[2001:db8::7]:80", Service: "apache", Addr: "[2001:db8::7]:80", Reg: store.Registration{Port: 80}},
		},
		{
			name:  "service with a dot, container with an underscore",
			key:   "/services/web.v2/10.0.0.9:8080",
			value: `{"host":"backend-1.example.com","port":8080,"container":"c_1.x-y","node":"N1"}`,
			want: store.Entry{Key: "/services/web.v2/10.0.0.9:8080", Service: "web.v2", Addr: "10.0.0.9:8080",
				Reg: store.Registration{Host: "backend-1.example.com", Port: 8080, Container: "c_1.x-y", Node: "N1"}},
		},
		{name: "dns name", key: "/services/web/backend-1.example.com:8080", value: validValue, wantErr: "host names are not accepted"},
		{
			name:   "prefix with trailing slash",
			prefix: "/services/",
			key:    "/services/apache/172.18.0.3:80",
			value:  `{}`,
			want:   store.Entry{Key: "/services/apache/172.18.0.3:80", Service: "apache", Addr: "172.18.0.3:80"},
		},
		{
			name:   "other prefix",
			prefix: "/upstreamd/prod",
			key:    "/upstreamd/prod/apache/172.18.0.3:80",
			value:  `{"port":80}`,
			want:   store.Entry{Key: "/upstreamd/prod/apache/172.18.0.3:80", Service: "apache", Addr: "172.18.0.3:80", Reg: store.Registration{Port: 80}},
		},
		{
			name:  "whitespace around the JSON",
			key:   "/services/apache/172.18.0.3:80",
			value: " \n\t{\"port\":80}\n",
			want:  store.Entry{Key: "/services/apache/172.18.0.3:80", Service: "apache", Addr: "172.18.0.3:80", Reg: store.Registration{Port: 80}},
		},

		// Hostile keys.
		{name: "config injection in key", key: "/services/apache/1.2.3.4:80; } server { listen 9999; }", value: validValue, wantErr: "80; } server { listen 9999; }"},
		{name: "newline in address", key: "/services/apache/1.2.3.4:80\n", value: validValue, wantErr: "80\n"},
		{name: "newline in service", key: "/services/apa\nche/1.2.3.4:80", value: validValue, wantErr: "apa\nche"},
		{name: "brace in address", key: "/services/apache/1.2.3.4}:80", value: validValue, wantErr: "1.2.3.4}"},
		{name: "semicolon in service", key: "/services/apache;/1.2.3.4:80", value: validValue, wantErr: "apache;"},
		{name: "quote in address", key: `/services/apache/"1.2.3.4":80`, value: validValue, wantErr: `"1.2.3.4"`},
		{name: "space in address", key: "/services/apache/1.2.3.4 :80", value: validValue, wantErr: "1.2.3.4 "},
		{name: "plus port", key: "/services/apache/1.2.3.4:+80", value: validValue, wantErr: "+80"},
		{name: "port zero", key: "/services/apache/1.2.3.4:0", value: validValue, wantErr: "port 0"},
		{name: "port too large", key: "/services/apache/1.2.3.4:65536", value: validValue, wantErr: "port 65536"},
		{name: "port not decimal", key: "/services/apache/1.2.3.4:08x", value: validValue, wantErr: "08x"},
		{name: "unbracketed ipv6", key: "/services/apache/::1:80", value: validValue, wantErr: "::1:80"},
		{name: "ipv6 zone", key: "/services/apache/[::1%eth0]:80", value: validValue, wantErr: "::1%eth0"},
		{name: "ipv4 in brackets", key: "/services/apache/[1.2.3.4]:80", value: validValue, wantErr: "1.2.3.4"},
		{name: "key not under prefix", key: "/other/apache/1.2.3.4:80", value: validValue, wantErr: "/other/apache/1.2.3.4:80"},
		{name: "key sharing the prefix's letters", key: "/servicesx/apache/1.2.3.4:80", value: validValue, wantErr: "/servicesx/apache/1.2.3.4:80"},
		{name: "key is the prefix", key: "/services", value: validValue, wantErr: `"/services"`},
		{name: "key without address", key: "/services/apache", value: validValue, wantErr: "/services/apache"},
		{name: "key with empty address", key: "/services/apache/", value: validValue, wantErr: `address ""`},
		{name: "key with extra element", key: "/services/apache/extra/1.2.3.4:80", value: validValue, wantErr: "/services/apache/extra/1.2.3.4:80"},
		{name: "key with trailing slash", key: "/services/apache/1.2.3.4:80/", value: validValue, wantErr: "/services/apache/1.2.3.4:80/"},
		{name: "empty service", key: "/services//1.2.3.4:80", value: validValue, wantErr: `name ""`},
		{name: "uppercase service", key: "/services/Apache/1.2.3.4:80", value: validValue, wantErr: "Apache"},
		{name: "leading dash service", key: "/services/-apache/1.2.3.4:80", value: validValue, wantErr: "-apache"},
		{name: "64-char service", key: "/services/" + strings.Repeat("a", 64) + "/1.2.3.4:80", value: validValue, wantErr: strings.Repeat("a", 64)},

		// Hostile values.
		{name: "1 MB value", key: "/services/apache/1.2.3.4:80", value: strings.Repeat("a", 1<<20), wantErr: "value of 1048576 bytes exceeds 4096"},
		{name: "not JSON", key: "/services/apache/1.2.3.4:80", value: "1.2.3.4:80; } server { listen 9999; }", wantErr: "not registration JSON"},
		{name: "empty value", key: "/services/apache/1.2.3.4:80", value: "", wantErr: "not registration JSON"},
		{name: "JSON array", key: "/services/apache/1.2.3.4:80", value: `[1,2]`, wantErr: "not registration JSON"},
		{name: "JSON string", key: "/services/apache/1.2.3.4:80", value: `"1.2.3.4:80"`, wantErr: "not registration JSON"},
		{name: "unknown field", key: "/services/apache/1.2.3.4:80", value: `{"host":"web-1","evil":"} server {"}`, wantErr: `"evil"`},
		{name: "port as string", key: "/services/apache/1.2.3.4:80", value: `{"port":"80; }"}`, wantErr: "port"},
		{name: "port as float", key: "/services/apache/1.2.3.4:80", value: `{"port":80.5}`, wantErr: "port"},
		{name: "trailing object", key: "/services/apache/1.2.3.4:80", value: `{"port":80} {"port":81}`, wantErr: "trailing data"},
		{name: "trailing garbage", key: "/services/apache/1.2.3.4:80", value: `{"port":80}; } server {`, wantErr: "trailing data"},
		{name: "trailing closing brace", key: "/services/apache/1.2.3.4:80", value: `{"port":80}}`, wantErr: "trailing data"},
		{name: "trailing closing bracket", key: "/services/apache/1.2.3.4:80", value: `{"port":80}]`, wantErr: "trailing data"},
		{name: "field in another case", key: "/services/apache/1.2.3.4:80", value: `{"IPV4_ADDR":"1.2.3.4"}`, wantErr: `unknown field "IPV4_ADDR"`},
		{name: "payload shadowed by a case variant", key: "/services/apache/1.2.3.4:80",
			value: `{"ipv4_addr":"init_by_lua_block { os.execute('x') }","IPV4_ADDR":"1.2.3.4"}`, wantErr: `unknown field "IPV4_ADDR"`},
		{name: "duplicate field keeps the payload out", key: "/services/apache/1.2.3.4:80",
			value: `{"host":"x; } server {","host":"web-1"}`, wantErr: `field "host" twice`},
		{name: "truncated JSON", key: "/services/apache/1.2.3.4:80", value: `{"port":80`, wantErr: "not registration JSON"},
		{name: "bad ipv4_addr", key: "/services/apache/1.2.3.4:80", value: `{"ipv4_addr":"1.2.3.256"}`, wantErr: "1.2.3.256"},
		{name: "ipv6 in ipv4_addr", key: "/services/apache/1.2.3.4:80", value: `{"ipv4_addr":"::1"}`, wantErr: "::1"},
		{name: "injection in ipv4_addr", key: "/services/apache/1.2.3.4:80", value: `{"ipv4_addr":"1.2.3.4; }"}`, wantErr: "1.2.3.4; }"},
		{name: "seed's unquoted ipv4_addr", key: "/services/apache/1.2.3.4:80", value: `{"host": "core-01", "ipv4_addr": 10.132.249.212, "port": 8080}`, wantErr: "not registration JSON"},
		{name: "port out of range in value", key: "/services/apache/1.2.3.4:80", value: `{"port":65536}`, wantErr: "port 65536"},
		{name: "negative port in value", key: "/services/apache/1.2.3.4:80", value: `{"port":-1}`, wantErr: "port -1"},
		{name: "host with semicolon", key: "/services/apache/1.2.3.4:80", value: `{"host":"web;1"}`, wantErr: "web;1"},
		{name: "host with newline", key: "/services/apache/1.2.3.4:80", value: `{"host":"web\n1"}`, wantErr: "web\n1"},
		{name: "container with space", key: "/services/apache/1.2.3.4:80", value: `{"container":"apache 1"}`, wantErr: "apache 1"},
		{name: "container with braces", key: "/services/apache/1.2.3.4:80", value: `{"container":"apache{1}"}`, wantErr: "apache{1}"},
		{name: "node with space", key: "/services/apache/1.2.3.4:80", value: `{"node":"node a"}`, wantErr: "node a"},
		{name: "node with braces", key: "/services/apache/1.2.3.4:80", value: `{"node":"} server {"}`, wantErr: "} server {"},
		{name: "node with quote", key: "/services/apache/1.2.3.4:80", value: `{"node":"a\"b"}`, wantErr: `a"b`},
		{name: "container too long", key: "/services/apache/1.2.3.4:80", value: `{"container":"` + strings.Repeat("c", 254) + `"}`, wantErr: "container"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.prefix
			if p == "" {
				p = prefix
			}
			got, err := store.ParseEntry(p, tt.key, []byte(tt.value))
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseEntry(%q, %q) = %+v, nil; want an error naming %q", tt.key, clipped(tt.value), got, tt.wantErr)
				}
				if !errors.Is(err, store.ErrInvalid) {
					t.Errorf("ParseEntry error = %v; want it to match store.ErrInvalid", err)
				}
				if !mentions(err.Error(), tt.wantErr) {
					t.Errorf("ParseEntry(%q) error = %q; want it to name %q", tt.key, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseEntry(%q, %q) error = %v; want nil", tt.key, tt.value, err)
			}
			want := tt.want
			want.Value = want.Reg.Encode() // canonical, never the bytes read
			if got != want {
				t.Errorf("ParseEntry(%q, %q)\n got %+v\nwant %+v", tt.key, tt.value, got, want)
			}
		})
	}
}

func clipped(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

func TestRegistrationRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		addr string
		reg  store.Registration
	}{
		{name: "all fields", addr: "172.18.0.3:80", reg: store.Registration{Host: "web-1", IPv4: "172.18.0.3", Port: 80, Container: "upstreamd-apache-1", Node: "node-a"}},
		{name: "seed fields only", addr: "10.132.249.206:8081", reg: store.Registration{Host: "core-02", IPv4: "10.132.249.206", Port: 8081}},
		{name: "zero registration", addr: "[2001:db8::1]:80", reg: store.Registration{}},
		{name: "dotted host and node", addr: "10.1.2.3:8080", reg: store.Registration{Host: "apache.internal", Port: 8080, Container: "0123456789ab", Node: "host.example.com"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := store.ServiceKey(store.DefaultPrefix, "apache", tt.addr)
			value := tt.reg.Encode()
			e, err := store.ParseEntry(store.DefaultPrefix, key, []byte(value))
			if err != nil {
				t.Fatalf("ParseEntry(%q, %q) error = %v; want nil", key, value, err)
			}
			want := store.Entry{Key: key, Service: "apache", Addr: tt.addr, Reg: tt.reg, Value: value}
			if e != want {
				t.Errorf("round trip\n got %+v\nwant %+v", e, want)
			}
			if !strings.HasPrefix(key, store.ServicePrefix(store.DefaultPrefix, "apache")) {
				t.Errorf("ServiceKey = %q; want it under ServicePrefix %q", key, store.ServicePrefix(store.DefaultPrefix, "apache"))
			}
		})
	}
}

func TestValidName(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		wantErr bool
	}{
		{name: "seed service", in: "apache"},
		{name: "one letter", in: "a"},
		{name: "one digit", in: "7"},
		{name: "leading digit", in: "0web"},
		{name: "inner punctuation", in: "web-1.v2_blue"},
		{name: "trailing dash", in: "web-"},
		{name: "63 chars", in: strings.Repeat("a", 63)},
		{name: "empty", in: "", wantErr: true},
		{name: "64 chars", in: strings.Repeat("a", 64), wantErr: true},
		{name: "uppercase", in: "Apache", wantErr: true},
		{name: "uppercase inside", in: "apaChe", wantErr: true},
		{name: "leading dash", in: "-apache", wantErr: true},
		{name: "leading underscore", in: "_apache", wantErr: true},
		{name: "leading dot", in: ".apache", wantErr: true},
		{name: "space", in: "apa che", wantErr: true},
		{name: "slash", in: "apa/che", wantErr: true},
		{name: "semicolon", in: "apache;", wantErr: true},
		{name: "brace", in: "apache{", wantErr: true},
		{name: "newline", in: "apache\n", wantErr: true},
		{name: "colon", in: "apache:80", wantErr: true},
		{name: "non-ascii", in: "apaché", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := store.ValidName(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ValidName(%q) = %v; want error: %v", tt.in, err, tt.wantErr)
			}
			if err != nil && !mentions(err.Error(), tt.in) {
				t.Errorf("ValidName(%q) error = %q; want it to name the input", tt.in, err)
			}
		})
	}
}

// hostileSeeds are the fuzz seeds: the hostile inputs of TestParseEntry plus
// a valid entry to mutate from.
var hostileSeeds = []struct {
	key   string
	value string
}{
	{"/services/apache/172.18.0.3:80", validValue},
	{"/services/apache/[2001:db8::7]:80", `{"host":"web-1","port":80}`},
	{"/services/apache/backend-1.example.com:8080", `{"host":"backend-1.example.com","port":8080}`},
	{"/services/apache/1.2.3.4:80; } server { listen 9999; }", validValue},
	{"/services/apache/1.2.3.4:80\n", validValue},
	{"/services/apa\nche/1.2.3.4:80", validValue},
	{"/services/apache/1.2.3.4}:80", validValue},
	{`/services/apache/"1.2.3.4":80`, validValue},
	{"/services/apache/1.2.3.4 :80", validValue},
	{"/services/apache/1.2.3.4:+80", validValue},
	{"/services/apache/1.2.3.4:0", validValue},
	{"/services/apache/1.2.3.4:65536", validValue},
	{"/services/apache/1.2.3.4:08x", validValue},
	{"/services/apache/::1:80", validValue},
	{"/services/apache/[::1%eth0]:80", validValue},
	{"/services/apache/[1.2.3.4]:80", validValue},
	{"/other/apache/1.2.3.4:80", validValue},
	{"/services/apache/extra/1.2.3.4:80", validValue},
	{"/services/Apache/1.2.3.4:80", validValue},
	{"/services/-apache/1.2.3.4:80", validValue},
	{"/services/" + strings.Repeat("a", 64) + "/1.2.3.4:80", validValue},
	{"/services/apache/1.2.3.4:80", "1.2.3.4:80; } server { listen 9999; }"},
	{"/services/apache/1.2.3.4:80", `{"host":"web-1","evil":"} server {"}`},
	{"/services/apache/1.2.3.4:80", `{"port":80} {"port":81}`},
	{"/services/apache/1.2.3.4:80", `{"port":80}}`},
	{"/services/apache/1.2.3.4:80", `{"ipv4_addr":"1.2.3.4; }"}`},
	{"/services/apache/1.2.3.4:80", `{"host":"web\n1"}`},
	{"/services/apache/1.2.3.4:80", `{"container":"apache 1"}`},
	{"/services/apache/1.2.3.4:80", `{"node":"} server {"}`},
	{"/services/apache/1.2.3.4:80", `{"HOST":"web-1","Port":80}`},
	{"/services/apache/1.2.3.4:80", `{"host":"a\u0020b"}`},
}

// forbidden are the bytes that would let a value escape an nginx directive
// or start a comment or a variable.
const forbidden = ";{}\n\r\t \"'#$"

func FuzzParseEntry(f *testing.F) {
	for _, s := range hostileSeeds {
		f.Add(s.key, []byte(s.value))
	}
	f.Add("/services/apache/1.2.3.4:80", []byte(strings.Repeat("a", 1<<20)))
	const prefix = store.DefaultPrefix
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		e, err := store.ParseEntry(prefix, key, value)
		if err != nil {
			if !errors.Is(err, store.ErrInvalid) {
				t.Fatalf("ParseEntry(%q) error = %v; want it to match ErrInvalid", key, err)
			}
			return
		}
		if want := prefix + "/" + e.Service + "/" + e.Addr; e.Key != key || key != want {
			t.Fatalf("accepted key %q: Entry.Key = %q; want both to equal %q", key, e.Key, want)
		}
		if err := store.ValidName(e.Service); err != nil {
			t.Fatalf("accepted key %q with invalid service %q: %v", key, e.Service, err)
		}
		if _, _, err := store.ParseAddr(e.Addr); err != nil {
			t.Fatalf("accepted key %q whose address ParseAddr refuses: %v", key, err)
		}
		if e.Value != e.Reg.Encode() {
			t.Fatalf("Entry.Value = %q; want the canonical %q", e.Value, e.Reg.Encode())
		}
		fields := map[string]string{
			"Addr":      e.Addr,
			"Service":   e.Service,
			"Host":      e.Reg.Host,
			"IPv4":      e.Reg.IPv4,
			"Container": e.Reg.Container,
			"Node":      e.Reg.Node,
		}
		for name, v := range fields {
			if i := strings.IndexAny(v, forbidden); i >= 0 {
				t.Fatalf("accepted (%q, %q): %s %q contains forbidden byte %q", key, value, name, v, v[i])
			}
			if strings.IndexFunc(v, unicode.IsSpace) >= 0 || !utf8.ValidString(v) {
				t.Fatalf("accepted (%q, %q): %s %q contains whitespace or invalid UTF-8", key, value, name, v)
			}
			for _, r := range v {
				if r < 0x21 || r > 0x7e {
					t.Fatalf("accepted (%q, %q): %s %q contains non-printable or non-ASCII %U", key, value, name, v, r)
				}
			}
		}
		if e.Reg.Port < 0 || e.Reg.Port > 65535 {
			t.Fatalf("accepted (%q, %q): port %d out of range", key, value, e.Reg.Port)
		}
	})
}

func TestHostLabel(t *testing.T) {
	long := "project_with_a_long_name-service_with_an_even_longer_name-3f2a1c"
	tests := []struct{ in, want string }{
		{"upstreamd-apache-3f2a1c", "upstreamd-apache-3f2a1c"},
		{"my_project-my_svc-3f2a1c", "my-project-my-svc-3f2a1c"},
		{"web.v2-api-0a0b0c", "web-v2-api-0a0b0c"},
		{"Upper", "upper"},
		{"_x_", "x"},
		{long, "project-with-a-long-name-service-with-an-even-longer-n-" + hexPrefix(long)},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got := store.HostLabel(tt.in)
			if got != tt.want {
				t.Errorf("HostLabel(%q) = %q; want %q", tt.in, got, tt.want)
			}
			// What the daemon registers must pass its own validation.
			reg := store.Registration{Host: got, IPv4: "10.0.0.1", Port: 80, Container: "0123456789ab", Node: "n"}
			if _, err := store.ParseEntry("/services", "/services/apache/10.0.0.1:80", []byte(reg.Encode())); err != nil {
				t.Errorf("a registration with host %q does not parse: %v", got, err)
			}
		})
	}
	if a, b := store.HostLabel(long+"x"), store.HostLabel(long+"y"); a == b {
		t.Errorf("two long names share the label %q", a)
	}
}

func hexPrefix(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:4])
}
