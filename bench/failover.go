package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"

	"github.com/parleyhq/parley/client"
	"github.com/parleyhq/parley/node"
	"github.com/parleyhq/parley/wire"
)

// FailoverOutcome is what a node's loss in the middle of a pairs run
// (bench failover) did to the clients, beside the run's own figures: a
// message lost or duplicated shows in lost, as in any run.
type FailoverOutcome struct {
	Node      int     `json:"node"` // 1-based, in the order of --admin and --addr
	Addr      string  `json:"addr"`
	Signal    string  `json:"signal"` // KILL (a crash) or TERM (a planned stop: the node drains)
	PID       int     `json:"pid"`
	AtSeconds float64 `json:"at_s"` // into the run, when the signal was sent
	Error     string  `json:"error,omitempty"`

	// GapMs is the longest time any message waited from its first write
	// to its SendAck: the longest a sender could not get its message
	// accepted, whichever node it was on.
	GapMs float64 `json:"gap_ms"`
	// GapBeforeMs and GapAfterMs split it by whether the SendAck came
	// before the signal or after it (or never): the first is what the
	// machine's load alone gives, the second what the node's loss added
	// to it, to read against each other.
	GapBeforeMs float64 `json:"gap_before_signal_ms"`
	GapAfterMs  float64 `json:"gap_after_signal_ms"`
	// GapAfter says whose wait GapAfterMs is, and when it was: where to
	// look for its cause.
	GapAfter *SlowAck `json:"gap_after_signal,omitempty"`
	// Moved is how many connections logged in again on another node.
	Moved        int64   `json:"moved"`
	ReconnectP50 float64 `json:"reconnect_p50_ms"` // from the lost connection to the login elsewhere
	ReconnectMax float64 `json:"reconnect_max_ms"`
	// Hinted is how many lost connections carried a reconnect hint (a
	// stopping node's Close: wait this long, then come back), waited out
	// before the login elsewhere as the SDK does; included in Reconnect*.
	Hinted int64 `json:"hinted"`
	// Retried is how many sends a node refused with a retryable error
	// (no quorum yet, shutting down) and the bench sent again, same id.
	Retried int64 `json:"retried"`
	// Redelivered is how many items came again after a reconnect, at a
	// seq already seen (their ack was lost with the node): a client drops
	// them by seq, and so does the bench.
	Redelivered int64 `json:"redelivered"`
	// ReceiptsAgain is how many delivered receipts came a second time: an
	// ack whose receipt was written and whose erase was not (the parts of
	// an ack are written per partition) is made again when the receiver
	// acks the redelivered item. Receipts are idempotent.
	ReceiptsAgain int64 `json:"receipts_again"`
	// Survivors* are the send->delivered latencies of the pairs with
	// neither side on the lost node: Before of the messages delivered
	// before the signal (the run's normal), After of the rest (in flight
	// at the signal, or sent after it): what the node's loss (its streams'
	// elections, its clients' reconnect storm) costs the others.
	SurvivorsBefore Latency `json:"survivors_before_ms"`
	SurvivorsAfter  Latency `json:"survivors_after_ms"`
}

func failoverRows(o *FailoverOutcome) []Row {
	if o == nil {
		return nil
	}
	rows := []Row{{Name: "failover", Value: fmt.Sprintf("node %d (%s) SIG%s", o.Node, o.Addr, o.Signal), Note: fmt.Sprintf("pid %d, %.2f s into the run", o.PID, o.AtSeconds)}}
	if o.Error != "" {
		rows = append(rows, Row{Name: "failover error", Value: "-", Note: o.Error})
	}
	return append(rows,
		Row{Name: "gap_ms", Value: fmtF(o.GapMs, 1), Note: "longest wait of a message for its SendAck (first write -> SendAck)"},
		Row{Name: "gap_ms before / after", Value: fmt.Sprintf("%s / %s", fmtF(o.GapBeforeMs, 1), fmtF(o.GapAfterMs, 1)), Note: "the same, by whether the SendAck came before the signal (the load's share) or after it"},
		gapAfterRow(o),
		Row{Name: "moved", Value: fmtInt(o.Moved), Note: "connections logged in again on another node"},
		Row{Name: "reconnect_ms p50 / max", Value: fmt.Sprintf("%s / %s", fmtF(o.ReconnectP50, 1), fmtF(o.ReconnectMax, 1)), Note: "lost connection -> login on another node"},
		Row{Name: "hinted", Value: fmtInt(o.Hinted), Note: "of them told by the stopping node when to come back (its Close frame's spread), waited out first"},
		Row{Name: "retried", Value: fmtInt(o.Retried), Note: "sends refused with a retryable error, sent again with the same id"},
		Row{Name: "redelivered", Value: fmtInt(o.Redelivered), Note: "items delivered again after a reconnect (same seq), dropped"},
		Row{Name: "receipts_again", Value: fmtInt(o.ReceiptsAgain), Note: "delivered receipts repeated (an ack written in part before the loss), dropped"},
		Row{Name: "survivors p99 before / after", Value: fmt.Sprintf("%s / %s ms", fmtF(o.SurvivorsBefore.P99, 3), fmtF(o.SurvivorsAfter.P99, 3)), Note: "send -> delivered of the pairs with neither side on the lost node; before: delivered before the signal"},
	)
}

