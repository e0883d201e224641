package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cockroachdb/pebble"
)

// defaultLazyDelay is how long a lazy batch may wait for an urgent one to
// share its fsync (Options.LazyDelay): a few fsyncs' time on a virtual disk
// (~0.5 ms each), and well under what a person notices in a receipt.
const defaultLazyDelay = 2 * time.Millisecond

// defaultMinSyncGap is the least time between the starts of two groups
// (Options.MinSyncGap): at light load it caps the fsyncs at 500 a second,
// which on a virtual disk is ~125 ms of CPU a second instead of ~250 us per
// Send, for at most 2 ms more before a SendAck.
const defaultMinSyncGap = 2 * time.Millisecond

// maxGroup caps how many batches go into one Pebble batch: enough to turn a
// burst into a handful of fsyncs, small enough that one group's Pebble batch
// stays well under the memtable size and its callbacks run promptly.
const maxGroup = 1024

// request is one entry of the commit queue: a caller's batch, or an internal
// sweep (whose deletes must go through the committer so that the in-memory
// queue heads stay right).
type request struct {
	b     *Batch
	sweep *sweepOp
	done  func(Result)
	res   Result // filled in by the committer
}

// commitQueue is the FIFO between Commit and the committer.
//
// It is a mutex-guarded slice rather than a buffered channel so that Commit
// never blocks: a channel would block once full, and a Commit made from a
// done callback (which runs on the committer goroutine) would then deadlock.
// Memory is the limit instead; callers bound what they have in flight.
//
// take paces the groups, which is what makes light load cheap: an fsync
// costs about the same CPU whatever it carries (~250 us on a virtual disk),
// and at light load nothing else groups batches. Two rules:
//   - Lazy batches (Batch.Lazy) do not start a group of their own at once:
//     while only lazy requests are pending, take waits up to lazyDelay for
//     an urgent one to share its fsync.
//   - A group starts no sooner than minGap after the previous one did, so
//     the fsyncs of a trickle of Sends are at most 1/minGap a second, each
//     carrying what arrived meanwhile. A group whose own work (its fsync
//     and callbacks) takes longer than minGap never waits for it; on a
//     disk whose fsync takes 0.5 ms, most groups under load do wait, which
//     puts a floor of about two gaps under a message's round trip (the
//     send's group, then the receipt's): measured in BENCHMARKS.md, stop
//     23, with what setting it off costs.
type commitQueue struct {
	mu     sync.Mutex
	reqs   []request
	urgent int // requests in reqs that are not lazy
	closed bool
	// wake carries at most one token telling the committer that reqs went
	// from empty to non-empty, that its first urgent request arrived, or
	// that the queue closed.
	wake chan struct{}

	// The committer's alone: the pacing (see above). timer is reused for
	// every wait; last is when the previous group was taken.
	lazyDelay, minGap time.Duration
	timer             *time.Timer
	last              time.Time
}

// init readies the queue, empty and open (again, after a close: see
// Pebble.Reopen), before its committer starts.
func (q *commitQueue) init(lazyDelay, minGap time.Duration) {
	q.mu.Lock()
	q.reqs, q.urgent, q.closed = nil, 0, false
	q.mu.Unlock()
	q.wake = make(chan struct{}, 1)
	q.lazyDelay = max(lazyDelay, 0)
	q.minGap = max(minGap, 0)
	q.timer, q.last = nil, time.Time{}
}

// lazy reports whether r may wait for company (see commitQueue).
func (r *request) lazy() bool { return r.b != nil && r.b.Lazy }

// push appends r; false if the queue is closed.
func (q *commitQueue) push(r request) bool {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return false
	}
	q.reqs = append(q.reqs, r)
	wake := len(q.reqs) == 1
	if !r.lazy() {
		q.urgent++
		wake = wake || q.urgent == 1
	}
	q.mu.Unlock()
	if wake {
		q.signal()
	}
	return true
}

func (q *commitQueue) signal() {
	select {
	case q.wake <- struct{}{}:
	default: // a token is already pending
	}
}

// close stops push; requests already queued are still taken.
func (q *commitQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.signal()
}

