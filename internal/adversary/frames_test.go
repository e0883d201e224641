package adversary

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/parleyhq/parley/node"
	"github.com/parleyhq/parley/wire"
)

// attacker registers a number and logs it in over a raw connection from
// ip: a paying customer who misbehaves.
func (e *env) attacker(t *testing.T, ip string, d *net.Dialer) *rawConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), liveness)
	defer cancel()
	phone, kp, err := e.register(ctx, t)
	if err != nil {
		t.Fatal(err)
	}
	if d == nil {
		d = from(ip)
	}
	nc, err := d.Dial("tcp", e.NativeAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	c, err := rawLogin(nc, kp, e.PublicKey(), phone)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Oversized and unfinished frames, before and after login: a length over
// the protocol's maximum closes the connection (with a BAD_FRAME Close
// once logged in) and is counted; a message that stops in the middle is
// cut off at the handshake or frame timeout; users are served meanwhile.
func TestOversizedFrames(t *testing.T) {
	e := start(t, node.Limits{HandshakeTimeout: 2 * time.Second, FrameTimeout: time.Second})
	badFrameBefore := e.metric(t, handshakeFailures("bad_frame"))
	badInputBefore := e.metric(t, "parley_bad_input_total")
	frameTimeoutsBefore := e.metric(t, limitHits("frame_timeout"))
	overMax := []byte{0xff, 0xff, 0xff} // a length prefix of 16 MiB - 1

	// Before login: an oversized length, and a message left unfinished.
	pre, err := from("127.0.0.2").Dial("tcp", e.NativeAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer pre.Close()
	pre.Write(overMax)
	stalled, err := from("127.0.0.2").Dial("tcp", e.NativeAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	stalled.Write(append(wire.AppendHeader(nil, 1000), make([]byte, 100)...))

	// After login: an oversized length; a maximal message that is
	// garbage; a message left unfinished.
	huge := e.attacker(t, "127.0.0.3", nil)
	if _, err := huge.nc.Write(overMax); err != nil {
		t.Fatal(err)
	}
	garbage := e.attacker(t, "127.0.0.3", nil)
	if _, err := garbage.nc.Write(append(wire.AppendHeader(nil, wire.MaxMessage), bytes.Repeat([]byte{0xa5}, wire.MaxMessage)...)); err != nil {
		t.Fatal(err)
	}
	half := e.attacker(t, "127.0.0.3", nil)
	if _, err := half.nc.Write(append(wire.AppendHeader(nil, 60000), make([]byte, 100)...)); err != nil {
		t.Fatal(err)
	}

	e.checkServes(t) // meanwhile

	for name, c := range map[string]*rawConn{"oversized length": huge, "garbage message": garbage} {
		cl, err := c.awaitClose()
		if err != nil || cl.Code != wire.Error_BAD_FRAME {
			t.Errorf("%s after login: %v %v, want a BAD_FRAME Close", name, cl, err)
		}
	}
	for name, c := range map[string]net.Conn{"oversized length before login": pre, "unfinished first message": stalled, "unfinished message after login": half.nc} {
		if !closedSoon(c) {
			t.Errorf("%s: not closed", name)
		}
	}
	if got := e.metric(t, handshakeFailures("bad_frame")) - badFrameBefore; got != 1 {
		t.Errorf("bad_frame handshake failures: %v, want 1", got)
	}
	if got := e.metric(t, "parley_bad_input_total") - badInputBefore; got < 3 {
		t.Errorf("parley_bad_input_total rose by %v, want at least 3", got)
	}
	if got := e.metric(t, limitHits("frame_timeout")) - frameTimeoutsBefore; got != 1 {
		t.Errorf("frame_timeout hits: %v, want 1 (the unfinished message after login)", got)
	}
}

// A client that sends pings and never reads the pongs: the server holds a
// bounded amount for it (its mailbox, its write buffer), then cuts it off
// with the reason logged and counted, long before it could have sent
// without bound; others are served meanwhile.
func TestPingerThatNeverReads(t *testing.T) {
	const most = 32 << 20 // what the attacker may write before the cut-off
	e := start(t, node.Limits{MaxWriteBuffer: 64 << 10})
	// A tiny receive window, so that the pongs back up into the server
	// rather than into this process's socket buffer.
	d := from("127.0.0.2")
	d.Control = func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		return errors.Join(err, serr)
	}
	c := e.attacker(t, "", d)
	cut := func() float64 {
		return e.metric(t, limitHits("max_write_buffer")) + e.metric(t, limitHits("max_mailbox"))
	}
	before := cut()

	done := make(chan error, 1)
	var written int
	go func() {
		var batch []byte
		id := uint64(1)
		for written < most {
			batch = batch[:0]
			for range 1000 {
				batch = append(batch, c.sealed(pingFrame(id))...)
				id++
			}
			c.nc.SetWriteDeadline(time.Now().Add(ioGuard))
			n, err := c.nc.Write(batch)
			written += n
			if err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	e.checkServes(t) // meanwhile
	err := <-done
	var ne net.Error
	switch {
	case err == nil:
		t.Fatalf("the server took %d bytes of pings from a client that never reads", written)
	case errors.As(err, &ne) && ne.Timeout():
		t.Fatalf("the server stopped reading but never cut the client off: %v", err)
	}
	if got := cut() - before; got < 1 {
		t.Errorf("the cut-off was not counted (max_write_buffer, max_mailbox)")
	}
	t.Logf("cut off after %d bytes of pings: %v", written, err)
	c.nc.SetReadDeadline(time.Now().Add(ioGuard))
	io.Copy(io.Discard, c.nc)
}

// Connections that declare a large first message and send only part of
// it: before login the server holds each partial message until the
// handshake timeout, so the first message's size bounds what a host may
// make it hold (MaxHandshakes of them). A declared length over any real
// first message is refused at once, as a bad frame, not held.
func TestLargeFirstMessage(t *testing.T) {
	e := start(t, node.Limits{})
	before := e.metric(t, handshakeFailures("bad_frame"))
	var conns []net.Conn
	for range 8 {
		c, err := from("127.0.0.2").Dial("tcp", e.NativeAddr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write(append(wire.AppendHeader(nil, 60000), make([]byte, 1000)...))
		conns = append(conns, c)
	}
	e.checkServes(t) // meanwhile
	for i, ok := range allClosedSoon(conns) {
		if !ok {
			t.Errorf("connection %d holding part of a 60000-byte first message was not closed", i+1)
		}
	}
	if got := e.metric(t, handshakeFailures("bad_frame")) - before; got != float64(len(conns)) {
		t.Errorf("bad_frame handshake failures: %v, want %d (held until the handshake timeout instead?)", got, len(conns))
	}
}
