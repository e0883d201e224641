package monitor

import (
	"fmt"
	"time"
)

// Source is what the monitor samples: the node's totals and its live
// sessions. Its methods are called by one goroutine at a time (the sampler
// once per interval, and each /admin/sessions request), never on the
// node's hot path; they should read figures the node already keeps
// (counters, queue lengths) rather than compute anything expensive, and must
// be safe to call while the node works.
type Source interface {
	Totals() Totals
	// EachSession calls f once for every live session, with its figures
	// now and its Rates. The monitor keeps nothing per session itself, so
	// that its memory does not grow with the number of sessions: the walk
	// is how it sees them.
	EachSession(f func(SessionStat, *Rates))
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
// only increments; the monitor turns them into rates (see Rates), so the
// node keeps no clocks or windows per session.
type SessionStat struct {
	User string
	// Conn names the connection (the node gives its remote address). The
	// monitor formats it only for the rows a request returns, so a walk
	// over every session makes no strings.
	Conn            fmt.Stringer
	MsgsIn, MsgsOut uint64
	// Mailbox is events waiting for the session's actor.
	Mailbox int
	// Inflight is deliveries sent but not yet acknowledged.
	Inflight int
	// Queued is items waiting in the user's offline queue.
	Queued int
}

// Rates is what the monitor keeps for one session between samples to turn
// its counters into rates: the counters at the last sample and how much
// they grew over the interval that ended there. The node keeps one inside
// each session's own struct, zero when the session starts, and passes it to
// EachSession's callback; only the monitor reads or writes it, under its
// own lock. That is 16 bytes in a struct the node allocates anyway, instead
// of a map entry per session in the monitor.
//
// The counters are kept modulo 2^32: a difference of two of them is exact
// as long as a session handles fewer than 2^32 messages in one interval.
type Rates struct {
	in, out   uint32 // MsgsIn and MsgsOut at the last sample
	dIn, dOut uint32 // their growth over the interval that ended there
}

// advance records a sample's counters. A session first seen now counts
// from zero: its rate is what it did since the previous sample, not nothing.
func (r *Rates) advance(in, out uint64) {
	r.dIn, r.dOut = uint32(in)-r.in, uint32(out)-r.out
	r.in, r.out = uint32(in), uint32(out)
}

// perSecond turns growth over an interval of dt seconds into a rate.
func perSecond(d uint32, dt float64) float64 {
	if dt <= 0 {
		return 0
	}
	return float64(d) / dt
}