// take waits for at least one request, then moves up to max of the pending
// ones into group (reusing its storage), paced as the commitQueue doc says.
// ok is false once the queue is closed and empty.
func (q *commitQueue) take(group []request, max int) (_ []request, ok bool) {
	var lazyUntil time.Time // set once only lazy requests were found
	for {
		q.mu.Lock()
		n := len(q.reqs)
		var wait time.Duration // until the group may start; <= 0: now
		if n > 0 && !q.closed && n < max {
			now := time.Now()
			wait = q.minGap - now.Sub(q.last)
			if q.urgent == 0 && q.lazyDelay > 0 {
				if lazyUntil.IsZero() {
					lazyUntil = now.Add(q.lazyDelay)
				}
				wait = maxDuration(wait, lazyUntil.Sub(now))
			}
		}
		if n > 0 && wait <= 0 {
			if n <= max {
				// Swap buffers: the common case costs no copying. A
				// buffer that grew past a group's worth in a burst (a
				// login storm queues a commit per session) is dropped
				// rather than kept for good.
				group, q.reqs = q.reqs, group[:0]
				if cap(q.reqs) > max {
					q.reqs = nil
				}
				q.urgent = 0
			} else {
				group = append(group[:0], q.reqs[:max]...)
				rest := copy(q.reqs, q.reqs[max:])
				clear(q.reqs[rest:])
				q.reqs = q.reqs[:rest]
				for i := range group {
					if !group[i].lazy() {
						q.urgent--
					}
				}
			}
			q.mu.Unlock()
			if q.minGap > 0 {
				q.last = time.Now()
			}
			return group, true
		}
		closed := q.closed
		q.mu.Unlock()
		if n == 0 {
			if closed {
				return nil, false
			}
			<-q.wake
			continue
		}
		// Too soon after the last group, or only lazy requests: wait for
		// the time, or for the news (an urgent request, the close).
		if q.timer == nil {
			q.timer = time.NewTimer(wait)
		} else {
			q.timer.Reset(wait)
		}
		select {
		case <-q.wake:
			q.timer.Stop()
		case <-q.timer.C:
		}
	}
}

func maxDuration(a, b time.Duration) time.Duration {
	if a > b {
		return a
	}
	return b
}

// queueState is the committer's view of one user's queue. One exists for
// every user whose queue was used since the store opened, so it is kept
// small: the batch being decided keeps its scratch in committer.touched.
type queueState struct {
	user string

	// head is the lowest seq present and tail the last seq assigned; the
	// queue holds tail+1-head items (acks and expiry remove only from the
	// head, so there are no holes). Written by the committer under
	// Pebble.qmu, read by QueueLen under it.
	head, tail uint64

	// durable is the last seq whose append is on disk: readers see items
	// up to it only. Pebble makes a batch visible as soon as it is in the
	// memtable, before its WAL is synced; a reader that delivered such an
	// item could show a message whose sender never got its SendAck (and
	// resends it after a crash). Written by the committer, after the sync,
	// under Pebble.qmu.
	durable uint64

	// lease is the seq recorded in qt/<user>: no seq above it has been
	// handed out. Seqs must never be reused (clients ack and dedup by
	// them), and the items alone cannot say so once a queue is empty, so
	// the record is a lease written ahead, tailLease seqs at a time, in the
	// batch whose items cross it: one write per tailLease appends instead
	// of one per group. After a restart an empty queue resumes above the
	// lease, a jump clients do not notice.
	lease uint64
}

// tailLease is how far ahead of the tail qt/<user> is written.
const tailLease = 1024

// touchedQueue is a queue the batch being decided touches: the head and
// tail the batch would leave it with, and the running seq of its appends.
type touchedQueue struct {
	st         *queueState
	head, tail uint64
	next       uint64
	appended   bool
}

// dedupSlot is the group overlay's entry for one dedup key.
type dedupSlot struct {
	rec     dedupRecord
	deleted bool
}

// committer owns all writes to queues and dedup records.
type committer struct {
	p *Pebble

	// overlay holds the dedup records this group has written or deleted
	// but not yet committed, so a later batch in the group sees them.
	// A map beats a Pebble indexed batch here: an indexed batch would index
	// every write of the group (items included) in a skiplist to serve the
	// few dedup reads, and read them through a merging iterator.
	overlay map[string]dedupSlot

	touched  []touchedQueue // queues this batch touches
	targets  []int          // index in touched of each append's queue
	key      []byte         // scratch key
	appended []*queueState  // queues this group appends to: durable to their tails once synced
	pruneAt  int            // size of p.queues at which pruneStates next scans
	// recvWritten: this group writes received records (see
	// applyRecvSweep).
	recvWritten bool
	// stamps remembers the received records this committer stamped
	// lately (see pebble_received.go).
	stamps recvStamps
}

func newCommitter(p *Pebble) *committer {
	return &committer{
		p:       p,
		overlay: make(map[string]dedupSlot),
		pruneAt: p.opts.MaxQueueStates,
	}
}

// run is the committer goroutine: take everything pending, decide and write
// it as one Pebble batch with one fsync, report, repeat. Batches that arrive
// during the fsync form the next group.
func (c *committer) run() {
	defer close(c.p.committed)
	var group []request
	for {
		var ok bool
		group, ok = c.p.q.take(group, maxGroup)
		if !ok {
			return
		}
		c.commitGroup(group)
		clear(group) // drop references to batches and callbacks
		c.pruneStates()
	}
}

