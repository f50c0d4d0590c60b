package certs

import (
	"context"

	"github.com/upstreamd/upstreamd/store"
)

// fakeWatch is etcd's watch as the Cache reads it: one listing, then
// nothing until ctx ends.
type fakeWatch struct{ first store.Update }

func (f fakeWatch) Watch(ctx context.Context, _ string, handle func(store.Update)) error {
	handle(f.first)
	<-ctx.Done()
	return nil
}
