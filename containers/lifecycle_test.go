package containers

import "testing"

func TestParsePublish(t *testing.T) {
	tests := []struct {
		in, host, port string
		ok             bool
	}{
		{in: "127.0.0.1:8080", host: "127.0.0.1", port: "8080", ok: true},
		{in: "[::1]:80", host: "::1", port: "80", ok: true},
		{in: ":8080", host: "", port: "8080", ok: true},
		{in: "127.0.0.1:0"},
		{in: ":0"},
		{in: ":65536"},
		{in: "127.0.0.1"},
		{in: "localhost:8080"},
		{in: "8080"},
		{in: ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			host, port, err := ParsePublish(tt.in)
			if (err == nil) != tt.ok || host != tt.host || port != tt.port {
				t.Errorf("ParsePublish(%q) = %q, %q, %v; want %q, %q, ok %v", tt.in, host, port, err, tt.host, tt.port, tt.ok)
			}
		})
	}
}
