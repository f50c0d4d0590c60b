package cluster

import (
	"testing/synctest"
	"time"
)

// Fakes of the package's own small interfaces live beside the tests that
// use them (slotEtcd, fakeElection); etcd as a whole is a storetest.Etcd.

// advance moves the synctest bubble's fake clock on by d, then waits until
// every other goroutine in the bubble is blocked again. Inside a bubble the
// timer fires as soon as everything else is idle; no real time passes.
func advance(d time.Duration) {
	<-time.After(d)
	synctest.Wait()
}
