package monitor

import "time"

// Source is what the monitor samples: the node's totals and one row per
// live session. Its methods are called once per interval, by one goroutine
// at a time, never on the node's hot path; they should read figures the
// node already keeps (counters, queue lengths) rather than compute anything
// expensive, and must be safe to call while the node works.
type Source interface {
	Totals() Totals
	Sessions() []SessionStat
}

// Totals are node-wide figures at the moment of sampling.
type Totals struct {
	// Connections is open native connections, logged in or not.
	Connections int
	// Sessions is logged-in sessions.
	Sessions int
	// Backlog is sessions with work waiting for a worker goroutine.
	Backlog int
	// QueueDepthTotal is items waiting in all offline queues.
	QueueDepthTotal int64
	// QueueDepthMaxUser and QueueDepthMax name the largest single offline
	// queue and its length.
	QueueDepthMaxUser string
	QueueDepthMax     int
	// LoopLag is how late the event loop runs work scheduled on it.
	LoopLag time.Duration
}

// SessionStat is one live session's figures. MsgsIn and MsgsOut are the
// connection's cumulative counters, zero when it logged in, which the node
// only increments; the monitor turns them into rates, so the node keeps no
// clocks or windows per session.
type SessionStat struct {
	User, Conn      string
	MsgsIn, MsgsOut uint64
	// Mailbox is events waiting for the session's actor.
	Mailbox int
	// Inflight is deliveries sent but not yet acknowledged.
	Inflight int
	// Queued is items waiting in the user's offline queue.
	Queued int
}
