package jetstream

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	njs "github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/parleyhq/parley/store"
)

// maxGroup caps how many batches the committer decides and writes together.
const maxGroup = 1024

// maxAtomic is how many messages go into one atomic batch publish: the
// server's default limit (streamMaxAtomicBatchSize) is 1,000.
const maxAtomic = 1000

// Atomic batch publish headers (ADR-50; nats.go does not name them).
const (
	hdrBatchID     = "Nats-Batch-Id"
	hdrBatchSeq    = "Nats-Batch-Sequence"
	hdrBatchCommit = "Nats-Batch-Commit"
)

// maxKnown bounds the (seq, stream seq) pairs kept per queue.
const maxKnown = 64

// request is one entry of the commit queue: a caller's batch, or a sweep.
type request struct {
	b     *store.Batch
	sweep *sweepOp
	done  func(store.Result)
	res   store.Result
	// tries counts the times the request was decided again after a
	// conflict with another writer.
	tries int
	// ord is the request's place in commit order, from 1 (see
	// committer.number); 0 until its first group.
	ord uint64
}

// maxTries bounds how often a request refused by a compare-and-set is
// decided again before ErrConflict is reported.
const maxTries = 8

// commitQueue is the FIFO between Commit and the committer: a guarded
// slice, so Commit never blocks (a Commit from a done callback, which runs
// on the committer, would deadlock on a full channel).
type commitQueue struct {
	mu     sync.Mutex
	reqs   []request
	closed bool
	wake   chan struct{}
}

func (q *commitQueue) init() { q.wake = make(chan struct{}, 1) }

func (q *commitQueue) push(r request) bool {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return false
	}
	q.reqs = append(q.reqs, r)
	first := len(q.reqs) == 1
	q.mu.Unlock()
	if first {
		q.signal()
	}
	return true
}

func (q *commitQueue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *commitQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.signal()
}

// requeue puts rs back at the head of the queue, in order, even after
// close (they were taken before it).
func (q *commitQueue) requeue(rs []request) {
	q.mu.Lock()
	q.reqs = append(append(make([]request, 0, len(rs)+len(q.reqs)), rs...), q.reqs...)
	q.mu.Unlock()
	q.signal()
}

func (q *commitQueue) take(group []request, max int) ([]request, bool) {
	for {
		q.mu.Lock()
		if n := len(q.reqs); n > 0 {
			take := min(n, max)
			group = append(group[:0], q.reqs[:take]...)
			rest := copy(q.reqs, q.reqs[take:])
			clear(q.reqs[rest:])
			q.reqs = q.reqs[:rest]
			q.mu.Unlock()
			return group, true
		}
		closed := q.closed
		q.mu.Unlock()
		if closed {
			return nil, false
		}
		<-q.wake
	}
}

// userState is the committer's view of one queue. head, tail and last
// are written by the committer (last and known by the goroutine writing
// the queue's partition) under Store.stMu.
type userState struct {
	user  string
	part  int
	subj  string // the items
	tsubj string // the tail record
	// head is the lowest seq not erased and tail the last seq assigned;
	// head = tail+1 when the queue is empty.
	head, tail uint64
	// last is the stream seq of the tail record as last seen (of the
	// items subject's last message, with DeletePerItem): every append is
	// a compare-and-set on it, so an append made meanwhile by another
	// node is detected, never overwritten.
	last uint64
	// marker and prevMarker are the stream seqs of the queue's newest
	// empty-marker and the one before (DeletePerItem deletes it); 0: none.
	marker, prevMarker uint64
	// known pairs recent items' seqs with their stream seqs, ascending,
	// to start reads and purges near the right place.
	known []seqPair
}

type seqPair struct{ seq, sseq uint64 }

type opKind uint8

const (
	opItem opKind = iota
	opMarker
	opDedup
)

// op is one message of a group's write.
type op struct {
	req  int // index in the group
	kind opKind
	st   *userState // item, marker
	seq  uint64     // item, marker
	ts   int64
	data []byte // item
	app  int    // item: its index in the batch's Appends

	subject  string // dedup
	dedupCAS bool   // dedup: must not exist yet
	ttl      time.Duration
	deadline int64 // dedup: TS + DedupTTL, for a record born expired; else 0
}

// partPlan is what a group writes to one partition.
type partPlan struct {
	ops []op
	// purges are the erasures the group's requests planned, in order:
	// each queue is purged below the highest head of the requests whose
	// writes all succeeded, after every partition's publishes (erasePart).
	purges []purgeReq
	// purgeTo is erasePart's scratch: by queue, the head to purge below.
	purgeTo map[*userState]uint64
	// blockedBy is erasePart's scratch: by queue, the failure of the
	// request that stops the group's erasures of it.
	blockedBy map[*userState]error
	// tails is publishChunk's scratch: the tail record of each queue a
	// chunk appends to; markers, erasePart's.
	tails   []tailRec
	markers []markerRec
	// dels, with DeletePerItem, maps a queue to the seqs [from, to) its
	// acks erase, each with its own DeleteMsg after the publishes.
	dels map[*userState][2]uint64
}

// tailRec is a queue's tail record to write: see publishChunk.
type tailRec struct {
	st  *userState
	seq uint64
}

// purgeReq is a request's erasure of st's items below head.
type purgeReq struct {
	st   *userState
	req  int
	head uint64
}

// touchedQueue is a queue the batch being decided touches.
type touchedQueue struct {
	st         *userState
	head, tail uint64
	next       uint64
}

