package jetstream

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/parleyhq/parley/store"
)

// The committer is a pipeline of three kinds of goroutine:
//
//   - the decider takes requests in commit order, decides each against
//     the cached queue states (seqs, limits, dedup) and hands its messages
//     to the writers of the partitions it touches, without waiting;
//   - one writer per partition publishes what it was handed, whole
//     requests at a time, as atomic batches: one batch in flight per
//     partition (a compare-and-set on a subject needs the previous write
//     to it acknowledged), all partitions at once;
//   - the reporter calls done in commit order once every share of a
//     request is written.
//
// A write refused by a compare-and-set (another node wrote one of the
// partition's queues) fails every request queued behind it in that
// partition and raises a barrier: the decider stops, the pipeline drains,
// the cached states are dropped, and the refused requests that wrote
// nothing are decided again, ahead of everything newer, so each caller's
// order holds.

// maxGroup caps how many requests the decider takes at once.
const maxGroup = 1024

// maxTries bounds how often a request refused by a compare-and-set is
// decided again before ErrConflict is reported.
const maxTries = 8

// maxKnown bounds the (seq, stream seq) pairs kept per queue.
const maxKnown = 64

// inflight is a decided request on its way through the writers.
type inflight struct {
	req   request
	res   store.Result
	parts atomic.Int32 // partition shares not yet written

	mu      sync.Mutex // guards err and written
	err     error
	written bool // some share of it was written

	ddSubj string    // the overlay entry it owns, if any
	dupOf  *inflight // its Dup came from dupOf's record, not yet written
	retry  bool      // set by the reporter: decided again, not reported
	ok     bool      // set by the reporter: reported written (or a Dup)
}

func (fl *inflight) fail(err error) {
	fl.mu.Lock()
	if fl.err == nil {
		fl.err = err
	}
	fl.mu.Unlock()
}

// userState is the committer's view of one queue, guarded by Store.stMu.
// The decider writes head and tail; the queue's partition writer writes
// last, marker and known.
type userState struct {
	user string
	part int
	subj string
	// head is the lowest seq not erased and tail the last seq assigned;
	// head = tail+1 when the queue is empty. Both run ahead of the
	// writes: they include what was decided and not yet written.
	head, tail uint64
	// last is the stream seq of the subject's last message as last
	// written: every write to the subject is a compare-and-set on it, so
	// a write made meanwhile by another node is detected, never
	// overwritten.
	last uint64
	// marker and prevMarker are the stream seqs of the queue's newest
	// empty-marker and the one before (DeletePerItem deletes it); 0: none.
	marker, prevMarker uint64
	// known pairs recent items' seqs with their stream seqs, ascending,
	// to start reads and purges near the right place.
	known []seqPair
	// stale: dropped after a failed write; ops decided on it are refused.
	stale bool
}

type seqPair struct{ seq, sseq uint64 }

type opKind uint8

const (
	opItem   opKind = iota // publish an item
	opMarker               // publish an empty-marker (Nats-Rollup: sub)
	opDedup                // publish a dedup record
	opPurge                // after the publish: PurgeEx below seq
	opDelete               // after the publish: DeleteMsg each of [seq, to)
)

// op is one step of a request's write to one partition.
type op struct {
	fl   *inflight
	kind opKind
	st   *userState // item, marker, purge, delete
	seq  uint64     // item, marker: its seq; purge, delete: the first kept
	from uint64     // delete: the first erased
	ts   int64
	data []byte // item

	subject  string // dedup
	dedupCAS bool   // dedup: must not exist yet
	ttl      time.Duration
	deadline int64 // dedup: TS + DedupTTL, for a record born expired; else 0
}

func (o *op) published() bool { return o.kind <= opDedup }

// touchedQueue is a queue the batch being decided touches.
type touchedQueue struct {
	st         *userState
	head, tail uint64
	next       uint64
}

type dedupSlot struct {
	serverID uint64
	ts       int64
	fl       *inflight // the request writing it; nil once written
}

type committer struct {
	s       *Store
	writers []*partWriter

	// Decider scratch.
	staged  [][]op // by partition: the request being decided
	touched []touchedQueue
	targets []int

	// overlay holds the dedup records decided and not yet reported, so
	// later requests see them. The decider reads and adds; the reporter
	// removes.
	ovMu    sync.Mutex
	overlay map[string]dedupSlot

	pmu     sync.Mutex
	pending []*inflight // decided, in commit order, not yet reported
	retry   []request   // refused by a conflict, to decide again; reporter-owned until the barrier

	reportWake chan struct{} // a request's last share was written
	drained    chan struct{} // pending became empty
	barrier    atomic.Bool   // a write failed: drain before deciding more
	barrierUp  chan struct{} // wakes the decider when barrier is raised
	stopReport chan struct{}
	reported   chan struct{}
}

