package render

import "testing"

func TestPoolsBody(t *testing.T) {
	tests := []struct {
		name     string
		version  int64
		keys     []string
		services []string
		want     string
	}{
		{name: "no services", version: 0, want: "0\n"},
		{name: "configured service without backends", version: 3, services: []string{"apache"}, want: "3\napache\n"},
		{
			name:     "backends sorted, services in view order, services not in the spec left out",
			version:  42,
			services: []string{"static", "apache"},
			keys: []string{
				"/services/apache/10.0.0.2:80",
				"/services/legacy/10.0.8.1:8080",
				"/services/apache/10.0.0.1:80",
				"/services/static/[2001:db8::1]:80",
			},
			want: "42\nstatic [2001:db8::1]:80\napache 10.0.0.1:80 10.0.0.2:80\n",
		},
		{
			name:     "empty service between others keeps its line",
			version:  9000000000,
			services: []string{"api", "web", "static"},
			keys:     []string{"/services/api/172.18.0.10:9000", "/services/static/172.18.0.20:80"},
			want:     "9000000000\napi 172.18.0.10:9000\nweb\nstatic 172.18.0.20:80\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			view := NewView(ViewInput{Projects: anyProject, Snapshot: snapshotOf(t, tt.keys...), Services: tt.services, Listen: 80})
			if got := string(PoolsBody(tt.version, view)); got != tt.want {
				t.Errorf("PoolsBody(%d) = %q; want %q", tt.version, got, tt.want)
			}
		})
	}
}
