package store

import (
	"errors"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// userTimeout makes the kernel drop a connection whose sent data stays
// unacknowledged for d (TCP_USER_TIMEOUT). An etcd member that was
// SIGKILLed or cut off never sends a reset, and gRPC's own keepalive may
// not ping more often than every 10 s: without this, the lease keep-alive
// stream would hang on the dead member for longer than a short lease.
func userTimeout(d time.Duration) func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(d.Milliseconds()))
		})
		return errors.Join(err, serr)
	}
}
