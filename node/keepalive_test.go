//go:build linux

package node

import (
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A native listener inherited in a live upgrade is made from a descriptor,
// which carries no keep-alive setting: the connections it accepts get the
// configured keep-alive, not Go's 15 s default.
func TestInheritedListenerKeepsTheKeepAlive(t *testing.T) {
	orig, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	f, err := orig.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	inherited, err := net.FileListener(f) // as upgrade.Join makes it
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer inherited.Close()
	n := &Node{cfg: Config{Inherit: &Inherited{Native: inherited}}}
	n.cfg.Limits.KeepAlive = 7 * time.Minute
	if err := n.listenNative(); err != nil {
		t.Fatal(err)
	}
	cl, err := net.Dial("tcp", inherited.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	c, err := n.nativeLn.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var on, idle int
	var serr error
	rc.Control(func(fd uintptr) {
		if on, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE); serr == nil {
			idle, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		}
	})
	if serr != nil {
		t.Fatal(os.NewSyscallError("getsockopt", serr))
	}
	if on != 1 || idle != int((7*time.Minute).Seconds()) {
		t.Fatalf("accepted connection: keep-alive %d, idle %d s; want on, %d s", on, idle, int((7 * time.Minute).Seconds()))
	}
}