func (c *committer) commitGroup(group []request) {
	wb := c.p.db.NewBatch()
	// One timestamp per group: the items are written together, and a
	// queue's items stay in time order, which the sweeper relies on.
	now := time.Now().UnixNano()
	clear(c.overlay)
	c.appended = c.appended[:0]
	c.recvWritten = false
	for i := range group {
		r := &group[i]
		if r.sweep != nil {
			r.res = c.applySweep(wb, r.sweep)
		} else {
			r.res = c.apply(wb, r.b, now)
		}
	}
	var err error
	if !wb.Empty() {
		err = wb.Commit(pebble.Sync)
	}
	_ = wb.Close()
	if err == nil {
		// The committer alone moves tails, and no other group ran since
		// this one's: every tail it appended to is now on disk.
		c.p.qmu.Lock()
		for _, st := range c.appended {
			st.durable = st.tail
		}
		c.p.qmu.Unlock()
	}
	c.p.groups.Add(1)
	c.p.batches.Add(uint64(len(group)))
	if f := c.p.opts.OnGroup; f != nil {
		f(len(group))
	}
	if err != nil {
		err = fmt.Errorf("commit group of %d batches: %w", len(group), err)
		c.p.log.Error("store commit failed", "err", err)
		// Nothing of the group is on disk, and every decision in it may
		// rest on an earlier batch of the group: all of it fails. The
		// in-memory queue state ran ahead of the disk; forget it and
		// reload lazily.
		for i := range group {
			group[i].res = Result{Err: err}
		}
		c.forgetStates()
		c.stamps.forget()
	}
	for i := range group {
		if done := group[i].done; done != nil {
			done(group[i].res)
		}
	}
}

// state returns user's queue state, loading it from Pebble on first use.
// The committer is the only writer of p.queues, so it reads the map
// without p.qmu; it takes the lock to change it.
func (c *committer) state(user string) (*queueState, error) {
	if st := c.p.queues[user]; st != nil {
		return st, nil
	}
	head, tail, lease, err := loadQueueBounds(c.p.db, user)
	if err != nil {
		return nil, err
	}
	// What is on disk is durable: no group in flight has touched a queue
	// whose state is not loaded.
	st := &queueState{user: user, head: head, tail: tail, durable: tail, lease: lease}
	c.p.qmu.Lock()
	c.p.queues[user] = st
	c.p.qmu.Unlock()
	return st, nil
}

func (c *committer) forgetStates() {
	c.p.qmu.Lock()
	clear(c.p.queues)
	c.p.qmu.Unlock()
}

// touch includes st in the batch being decided and returns its index in
// c.touched. A batch touches one or two queues: a scan beats a map.
func (c *committer) touch(st *queueState) int {
	for i := range c.touched {
		if c.touched[i].st == st {
			return i
		}
	}
	c.touched = append(c.touched, touchedQueue{st: st, head: st.head, tail: st.tail})
	return len(c.touched) - 1
}

