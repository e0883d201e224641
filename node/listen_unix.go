//go:build unix

package node

import (
	"net"
	"syscall"

	"github.com/lesismal/nbio"
)

// adopt converts an accepted connection for nbio itself, marking the
// descriptor close-on-exec. nbio's own conversion dup(2)s the socket
// without FD_CLOEXEC, so every child process the server starts would
// inherit every client connection: the client would not see a close until
// the child exits, and a stale descriptor number left in epoll could close
// an unrelated newer connection. (nbio skips its conversion when Accept
// already returns an *nbio.Conn.)
func adopt(c net.Conn) (net.Conn, error) {
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
