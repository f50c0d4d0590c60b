package certs

import (
	"context"
	"slices"
	"strings"

	"github.com/upstreamd/upstreamd/store"
)

// Orphans: an ACME certificate is kept under its host's name, for a host
// of the spec's [acme]. Once the spec no longer names the host, the
// certificate is an orphan: no daemon serves it (Cache.Served) and the
// orderer deletes it from etcd under the ACME lock (deleteOrphans), so its
// private key does not stay in etcd for ever. A certificate imported with
// `upstreamd certs import` is the operator's: it is served, and kept,
// until `upstreamd certs remove`.

// orphanStore is what deleting orphans needs of etcd, besides the rest
// of Store.
type orphanStore interface {
	List(ctx context.Context, prefix string) ([]store.KV, int64, error)
	DeleteIfValue(ctx context.Context, key, value string) (bool, error)
}

// orphaned reports whether r, kept under name, is an ACME certificate of
// a host not among acmeHosts.
func orphaned(name string, r Record, acmeHosts []string) bool {
	return r.Source == SourceACME && !slices.Contains(acmeHosts, name)
}

// Served returns the certificates to serve, by name: every one but the
// ACME certificates of hosts not among acmeHosts (the ACME hosts of the
// spec; none without [acme]).
func (k *Cache) Served(acmeHosts []string) []Cert {
	all := k.Certs()
	return slices.DeleteFunc(all, func(c Cert) bool { return orphaned(c.Name, c.Record, acmeHosts) })
}

// hasOrphans reports whether the cache holds an ACME certificate of a
// host the Manager does not order.
func (m *Manager) hasOrphans() bool {
	return slices.ContainsFunc(m.cfg.Cache.Certs(), func(c Cert) bool { return orphaned(c.Name, c.Record, m.cfg.Hosts) })
}

// deleteOrphans deletes, from etcd itself, the ACME certificates of hosts
// the Manager does not order (those expired or unreadable too: the
// cache no longer shows them), each only if it is still what was read;
// the caller holds the ACME lock. A failure is logged and tried again the
// next time the lock is taken.
func (m *Manager) deleteOrphans(ctx context.Context) {
	prefix := store.CertHostsPrefix(m.cfg.Project)
	kvs, _, err := m.cfg.Store.List(ctx, prefix)
	if err != nil {
		m.log.Warn().Err(err).Msg("ACME: cannot look for certificates of hosts no longer in the spec")
		return
	}
	for _, kv := range kvs {
		name := strings.TrimPrefix(kv.Key, prefix)
		if r, err := Decode(kv.Value); err != nil || !orphaned(name, r, m.cfg.Hosts) {
			continue
		}
		deleted, err := m.cfg.Store.DeleteIfValue(ctx, kv.Key, string(kv.Value))
		switch {
		case err != nil:
			m.log.Warn().Err(err).Str("key", kv.Key).Msg("ACME: cannot delete the certificate of a host no longer in the spec")
		case deleted:
			m.log.Info().Str("host", name).Str("key", kv.Key).Msg("ACME: deleted the certificate of a host no longer in acme.hosts; it is not served any more")
		}
	}
}