// apply decides b against the state left by every earlier batch (this
// group's included) and, if it is accepted, adds its writes to wb and
// advances the in-memory state. A refused batch changes nothing.
func (c *committer) apply(wb *pebble.Batch, b *Batch, now int64) Result {
	if b == nil {
		return Result{}
	}
	var ddKey []byte
	if d := b.Dedup; d != nil {
		c.key = appendDedupKey(c.key[:0], d.Sender, d.ClientID)
		if !d.Fresh {
			rec, found, err := c.lookupDedup(c.key)
			if err != nil {
				return Result{Err: err}
			}
			if found {
				return Result{Dup: &Dedup{Sender: d.Sender, ClientID: d.ClientID, ServerID: rec.serverID, TS: rec.ts}}
			}
		}
		ddKey = c.key
	}

	// Decide. Acks come before appends: an ack names seqs the client has
	// seen, so it must not erase items appended by the same batch, and the
	// room it frees counts toward MaxQueueLen.
	c.touched = c.touched[:0]
	c.targets = c.targets[:0]
	for _, a := range b.Acks {
		st, err := c.state(a.User)
		if err != nil {
			return Result{Err: err}
		}
		t := &c.touched[c.touch(st)]
		if a.UpTo >= t.head {
			t.head = min(a.UpTo, st.tail) + 1
		}
	}
	for _, a := range b.Appends {
		ok, err := c.p.accountExists(a.To)
		if err != nil {
			return Result{Err: err}
		}
		if !ok {
			return Result{Err: fmt.Errorf("append to %s: %w", a.To, ErrUnknownUser)}
		}
		st, err := c.state(a.To)
		if err != nil {
			return Result{Err: err}
		}
		i := c.touch(st)
		t := &c.touched[i]
		t.tail++
		t.appended = true
		if t.tail+1-t.head > uint64(c.p.opts.MaxQueueLen) {
			return Result{Err: fmt.Errorf("append to %s: %w", a.To, ErrQueueFull)}
		}
		c.targets = append(c.targets, i)
	}

	// Accepted: write.
	for i := range c.touched {
		t := &c.touched[i]
		c.deleteItems(wb, t.st.user, t.st.head, t.head)
		t.next = t.st.tail
		if t.tail > t.st.lease {
			// Lease seqs ahead, in the batch that hands them out.
			t.st.lease = t.tail + tailLease
			op := wb.SetDeferred(len(prefixTail)+len(t.st.user), seqLen)
			copy(op.Key[copy(op.Key, prefixTail):], t.st.user)
			binary.BigEndian.PutUint64(op.Value, t.st.lease)
			_ = op.Finish() // only fails for indexed batches
		}
	}
	var seqs []uint64
	if len(b.Appends) > 0 {
		seqs = make([]uint64, len(b.Appends))
	}
	for i, a := range b.Appends {
		t := &c.touched[c.targets[i]]
		t.next++
		seqs[i] = t.next
		op := wb.SetDeferred(queueKeyLen(t.st.user), itemHeaderLen+len(a.Data))
		putQueueKey(op.Key, t.st.user, t.next)
		binary.BigEndian.PutUint64(op.Value, uint64(now))
		copy(op.Value[itemHeaderLen:], a.Data)
		_ = op.Finish()
	}
	if d := b.Dedup; d != nil {
		rec := dedupRecord{serverID: d.ServerID, ts: d.TS}
		op := wb.SetDeferred(len(ddKey), dedupValueLen)
		copy(op.Key, ddKey)
		putDedupValue(op.Value, rec)
		_ = op.Finish()
		c.overlay[string(ddKey)] = dedupSlot{rec: rec}
	}
	c.putReceived(wb, b, now)

	c.p.qmu.Lock()
	for _, t := range c.touched {
		t.st.head, t.st.tail = t.head, t.tail
	}
	c.p.qmu.Unlock()
	for _, t := range c.touched {
		if t.appended {
			c.appended = append(c.appended, t.st)
		}
	}
	return Result{Seqs: seqs}
}

// deleteItems point-deletes user's items with seq in [from, to). Point
// deletes rather than one DeleteRange: at high ack rates range tombstones
// pile up and slow every read that crosses them.
//
// SingleDelete, because an item key is written exactly once: seqs only
// grow (the tail is kept in qt/<user> even when the queue is empty), so no
// key is set twice. A SingleDelete and the Set it deletes vanish together
// as soon as they meet, which for an item acked within seconds is the flush
// of the memtable holding both: neither reaches an sstable. A plain Delete's
// tombstone would be flushed and compacted down level by level.
func (c *committer) deleteItems(wb *pebble.Batch, user string, from, to uint64) {
	for seq := from; seq < to; seq++ {
		op := wb.SingleDeleteDeferred(queueKeyLen(user))
		putQueueKey(op.Key, user, seq)
		_ = op.Finish()
	}
}

// lookupDedup finds the record for key, this group's unwritten changes
// first.
func (c *committer) lookupDedup(key []byte) (dedupRecord, bool, error) {
	if slot, ok := c.overlay[string(key)]; ok {
		return slot.rec, !slot.deleted, nil
	}
	v, closer, err := c.p.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return dedupRecord{}, false, nil
	}
	if err != nil {
		return dedupRecord{}, false, fmt.Errorf("look up dedup %q: %w", key, err)
	}
	defer closer.Close()
	rec, err := decodeDedupValue(v)
	if err != nil {
		return dedupRecord{}, false, fmt.Errorf("look up dedup %q: %w", key, err)
	}
	return rec, true, nil
}

// applySweep erases what the sweeper found expired. Between its scan and
// now the queues may have moved (acks), so each queue is trimmed only up to
// what is still there, and op records exactly what was erased.
func (c *committer) applySweep(wb *pebble.Batch, op *sweepOp) Result {
	// Load every state first so that a load error leaves nothing half
	// applied.
	for i := range op.queues {
		if _, err := c.state(op.queues[i].user); err != nil {
			return Result{Err: err}
		}
	}
	for i := range op.queues {
		q := &op.queues[i]
		st := c.p.queues[q.user]
		from, to := st.head, min(q.upTo, st.tail)+1 // erase [from, to)
		q.from, q.to = from, from
		if to <= from {
			continue
		}
		c.deleteItems(wb, q.user, from, to)
		q.to = to
		c.p.qmu.Lock()
		st.head = to
		c.p.qmu.Unlock()
	}
	for _, k := range op.dedup {
		_ = wb.Delete(k, nil)
		c.overlay[string(k)] = dedupSlot{deleted: true}
	}
	if err := c.applyRecvSweep(wb, op); err != nil {
		return Result{Err: err}
	}
	return Result{}
}
