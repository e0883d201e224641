package jetstream

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	njs "github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// maxAtomic is how many messages go into one atomic batch publish: the
// server's default limit (streamMaxAtomicBatchSize) is 1,000.
const maxAtomic = 1000

// Atomic batch publish headers (ADR-50; nats.go does not name them).
const (
	hdrBatchID     = "Nats-Batch-Id"
	hdrBatchSeq    = "Nats-Batch-Sequence"
	hdrBatchCommit = "Nats-Batch-Commit"
)

// partWriter writes one partition's shares of the decided requests, in
// the order they were decided.
type partWriter struct {
	c *committer
	p int

	mu      sync.Mutex
	ops     []op
	stopped bool
	wake    chan struct{}

	// failing: a write failed; every share is refused (ErrConflict) until
	// the decider has drained the pipeline and lowered the barrier.
	failing atomic.Bool
}

func newPartWriter(c *committer, p int) *partWriter {
	return &partWriter{c: c, p: p, wake: make(chan struct{}, 1)}
}

// add queues one request's share.
func (w *partWriter) add(ops []op) {
	w.mu.Lock()
	w.ops = append(w.ops, ops...)
	w.mu.Unlock()
	signal(w.wake)
}

// stop ends run once its queue is empty.
func (w *partWriter) stop() {
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
	signal(w.wake)
}

func (w *partWriter) run() {
	var chunk []op
	for {
		w.mu.Lock()
		if len(w.ops) == 0 {
			stopped := w.stopped
			w.mu.Unlock()
			if stopped {
				return
			}
			<-w.wake
			continue
		}
		// Whole requests, up to maxAtomic published messages (a single
		// request past it is written alone, and refused by the server).
		n, msgs := 0, 0
		for n < len(w.ops) {
			end, m := n, 0
			for end < len(w.ops) && w.ops[end].fl == w.ops[n].fl {
				if w.ops[end].published() {
					m++
				}
				end++
			}
			if n > 0 && msgs+m > maxAtomic {
				break
			}
			n, msgs = end, msgs+m
		}
		chunk = append(chunk[:0], w.ops[:n]...)
		rest := copy(w.ops, w.ops[n:])
		clear(w.ops[rest:])
		w.ops = w.ops[:rest]
		w.mu.Unlock()
		w.write(chunk)
		clear(chunk)
	}
}

// write publishes a chunk as one atomic batch, then runs its purges and
// deletes, and reports each request's share as handled.
func (w *partWriter) write(chunk []op) {
	c, s := w.c, w.c.s
	ctx, cancel := context.WithTimeout(s.ctx, 2*s.opts.Timeout)
	defer cancel()
	var err error
	if w.failing.Load() {
		err = fmt.Errorf("partition %d: an earlier write failed: %w", w.p, ErrConflict)
	} else if stale(s, chunk) {
		err = fmt.Errorf("partition %d: queue state dropped: %w", w.p, ErrConflict)
	} else {
		err = w.publish(ctx, chunk)
	}
	if err != nil {
		w.failing.Store(true)
		c.raiseBarrier()
		for i := range chunk {
			chunk[i].fl.fail(err)
		}
	} else {
		w.afterPublish(ctx, chunk)
		for i := range chunk {
			if chunk[i].published() {
				fl := chunk[i].fl
				fl.mu.Lock()
				fl.written = true
				fl.mu.Unlock()
			}
		}
	}
	requests := 0
	for i := range chunk {
		if i == 0 || chunk[i].fl != chunk[i-1].fl {
			requests++
			c.shareDone(chunk[i].fl)
		}
	}
	if err == nil {
		if f := s.opts.Store.OnGroup; f != nil {
			f(requests)
		}
	}
}

func stale(s *Store, chunk []op) bool {
	s.stMu.Lock()
	defer s.stMu.Unlock()
	for i := range chunk {
		if st := chunk[i].st; st != nil && st.stale {
			return true
		}
	}
	return false
}