// SlowAck is one message's long wait for its SendAck.
type SlowAck struct {
	Sender string `json:"sender"`
	// Survivor: neither side of the sender's pair was on the lost node.
	Survivor bool    `json:"survivor"`
	Node     string  `json:"node"`     // where the sender was connected at the end
	SentMs   float64 `json:"sent_ms"`  // its first write, ms from the signal (negative: before it)
	AckedMs  float64 `json:"acked_ms"` // its SendAck, ms from the signal
	// NoSendAck: none came by the end of the run (AckedMs is the end).
	NoSendAck bool `json:"no_sendack,omitempty"`
}

func (a *SlowAck) String() string {
	who := "a pair on the lost node"
	if a.Survivor {
		who = "a pair neither side of which was on the lost node"
	}
	acked := fmt.Sprintf("SendAck at %s ms", fmtF(a.AckedMs, 1))
	if a.NoSendAck {
		acked = fmt.Sprintf("no SendAck by the end (%s ms)", fmtF(a.AckedMs, 1))
	}
	return fmt.Sprintf("%s (%s, now on %s): sent at %s ms, %s, from the signal", a.Sender, who, a.Node, fmtF(a.SentMs, 1), acked)
}

// failoverRun is what the pairs of a failover run share: how to log in
// again elsewhere, and the tallies.
type failoverRun struct {
	ctx    context.Context
	d      *dialer
	killAt atomic.Int64 // r.now() at the signal; 0: not yet

	mu         sync.Mutex
	reconnects []time.Duration
	before     *survivorHist
	after      *survivorHist

	retried, redelivered, receiptsAgain, hinted atomic.Int64
}

type survivorHist struct {
	mu sync.Mutex
	h  *hdrhistogram.Histogram
}

// record adds the latency of a message of a pair untouched by the loss,
// sent at sentAt and its delivered receipt read at doneAt (r.now()): to
// before if the receipt came before the signal, else to after. A message
// in flight at the signal is the loss's to delay (its partition's leader
// may have died with the node), so it counts after: before is the run's
// normal, with nothing the loss touched.
func (fo *failoverRun) record(sentAt, doneAt int64) {
	us := (doneAt - sentAt) / 1000
	h := fo.before
	if k := fo.killAt.Load(); k != 0 && doneAt >= k {
		h = fo.after
	}
	h.mu.Lock()
	h.h.RecordValue(max(us, 1))
	h.mu.Unlock()
}

// reconnectGiveUp bounds the search for a node to log in again on.
const reconnectGiveUp = 30 * time.Second

// relogin logs u in again on another node than the one at cur (a random
// other first, as the SDK does, so that a lost node's clients spread over
// the rest), backing off between tries, and records how long it took.
// A Close with a reconnect hint (why, from the lost connection) is waited
// out first, as the SDK does.
func (fo *failoverRun) relogin(u *user, cur string, why error) (*conn, string, error) {
	t0 := time.Now()
	addrs := fo.d.addrs
	i := max(slices.Index(addrs, cur), 0)
	if len(addrs) > 1 {
		i += rand.N(len(addrs) - 1)
	}
	if hint := reconnectHint(why); hint > 0 {
		fo.hinted.Add(1)
		select {
		case <-time.After(hint):
		case <-fo.ctx.Done():
		}
	}
	for attempt := 0; ; attempt++ {
		addr := addrs[(i+1+attempt)%len(addrs)]
		c, err := fo.d.dialAt(fo.ctx, addr, u, hello{}, 64<<10)
		if err == nil {
			fo.mu.Lock()
			fo.reconnects = append(fo.reconnects, time.Since(t0))
			fo.mu.Unlock()
			return c, addr, nil
		}
		// A login refused for a reason that passes (the account's stream
		// has no leader for a few seconds) is tried again, as the SDK does.
		var le *errLogin
		if errors.As(err, &le) && !retryable(int32(le.code)) || fo.ctx.Err() != nil || time.Since(t0) > reconnectGiveUp {
			return nil, cur, fmt.Errorf("log %s in again after losing %s: %w", u.phone, cur, err)
		}
		// Jittered, growing: the moved clients must not all retry in step.
		d := min(20*time.Millisecond<<min(attempt, 6), time.Second)
		time.Sleep(d/2 + rand.N(d/2+1))
	}
}

// retryable says whether a send refused with code is worth sending again
// (with the same id) after a moment: the SDK's rule.
func retryable(code int32) bool { return client.RetryableCode(wire.Error_Code(code)) }

