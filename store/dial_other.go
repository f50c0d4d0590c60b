//go:build !linux

package store

import (
	"syscall"
	"time"
)

// userTimeout is Linux's TCP_USER_TIMEOUT; elsewhere connections to a dead
// member break by gRPC's keepalive only.
func userTimeout(time.Duration) func(network, address string, c syscall.RawConn) error { return nil }
