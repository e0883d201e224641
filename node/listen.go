package node

import (
	"net"
	"sync"
)

// loopListener is the native listener as handed to nbio. It records that
// nbio's acceptor goroutine has started: that goroutine clears nbio's
// shutdown flag when it begins, so an Engine.Stop that lands before it
// runs is forgotten and the acceptor spins on the closed listener forever
// (and Stop waits for it). Close waits for started before stopping.
type loopListener struct {
	net.Listener
	once    sync.Once
	started chan struct{}
}

func newLoopListener(ln net.Listener) *loopListener {
	return &loopListener{Listener: ln, started: make(chan struct{})}
}

func (l *loopListener) Accept() (net.Conn, error) {
	l.once.Do(func() { close(l.started) })
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return adopt(c)
}
