package store_test

import (
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/store"
)

// TestNewDoesNotAuthenticate: with a user name, New must not fail when etcd
// cannot be reached (or would refuse the password): connecting is the
// first request's job, whose error the caller logs and retries. Before,
// clientv3.New authenticated inside New and the daemon exited at start.
func TestNewDoesNotAuthenticate(t *testing.T) {
	c, err := store.New(store.Config{
		Endpoints:   []string{"http://127.0.0.1:1"}, // nothing listens on port 1
		Username:    "upstreamd",
		Password:    "secret-password",
		DialTimeout: 100 * time.Millisecond,
		Timeout:     200 * time.Millisecond,
		Logger:      zerolog.Nop(),
	})
	if err != nil {
		t.Fatalf("New() error = %v; want nil: connecting is the first request's job", err)
	}
	defer c.Close()
	for i := 0; i < 2; i++ { // a failed connection is tried again
		err := c.Ping(t.Context())
		if err == nil {
			t.Fatalf("Ping() = nil; want an error, nothing listens on 127.0.0.1:1")
		}
		if !strings.Contains(err.Error(), "as user upstreamd") || strings.Contains(err.Error(), "secret-password") {
			t.Errorf("Ping() error = %q; want it to name the user and not the password", err)
		}
	}
}

func TestKeysPrefix(t *testing.T) {
	tests := []struct{ prefix, want string }{
		{"/services", "/services/"},
		{"/services/", "/services/"},
		{"/", "/"},
		{"/a/b", "/a/b/"},
	}
	for _, tt := range tests {
		t.Run(tt.prefix, func(t *testing.T) {
			if got := store.KeysPrefix(tt.prefix); got != tt.want {
				t.Errorf("KeysPrefix(%q) = %q; want %q", tt.prefix, got, tt.want)
			}
		})
	}
}