// partFailure is a partition where a request's writes failed.
type partFailure struct {
	part int
	err  error
	// none: nothing of the request's share of the partition was written
	// (its publish was refused, or never made).
	none bool
	// acksOnly: what was not written is only the request's erasure there
	// (its appends to the partition, if any, were written): a retry
	// makes its acks, not its appends, again.
	acksOnly bool
}

type dedupSlot struct {
	serverID uint64
	ts       int64
	req      int // the request of this group writing it; -1: read from the stream
}

type committer struct {
	s       *Store
	overlay map[string]dedupSlot // dedup records this group writes
	plans   []partPlan
	// failed and written are set by the partition writers, under resMu.
	resMu   sync.Mutex
	failed  []error // by request index
	written []bool  // by request index: some part of it was written
	// locs are, by request index, the stream seqs of its appends (Result.Locs).
	locs [][]uint64
	// unwritten lists, by request index, the partitions where the
	// request's writes failed with nothing of them written, and why.
	unwritten [][]partFailure
	dupOf     []int // by request index: the request whose unwritten record its Dup names, or -1
	retry     []request
	requeued  []bool // by request index: decided again in a later group
	// answers are the requests taken and not yet answered, in commit
	// order; answers[k] is request number answerBase+k (request.ord-1).
	// recentRecv remembers when this committer wrote each received
	// record (received.go).
	recentRecv map[string]int64
	answers    []answerSlot
	answerBase uint64
	touched    []touchedQueue
	targets    []int
}

func (c *committer) run() {
	defer close(c.s.committed)
	c.plans = make([]partPlan, c.s.lay.parts)
	var group []request
	for {
		var ok bool
		group, ok = c.s.q.take(group, maxGroup)
		if !ok {
			return
		}
		c.commitGroup(group)
		clear(group)
	}
}

func (c *committer) commitGroup(group []request) {
	s := c.s
	c.number(group)
	ctx, cancel := context.WithTimeout(s.ctx, s.opts.Timeout*4)
	defer cancel()
	now := time.Now().UnixNano()
	clear(c.overlay)
	for p := range c.plans {
		c.plans[p].ops = c.plans[p].ops[:0]
		clear(c.plans[p].purges)
		c.plans[p].purges = c.plans[p].purges[:0]
		clear(c.plans[p].dels)
	}
	c.locs = append(c.locs[:0], make([][]uint64, len(group))...)
	c.failed = append(c.failed[:0], make([]error, len(group))...)
	c.written = append(c.written[:0], make([]bool, len(group))...)
	c.unwritten = append(c.unwritten[:0], make([][]partFailure, len(group))...)
	c.dupOf = c.dupOf[:0]
	for range group {
		c.dupOf = append(c.dupOf, -1)
	}
	s.stMu.Lock()
	if len(s.states) >= maxCachedStates {
		clear(s.states)
	}
	s.stMu.Unlock()

	for i := range group {
		r := &group[i]
		if r.sweep != nil {
			r.res = c.decideSweep(ctx, i, r.sweep)
		} else {
			if r.tries > 0 && r.b != nil && r.b.Dedup != nil && r.b.Dedup.Fresh {
				// Decided again after a lost compare-and-set: meanwhile its
				// sender may have given up on this node (it is stopping)
				// and sent it again elsewhere, so it is checked now, and its
				// record written only if none is there.
				r.b = checkedCopy(r.b)
			}
			r.res = c.decide(ctx, i, r.b, now)
		}
	}

	waitReceived := c.writeReceived(ctx, group, now)
	var wg sync.WaitGroup
	for p := range c.plans {
		if len(c.plans[p].ops) == 0 && len(c.plans[p].dels) == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.writePart(ctx, p, &c.plans[p])
		}()
	}
	wg.Wait()
	// The erasures go last, once every publish of the group is in: see
	// erase.
	for p := range c.plans {
		if len(c.plans[p].purges) == 0 || s.opts.DeletePerItem {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.erasePart(ctx, p, &c.plans[p])
		}()
	}
	wg.Wait()
	waitReceived()
	for i := range group {
		if c.failed[i] == nil && c.locs[i] != nil {
			group[i].res.Locs = c.locs[i]
		}
	}

	for i, owner := range c.dupOf {
		if owner >= 0 && c.failed[owner] != nil && c.failed[i] == nil {
			// Its Dup names a record that was not written after all:
			// decide it again, after the owner.
			c.failed[i] = fmt.Errorf("the earlier send it repeats was not written: %w", ErrConflict)
		}
	}
	anyFailed := false
	c.retry = c.retry[:0]
	c.requeued = append(c.requeued[:0], make([]bool, len(group))...)
	for i := range group {
		err := c.failed[i]
		if err == nil {
			continue
		}
		anyFailed = true
		// Refused by a compare-and-set (another node wrote one of its
		// queues) with nothing of it written: decide it again against
		// the reloaded queues.
		if errors.Is(err, ErrConflict) && !c.written[i] && group[i].tries < maxTries {
			group[i].tries++
			group[i].res = store.Result{}
			c.retry = append(c.retry, group[i])
			c.requeued[i] = true
			continue
		}
		// Written in part (a batch across partitions, one of which was
		// refused): decide again what was not written, if it is safe to
		// (see retryRest).
		if rest, ok := c.retryRest(&group[i], c.unwritten[i]); ok {
			c.retry = append(c.retry, rest)
			c.requeued[i] = true
			continue
		}
		group[i].res = store.Result{Err: err}
	}
	if anyFailed {
		c.forgetFailed(group)
	}
	if len(c.retry) > 0 {
		s.q.requeue(c.retry)
		clear(c.retry)
	}
	if f := s.opts.Store.OnGroup; f != nil {
		f(len(group))
	}
	c.finish(group)
}

