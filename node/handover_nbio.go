//go:build unix

package node

import (
	"errors"
	"net"
	"os"
	"reflect"
	"syscall"
	"unsafe"

	"github.com/lesismal/nbio"
	"golang.org/x/sys/unix"
)

// nbioWriteQueue reads the bytes nbio holds for a connection and has not
// yet written (its writeList): a live upgrade hands them over, since the
// old process never writes on the connection again. nbio has no API for
// them, so they are read through field offsets found by name and type when
// the node starts; a version of nbio whose Conn lacks them is detected
// (ok false), and then a connection with bytes pending cannot be handed
// over. TestNbioWriteQueueFound fails for such a version.
type nbioWriteQueue struct {
	list, buf, off, fd uintptr // offsets: Conn.writeList, toWrite.buf, .offset, .fd
	ok                 bool
}

func findNbioWriteQueue() nbioWriteQueue {
	wl, ok := reflect.TypeFor[nbio.Conn]().FieldByName("writeList")
	if !ok || wl.Type.Kind() != reflect.Slice || wl.Type.Elem().Kind() != reflect.Pointer || wl.Type.Elem().Elem().Kind() != reflect.Struct {
		return nbioWriteQueue{}
	}
	tw := wl.Type.Elem().Elem()
	b, okB := tw.FieldByName("buf")
	o, okO := tw.FieldByName("offset")
	f, okF := tw.FieldByName("fd")
	if !okB || !okO || !okF || b.Type != reflect.TypeFor[*[]byte]() || o.Type != reflect.TypeFor[int64]() || f.Type != reflect.TypeFor[int]() {
		return nbioWriteQueue{}
	}
	return nbioWriteQueue{list: wl.Offset, buf: b.Offset, off: o.Offset, fd: f.Offset, ok: true}
}

var errWriteQueue = errors.New("bytes wait to be written, and this nbio's write queue cannot be read")

// pending returns a copy of the bytes nc holds unwritten. The poller that
// would flush them must be parked.
func (q nbioWriteQueue) pending(nc *nbio.Conn) ([]byte, error) {
	nc.Lock()
	defer nc.Unlock()
	if !q.ok {
		return nil, nil // cannot tell; see Export, which checks ok first
	}
	list := *(*[]unsafe.Pointer)(unsafe.Add(unsafe.Pointer(nc), q.list))
	var out []byte
	for _, tw := range list {
		if tw == nil {
			continue
		}
		if *(*int)(unsafe.Add(tw, q.fd)) != 0 {
			return nil, errors.New("a file is being sent on the connection")
		}
		buf := *(**[]byte)(unsafe.Add(tw, q.buf))
		off := *(*int64)(unsafe.Add(tw, q.off))
		if buf != nil && off < int64(len(*buf)) {
			out = append(out, (*buf)[off:]...)
		}
	}
	return out, nil
}

// connFromFD makes an nbio Conn of a connection's descriptor received in
// a handover (the descriptor is consumed), close-on-exec like adopt's.
func connFromFD(fd int) (*nbio.Conn, error) {
	f := os.NewFile(uintptr(fd), "handover")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	syscall.ForkLock.RLock()
	nc, err := nbio.NBConn(c) // dups, and closes c
	if err == nil {
		syscall.CloseOnExec(nc.Hash())
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		c.Close()
	}
	return nc, err
}

// pollerGate is a connection of the node's own, one on each poller of the
// event loop: a byte written to its peer makes the poller run its OnData,
// which parks the poller until the handover ends (or gives back). A parked
// poller reads nothing and flushes nothing, so the connections it serves
// stand still at a frame boundary.
type pollerGate struct {
	nc      *nbio.Conn
	peer    int
	parked  chan struct{} // closed once the poller is parked
	release chan struct{} // closed to let it go
	once    bool          // the poller's: parked once
}

// onData runs on the gate's poller.
func (g *pollerGate) onData() {
	if g.once {
		return
	}
	g.once = true
	close(g.parked)
	<-g.release
}

// newGates adds gates to the event loop until every one of its pollers
// has one (nbio assigns a connection to poller fd % pollers); the extras
// are gates too, left unused.
func (n *Node) newGates(pollers int) ([]*pollerGate, []*pollerGate, error) {
	var all []*pollerGate
	byPoller := make([]*pollerGate, pollers)
	missing := pollers
	release := make(chan struct{})
	for try := 0; missing > 0 && try < 64*pollers+64; try++ {
		syscall.ForkLock.RLock()
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err == nil {
			unix.CloseOnExec(fds[0])
			unix.CloseOnExec(fds[1])
		}
		syscall.ForkLock.RUnlock()
		if err != nil {
			return all, nil, err
		}
		nc, err := connFromFD(fds[0])
		if err != nil {
			unix.Close(fds[1])
			return all, nil, err
		}
		g := &pollerGate{nc: nc, peer: fds[1], parked: make(chan struct{}), release: release}
		nc.SetSession(g)
		if _, err := n.engine.AddConn(nc); err != nil {
			unix.Close(fds[1])
			return all, nil, err
		}
		all = append(all, g)
		if i := nc.Hash() % pollers; byPoller[i] == nil {
			byPoller[i] = g
			missing--
		}
	}
	if missing > 0 {
		return all, nil, errors.New("could not place a gate on every poller")
	}
	return all, byPoller, nil
}
