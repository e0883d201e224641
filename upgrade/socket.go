// Package upgrade hands a running Parley server over to a new process: its
// listening sockets, its established connections (file descriptors, passed
// with SCM_RIGHTS) and each connection's state, as the versioned protobuf
// messages of proto/upgrade.proto, over a Unix socket in the data directory.
//
// This package is the mechanism: the socket and its framing, starting the
// new process and watching it. What is handed over, and when, is the
// node's business (node/handover.go).
package upgrade

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/parleyhq/parley/upgrade/upgradepb"
)

// Protocol is the handover protocol's version (see proto/upgrade.proto).
const Protocol = 1

// MaxFDs is the most file descriptors one message may carry: the kernel
// refuses more than SCM_MAX_FD (253) in one sendmsg, so connections go over
// in batches of at most this many.
const MaxFDs = 253

// maxPacket is the most bytes of one packet on the socket. A message longer
// than this (a batch with large partial frames, say) is sent in several
// packets. It stays well under the socket's default send buffer (about
// 208 KiB), which bounds a packet on a SOCK_SEQPACKET socket.
const maxPacket = 32 << 10

// Each packet starts with one byte of flags.
const flagMore = 1 // another packet of the same message follows

// Conn is one end of the handover socket: a SOCK_SEQPACKET Unix socket, so
// packets keep their boundaries and descriptors stay with their packet.
// A Conn is used by one goroutine at a time in each direction.
type Conn struct {
	uc  *net.UnixConn
	buf []byte
	oob []byte
}

// NewConn wraps a connected unixpacket socket.
func NewConn(uc *net.UnixConn) *Conn {
	return &Conn{
		uc:  uc,
		buf: make([]byte, maxPacket+1),
		oob: make([]byte, unix.CmsgSpace(MaxFDs*4)),
	}
}

// Close closes the socket.
func (c *Conn) Close() error { return c.uc.Close() }

// UnixConn is the underlying socket (for deadlines and credentials).
func (c *Conn) UnixConn() *net.UnixConn { return c.uc }

// Send writes m with fds beside it. The descriptors stay open in the
// sender: the receiver gets its own copies.
func (c *Conn) Send(m *upgradepb.Message, fds []int) error {
	if len(fds) > MaxFDs {
		return fmt.Errorf("%d file descriptors in one message, over the %d the kernel takes", len(fds), MaxFDs)
	}
	b, err := proto.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode handover message: %w", err)
	}
	pkt := make([]byte, 0, min(len(b), maxPacket)+1)
	for first := true; first || len(b) > 0; first = false {
		n := min(len(b), maxPacket)
		flags := byte(0)
		if n < len(b) {
			flags = flagMore
		}
		pkt = append(append(pkt[:0], flags), b[:n]...)
		b = b[n:]
		var oob []byte
		if first && len(fds) > 0 {
			oob = unix.UnixRights(fds...)
		}
		if _, _, err := c.uc.WriteMsgUnix(pkt, oob, nil); err != nil {
			return fmt.Errorf("send handover message: %w", err)
		}
	}
	return nil
}

// Recv reads one message and the descriptors that came with it, which are
// the caller's to close. The descriptors are close-on-exec.
func (c *Conn) Recv() (*upgradepb.Message, []int, error) {
	var (
		msg []byte
		fds []int
	)
	fail := func(err error) (*upgradepb.Message, []int, error) {
		closeFDs(fds)
		return nil, nil, err
	}
	for {
		n, oobn, flags, _, err := c.uc.ReadMsgUnix(c.buf, c.oob)
		if err != nil {
			return fail(fmt.Errorf("read handover message: %w", err))
		}
		if oobn > 0 {
			got, err := parseRights(c.oob[:oobn])
			fds = append(fds, got...)
			if err != nil {
				return fail(err)
			}
		}
		if flags&unix.MSG_CTRUNC != 0 {
			return fail(errors.New("handover message: descriptors were cut off (is the open-file limit too low?)"))
		}
		if flags&unix.MSG_TRUNC != 0 || n > maxPacket+1 {
			return fail(errors.New("handover message: packet longer than the protocol allows"))
		}
		if n == 0 {
			return fail(fmt.Errorf("read handover message: %w", errEOF))
		}
		msg = append(msg, c.buf[1:n]...)
		if c.buf[0]&flagMore == 0 {
			break
		}
	}
	m := new(upgradepb.Message)
	if err := proto.Unmarshal(msg, m); err != nil {
		return fail(fmt.Errorf("decode handover message: %w", err))
	}
	return m, fds, nil
}

// errEOF is a peer gone: a packet socket reads zero bytes at its end.
var errEOF = errors.New("the other process closed the handover socket")

func parseRights(oob []byte) ([]int, error) {
	cmsgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("handover message: control data: %w", err)
	}
	var fds []int
	for i := range cmsgs {
		got, err := unix.ParseUnixRights(&cmsgs[i])
		if err != nil {
			return fds, fmt.Errorf("handover message: descriptors: %w", err)
		}
		for _, fd := range got {
			// Go's ReadMsgUnix asks for close-on-exec on Linux; make sure
			// elsewhere, so that no child inherits a client's socket.
			syscall.CloseOnExec(fd)
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// Pair returns two connected Conns (for tests, and for an in-process
// handover).
func Pair() (*Conn, *Conn, error) {
	fds, err := socketpair(unix.SOCK_SEQPACKET)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	a, err := fileConn(fds[0], "upgrade-a")
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, err
	}
	b, err := fileConn(fds[1], "upgrade-b")
	if err != nil {
		a.Close()
		return nil, nil, err
	}
	return a, b, nil
}

func fileConn(fd int, name string) (*Conn, error) {
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	return NewConn(c.(*net.UnixConn)), nil
}

// socketpair makes a close-on-exec Unix socket pair of type typ.
func socketpair(typ int) ([2]int, error) {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	fds, err := unix.Socketpair(unix.AF_UNIX, typ, 0)
	if err == nil {
		unix.CloseOnExec(fds[0])
		unix.CloseOnExec(fds[1])
	}
	return fds, err
}
