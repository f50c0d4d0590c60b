package certs

import (
	"context"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/rs/zerolog"

	"github.com/upstreamd/upstreamd/store"
)

// woken reports whether c has a wake-up pending, and takes it.
func woken(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func names(cs []Cert) []string {
	out := []string{}
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

// TestCacheFollowsTheClock: a certificate counts from its NotBefore (less
// Skew) to its NotAfter, and the Cache wakes its subscribers (the render
// loop, the ACME Manager) at both. Time is synctest's: each time.Sleep
// moves the bubble's clock, nothing waits for real.
func TestCacheFollowsTheClock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		now := time.Now()
		later := record(t, SourceImport, []string{"later.example"}, now.Add(time.Hour), now.Add(48*time.Hour))
		skewed := record(t, SourceACME, []string{"skewed.example"}, now.Add(Skew/2), now.Add(90*24*time.Hour))
		skewed.RenewAt = now.Add(60 * 24 * time.Hour)
		own := record(t, SourceImport, []string{"*.own.example"}, now.Add(-time.Hour), now.Add(2*time.Hour))
		k := NewCache(nil, "p", zerolog.Nop())
		k.cli = fakeWatch{store.Update{Reset: true, Revision: 1, KVs: []store.KV{
			{Key: store.CertHostKey("p", "later"), Value: []byte(later.Encode())},
			{Key: store.CertHostKey("p", "skewed.example"), Value: []byte(skewed.Encode())},
			{Key: store.CertHostKey("p", "own"), Value: []byte(own.Encode())},
		}}}
		m := NewManager(ManagerConfig{Project: "p", Hosts: []string{"skewed.example", "www.own.example"},
			Store: &fakeStore{kv: map[string]string{}}, Cache: k, Logger: zerolog.Nop()})
		sub := k.Subscribe()
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- k.Start(ctx) }()
		synctest.Wait()
		woken(sub)

		if got, want := names(k.Certs()), []string{"own", "skewed.example"}; !slices.Equal(got, want) {
			t.Errorf("at the start: Certs() = %q, want %q (later is not valid for an hour; skewed starts within Skew)", got, want)
		}
		if due, _ := m.due(); len(due) != 0 {
			t.Errorf("at the start: due = %q, want none (own covers www.own.example, skewed is fresh)", due)
		}

		time.Sleep(time.Hour - Skew) // later's NotBefore, less Skew
		synctest.Wait()
		if !woken(sub) {
			t.Error("no wake-up when later became valid")
		}
		if got, want := names(k.Certs()), []string{"later", "own", "skewed.example"}; !slices.Equal(got, want) {
			t.Errorf("at later's NotBefore: Certs() = %q, want %q", got, want)
		}

		time.Sleep(time.Hour + Skew) // own's NotAfter
		synctest.Wait()
		if woken(sub) {
			t.Error("a wake-up at own's NotAfter: it is valid through it")
		}
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		if !woken(sub) {
			t.Error("no wake-up when own expired")
		}
		if got, want := names(k.Certs()), []string{"later", "skewed.example"}; !slices.Equal(got, want) {
			t.Errorf("after own's NotAfter: Certs() = %q, want %q", got, want)
		}
		if _, ok := k.Get("own"); ok {
			t.Error("Get returns the expired certificate")
		}
		if due, _ := m.due(); !slices.Equal(due, []string{"www.own.example"}) {
			t.Errorf("after own expired: due = %q, want www.own.example (nothing covers it now)", due)
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Start returned %v", err)
		}
	})
}