// answerSlot is a request waiting to be answered (finish).
type answerSlot struct {
	done     func(store.Result)
	res      store.Result
	finished bool
}

// number gives each request of a new group its place in commit order;
// a retry keeps the place of the request it repeats.
func (c *committer) number(group []request) {
	for i := range group {
		if group[i].ord == 0 {
			c.answers = append(c.answers, answerSlot{})
			group[i].ord = c.answerBase + uint64(len(c.answers))
		}
	}
}

// finish answers the group's requests in commit order, which the Store
// contract promises each caller (a session matches results to its writes
// by their order). A request decided again (requeued at the head of the
// queue) is answered in a later group, and every request committed after
// it waits for it, whichever group it was decided in.
func (c *committer) finish(group []request) {
	for i := range group {
		if c.requeued[i] {
			continue
		}
		a := &c.answers[group[i].ord-1-c.answerBase]
		a.done, a.res, a.finished = group[i].done, group[i].res, true
	}
	n := 0
	for n < len(c.answers) && c.answers[n].finished {
		if done := c.answers[n].done; done != nil {
			done(c.answers[n].res)
		}
		n++
	}
	if n > 0 {
		c.answerBase += uint64(n)
		m := copy(c.answers, c.answers[n:])
		clear(c.answers[m:])
		c.answers = c.answers[:m]
	}
}

// noteUnwritten records that request i's writes to partition p failed
// with err; none: nothing of them was written. Under resMu.
func (c *committer) noteUnwritten(i, p int, err error, none bool) {
	for k := range c.unwritten[i] {
		if f := &c.unwritten[i][k]; f.part == p {
			f.none = f.none && none
			f.acksOnly = false
			return
		}
	}
	c.unwritten[i] = append(c.unwritten[i], partFailure{part: p, err: err, none: none})
}

// noteEraseUnwritten records that request i's erasure in partition p was
// not made, because err failed the request elsewhere (or an earlier one
// of the group erasing the same queue). Under resMu.
func (c *committer) noteEraseUnwritten(i, p int, err error) {
	for _, f := range c.unwritten[i] {
		if f.part == p {
			return // its writes there failed too: retried whole
		}
	}
	c.unwritten[i] = append(c.unwritten[i], partFailure{part: p, err: err, none: true, acksOnly: true})
}

// forgetFailed drops the cached states of the queues that a failed write
// of the group touched: they ran ahead of what was written, and are
// reloaded on use. A write that fails in a partition fails every later
// write of the group there (they may rest on it), and each of them is
// noted unwritten, so these are all the states that ran ahead; every
// other state is what was written (a batch refused before its writes, in
// decide, changed none). Forgetting no more than that matters in a
// cluster, where two nodes take turns writing most queues (a receipt
// from the recipient's node, the ack of it from the sender's) and a
// compare-and-set fails on most messages: a whole partition forgotten
// each time would be reloaded a queue at a time.
func (c *committer) forgetFailed(group []request) {
	s := c.s
	s.stMu.Lock()
	defer s.stMu.Unlock()
	forget := func(st *userState) {
		if cur := s.states[st.user]; cur == st {
			delete(s.states, st.user)
		}
	}
	for i := range group {
		for _, f := range c.unwritten[i] {
			pl := &c.plans[f.part]
			for k := range pl.ops {
				if o := &pl.ops[k]; o.req == i && o.st != nil {
					forget(o.st)
				}
			}
			for _, pr := range pl.purges {
				if pr.req == i {
					forget(pr.st)
				}
			}
		}
	}
}

// retryRest makes the request that decides again the part of r not
// written, when r was written in part and every partition that failed was
// refused by a compare-and-set with nothing of it written (an ack whose
// receipt to another partition's queue lost a race with another node,
// say). Redoing that part alone is safe: an ack names seqs (repeating it
// changes nothing), and appends without a Dedup are new items that were
// not stored. A batch with a Dedup is not split: its record says the
// whole batch was stored. The rest's result is merged into r's: r's done
// gets the seqs of every append, or the rest's error.
func (c *committer) retryRest(r *request, failures []partFailure) (request, bool) {
	b := r.b
	if b == nil || b.Dedup != nil || r.tries >= maxTries || len(failures) == 0 {
		return request{}, false
	}
	failed := make(map[int]bool, len(failures)) // true: its appends too
	for _, f := range failures {
		if !f.none || !errors.Is(f.err, ErrConflict) {
			return request{}, false
		}
		failed[f.part] = !f.acksOnly
	}
	lay := c.s.lay
	rest := &store.Batch{}
	for _, a := range b.Acks {
		if _, ok := failed[lay.partition(a.User)]; ok {
			rest.Acks = append(rest.Acks, a)
		}
	}
	var idx []int // rest's appends, by index in b
	for k, a := range b.Appends {
		if failed[lay.partition(a.To)] {
			rest.Appends = append(rest.Appends, a)
			idx = append(idx, k)
		}
	}
	seqs := append([]uint64(nil), r.res.Seqs...)
	done := r.done
	return request{b: rest, tries: r.tries + 1, ord: r.ord, done: func(res store.Result) {
		if done == nil {
			return
		}
		if res.Err != nil {
			done(store.Result{Err: res.Err})
			return
		}
		for k, j := range idx {
			seqs[j] = res.Seqs[k]
		}
		done(store.Result{Seqs: seqs})
	}}, true
}

