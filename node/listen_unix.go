//go:build unix

package node

import (
	"net"
	"reflect"
	"syscall"
	"unsafe"

	"github.com/lesismal/nbio"
)

// adopt admits an accepted connection (see admission), converts it for
// nbio itself and gives it its conn. A connection refused for a limit is
// closed here (errRefused), before nbio has it: it costs no dup, no
// nbio.Conn and no epoll registration, and nbio's accept loop never adds
// a descriptor that its OnOpen has closed (which it would log as an error
// each time, and whose number may already be another file's).
//
// It marks the descriptor close-on-exec: nbio's own conversion dup(2)s the
// socket without FD_CLOEXEC, so every child process the server starts would
// inherit every client connection: the client would not see a close until
// the child exits, and a stale descriptor number left in epoll could close
// an unrelated newer connection. (nbio skips its conversion when Accept
// already returns an *nbio.Conn.)
func (n *Node) adopt(c net.Conn) (net.Conn, error) {
	peer := makePeerAddr(c.RemoteAddr())
	if !n.admitAccepted(c, peer.AddrPort().Addr()) {
		return nil, errRefused
	}
	// No fork may happen between the dup and the flag.
	syscall.ForkLock.RLock()
	nc, err := nbio.NBConn(c)
	if err == nil {
		syscall.CloseOnExec(nc.Hash())
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		c.Close()
		n.admission.closed(peer.AddrPort().Addr(), true)
		return nil, err
	}
	cn := &conn{nc: nc, peer: peer}
	nc.SetSession(cn)
	n.addrs.trim(nc, n.nativeLn.Addr(), &cn.peer)
	return nc, nil
}

// nbioAddrs drops the two addresses nbio keeps in every Conn.
//
// nbio copies the local and remote net.Addr of the net.Conn it converts:
// two *net.TCPAddr, each pointing into a syscall.Sockaddr of its own, about
// 160 bytes in four allocations on every connection, for addresses that
// nbio itself never uses. The node keeps the remote address in 18 bytes in
// its conn, which becomes the Conn's remote address, and every Conn shares
// the listener's address as its local one.
//
// nbio has no setter for them, so they are written through their offsets,
// found by name and type when the node starts. A version of nbio whose Conn
// lacks them is detected there (ok false) and its Conns are left as they
// are; TestAdoptedConnKeepsNoAddresses fails for it, so an upgrade does not
// lose the saving unnoticed.
type nbioAddrs struct {
	local, remote uintptr // field offsets in nbio.Conn
	ok            bool
}

func findNbioAddrs() nbioAddrs {
	t := reflect.TypeFor[nbio.Conn]()
	addr := reflect.TypeFor[net.Addr]()
	l, okL := t.FieldByName("lAddr")
	r, okR := t.FieldByName("rAddr")
	if !okL || !okR || l.Type != addr || r.Type != addr {
		return nbioAddrs{}
	}
	return nbioAddrs{local: l.Offset, remote: r.Offset, ok: true}
}

// trim points nc's addresses at local and at remote: when the node adopts
// nc, before the event loop has it, and in its close callback, the last
// time the node touches it.
func (a nbioAddrs) trim(nc *nbio.Conn, local, remote net.Addr) {
	if !a.ok {
		return
	}
	base := unsafe.Pointer(nc)
	*(*net.Addr)(unsafe.Add(base, a.local)) = local
	*(*net.Addr)(unsafe.Add(base, a.remote)) = remote
}