// publish publishes the chunk's messages as one atomic batch, each
// queue's first message a compare-and-set on the subject's last stream
// seq.
func (w *partWriter) publish(ctx context.Context, chunk []op) error {
	s := w.c.s
	msgs := make([]*nats.Msg, 0, len(chunk))
	idx := make([]int, 0, len(chunk)) // chunk index of each message
	seen := make(map[string]bool, len(chunk))
	s.stMu.Lock()
	for k := range chunk {
		o := &chunk[k]
		var m *nats.Msg
		switch o.kind {
		case opItem, opMarker:
			m = nats.NewMsg(o.st.subj)
			kind := byte(kindItem)
			if o.kind == opMarker {
				kind = kindMarker
				if !s.opts.DeletePerItem {
					m.Header.Set(njs.MsgRollup, njs.MsgRollupSubject)
				}
			}
			m.Data = appendRecord(make([]byte, 0, recHeader+len(o.data)), kind, o.seq, o.ts, o.data)
			if !seen[o.st.subj] {
				seen[o.st.subj] = true
				m.Header.Set(njs.ExpectedLastSubjSeqHeader, strconv.FormatUint(o.st.last, 10))
			}
		case opDedup:
			m = nats.NewMsg(o.subject)
			m.Data = appendDedup(make([]byte, 0, dedupLen), o.seq, o.ts)
			m.Header.Set(njs.MsgTTLHeader, strconv.FormatInt(int64(o.ttl/time.Second), 10))
			if o.dedupCAS && !seen[o.subject] {
				m.Header.Set(njs.ExpectedLastSubjSeqHeader, "0")
			}
			seen[o.subject] = true
		default:
			continue
		}
		msgs = append(msgs, m)
		idx = append(idx, k)
	}
	s.stMu.Unlock()
	if len(msgs) == 0 {
		return nil
	}
	last, err := s.publishBatch(ctx, msgs)
	if err != nil {
		return fmt.Errorf("write %d messages to partition %d: %w", len(msgs), w.p, err)
	}
	first := last - uint64(len(msgs)) + 1
	s.stMu.Lock()
	defer s.stMu.Unlock()
	for j, k := range idx {
		o := &chunk[k]
		sseq := first + uint64(j)
		switch o.kind {
		case opItem:
			o.st.last = sseq
			o.st.known = append(o.st.known, seqPair{o.seq, sseq})
			if len(o.st.known) > maxKnown {
				o.st.known = append(o.st.known[:0], o.st.known[len(o.st.known)-maxKnown/2:]...)
			}
		case opMarker:
			o.st.last = sseq
			o.st.prevMarker, o.st.marker = o.st.marker, sseq
			if !s.opts.DeletePerItem {
				o.st.known = o.st.known[:0]
				o.st.prevMarker = 0 // the rollup erased it
			}
		case opDedup:
			if o.deadline != 0 {
				s.noteBornExpired(dedupRef{part: w.p, seq: sseq, deadline: o.deadline})
			}
		}
	}
	return nil
}

// afterPublish runs the chunk's purges and deletes, once per queue: the
// last purge of a queue covers the earlier ones. A failure fails the
// requests that asked for it.
func (w *partWriter) afterPublish(ctx context.Context, chunk []op) {
	type erasure struct {
		from, head uint64
		del        bool
		fls        []*inflight
	}
	var (
		order []*userState
		todo  map[*userState]*erasure
	)
	for i := range chunk {
		o := &chunk[i]
		if o.kind != opPurge && o.kind != opDelete {
			continue
		}
		if todo == nil {
			todo = make(map[*userState]*erasure)
		}
		e := todo[o.st]
		if e == nil {
			e = &erasure{from: o.from, del: o.kind == opDelete}
			todo[o.st] = e
			order = append(order, o.st)
		}
		e.head = max(e.head, o.seq)
		e.fls = append(e.fls, o.fl)
	}
	for _, st := range order {
		e := todo[st]
		var err error
		if e.del {
			err = w.deleteEach(ctx, st, e.from, e.head)
		} else {
			err = w.purgeBelow(ctx, st, e.head)
		}
		if err != nil {
			err = fmt.Errorf("erase queue %s below %d: %w", st.user, e.head, err)
			w.c.s.log.Warn("store erase failed", "user", st.user, "seq", e.head, "err", err)
			for _, fl := range e.fls {
				fl.fail(err)
			}
		}
	}
}

