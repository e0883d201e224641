//go:build unix

package node

import (
	"errors"
	"net"
	"os"
	"reflect"
	"syscall"
	"time"
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
// nbio takes a descriptor only from a net.Conn, which it dups and closes:
// through net.FileConn that costs a dozen system calls (another dup, the
// socket's type and addresses, keep-alive options, registering with Go's
// poller and leaving it), a third of the new process's time to adopt
// 19,000 connections. rawConn hands nbio the descriptor itself; the
// socket keeps every option the old process set. With an nbio whose Conn
// has no type field to set (tcpType not ok), net.FileConn it is.
func connFromFD(fd int, tcp nbioConnType) (*nbio.Conn, error) {
	var c net.Conn
	if tcp.ok {
		if err := syscall.SetNonblock(fd, true); err != nil {
			unix.Close(fd)
			return nil, err
		}
		c = &rawConn{fd: fd}
	} else {
		f := os.NewFile(uintptr(fd), "handover")
		fc, err := net.FileConn(f)
		f.Close()
		if err != nil {
			return nil, err
		}
		c = fc
	}
	syscall.ForkLock.RLock()
	nc, err := nbio.NBConn(c) // dups, and closes c
	if err == nil {
		syscall.CloseOnExec(nc.Hash())
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		c.Close()
		return nil, err
	}
	if tcp.ok {
		// nbio sets the type only for a *net.TCPConn.
		*(*nbio.ConnType)(unsafe.Add(unsafe.Pointer(nc), tcp.off)) = nbio.ConnTypeTCP
	}
	return nc, nil
}

// nbioConnType is where nbio.Conn keeps its type (TCP, UDP, Unix), found
// by name and type when the node starts. TestRawConnAdopts fails for an
// nbio without it.
type nbioConnType struct {
	off uintptr
	ok  bool
}

func findNbioConnType() nbioConnType {
	f, ok := reflect.TypeFor[nbio.Conn]().FieldByName("typ")
	if !ok || f.Type != reflect.TypeFor[nbio.ConnType]() {
		return nbioConnType{}
	}
	return nbioConnType{off: f.Offset, ok: true}
}

// rawConn is a connected TCP descriptor as the least of a net.Conn that
// nbio.NBConn uses: SyscallConn (to dup it) and Close. Its addresses are
// nil: the node keeps a connection's peer itself (see adopt).
type rawConn struct {
	fd     int
	closed bool
}

func (r *rawConn) SyscallConn() (syscall.RawConn, error) { return rawControl(r.fd), nil }
func (r *rawConn) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	return unix.Close(r.fd)
}
func (r *rawConn) Read([]byte) (int, error)         { return 0, errors.ErrUnsupported }
func (r *rawConn) Write([]byte) (int, error)        { return 0, errors.ErrUnsupported }
func (r *rawConn) LocalAddr() net.Addr              { return nil }
func (r *rawConn) RemoteAddr() net.Addr             { return nil }
func (r *rawConn) SetDeadline(time.Time) error      { return errors.ErrUnsupported }
func (r *rawConn) SetReadDeadline(time.Time) error  { return errors.ErrUnsupported }
func (r *rawConn) SetWriteDeadline(time.Time) error { return errors.ErrUnsupported }

type rawControl int

func (fd rawControl) Control(f func(uintptr)) error { f(uintptr(fd)); return nil }
func (rawControl) Read(func(uintptr) bool) error    { return errors.ErrUnsupported }
func (rawControl) Write(func(uintptr) bool) error   { return errors.ErrUnsupported }

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
//
// A gate takes the lowest free descriptor and keeps two (itself and its
// peer), so with no holes below them every gate lands on a descriptor of
// the same parity: with an even number of pollers, half of them would
// never get one. After each gate that lands on a poller already gated, a
// spacer descriptor is held until the gates are all placed, shifting the
// next gate's by one.
func (n *Node) newGates(pollers int) ([]*pollerGate, []*pollerGate, error) {
	var all []*pollerGate
	byPoller := make([]*pollerGate, pollers)
	missing := pollers
	release := make(chan struct{})
	var spacers []int
	defer func() { closeAll(spacers) }()
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
		nc, err := connFromFD(fds[0], nbioConnType{}) // a Unix socket: through net.FileConn
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
		} else if fd, err := unix.FcntlInt(uintptr(g.peer), unix.F_DUPFD_CLOEXEC, 0); err == nil {
			spacers = append(spacers, fd)
		}
	}
	if missing > 0 {
		return all, nil, errors.New("could not place a gate on every poller")
	}
	return all, byPoller, nil
}
