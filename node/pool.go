package node

import "sync"

// pool is the set of goroutines that sessions borrow while their mailbox has
// work (DESIGN principle 1): a connection with nothing to do is only a
// struct, never a parked goroutine. The run queue grows as needed instead of
// being a fixed channel, because posting to it happens on the event loop and
// in the store's commit callback, which must never block.
type pool struct {
	mu     sync.Mutex
	cond   sync.Cond
	queue  []*conn
	head   int
	closed bool
	wg     sync.WaitGroup
}

func newPool(workers int) *pool {
	p := &pool{}
	p.cond.L = &p.mu
	p.wg.Add(workers)
	for i := 0; i < workers; i++ {
		go p.work()
	}
	return p
}

func (p *pool) push(c *conn) {
	p.mu.Lock()
	p.queue = append(p.queue, c)
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

func (p *pool) pop() *conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.head == len(p.queue) {
		if p.closed {
			return nil
		}
		p.cond.Wait()
	}
	c := p.queue[p.head]
	p.queue[p.head] = nil
	p.head++
	if p.head == len(p.queue) {
		p.queue, p.head = p.queue[:0], 0
	}
	return c
}

func (p *pool) work() {
	defer p.wg.Done()
	var w worker
	for c := p.pop(); c != nil; c = p.pop() {
		c.run(&w)
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
	out []byte
}
