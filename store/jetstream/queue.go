package jetstream

import (
	"sync"

	"github.com/parleyhq/parley/store"
)

// request is one entry of the commit queue: a caller's batch, or a sweep.
type request struct {
	b     *store.Batch
	sweep *sweepOp
	done  func(store.Result)
	// tries counts the times the request was decided again after a
	// conflict with another writer.
	tries int
}

// commitQueue is the FIFO between Commit and the committer: a guarded
// slice, so Commit never blocks (a Commit from a done callback, which runs
// on a store goroutine, would deadlock on a full channel).
type commitQueue struct {
	mu     sync.Mutex
	reqs   []request
	closed bool
	wake   chan struct{}
}

func (q *commitQueue) init() { q.wake = make(chan struct{}, 1) }

// push appends r; false if the queue is closed.
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

// close stops push; requests already queued are still taken.
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

// take waits for a request or for wake (another goroutine's signal) and
// moves up to max pending requests into group. ok is false once the queue
// is closed and empty; an empty group with ok means "woken, look around".
func (q *commitQueue) take(group []request, max int, wake <-chan struct{}) (_ []request, ok bool) {
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
			return group[:0], false
		}
		select {
		case <-q.wake:
		case <-wake:
			return group[:0], true
		}
	}
}
