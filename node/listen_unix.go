//go:build unix

package node

import (
	"net"
	"syscall"

	"github.com/lesismal/nbio"
)

// cloexecListener hands nbio connections it has already converted, with
// their descriptors marked close-on-exec. nbio's own conversion dup(2)s the
// socket without FD_CLOEXEC, so every child process the server starts would
// inherit every client connection: the client would not see a close until
// the child exits, and a stale descriptor number left in epoll could close
// an unrelated newer connection. (nbio skips its conversion when Accept
// already returns an *nbio.Conn.)
type cloexecListener struct{ net.Listener }

func (l cloexecListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	// No fork may happen between the dup and the flag.
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	nc, err := nbio.NBConn(c)
	if err != nil {
		c.Close()
		return nil, err
	}
	syscall.CloseOnExec(nc.Hash())
	return nc, nil
}

func wrapListener(ln net.Listener) net.Listener { return cloexecListener{ln} }
