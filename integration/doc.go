// Package integration holds the end-to-end suite: the real Docker engine,
// real nginx, real Apache and real etcd, with the daemon built from this
// module and run as a process. The tests carry the build tag integration
// (run them with `make integration`); the helpers under internal/ are
// plain packages so that `go vet ./...` checks them.
//
// testcontainers-go and its moby client types stay in this directory; the
// daemon itself only speaks docker/docker through containers/.
package integration
