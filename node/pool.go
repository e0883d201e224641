package node

import "sync"

// pool is the set of goroutines that sessions borrow while their mailbox has
// work (DESIGN principle 1): a connection with nothing to do is only a
// struct, never a parked goroutine. The run queue grows as needed instead of
// being a fixed channel, because posting to it happens on the event loop and
// in the store's commit callback, which must never block.
type pool struct {
	n *Node // the node whose sessions run here
	// scratch is the workers' scratch for sessions run outside the pool
	// (runHere), one per goroutine running one at a time.
	scratch sync.Pool
	mu      sync.Mutex
	cond    sync.Cond
	queue   []queued
	head    int
	closed  bool
	wg      sync.WaitGroup
}

func newPool(n *Node, workers int) *pool {
	p := &pool{n: n}
	p.scratch.New = func() any { return &worker{n: n} }
	p.cond.L = &p.mu
	p.wg.Add(workers)
	for i := 0; i < workers; i++ {
		go p.work()
	}
	return p
}

// maxKeptQueue is the most room the run queue keeps once it has drained.
const maxKeptQueue = 1024

// queued is a session waiting for a worker, and since when (unix
// nanoseconds, for the loop lag): kept here rather than in every conn,
// since only waiting sessions need it.
type queued struct {
	c  *conn
	at int64
}

func (p *pool) push(c *conn, at int64) {
	p.mu.Lock()
	p.queue = append(p.queue, queued{c, at})
	p.mu.Unlock()
	p.cond.Signal()
}

// backlog is the number of sessions waiting for a goroutine.
func (p *pool) backlog() int {
	p.mu.Lock()
	n := len(p.queue) - p.head
	p.mu.Unlock()
	return n
}

func (p *pool) pop() queued {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.head == len(p.queue) {
		if p.closed {
			return queued{}
		}
		p.cond.Wait()
	}
	q := p.queue[p.head]
	p.queue[p.head] = queued{}
	p.head++
	if p.head == len(p.queue) {
		p.head = 0
		if cap(p.queue) > maxKeptQueue {
			p.queue = nil // a burst's room (a login storm) is not kept for ever
		} else {
			p.queue = p.queue[:0]
		}
	}
	return q
}

func (p *pool) work() {
	defer p.wg.Done()
	w := worker{n: p.n}
	for q := p.pop(); q.c != nil; q = p.pop() {
		q.c.run(&w, q.at, maxRounds)
	}
}

// close lets the workers finish what is queued, then stops them.
func (p *pool) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.cond.Broadcast()
	p.wg.Wait()
}

// worker is one pool goroutine's scratch space, reused across sessions so
// that encoding and sealing outgoing frames allocates nothing per message.
type worker struct {
	n   *Node
	out []byte
}
