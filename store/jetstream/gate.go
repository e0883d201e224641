package jetstream

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	njs "github.com/nats-io/nats.go/jetstream"
)

// A gate stands in front of each stream (every queue partition, the
// received records, the meta stream). When a stream's leader dies,
// JetStream elects another in 4-9 s (its election timeouts), and until
// then every request to the stream waits out Options.Timeout. The
// committer writes a group's partitions together and waits for all of
// them, so without gates one leaderless stream would hold up every commit
// and every read of the node, not only its own users'.
//
// So: a request to a stream that ends in ErrUnavailable closes the
// stream's gate (so does Resync, for every partition); while it is
// closed, requests to the stream fail at once with ErrUnavailable
// (retryable: a client sends again, same id) and a prober tries the
// stream at once, then after gateProbeFirst, doubling up to every
// gateProbeEvery (an election after a step-down takes tens of
// milliseconds, one after a lost leader seconds), each try bounded by
// twice Options.Timeout
// (a loaded cluster may take longer than one request's timeout to answer
// a write, and the gate must not stay shut for that), until
// it answers; then the gate opens. Requests never probe, so the committer
// is held up once per loss (the first request's Timeout), not once per
// probe.
//
// A queue partition's probe is a write (a barrier: one message on the
// partition's own subject, rolled up, with a short TTL), not a read. A
// write the old leader proposed and the new leader commits late could
// otherwise be missed by a resend's dedup lookup decided in between: the
// new leader acknowledges the barrier only after it has applied every
// entry before it, so once the gate opens, every earlier write that will
// ever land has landed. The other streams' probes read their first
// message: only their leader answers it (or "not found").
//
// A leader that steps down (a node stopping hands its leaderships over)
// drops the requests it has not answered, and their senders would wait
// out Options.Timeout (2 s) while the new leader already serves. So when
// a stream elects a leader, the requests in flight to it fail at once,
// as if their timeout had passed (ErrUnavailable: nothing is decided
// about them that a timeout would not leave undecided; a send is sent
// again with its id, after the barrier).
type gate struct {
	closed  atomic.Bool
	probing atomic.Bool
	// term ends when the stream elects a leader: the requests sent
	// before then give up.
	term atomic.Pointer[gateTerm]
}

type gateTerm struct {
	ctx    context.Context
	cancel context.CancelFunc
}

const (
	gateProbeFirst   = 20 * time.Millisecond
	gateProbeEvery   = 200 * time.Millisecond
	gateProbeTimeout = time.Second
)

// gates are the store's gates: one per queue partition, then the received
// records' and the meta stream's.
type gates struct {
	s    *Store
	list []gate
}

// Gate indexes: a queue partition's is its number.
func (g *gates) recvIndex() int { return len(g.list) - 2 }
func (g *gates) metaIndex() int { return len(g.list) - 1 }

// stream is the stream behind gate i, for the prober.
func (g *gates) stream(i int) njs.Stream {
	switch i {
	case len(g.list) - 2:
		return g.s.recv
	case len(g.list) - 1:
		return g.s.meta
	}
	return g.s.parts[i]
}

// errGateClosed is what a request to a stream whose gate is closed gets.
var errGateClosed = fmt.Errorf("the stream is between leaders, or did not answer the last request: waiting for a write through its leader: %w", ErrUnavailable)

// enter says whether a request may go to stream i now, and gives it its
// context: ctx, bounded by Options.Timeout, and ended early when the
// stream elects a leader (see gate).
func (g *gates) enter(ctx context.Context, i int) (context.Context, context.CancelFunc, error) {
	gt := &g.list[i]
	term := gt.term.Load() // before the check: a leader elected after it ends this request
	if gt.closed.Load() {
		return nil, nil, errGateClosed
	}
	ctx, cancel := context.WithTimeout(ctx, g.s.opts.Timeout)
	if term == nil {
		return ctx, cancel, nil
	}
	stop := context.AfterFunc(term.ctx, cancel)
	return ctx, func() { stop(); cancel() }, nil
}

// newTerm starts gate i's next term, ending the one before: the requests
// sent in it fail now instead of waiting for answers a leader that
// stepped down will not send.
func (g *gates) newTerm(i int) {
	ctx, cancel := context.WithCancel(context.Background())
	if old := g.list[i].term.Swap(&gateTerm{ctx: ctx, cancel: cancel}); old != nil {
		old.cancel()
	}
}

// isUnavailable reports whether err says the stream did not answer, or
// cannot now (see unavailable).
func isUnavailable(err error) bool {
	return errors.Is(unavailable(err), ErrUnavailable)
}

// done records the outcome of a read of stream i, made within parent (the
// ctx given to enter): a stream that did not answer closes its gate (and
// starts its prober). A read that ended because parent did (its caller's
// deadline, spent on the requests before it: a sweep's or a group's
// reads) says nothing about the stream, and closes nothing.
func (g *gates) done(parent context.Context, i int, err error) {
	if parent.Err() != nil {
		return
	}
	g.wrote(i, err)
}

// wrote records the outcome of a write to stream i: one not answered
// closes the gate whatever ended it, for its outcome is unknown, and the
// next write must follow a barrier (see probe).
func (g *gates) wrote(i int, err error) {
	if err == nil || !isUnavailable(err) || g.s.ctx.Err() != nil {
		return
	}
	g.close(i, "a request was not answered", err)
}