// state returns user's cached state, loading it from the stream first.
func (c *committer) state(ctx context.Context, user string) (*userState, error) {
	s := c.s
	s.stMu.Lock()
	st := s.states[user]
	if st != nil {
		if h := s.headOf(st); h <= st.head {
			delete(s.ackedAt, user)
		} else if !c.planned(st) {
			st.head = h
			delete(s.ackedAt, user)
		}
	}
	s.stMu.Unlock()
	if st != nil {
		return st, nil
	}
	b, err := s.loadBounds(ctx, user)
	if err != nil {
		return nil, fmt.Errorf("load queue %s: %w", user, err)
	}
	p := s.lay.partition(user)
	st = &userState{user: user, part: p, subj: s.lay.queueSubject(p, user), tsubj: s.lay.tailSubject(p, user),
		head: b.head, tail: b.tail, last: b.last}
	if b.headSeq != 0 {
		st.known = append(st.known, seqPair{b.head, b.headSeq})
	}
	s.stMu.Lock()
	delete(s.ackedAt, user)
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

// checkedCopy is b with its Dedup no longer Fresh (b is the caller's).
func checkedCopy(b *store.Batch) *store.Batch {
	d := *b.Dedup
	d.Fresh = false
	nb := *b
	nb.Dedup = &d
	return &nb
}

// decide checks b against the state left by every earlier batch (this
// group's included) and, if it is accepted, plans its writes and advances
// the cached state. A refused batch plans nothing.
func (c *committer) decide(ctx context.Context, i int, b *store.Batch, now int64) store.Result {
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
				c.dupOf[i] = slot.req
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
		if a.UpTo > st.tail && !s.opts.DeletePerItem {
			// Another node appended what is acked (the recipient's node
			// seldom writes the recipient's queue but to erase it): the
			// view's tail is raised to it once the item is known to be
			// there, so the ack erases it. Cut down to the stale tail it
			// would erase nothing, and the queue would only grow.
			if err := c.raiseTail(ctx, st, a.UpTo); err != nil {
				return store.Result{Err: err}
			}
		}
		t := &c.touched[c.touch(st)]
		t.tail = max(t.tail, st.tail)
		if a.UpTo >= t.head {
			t.head = min(a.UpTo, t.tail) + 1
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
		if st.tail+1-st.head >= uint64(s.opts.Store.MaxQueueLen) && !c.planned(st) {
			// Full as this node sees it; but other nodes erase what
			// their users ack without writing the subject, so this
			// view's head may be stale: look again before refusing.
			if err := c.refreshHead(ctx, st); err != nil {
				return store.Result{Err: err}
			}
		}
		ti := c.touch(st)
		t := &c.touched[ti]
		t.tail++
		if t.tail+1-t.head > uint64(s.opts.Store.MaxQueueLen) {
			return store.Result{Err: fmt.Errorf("append to %s: %w", a.To, store.ErrQueueFull)}
		}
		c.targets = append(c.targets, ti)
	}

	// Accepted: plan the writes.
	for k := range c.touched {
		t := &c.touched[k]
		if t.head > t.st.head {
			c.erase(i, t.st, t.head, now)
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
		pl := &c.plans[t.st.part]
		pl.ops = append(pl.ops, op{req: i, kind: opItem, st: t.st, seq: t.next, ts: now, data: a.Data, app: k})
	}
	if d := b.Dedup; d != nil {
		o := op{req: i, kind: opDedup, subject: ddSubj, dedupCAS: !d.Fresh, ts: d.TS, seq: d.ServerID}
		o.ttl, o.deadline = c.dedupTTL(d.TS, now)
		pl := &c.plans[ddPart]
		pl.ops = append(pl.ops, o)
		c.overlay[ddSubj] = dedupSlot{serverID: d.ServerID, ts: d.TS, req: i}
	}
	s.stMu.Lock()
	for _, t := range c.touched {
		t.st.head, t.st.tail = t.head, t.tail
	}
	s.stMu.Unlock()
	return store.Result{Seqs: seqs}
}

// erase plans the erasure of st's items below newHead (> st.head), made
// after every partition's publishes of the group (erasePart: an
// empty-marker, or a PurgeEx below the last erased item), and only for
// requests whose publishes all succeeded: an ack's delivered receipts are
// written before its erasure, so an ack cut short by a failure leaves the
// item to be delivered and acked again, and its receipt made again,
// rather than erased with no receipt. Neither touches the queue's tail
// record (see publishChunk), so the nodes appending to the queue do not
// lose their compare-and-set to the node erasing it.
//
// With DeletePerItem (the per-item baseline, for one node), a queue left
// empty gets an empty-marker, and each erased item its own DeleteMsg.
func (c *committer) erase(i int, st *userState, newHead uint64, now int64) {
	pl := &c.plans[st.part]
	if c.s.opts.DeletePerItem {
		if newHead > st.tail {
			pl.ops = append(pl.ops, op{req: i, kind: opMarker, st: st, seq: st.tail, ts: now})
		}
		if pl.dels == nil {
			pl.dels = make(map[*userState][2]uint64)
		}
		d, ok := pl.dels[st]
		if !ok {
			d[0] = st.head
		}
		d[1] = newHead
		pl.dels[st] = d
	}
	pl.purges = append(pl.purges, purgeReq{st: st, req: i, head: newHead})
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

// lookupDedup finds the dedup record subj in partition part: this group's
// own, else the stream's. A record not found is looked for once more
// after a barrier write through the partition's leader: a leader elected
// moments ago (the last one stopped or died with the first send in its
// log) answers reads from what it has applied so far, and acknowledges
// the barrier only once it has applied everything before it. A record
// found needs no barrier (records are never erased before their TTL).
// This costs a write only for resends that are new (the first send was
// never stored), which are rare.
func (c *committer) lookupDedup(ctx context.Context, part int, subj string) (dedupSlot, bool, error) {
	if slot, ok := c.overlay[subj]; ok {
		return slot, true, nil
	}
	slot, found, err := c.readDedup(ctx, part, subj)
	if err != nil || found {
		return slot, found, err
	}
	if err := c.s.barrier(ctx, part); err != nil {
		return dedupSlot{}, false, fmt.Errorf("look up dedup %s: barrier: %w", subj, err)
	}
	return c.readDedup(ctx, part, subj)
}

func (c *committer) readDedup(ctx context.Context, part int, subj string) (dedupSlot, bool, error) {
	m, err := c.s.getLast(ctx, part, subj)
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
	return dedupSlot{serverID: id, ts: ts, req: -1}, true, nil
}

// writePart writes one partition's share of the group: its messages as
// atomic batches of whole requests (one, usually), then, with
// DeletePerItem, its deletes. A request whose write fails is marked
// failed; so are the requests after it in this partition (they may rest
// on it). Erasures are made later, by erasePart.
func (c *committer) writePart(ctx context.Context, p int, pl *partPlan) {
	s := c.s
	var failure error
	ops := pl.ops
	for len(ops) > 0 && failure == nil {
		// A chunk ends at a request boundary, under maxAtomic messages
		// when it can (a single request past it is written alone and is
		// refused by the server); each item may bring a tail record.
		limit := maxAtomic / 2
		if s.opts.DeletePerItem {
			limit = maxAtomic
		}
		n := 0
		for n < len(ops) {
			end := n + 1
			for end < len(ops) && ops[end].req == ops[n].req {
				end++
			}
			if n > 0 && end > limit {
				break
			}
			n = end
		}
		chunk := ops[:n]
		ops = ops[n:]
		err := c.publishChunk(ctx, p, chunk)
		c.resMu.Lock()
		for _, o := range chunk {
			if err != nil {
				c.failed[o.req] = err
				c.noteUnwritten(o.req, p, err, true)
			} else {
				c.written[o.req] = true
			}
		}
		c.resMu.Unlock()
		failure = err
	}
	if failure != nil {
		c.resMu.Lock()
		defer c.resMu.Unlock()
		for _, o := range ops {
			c.failed[o.req] = failure
			c.noteUnwritten(o.req, p, failure, true)
		}
		// The erasures in p of the requests whose publishes were
		// written are still made (erasePart): they rest on nothing the
		// failed chunk held.
		return
	}
	for st, d := range pl.dels {
		if err := c.deleteEach(ctx, p, st, d[0], d[1]); err != nil {
			err = fmt.Errorf("erase queue %s below %d: %w", st.user, d[1], err)
			s.log.Warn("store erase failed", "user", st.user, "seq", d[1], "err", err)
			c.resMu.Lock()
			for _, pr := range pl.purges {
				if pr.st == st {
					c.failed[pr.req] = err
					c.noteUnwritten(pr.req, p, err, false)
				}
			}
			c.resMu.Unlock()
		}
	}
}

// erasePart makes partition p's purges (see erase), once every publish of
// the group is in: each queue below the highest head of the requests that
// did not fail. A request that failed erases nothing; its erasure is noted
// unwritten, so that a retry of what it did not write (retryRest) makes
// it.
func (c *committer) erasePart(ctx context.Context, p int, pl *partPlan) {
	if pl.purgeTo == nil {
		pl.purgeTo = make(map[*userState]uint64)
		pl.blockedBy = make(map[*userState]error)
	}
	clear(pl.purgeTo)
	clear(pl.blockedBy)
	c.resMu.Lock()
	for _, pr := range pl.purges {
		err := c.failed[pr.req]
		if b := pl.blockedBy[pr.st]; err == nil && b != nil {
			// After a failed request of the same queue: erasing past it
			// would erase the items whose receipts it did not write.
			// This one is retried for its acks, after it.
			err = b
			c.failed[pr.req] = err
		}
		if err != nil {
			c.noteEraseUnwritten(pr.req, p, err)
			if pl.blockedBy[pr.st] == nil {
				pl.blockedBy[pr.st] = err
			}
			continue
		}
		pl.purgeTo[pr.st] = max(pl.purgeTo[pr.st], pr.head)
	}
	c.resMu.Unlock()
	// A queue acked to its last item (as far as this node knows) is
	// emptied by an empty-marker written with Nats-Rollup: sub and a
	// compare-and-set on that item being the subject's last message:
	// all the group's such markers of the partition are one atomic write,
	// much cheaper than a PurgeEx each (a JSON API request and a Raft
	// entry of its own). An item appended meanwhile fails the
	// compare-and-set (it is never rolled up), and those queues are
	// purged instead, as are the queues with items known past the ack.
	// The nodes appending to the queue compare their tail record, not
	// this subject: the marker costs them nothing.
	markers := pl.markers[:0]
	for st, head := range pl.purgeTo {
		sseq, err := c.locate(ctx, st, head-1)
		if err == nil && sseq != 0 && head > st.tail && !c.knownPast(st, head-1) {
			markers = append(markers, markerRec{st: st, seq: head - 1, sseq: sseq})
			continue
		}
		if err == nil {
			err = c.purgeBelow(ctx, p, st, head)
		}
		c.eraseFailed(p, pl, st, head, err)
	}
	pl.markers = markers
	c.markOrPurge(ctx, p, pl, markers)
}

// markOrPurge writes ms (writeMarkers). A batch refused by a
// compare-and-set says nothing of which marker failed, so it is split in
// two and each half tried again, down to single markers, whose queues
// are purged instead: a conflict costs its own queue a purge and the
// batch a few more writes, not every queue of the batch a purge.
func (c *committer) markOrPurge(ctx context.Context, p int, pl *partPlan, ms []markerRec) {
	for len(ms) > maxAtomic {
		c.markOrPurge(ctx, p, pl, ms[:maxAtomic])
		ms = ms[maxAtomic:]
	}
	if len(ms) == 0 {
		return
	}
	err := c.writeMarkers(ctx, p, ms)
	switch {
	case errors.Is(err, ErrConflict) && len(ms) > 1:
		half := len(ms) / 2
		c.markOrPurge(ctx, p, pl, ms[:half])
		c.markOrPurge(ctx, p, pl, ms[half:])
	case errors.Is(err, ErrConflict):
		c.eraseFailed(p, pl, ms[0].st, ms[0].seq+1, c.purgeBelow(ctx, p, ms[0].st, ms[0].seq+1))
	default:
		for _, m := range ms {
			c.eraseFailed(p, pl, m.st, m.seq+1, err)
		}
	}
}

// markerTTL is an empty-marker's Nats-TTL. A marker holds nothing once
// its rollup has erased the items before it (the tail is in the tail
// record), so it expires: a queue emptied long ago then has nothing left
// in its items subject for a sweep or a load to read past, and a user
// ever acked keeps one message for good, not two.
const markerTTL = "60s"

// markerRec is an empty-marker to write: see erasePart.
type markerRec struct {
	st   *userState
	seq  uint64 // the last item acked
	sseq uint64 // its stream seq: the subject's last message, if nothing was appended since
}

// writeMarkers writes ms as atomic batches, each marker rolling up its
// queue subject if its item is still the subject's last message.
func (c *committer) writeMarkers(ctx context.Context, p int, ms []markerRec) error {
	s := c.s
	now := time.Now().UnixNano()
	for len(ms) > 0 {
		chunk := ms[:min(len(ms), maxAtomic)]
		ms = ms[len(chunk):]
		msgs := make([]*nats.Msg, len(chunk))
		for k, m := range chunk {
			msg := nats.NewMsg(m.st.subj)
			msg.Data = appendRecord(make([]byte, 0, recHeader), kindMarker, m.seq, now, nil)
			msg.Header.Set(njs.MsgRollup, njs.MsgRollupSubject)
			msg.Header.Set(njs.ExpectedLastSubjSeqHeader, strconv.FormatUint(m.sseq, 10))
			msg.Header.Set(njs.MsgTTLHeader, markerTTL)
			msgs[k] = msg
		}
		if _, err := s.publishBatch(ctx, p, msgs); err != nil {
			return fmt.Errorf("write %d empty-markers to partition %d: %w", len(msgs), p, err)
		}
		s.stMu.Lock()
		for _, m := range chunk {
			m.st.known = m.st.known[:0]
		}
		s.stMu.Unlock()
		for _, m := range chunk {
			s.noteReadAt(m.st.user, seqPair{m.seq, m.sseq})
		}
	}
	return nil
}

// knownPast says whether this node knows of an item of st's queue past seq.
func (c *committer) knownPast(st *userState, seq uint64) bool {
	s := c.s
	s.stMu.Lock()
	defer s.stMu.Unlock()
	if k, ok := s.readAt[st.user]; ok && k.seq > seq {
		return true
	}
	return len(st.known) > 0 && st.known[len(st.known)-1].seq > seq
}

// eraseFailed marks the requests whose erasure of st below head failed
// with err (if it did) failed, their other writes made.
func (c *committer) eraseFailed(p int, pl *partPlan, st *userState, head uint64, err error) {
	if err == nil {
		return
	}
	err = fmt.Errorf("erase queue %s below %d: %w", st.user, head, err)
	c.s.log.Warn("store erase failed", "user", st.user, "seq", head, "err", err)
	c.resMu.Lock()
	defer c.resMu.Unlock()
	for _, pr := range pl.purges {
		if pr.st == st && c.failed[pr.req] == nil {
			c.failed[pr.req] = err
			c.noteUnwritten(pr.req, p, err, false)
		}
	}
}

// publishChunk publishes ops as one atomic batch, with each appended
// queue's tail record, a compare-and-set on the one before (with
// DeletePerItem, each queue's first message a compare-and-set on the
// subject's last stream seq).
func (c *committer) publishChunk(ctx context.Context, p int, ops []op) error {
	s := c.s
	msgs := make([]*nats.Msg, len(ops))
	seen := make(map[string]bool, len(ops))
	for k := range ops {
		o := &ops[k]
		var m *nats.Msg
		switch o.kind {
		case opItem, opMarker:
			m = nats.NewMsg(o.st.subj)
			kind := byte(kindItem)
			if o.kind == opMarker { // DeletePerItem's empty-marker
				kind = kindMarker
			}
			m.Data = appendRecord(make([]byte, 0, recHeader+len(o.data)), kind, o.seq, o.ts, o.data)
			if s.opts.DeletePerItem && !seen[o.st.subj] {
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
		}
		msgs[k] = m
	}
	// Each queue the chunk appends to gets its tail record rewritten, a
	// compare-and-set on the one before: its seq is the queue's tail. The
	// record is in a subject of its own, which erasing never touches, so
	// only an append moves what the next append's compare-and-set is made
	// on (a node erasing the queue does not make the nodes appending to
	// it lose theirs), and a queue whose items are all erased still says
	// how far its seqs went, so that none is reused.
	nItems := len(msgs)
	tails := c.plans[p].tails[:0]
	if !s.opts.DeletePerItem {
		for k := range ops {
			o := &ops[k]
			if o.kind != opItem {
				continue
			}
			j := slices.IndexFunc(tails, func(t tailRec) bool { return t.st == o.st })
			if j < 0 {
				tails = append(tails, tailRec{st: o.st})
				j = len(tails) - 1
			}
			tails[j].seq = o.seq
		}
		for _, t := range tails {
			m := nats.NewMsg(t.st.tsubj)
			m.Data = appendRecord(make([]byte, 0, recHeader), kindMarker, t.seq, time.Now().UnixNano(), nil)
			m.Header.Set(njs.MsgRollup, njs.MsgRollupSubject)
			m.Header.Set(njs.ExpectedLastSubjSeqHeader, strconv.FormatUint(t.st.last, 10))
			msgs = append(msgs, m)
		}
	}
	c.plans[p].tails = tails
	// A stream leader cut off from its quorum keeps the write it could
	// not acknowledge pending, and would check the next compare-and-sets
	// against it; no write gets there: the first ErrUnavailable shuts
	// the partition's gate (gate.go), and only a write acknowledged
	// through a leader with its quorum opens it again.
	last, err := s.publishBatch(ctx, p, msgs)
	if err != nil {
		return fmt.Errorf("write %d messages to partition %d: %w", len(msgs), p, err)
	}
	first := last - uint64(len(msgs)) + 1
	c.resMu.Lock()
	for k := range ops {
		if o := &ops[k]; o.kind == opItem {
			if c.locs[o.req] == nil {
				c.locs[o.req] = make([]uint64, o.app+1, o.app+4)
			}
			for len(c.locs[o.req]) <= o.app {
				c.locs[o.req] = append(c.locs[o.req], 0)
			}
			c.locs[o.req][o.app] = first + uint64(k)
		}
	}
	c.resMu.Unlock()
	s.stMu.Lock()
	for k, t := range tails {
		t.st.last = first + uint64(nItems+k)
	}
	for k := range ops {
		o := &ops[k]
		sseq := first + uint64(k)
		switch o.kind {
		case opItem:
			if s.opts.DeletePerItem {
				o.st.last = sseq
			}
			o.st.known = append(o.st.known, seqPair{o.seq, sseq})
			if len(o.st.known) > maxKnown {
				o.st.known = append(o.st.known[:0], o.st.known[len(o.st.known)-maxKnown/2:]...)
			}
		case opMarker:
			o.st.last = sseq
			o.st.prevMarker, o.st.marker = o.st.marker, sseq
		case opDedup:
			if o.deadline != 0 {
				s.noteBornExpired(dedupRef{part: p, seq: sseq, deadline: o.deadline})
			}
		}
	}
	s.stMu.Unlock()
	return nil
}

// purgeBelow erases st's items with seq < head: one PurgeEx of the subject
// below the stream seq just past item head-1. Only the acked prefix goes:
// items appended meanwhile, by any node, have higher stream seqs (the
// tail record is in a subject of its own).
func (c *committer) purgeBelow(ctx context.Context, p int, st *userState, head uint64) error {
	s := c.s
	sseq, err := c.locate(ctx, st, head-1)
	if err != nil || sseq == 0 {
		return err // sseq 0: nothing of it left (erased meanwhile)
	}
	pctx, cancel, err := s.gates.enter(ctx, p)
	if err != nil {
		return err
	}
	s.n.purges.Add(1)
	err = s.parts[p].Purge(pctx, njs.WithPurgeSubject(st.subj), njs.WithPurgeSequence(sseq+1))
	cancel()
	if err != nil {
		s.gates.wrote(p, err)
		return unavailable(err)
	}
	c.dropKnownBelow(st, head)
	s.noteReadAt(st.user, seqPair{head - 1, sseq})
	return nil
}

// locate is the stream seq of the last item of st's queue with seq <= seq
// (0 if there is none): from what this node wrote or was told of the queue
// (known, and NoteItem's or the last read's item), else found by reading
// the subject from there.
func (c *committer) locate(ctx context.Context, st *userState, seq uint64) (uint64, error) {
	s := c.s
	s.stMu.Lock()
	var sseq uint64
	for _, k := range st.known {
		if k.seq == seq {
			sseq = k.sseq
		}
	}
	if k, ok := s.readAt[st.user]; ok && k.seq == seq {
		sseq = k.sseq
	}
	s.stMu.Unlock()
	if sseq != 0 {
		return sseq, nil
	}
	at, err := c.walkTo(ctx, st, seq)
	return at.sseq, err
}

// walkTo reads st's queue from where this node last knew it to the last
// item with seq <= seq (none: the zero pair), and notes it (noteReadAt).
func (c *committer) walkTo(ctx context.Context, st *userState, seq uint64) (seqPair, error) {
	s := c.s
	var at seqPair
	for cur := s.startHint(st.user, seq); ; {
		m, err := s.getNext(ctx, st.part, st.subj, cur)
		if err != nil {
			return seqPair{}, err
		}
		if m == nil {
			break
		}
		cur = m.Sequence + 1
		r, err := decodeRecord(m.Data)
		if err != nil {
			return seqPair{}, fmt.Errorf("stream seq %d: %w", m.Sequence, err)
		}
		if r.kind != kindItem {
			continue
		}
		if r.seq > seq {
			break
		}
		at = seqPair{r.seq, m.Sequence}
	}
	s.noteReadAt(st.user, at)
	return at, nil
}

// raiseTail raises st's tail to seq if an item with that seq is in the
// queue (see decide). last stays: this node's next append to the queue
// loses its compare-and-set and reloads the queue, as it must, since
// another node wrote it.
func (c *committer) raiseTail(ctx context.Context, st *userState, seq uint64) error {
	s := c.s
	s.stMu.Lock()
	k, ok := s.readAt[st.user]
	s.stMu.Unlock()
	if !ok || k.seq < seq {
		// Not told of it: read it from the stream.
		at, err := c.walkTo(ctx, st, seq)
		if err != nil {
			return fmt.Errorf("load queue %s: %w", st.user, err)
		}
		if at.seq != seq {
			return nil // not there: erased, or never was
		}
	}
	s.stMu.Lock()
	st.tail = max(st.tail, seq)
	s.stMu.Unlock()
	return nil
}

// refreshHead raises st's head to the queue's first item in the stream
// (past every item when none is left), for a node that appends to the
// queue and sees others erase it only this way.
func (c *committer) refreshHead(ctx context.Context, st *userState) error {
	s := c.s
	head := st.tail + 1
	for cur := s.startHint(st.user, st.head); ; {
		m, err := s.getNext(ctx, st.part, st.subj, cur)
		if err != nil {
			return fmt.Errorf("load queue %s: %w", st.user, err)
		}
		if m == nil {
			break
		}
		cur = m.Sequence + 1
		r, err := decodeRecord(m.Data)
		if err != nil {
			return fmt.Errorf("load queue %s at stream seq %d: %w", st.user, m.Sequence, err)
		}
		if r.kind == kindItem && r.seq >= st.head {
			head = r.seq
			break
		}
	}
	s.stMu.Lock()
	st.head = max(st.head, head)
	s.stMu.Unlock()
	return nil
}

// planned says whether the group has planned a write to st's queue.
func (c *committer) planned(st *userState) bool {
	pl := &c.plans[st.part]
	for k := range pl.ops {
		if pl.ops[k].st == st {
			return true
		}
	}
	for _, pr := range pl.purges {
		if pr.st == st {
			return true
		}
	}
	return false
}

// deleteEach erases st's items with seq in [from, to), and its previous
// marker, with one DeleteMsg each: the DeletePerItem baseline.
func (c *committer) deleteEach(ctx context.Context, p int, st *userState, from, to uint64) error {
	s := c.s
	var sseqs []uint64
	s.stMu.Lock()
	for _, k := range st.known {
		if k.seq >= from && k.seq < to {
			sseqs = append(sseqs, k.sseq)
		}
	}
	if st.prevMarker != 0 {
		sseqs = append(sseqs, st.prevMarker)
		st.prevMarker = 0
	}
	s.stMu.Unlock()
	if uint64(len(sseqs)) < to-from { // not all known: find them
		sseqs = sseqs[:0]
		for cur := uint64(1); ; {
			m, err := s.getNext(ctx, p, st.subj, cur)
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
			if r.kind == kindItem || m.Sequence != st.marker {
				sseqs = append(sseqs, m.Sequence)
			}
		}
	}
	for _, seq := range sseqs {
		dctx, cancel, err := s.gates.enter(ctx, p)
		if err != nil {
			return err
		}
		s.n.purges.Add(1)
		err = s.parts[p].DeleteMsg(dctx, seq)
		cancel()
		if err != nil && !isNotFound(err) {
			s.gates.wrote(p, err)
			return unavailable(err)
		}
	}
	c.dropKnownBelow(st, to)
	return nil
}

// dropKnownBelow forgets st's known items with seq < seq: they are erased.
func (c *committer) dropKnownBelow(st *userState, seq uint64) {
	c.s.stMu.Lock()
	defer c.s.stMu.Unlock()
	k := 0
	for k < len(st.known) && st.known[k].seq < seq {
		k++
	}
	st.known = append(st.known[:0], st.known[k:]...)
}

// publishBatch publishes msgs to the stream behind gate gi as one atomic
// batch (a lone message as a plain publish) and returns the stream seq of
// the last; the others have the seqs just before it. It waits at most
// Options.Timeout for the answer, even within a longer ctx.
func (s *Store) publishBatch(ctx context.Context, gi int, msgs []*nats.Msg) (uint64, error) {
	rctx, cancel, err := s.gates.enter(ctx, gi)
	if err != nil {
		return 0, err
	}
	defer cancel()
	seq, err := s.publishBatchTo(rctx, msgs)
	s.gates.wrote(gi, err)
	return seq, err
}

func (s *Store) publishBatchTo(ctx context.Context, msgs []*nats.Msg) (uint64, error) {
	if len(msgs) == 1 {
		pa, err := s.publish(ctx, msgs[0])
		return pa.Seq, err
	}
	s.n.msgs.Add(uint64(len(msgs) - 1)) // publish counts the last
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
