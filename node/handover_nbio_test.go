//go:build unix

package node

import (
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/lesismal/nbio"
)

// A live upgrade reads nbio's write queue through its fields (see
// nbioWriteQueue): an nbio without them fails here, not at an upgrade.
func TestNbioWriteQueueFound(t *testing.T) {
	if !findNbioWriteQueue().ok {
		t.Fatal("nbio.Conn's writeList (or toWrite's buf, offset, fd) is gone or changed: update nbioWriteQueue")
	}
}

// A TCP descriptor taken as the handover takes one (rawConn, no
// net.FileConn) is an nbio TCP connection that reads and writes.
func TestRawConnAdopts(t *testing.T) {
	ct := findNbioConnType()
	if !ct.ok {
		t.Fatal("nbio.Conn has no typ field of type nbio.ConnType any more: update findNbioConnType for this nbio version")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cl, fd := tcpPairFD(t, ln)
	got := make(chan []byte, 1)
	e := nbio.NewEngine(nbio.Config{NPoller: 1})
	e.OnData(func(c *nbio.Conn, data []byte) {
		got <- append([]byte(nil), data...)
		c.Write([]byte("pong"))
	})
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	defer e.Stop()
	nc, err := connFromFD(fd, ct)
	if err != nil {
		t.Fatal(err)
	}
	if !nc.IsTCP() {
		t.Fatal("the adopted connection is not TCP to nbio")
	}
	if _, err := e.AddConn(nc); err != nil {
		t.Fatal(err)
	}
	cl.Write([]byte("ping"))
	if b := <-got; string(b) != "ping" {
		t.Fatalf("read %q", b)
	}
	cl.SetReadDeadline(time.Now().Add(10 * time.Second)) // a bound
	buf := make([]byte, 4)
	if _, err := io.ReadFull(cl, buf); err != nil || string(buf) != "pong" {
		t.Fatalf("read back %q, %v", buf, err)
	}
}

// tcpPairFD connects a client to ln and returns it with the server side's
// descriptor, as a handover delivers one: the caller's to close (or to
// hand to the node). The client is closed when the test ends.
func tcpPairFD(t *testing.T, ln net.Listener) (net.Conn, int) {
	t.Helper()
	cl, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	sv, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	f, err := sv.(*net.TCPConn).File()
	sv.Close()
	if err != nil {
		t.Fatal(err)
	}
	// A descriptor of its own: f's would be closed with f.
	fd, err := syscall.Dup(int(f.Fd()))
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	return cl, fd
}
