// Package health names where a backend stands: the one health-state type
// that the orchestrator's probers decide, the events and the admin API
// say, and the metrics count by.
package health

// State is where a probed backend stands. The values are part of the
// admin API (a backend's state, a health event's from and to) and of the
// upstreamd_backends metric's state label. The zero value is no state:
// not probed.
type State string

// The states.
const (
	// Pending: not yet probed, or failing its first probes, or in its
	// start period. A key already in etcd for it (adopted after a daemon
	// restart) is kept, none is written.
	Pending State = "pending"
	// Healthy: it passed its first probe, or rise probes in a row after
	// it fell. It is registered and served.
	Healthy State = "healthy"
	// Unhealthy: it failed fall probes in a row, or never answered by the
	// end of its start period.
	Unhealthy State = "unhealthy"
)

// States lists every State.
func States() []State { return []State{Healthy, Pending, Unhealthy} }