// purgeBelow erases st's items with seq < head: one PurgeEx of the subject
// below the stream seq of the item at head. Only the acked prefix goes:
// items appended meanwhile, by any node, have higher stream seqs.
func (w *partWriter) purgeBelow(ctx context.Context, st *userState, head uint64) error {
	s := w.c.s
	s.stMu.Lock()
	var from, sseq uint64 = 1, 0
	for _, k := range st.known {
		if k.seq == head {
			sseq = k.sseq
		}
		if k.seq < head && k.sseq+1 > from {
			from = k.sseq + 1
		}
	}
	s.stMu.Unlock()
	for sseq == 0 {
		m, err := s.getNext(ctx, s.parts[w.p], st.subj, from)
		if err != nil {
			return err
		}
		if m == nil {
			return nil // erased meanwhile
		}
		r, err := decodeRecord(m.Data)
		if err != nil {
			return fmt.Errorf("stream seq %d: %w", m.Sequence, err)
		}
		if r.kind == kindItem && r.seq >= head {
			sseq = m.Sequence
		}
		from = m.Sequence + 1
	}
	if sseq <= 1 {
		return nil // nothing below; and sequence 1 once meant "everything"
	}
	if err := s.parts[w.p].Purge(ctx, njs.WithPurgeSubject(st.subj), njs.WithPurgeSequence(sseq)); err != nil {
		return err
	}
	s.stMu.Lock()
	k := 0
	for k < len(st.known) && st.known[k].seq < head {
		k++
	}
	st.known = append(st.known[:0], st.known[k:]...)
	s.stMu.Unlock()
	return nil
}

// deleteEach erases st's items with seq in [from, to), and its previous
// marker, with one DeleteMsg each: the DeletePerItem baseline.
func (w *partWriter) deleteEach(ctx context.Context, st *userState, from, to uint64) error {
	s := w.c.s
	var sseqs []uint64
	s.stMu.Lock()
	for _, k := range st.known {
		if k.seq >= from && k.seq < to {
			sseqs = append(sseqs, k.sseq)
		}
	}
	prev := st.prevMarker
	st.prevMarker = 0
	current := st.marker
	s.stMu.Unlock()
	if uint64(len(sseqs)) < to-from { // not all known: find them
		sseqs = sseqs[:0]
		prev = 0
		for cur := uint64(1); ; {
			m, err := s.getNext(ctx, s.parts[w.p], st.subj, cur)
			if err != nil {
				return err
			}
			if m == nil {
				break
			}
			cur = m.Sequence + 1
			r, err := decodeRecord(m.Data)
			if err != nil {
				return fmt.Errorf("stream seq %d: %w", m.Sequence, err)
			}
			if r.kind == kindItem && r.seq >= to {
				break
			}
			if r.kind == kindItem || m.Sequence != current {
				sseqs = append(sseqs, m.Sequence)
			}
		}
	}
	if prev != 0 {
		sseqs = append(sseqs, prev)
	}
	for _, seq := range sseqs {
		if err := s.parts[w.p].DeleteMsg(ctx, seq); err != nil && !isNotFound(err) {
			return err
		}
	}
	s.stMu.Lock()
	k := 0
	for k < len(st.known) && st.known[k].seq < to {
		k++
	}
	st.known = append(st.known[:0], st.known[k:]...)
	s.stMu.Unlock()
	return nil
}

// publishBatch publishes msgs as one atomic batch (a lone message as a
// plain publish) and returns the stream seq of the last; the others have
// the seqs just before it.
func (s *Store) publishBatch(ctx context.Context, msgs []*nats.Msg) (uint64, error) {
	if len(msgs) == 1 {
		pa, err := s.publish(ctx, msgs[0])
		return pa.Seq, err
	}
	id := nuid.Next()
	for k, m := range msgs {
		m.Header.Set(hdrBatchID, id)
		m.Header.Set(hdrBatchSeq, strconv.Itoa(k+1))
		if k < len(msgs)-1 {
			if err := s.nc.PublishMsg(m); err != nil {
				return 0, fmt.Errorf("publish batch: %w", err)
			}
			continue
		}
		m.Header.Set(hdrBatchCommit, "1")
	}
	pa, err := s.publish(ctx, msgs[len(msgs)-1])
	if err != nil {
		return 0, err
	}
	if pa.Count != uint64(len(msgs)) {
		return 0, fmt.Errorf("publish batch: %d messages committed, want %d", pa.Count, len(msgs))
	}
	return pa.Seq, nil
}

func (s *Store) noteBornExpired(r dedupRef) {
	s.beMu.Lock()
	defer s.beMu.Unlock()
	if len(s.bornExpired) >= maxBornExpired {
		s.bornExpired = s.bornExpired[1:]
	}
	s.bornExpired = append(s.bornExpired, r)
}