// retryDelay is how long a sender waits before sending a refused message
// again.
func retryDelay() int64 { return int64(100*time.Millisecond + rand.N(100*time.Millisecond)) }

// signalName maps --signal to the signal.
func signalOf(name string) (syscall.Signal, error) {
	switch name {
	case "KILL", "SIGKILL", "kill":
		return syscall.SIGKILL, nil
	case "TERM", "SIGTERM", "term":
		return syscall.SIGTERM, nil
	}
	return 0, fmt.Errorf("--signal %q: give KILL (a crash) or TERM (a planned stop)", name)
}

// victimPID asks the victim node for its process id (GET /admin/version)
// and checks that the process is on this machine: the bench signals it.
func (a *admin) victimPID(ctx context.Context) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.url+"/admin/version", nil)
	if err != nil {
		return 0, err
	}
	resp, err := a.hc.Do(req)
	if err != nil {
		return 0, unreachable("admin listener", a.url, err)
	}
	defer resp.Body.Close()
	var v node.Version
	if err := decodeResponse(resp, &v); err != nil {
		return 0, fmt.Errorf("GET %s/admin/version: %w", a.url, err)
	}
	if v.PID <= 0 {
		return 0, fmt.Errorf("GET %s/admin/version: no pid in the answer", a.url)
	}
	if err := syscall.Kill(v.PID, 0); err != nil {
		return 0, fmt.Errorf("the node at %s says its pid is %d, which this machine cannot signal (%v): run the bench on the node's machine, as the same user or root", a.url, v.PID, err)
	}
	return v.PID, nil
}

// killAfter signals the victim once at has passed since t0, unless stop
// closes first.
func (fo *failoverRun) killAfter(t0 time.Time, at time.Duration, pid int, sig syscall.Signal, stop <-chan struct{}, o *FailoverOutcome) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTimer(time.Until(t0.Add(at)))
		defer t.Stop()
		select {
		case <-t.C:
		case <-stop:
			o.Error = "the run ended before --at"
			return
		case <-fo.ctx.Done():
			o.Error = fo.ctx.Err().Error()
			return
		}
		fo.killAt.Store(int64(time.Since(t0)))
		o.AtSeconds = time.Since(t0).Seconds()
		if err := syscall.Kill(pid, sig); err != nil {
			o.Error = fmt.Sprintf("signal pid %d: %v", pid, err)
		}
	}()
	return done
}

// outcome fills o in at the end of the run (now: r.now()); a message
// still without its SendAck counts in the gap with its wait so far.
func (fo *failoverRun) outcome(o *FailoverOutcome, senders []*sender, now int64) {
	for _, s := range senders {
		pending := int64(0) // the longest wait of a message still without its SendAck
		for k := int64(s.rcptHigh) + 1; k <= s.sent; k++ {
			if s.ackSID[(k-1)%int64(len(s.ackSID))] == 0 {
				pending = max(pending, now-s.sendAt[(k-1)%int64(len(s.sendAt))])
			}
		}
		o.GapMs = max(o.GapMs, float64(max(s.maxAckWait, pending))/1e6)
		o.GapBeforeMs = max(o.GapBeforeMs, float64(s.maxAckWaitBefore)/1e6)
		after := max(s.maxAckWaitAfter, pending)
		if float64(after)/1e6 > o.GapAfterMs {
			o.GapAfterMs = float64(after) / 1e6
			k := fo.killAt.Load()
			slow := &SlowAck{Sender: s.u.phone, Survivor: s.untouched, Node: s.addr}
			if pending > s.maxAckWaitAfter {
				slow.SentMs = float64(now-pending-k) / 1e6
				slow.AckedMs, slow.NoSendAck = float64(now-k)/1e6, true
			} else {
				slow.SentMs = float64(s.maxAckWaitAfterAt-s.maxAckWaitAfter-k) / 1e6
				slow.AckedMs = float64(s.maxAckWaitAfterAt-k) / 1e6
			}
			o.GapAfter = slow
		}
	}
	fo.mu.Lock()
	rs := slices.Clone(fo.reconnects)
	fo.mu.Unlock()
	slices.Sort(rs)
	o.Moved = int64(len(rs))
	if len(rs) > 0 {
		o.ReconnectP50 = float64(rs[len(rs)/2]) / 1e6
		o.ReconnectMax = float64(rs[len(rs)-1]) / 1e6
	}
	o.Retried, o.Redelivered, o.ReceiptsAgain, o.Hinted = fo.retried.Load(), fo.redelivered.Load(), fo.receiptsAgain.Load(), fo.hinted.Load()
}

// gapAfterRow names the message whose wait is the gap after the signal.
func gapAfterRow(o *FailoverOutcome) Row {
	r := Row{Name: "gap after, whose", Value: "-", Note: "no message waited after the signal"}
	if o.GapAfter != nil {
		r.Value, r.Note = o.GapAfter.Sender, o.GapAfter.String()
	}
	return r
}