// probe tries stream i until it answers, then opens its gate. It ends
// probing before it opens the gate, so that a request failing in between
// starts another prober rather than none.
func (g *gates) probe(i int) {
	gt := &g.list[i]
	t := time.NewTimer(0) // the first try at once: after an election the leader is there
	defer t.Stop()
	start := time.Now()
	for wait := gateProbeFirst; ; wait = min(2*wait, gateProbeEvery) {
		select {
		case <-g.s.ctx.Done():
			gt.probing.Store(false)
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(g.s.ctx, 2*g.s.opts.Timeout)
		err := g.try(ctx, i, true)
		cancel()
		if err == nil {
			gt.probing.Store(false)
			gt.closed.Store(false)
			g.s.log.Info("store stream answers again", "stream", g.name(i), "after", time.Since(start).Round(time.Millisecond))
			return
		}
		t.Reset(wait)
	}
}

// try is one probe of stream i: a barrier write to a queue partition
// (barrier), else a read of the first message.
func (g *gates) try(ctx context.Context, i int, barrier bool) error {
	if barrier && i < len(g.s.parts) {
		return g.s.writeBarrier(ctx, i)
	}
	// Only the leader answers a message or "not found"; an error
	// answered by another server (no leader yet) keeps the gate shut.
	_, err := g.stream(i).GetMsg(ctx, 1)
	if errors.Is(err, njs.ErrMsgNotFound) {
		return nil
	}
	return err
}

// writeBarrier writes one message to queue partition p (its barrier
// subject, a rollup with a TTL: one message at most, for a minute). The
// partition's leader acknowledges it only after applying every entry
// before it, so what is read from that leader afterwards includes them.
func (s *Store) writeBarrier(ctx context.Context, p int) error {
	m := nats.NewMsg(s.lay.barrierSubject(p))
	m.Header.Set(njs.MsgRollup, njs.MsgRollupSubject)
	m.Header.Set(njs.MsgTTLHeader, "60")
	_, err := s.publish(ctx, m)
	return err
}

// barrier is writeBarrier through partition p's gate, bounded by
// Options.Timeout.
func (s *Store) barrier(ctx context.Context, p int) error {
	rctx, cancel, err := s.gates.enter(ctx, p)
	if err != nil {
		return err
	}
	defer cancel()
	err = s.writeBarrier(rctx, p)
	s.gates.wrote(p, err)
	return unavailable(err)
}

// ready waits until every stream's leader answers a read, or ctx ends.
// (No barrier: a store opening has no earlier write of its own in doubt.)
func (g *gates) ready(ctx context.Context) error {
	for i := range g.list {
		for {
			tctx, cancel := context.WithTimeout(ctx, gateProbeTimeout)
			err := g.try(tctx, i, false)
			cancel()
			if err == nil {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("stream %s does not answer: %w", g.name(i), err)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}

func (g *gates) name(i int) string {
	switch i {
	case len(g.list) - 2:
		return g.s.lay.receivedStream()
	case len(g.list) - 1:
		return g.s.lay.metaStream()
	}
	return g.s.lay.queueStream(i)
}

// close shuts gate i and starts its prober if none runs.
func (g *gates) close(i int, why string, err error) {
	gt := &g.list[i]
	gt.closed.Store(true)
	if gt.probing.CompareAndSwap(false, true) {
		if err != nil {
			g.s.log.Warn("store stream unavailable: failing its requests at once until it answers again", "stream", g.name(i), "why", why, "err", err)
		}
		go g.probe(i)
	}
}

// Resync shuts every queue partition's gate until a barrier write through
// its leader succeeds (see gate). The node calls it when the cluster's
// members change: a stream whose leader was on a node lost may commit
// that node's last writes late, after a resend of them was decided
// elsewhere, and a node that comes back forces elections. why is logged.
// Partitions whose leader lives answer within a round trip.
func (s *Store) Resync(why string) {
	if s.ctx.Err() != nil {
		return
	}
	s.log.Warn("store: every partition waits for a write through its leader before it serves again", "why", why)
	for p := range s.parts {
		s.gates.close(p, why, nil)
	}
}

// watchLeaders shuts a partition's gate whenever JetStream elects a leader
// for its stream: the new leader checks compare-and-sets against what it
// has applied, which may not yet hold the last writes of the leader before
// it, so no write is decided there until a barrier through it has gone
// through (see gate).
//
// Every stream's election, a queue partition's or not, also ends the
// requests in flight to it (see gate): the leader before may have
// dropped them.
func (s *Store) watchLeaders() (*nats.Subscription, error) {
	byName := make(map[string]int, len(s.gates.list))
	for i := range s.gates.list {
		byName[s.gates.name(i)] = i
	}
	return s.nc.Subscribe("$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.*", func(m *nats.Msg) {
		name := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
		i, ok := byName[name]
		if !ok || s.ctx.Err() != nil {
			return
		}
		if i < len(s.parts) {
			s.gates.close(i, "a new leader was elected", nil)
		}
		s.gates.newTerm(i)
	})
}