func newCommitter(s *Store) *committer {
	c := &committer{
		s:          s,
		staged:     make([][]op, s.lay.parts),
		overlay:    make(map[string]dedupSlot),
		reportWake: make(chan struct{}, 1),
		drained:    make(chan struct{}, 1),
		barrierUp:  make(chan struct{}, 1),
		stopReport: make(chan struct{}),
		reported:   make(chan struct{}),
	}
	for p := range s.lay.parts {
		c.writers = append(c.writers, newPartWriter(c, p))
	}
	return c
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// run is the decider goroutine; it starts the writers and the reporter
// and stops them once the queue is closed and everything is reported.
func (c *committer) run() {
	var wg sync.WaitGroup
	for _, w := range c.writers {
		wg.Add(1)
		go func() { defer wg.Done(); w.run() }()
	}
	go c.report()
	defer func() {
		for _, w := range c.writers {
			w.stop()
		}
		wg.Wait()
		close(c.stopReport)
		<-c.reported
		close(c.s.committed)
	}()
	var group []request
	for {
		if c.barrier.Load() {
			c.recover()
		}
		var ok bool
		group, ok = c.s.q.take(group, maxGroup, c.barrierUp)
		if !ok {
			c.drain()
			if c.barrier.Load() {
				c.recover() // may requeue refused requests
				continue
			}
			return
		}
		now := time.Now().UnixNano()
		for i := range group {
			if c.barrier.Load() {
				c.s.q.requeue(group[i:])
				break
			}
			c.decideOne(group[i], now)
		}
		clear(group)
	}
}

// drain waits until every decided request is reported.
func (c *committer) drain() {
	for {
		c.pmu.Lock()
		empty := len(c.pending) == 0
		c.pmu.Unlock()
		if empty {
			return
		}
		<-c.drained
	}
}

// recover lowers the barrier: with the pipeline drained, it drops every
// cached state (they ran ahead of what was written), lets the writers
// write again and puts the refused requests back, ahead of the rest.
func (c *committer) recover() {
	c.drain()
	c.s.stMu.Lock()
	for _, st := range c.s.states {
		st.stale = true
	}
	clear(c.s.states)
	c.s.stMu.Unlock()
	for _, w := range c.writers {
		w.failing.Store(false)
	}
	c.pmu.Lock()
	retry := c.retry
	c.retry = nil
	c.pmu.Unlock()
	if len(retry) > 0 {
		c.s.q.requeue(retry)
	}
	c.barrier.Store(false)
}

// raiseBarrier is called by a writer whose write failed.
func (c *committer) raiseBarrier() {
	c.barrier.Store(true)
	signal(c.barrierUp)
}

// decideOne decides r and hands its shares to the writers.
func (c *committer) decideOne(r request, now int64) {
	s := c.s
	ctx, cancel := context.WithTimeout(s.ctx, s.opts.Timeout)
	defer cancel()
	s.stMu.Lock()
	if len(s.states) >= maxCachedStates {
		// Drop the cache; ops in flight on dropped states are refused
		// (stale) and decided again, which costs a drain, rarely.
		for _, st := range s.states {
			st.stale = true
		}
		clear(s.states)
	}
	s.stMu.Unlock()
	for p := range c.staged {
		c.staged[p] = c.staged[p][:0]
	}
	fl := &inflight{req: r}
	if r.sweep != nil {
		fl.res = c.decideSweep(ctx, fl, r.sweep)
	} else {
		fl.res = c.decide(ctx, fl, r.b, now)
	}
	n := int32(0)
	for p := range c.staged {
		if len(c.staged[p]) > 0 {
			n++
		}
	}
	fl.parts.Store(n)
	c.pmu.Lock()
	c.pending = append(c.pending, fl)
	c.pmu.Unlock()
	if n == 0 {
		signal(c.reportWake)
		return
	}
	for p := range c.staged {
		if len(c.staged[p]) > 0 {
			c.writers[p].add(c.staged[p])
		}
	}
}

// shareDone is called by a writer once its share of fl is handled.
func (c *committer) shareDone(fl *inflight) {
	if fl.parts.Add(-1) == 0 {
		signal(c.reportWake)
	}
}

// report is the reporter goroutine: it calls done for each request in
// commit order once all of it is written, or sets it aside to be decided
// again.
func (c *committer) report() {
	defer close(c.reported)
	for {
		select {
		case <-c.reportWake:
		case <-c.stopReport:
			return
		}
		for {
			c.pmu.Lock()
			if len(c.pending) == 0 || c.pending[0].parts.Load() > 0 {
				if len(c.pending) == 0 {
					signal(c.drained)
				}
				c.pmu.Unlock()
				break
			}
			fl := c.pending[0]
			c.pending[0] = nil
			c.pending = c.pending[1:]
			c.pmu.Unlock()
			c.finish(fl)
		}
	}
}

func (c *committer) finish(fl *inflight) {
	if fl.ddSubj != "" {
		c.ovMu.Lock()
		if slot, ok := c.overlay[fl.ddSubj]; ok && slot.fl == fl {
			delete(c.overlay, fl.ddSubj)
		}
		c.ovMu.Unlock()
	}
	fl.mu.Lock()
	err, written := fl.err, fl.written
	fl.mu.Unlock()
	if err == nil && fl.dupOf != nil && !fl.dupOf.ok {
		// Its Dup named a record that was not written after all.
		err = fmt.Errorf("the earlier send it repeats was refused: %w", ErrConflict)
	}
	if err != nil {
		if errors.Is(err, ErrConflict) && !written && fl.req.tries < maxTries {
			fl.retry = true
			r := fl.req
			r.tries++
			c.pmu.Lock()
			c.retry = append(c.retry, r)
			c.pmu.Unlock()
			return
		}
		fl.res = store.Result{Err: err}
	}
	fl.ok = err == nil && fl.res.Err == nil
	if done := fl.req.done; done != nil {
		done(fl.res)
	}
}

// state returns user's cached state, loading it from the stream first.
func (c *committer) state(ctx context.Context, user string) (*userState, error) {
	s := c.s
	s.stMu.Lock()
	st := s.states[user]
	s.stMu.Unlock()
	if st != nil {
		return st, nil
	}
	b, err := s.loadBounds(ctx, user)
	if err != nil {
		return nil, fmt.Errorf("load queue %s: %w", user, err)
	}
	p := s.lay.partition(user)
	st = &userState{user: user, part: p, subj: s.lay.queueSubject(p, user), head: b.head, tail: b.tail, last: b.last, marker: b.marker}
	if b.headSeq != 0 {
		st.known = append(st.known, seqPair{b.head, b.headSeq})
	}
	s.stMu.Lock()
	s.states[user] = st
	s.stMu.Unlock()
	return st, nil
}

func (c *committer) touch(st *userState) int {
	for i := range c.touched {
		if c.touched[i].st == st {
			return i
		}
	}
	c.touched = append(c.touched, touchedQueue{st: st, head: st.head, tail: st.tail})
	return len(c.touched) - 1
}

// dedupPartition is where a batch's dedup record lives: with its first
// append, so that a send's record and item are one atomic write.
func (c *committer) dedupPartition(b *store.Batch) int {
	if len(b.Appends) > 0 {
		return c.s.lay.partition(b.Appends[0].To)
	}
	return c.s.lay.partition(b.Dedup.Sender)
}

// decide checks b against the state left by every request decided before
// it and, if it is accepted, stages its writes and advances the cached
// state. A refused batch stages nothing.
func (c *committer) decide(ctx context.Context, fl *inflight, b *store.Batch, now int64) store.Result {
	s := c.s
	if b == nil {
		return store.Result{}
	}
	var ddSubj string
	ddPart := 0
	if d := b.Dedup; d != nil {
		ddPart = c.dedupPartition(b)
		ddSubj = s.lay.dedupSubject(ddPart, d.Sender, d.ClientID)
		if !d.Fresh {
			slot, found, err := c.lookupDedup(ctx, ddPart, ddSubj)
			if err != nil {
				return store.Result{Err: err}
			}
			if found {
				fl.dupOf = slot.fl
				return store.Result{Dup: &store.Dedup{Sender: d.Sender, ClientID: d.ClientID, ServerID: slot.serverID, TS: slot.ts}}
			}
		}
	}

	// Acks first, against the queue before this batch's appends: an ack
	// names seqs the client has seen, and the room it frees counts.
	c.touched = c.touched[:0]
	c.targets = c.targets[:0]
	for _, a := range b.Acks {
		st, err := c.state(ctx, a.User)
		if err != nil {
			return store.Result{Err: err}
		}
		t := &c.touched[c.touch(st)]
		if a.UpTo >= t.head {
			t.head = min(a.UpTo, st.tail) + 1
		}
	}
	for _, a := range b.Appends {
		ok, err := s.accountExists(ctx, a.To)
		if err != nil {
			return store.Result{Err: err}
		}
		if !ok {
			return store.Result{Err: fmt.Errorf("append to %s: %w", a.To, store.ErrUnknownUser)}
		}
		st, err := c.state(ctx, a.To)
		if err != nil {
			return store.Result{Err: err}
		}
		ti := c.touch(st)
		t := &c.touched[ti]
		t.tail++
		if t.tail+1-t.head > uint64(s.opts.Store.MaxQueueLen) {
			return store.Result{Err: fmt.Errorf("append to %s: %w", a.To, store.ErrQueueFull)}
		}
		c.targets = append(c.targets, ti)
	}

	// Accepted: stage the writes.
	for k := range c.touched {
		t := &c.touched[k]
		if t.head > t.st.head {
			c.erase(fl, t.st, t.head, now)
		}
		t.next = t.st.tail
	}
	var seqs []uint64
	if len(b.Appends) > 0 {
		seqs = make([]uint64, len(b.Appends))
	}
	for k, a := range b.Appends {
		t := &c.touched[c.targets[k]]
		t.next++
		seqs[k] = t.next
		p := t.st.part
		c.staged[p] = append(c.staged[p], op{fl: fl, kind: opItem, st: t.st, seq: t.next, ts: now, data: a.Data})
	}
	if d := b.Dedup; d != nil {
		o := op{fl: fl, kind: opDedup, subject: ddSubj, dedupCAS: !d.Fresh, ts: d.TS, seq: d.ServerID}
		o.ttl, o.deadline = c.dedupTTL(d.TS, now)
		c.staged[ddPart] = append(c.staged[ddPart], o)
		fl.ddSubj = ddSubj
		c.ovMu.Lock()
		c.overlay[ddSubj] = dedupSlot{serverID: d.ServerID, ts: d.TS, fl: fl}
		c.ovMu.Unlock()
	}
	s.stMu.Lock()
	for _, t := range c.touched {
		t.st.head, t.st.tail = t.head, t.tail
	}
	s.stMu.Unlock()
	return store.Result{Seqs: seqs}
}

// erase stages the erasure of st's items below newHead (> st.head). A
// queue left empty gets an empty-marker written with Nats-Rollup: sub, one
// message that erases every earlier one of the subject; a queue acked in
// part is purged below its new head once the publish is acknowledged.
// With DeletePerItem, each item gets its own DeleteMsg instead.
func (c *committer) erase(fl *inflight, st *userState, newHead uint64, now int64) {
	p := st.part
	if newHead > st.tail {
		c.staged[p] = append(c.staged[p], op{fl: fl, kind: opMarker, st: st, seq: st.tail, ts: now})
	}
	switch {
	case c.s.opts.DeletePerItem:
		c.staged[p] = append(c.staged[p], op{fl: fl, kind: opDelete, st: st, from: st.head, seq: newHead})
	case newHead <= st.tail:
		c.staged[p] = append(c.staged[p], op{fl: fl, kind: opPurge, st: st, seq: newHead})
	}
}

// dedupTTL is the Nats-TTL of a record with timestamp ts written at now:
// what is left of DedupTTL after ts. A record already past it (a TS from
// long ago) is kept for an hour at least (or DedupTTL if shorter), and
// Sweep deletes it when it runs.
func (c *committer) dedupTTL(ts, now int64) (ttl time.Duration, deadline int64) {
	keep := c.s.opts.Store.DedupTTL
	left := time.Duration(ts + int64(keep) - now)
	switch {
	case left > 2*keep: // a TS in the future: clocks disagree
		return 2 * keep, 0
	case left >= time.Minute:
		return left, 0
	default:
		return max(min(keep, time.Hour), time.Second), ts + int64(keep)
	}
}

func (c *committer) lookupDedup(ctx context.Context, part int, subj string) (dedupSlot, bool, error) {
	c.ovMu.Lock()
	slot, ok := c.overlay[subj]
	c.ovMu.Unlock()
	if ok {
		return slot, true, nil
	}
	m, err := c.s.getLast(ctx, c.s.parts[part], subj)
	if err != nil {
		return dedupSlot{}, false, fmt.Errorf("look up dedup %s: %w", subj, err)
	}
	if m == nil {
		return dedupSlot{}, false, nil
	}
	id, ts, err := decodeDedup(m.Data)
	if err != nil {
		return dedupSlot{}, false, fmt.Errorf("look up dedup %s: %w", subj, err)
	}
	return dedupSlot{serverID: id, ts: ts}, true, nil
}
