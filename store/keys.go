package store

import (
	"strconv"
	"strings"
)

// The etcd key layout, every key upstreamd reads or writes, in one place:
// the other packages build their keys with these functions and never by
// hand. Who writes each key, and under which lease:
//
//	<etcd.prefix>/<service>/<host:port>   the registrations (DefaultPrefix: /services): a
//	                                      Registration (JSON), written by the registrar of the
//	                                      node named in it, under that node's lease
//	/upstreamd/ping                       read by Ping, never written
//	/upstreamd/<project>/                 one project's state (ProjectPrefix):
//	  nodes/<node>                        a daemon's announcement (cluster.Announcement), under
//	                                      its node's lease: the live nodes
//	  engines/<engine ID>                 the same announcement, under the same lease: one
//	                                      daemon per project and Docker engine
//	  slots/<service>/<i>                 replica i of service placed on a node ({"node": …}),
//	                                      claimed by that node under its lease
//	  replicas/<service>                  a replica override ("<n>"), written by `upstreamd
//	                                      scale`, no lease
//	  leader/<lease>                      a candidate to run the project's proxy (cluster.Leader),
//	                                      under its node's lease; the oldest key leads
//	  served                              what the leader's nginx serves (cluster.ServedPools),
//	                                      under the leader's lease
//	  certs/hosts/<name>                  a certificate (certs.Record), written by the ACME
//	                                      manager or `upstreamd certs import`, no lease
//	  certs/acme/account                  the ACME account, no lease
//	  certs/acme/challenges/<token>       an HTTP-01 answer, under the ordering node's lock lease
//	  certs/acks/<token>/<node>           node's proxy serves token's answer, written by that
//	                                      node under the challenge's lease
//	  certs/failures/<host>               a host's run of failed orders (certs.Failure), written
//	                                      by the node holding the ACME lock, no lease
//	  locks/acme                          the ACME mutex (etcd's concurrency keys under it, each
//	                                      under its holder's session lease)

// DefaultPrefix is where registrations live, as in the seed (/services/apache/…).
const DefaultPrefix = "/services"

// ServiceKey returns the key of addr in service under prefix.
func ServiceKey(prefix, service, addr string) string {
	return strings.TrimSuffix(prefix, "/") + "/" + service + "/" + addr
}

// ServicePrefix returns the prefix of all keys of service.
func ServicePrefix(prefix, service string) string {
	return strings.TrimSuffix(prefix, "/") + "/" + service + "/"
}

// KeysPrefix returns what every registration key under prefix starts
// with: prefix and a slash. Read and watch this range, not prefix alone:
// that would also cover unrelated keys (/servicesx…), which an etcd role
// granted only "/services/" may not read.
func KeysPrefix(prefix string) string {
	return strings.TrimSuffix(prefix, "/") + "/"
}

// PingKey is the key Ping reads. It lies under /upstreamd/, which the
// daemon's etcd role may read anyway (next to the registrations prefix), so
// that Ping also passes with a role limited to those two prefixes.
const PingKey = "/upstreamd/ping"

// ProjectPrefix is where everything of project but its registrations
// lives.
func ProjectPrefix(project string) string { return "/upstreamd/" + project + "/" }

// NodesPrefix is where a project's daemons announce themselves.
func NodesPrefix(project string) string { return ProjectPrefix(project) + "nodes/" }

// NodeKey is node's announcement.
func NodeKey(project, node string) string { return NodesPrefix(project) + node }

// EnginesPrefix is where a project's daemons claim their Docker engines.
func EnginesPrefix(project string) string { return ProjectPrefix(project) + "engines/" }

// EngineKey is the claim of the Docker engine with ID engine.
func EngineKey(project, engine string) string { return EnginesPrefix(project) + engine }

// SlotsPrefix is where a project's replicas are placed on nodes.
func SlotsPrefix(project string) string { return ProjectPrefix(project) + "slots/" }

// ServiceSlotsPrefix is where service's replicas are placed.
func ServiceSlotsPrefix(project, service string) string { return SlotsPrefix(project) + service + "/" }

// SlotKey is the key of slot i of service.
func SlotKey(project, service string, i int) string {
	return ServiceSlotsPrefix(project, service) + strconv.Itoa(i)
}

// OverridesPrefix is where the runtime replica overrides live.
func OverridesPrefix(project string) string { return ProjectPrefix(project) + "replicas/" }

// OverrideKey is the replica override of service.
func OverrideKey(project, service string) string { return OverridesPrefix(project) + service }

// ElectionName is the election of the node that runs the project's proxy
// (proxy.placement "leader"), as Campaign takes it.
func ElectionName(project string) string { return ProjectPrefix(project) + "leader" }

// LeaderPrefix holds the election's candidates, to read or watch: the
// oldest key leads.
func LeaderPrefix(project string) string { return ElectionName(project) + "/" }

// ServedKey is where the leader publishes what its nginx serves.
func ServedKey(project string) string { return ProjectPrefix(project) + "served" }

// CertsPrefix is where a project's certificates and ACME state live.
func CertsPrefix(project string) string { return ProjectPrefix(project) + "certs/" }

// CertHostsPrefix holds one certificate per key, named by its first name.
func CertHostsPrefix(project string) string { return CertsPrefix(project) + "hosts/" }

// CertHostKey is where the certificate named name is kept.
func CertHostKey(project, name string) string { return CertHostsPrefix(project) + name }

// ACMEAccountKey holds the ACME account: its key and registration.
func ACMEAccountKey(project string) string { return CertsPrefix(project) + "acme/account" }

// ACMEChallengesPrefix holds the HTTP-01 answers being validated, by
// token.
func ACMEChallengesPrefix(project string) string { return CertsPrefix(project) + "acme/challenges/" }

// ACMEChallengeKey is the HTTP-01 answer of token.
func ACMEChallengeKey(project, token string) string { return ACMEChallengesPrefix(project) + token }

// ACMEAcksPrefix holds the nodes' acknowledgements of the HTTP-01 answers
// being validated.
func ACMEAcksPrefix(project string) string { return CertsPrefix(project) + "acks/" }

// ACMEAckKey is where node acknowledges the answer of token.
func ACMEAckKey(project, token, node string) string {
	return ACMEAcksPrefix(project) + token + "/" + node
}

// ACMEFailuresPrefix holds, per host, its run of failed orders.
func ACMEFailuresPrefix(project string) string { return CertsPrefix(project) + "failures/" }

// ACMEFailureKey is where host's failed orders are kept.
func ACMEFailureKey(project, host string) string { return ACMEFailuresPrefix(project) + host }

// ACMELockKey is the etcd mutex a node holds while it orders. It is
// outside CertsPrefix, so taking it wakes no watcher of the certificates.
func ACMELockKey(project string) string { return ProjectPrefix(project) + "locks/acme" }
