//go:build unix

package node

import (
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/lesismal/nbio"
	"golang.org/x/sys/unix"
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

// A live upgrade parks every poller with a gate connection on it. Gates
// take descriptors two at a time (the gate and its peer), so in a process
// with no holes below them they all landed on one parity, and with an
// even number of pollers the upgrade failed ("could not place a gate on
// every poller"), as it did in CI once. Three rounds, the gates of each
// kept open as a parked event loop keeps them; each round's gates must
// each wake its own poller. (The wake-ups also keep e.Stop from racing
// the pollers' start: nbio's loop clears its shutdown flag as it starts,
// so a Stop right after Start can hang.)
func TestGatesReachEveryPoller(t *testing.T) {
	const pollers = 4
	woke := make(chan *nbio.Conn, pollers)
	e := nbio.NewEngine(nbio.Config{NPoller: pollers})
	e.OnData(func(c *nbio.Conn, _ []byte) { woke <- c })
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	defer e.Stop() // closes the gates (the peers close after it)
	n := &Node{engine: e}
	for round := range 3 {
		all, byPoller, err := n.newGates(pollers)
		for _, g := range all {
			t.Cleanup(func() { unix.Close(g.peer) })
		}
		if err != nil {
			t.Fatalf("round %d: %v (%d gates made)", round, err, len(all))
		}
		for i, g := range byPoller {
			if g == nil || g.nc.Hash()%pollers != i {
				t.Fatalf("round %d: poller %d has no gate", round, i)
			}
			if _, err := unix.Write(g.peer, []byte{1}); err != nil {
				t.Fatal(err)
			}
			if c := <-woke; c != g.nc {
				t.Fatalf("round %d: poller %d's gate woke another connection", round, i)
			}
		}
	}
}
