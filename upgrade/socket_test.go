package upgrade

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/parleyhq/parley/upgrade/upgradepb"
)

const ioGuard = 10 * time.Second

func pair(t *testing.T) (*Conn, *Conn) {
	t.Helper()
	a, b, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// socketpairs returns n connected stream socketpairs: [i][0] is sent over,
// [i][1] stays to check that the copy received is the same socket.
func socketpairs(t *testing.T, n int) [][2]int {
	t.Helper()
	ps := make([][2]int, n)
	for i := range ps {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err != nil {
			t.Fatalf("socketpair %d: %v (open-file limit?)", i, err)
		}
		ps[i] = [2]int{fds[0], fds[1]}
		t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	}
	return ps
}

// The kernel takes at most 253 descriptors in one message (SCM_MAX_FD):
// the reason MaxFDs is what it is. Send refuses more before the kernel does.
func TestPerMessageFDLimit(t *testing.T) {
	a, _ := pair(t)
	ps := socketpairs(t, MaxFDs+1)
	fds := make([]int, len(ps))
	for i, p := range ps {
		fds[i] = p[0]
	}
	if _, _, err := a.uc.WriteMsgUnix([]byte{0}, unix.UnixRights(fds[:MaxFDs]...), nil); err != nil {
		t.Fatalf("kernel refused %d descriptors: %v", MaxFDs, err)
	}
	if _, _, err := a.uc.WriteMsgUnix([]byte{0}, unix.UnixRights(fds...), nil); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("kernel took %d descriptors in one message (err %v): MaxFDs can grow", len(fds), err)
	}
	if err := a.Send(&upgradepb.Message{}, fds); err == nil {
		t.Error("Send took more than MaxFDs descriptors")
	}
}

// Thousands of descriptors go over in batches, each with its state; every
// one received is the socket that was sent (what is written through it
// comes out of its peer), and is close-on-exec.
func TestBatches(t *testing.T) {
	const n = 2000
	a, b := pair(t)
	ps := socketpairs(t, n)
	done := make(chan error, 1)
	go func() {
		for off := 0; off < n; off += MaxFDs {
			batch := ps[off:min(n, off+MaxFDs)]
			m := &upgradepb.Conns{}
			fds := make([]int, len(batch))
			for i, p := range batch {
				fds[i] = p[0]
				m.Conns = append(m.Conns, &upgradepb.Conn{User: "u", Session: &upgradepb.Session{Next: uint64(off + i)}})
			}
			if err := a.Send(&upgradepb.Message{Kind: &upgradepb.Message_Conns{Conns: m}}, fds); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	b.uc.SetDeadline(time.Now().Add(ioGuard))
	got := 0
	for got < n {
		m, fds, err := b.Recv()
		if err != nil {
			t.Fatalf("after %d: %v", got, err)
		}
		conns := m.GetConns().GetConns()
		if len(conns) != len(fds) || len(fds) == 0 || len(fds) > MaxFDs {
			t.Fatalf("a batch of %d states and %d descriptors", len(conns), len(fds))
		}
		for i, fd := range fds {
			idx := got + i
			if conns[i].GetSession().GetNext() != uint64(idx) {
				t.Fatalf("state %d says %d", idx, conns[i].GetSession().GetNext())
			}
			if flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC == 0 {
				t.Errorf("descriptor %d received without close-on-exec", idx)
			}
			if idx%97 == 0 { // spot checks: the received copy is the same socket
				msg := []byte{byte(idx), byte(idx >> 8)}
				if _, err := unix.Write(fd, msg); err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, 2)
				if _, err := unix.Read(ps[idx][1], buf); err != nil || !bytes.Equal(buf, msg) {
					t.Fatalf("descriptor %d: read %v, %v through its peer", idx, buf, err)
				}
			}
			unix.Close(fd)
		}
		got += len(fds)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A message longer than a packet goes in several and comes back whole,
// its descriptors with it.
func TestLongMessage(t *testing.T) {
	a, b := pair(t)
	ps := socketpairs(t, 3)
	partial := bytes.Repeat([]byte("0123456789abcdef"), 20000) // 320 KB: 10 packets
	m := &upgradepb.Message{Kind: &upgradepb.Message_Conns{Conns: &upgradepb.Conns{Conns: []*upgradepb.Conn{
		{User: "a", Partial: partial}, {User: "b"}, {User: "c", Unwritten: partial[:100]},
	}}}}
	errc := make(chan error, 1)
	go func() { errc <- a.Send(m, []int{ps[0][0], ps[1][0], ps[2][0]}) }()
	b.uc.SetDeadline(time.Now().Add(ioGuard))
	got, fds, err := b.Recv()
	if err != nil {
		t.Fatal(err)
	}
	defer closeFDs(fds)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	cs := got.GetConns().GetConns()
	if len(fds) != 3 || len(cs) != 3 || !bytes.Equal(cs[0].Partial, partial) || cs[2].User != "c" || len(cs[2].Unwritten) != 100 {
		t.Fatalf("got %d descriptors, %d states", len(fds), len(cs))
	}
}

// A peer that goes away ends Recv with an error, not a hang.
func TestPeerGone(t *testing.T) {
	a, b := pair(t)
	a.Close()
	b.uc.SetDeadline(time.Now().Add(ioGuard))
	if _, _, err := b.Recv(); err == nil {
		t.Fatal("Recv from a closed peer succeeded")
	}
}

// The handover socket in the data directory takes only the expected
// process, and is private to its owner.
func TestListenAccept(t *testing.T) {
	dir := t.TempDir()
	// A stale socket from a crash is replaced.
	os.WriteFile(dir+"/"+SocketName, nil, 0o600)
	ln, err := Listen(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if fi, err := os.Stat(ln.Path()); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v (%v), want 0600", fi.Mode(), err)
	}

	// Someone else's connection is refused: Accept waits on for the
	// expected process until its context ends.
	c, err := Dial(ln.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := ln.Accept(ctx, os.Getpid()+1); err == nil {
		t.Fatal("accepted a connection from another process")
	}
	c.uc.SetDeadline(time.Now().Add(ioGuard))
	if _, _, err := c.Recv(); err == nil {
		t.Error("the refused connection stayed open")
	}

	// The expected one is taken, and messages flow.
	c2, err := Dial(ln.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	srv, err := ln.Accept(context.Background(), os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if err := c2.Send(&upgradepb.Message{Kind: &upgradepb.Message_Ready{Ready: &upgradepb.Ready{}}}, nil); err != nil {
		t.Fatal(err)
	}
	srv.uc.SetDeadline(time.Now().Add(ioGuard))
	if m, _, err := srv.Recv(); err != nil || m.GetReady() == nil {
		t.Fatalf("got %v, %v", m, err)
	}
	ln.Close()
	if _, err := os.Stat(ln.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file left after Close: %v", err)
	}
}

// A listening TCP socket sent over stays one socket: a client dialling it
// is accepted through the received copy after the original is closed.
func TestListenerGoesOver(t *testing.T) {
	a, b := pair(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fd := listenerFD(t, ln)
	if err := a.Send(&upgradepb.Message{Kind: &upgradepb.Message_Listeners{Listeners: &upgradepb.Listeners{Names: []string{"native"}}}}, []int{fd}); err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	b.uc.SetDeadline(time.Now().Add(ioGuard))
	_, fds, err := b.Recv()
	if err != nil || len(fds) != 1 {
		t.Fatalf("%d descriptors, %v", len(fds), err)
	}
	f := os.NewFile(uintptr(fds[0]), "native")
	ln2, err := net.FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	go func() {
		if c, err := ln2.Accept(); err == nil {
			io.WriteString(c, "hello")
			c.Close()
		}
	}()
	c, err := net.DialTimeout("tcp", addr, ioGuard)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(ioGuard))
	got, _ := io.ReadAll(c)
	if string(got) != "hello" {
		t.Errorf("read %q through the received listener", got)
	}
}

func listenerFD(t *testing.T, ln net.Listener) int {
	t.Helper()
	rc, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	rc.Control(func(f uintptr) { fd = int(f) })
	return fd
}

// A new process that dies at start is seen to exit, with its last lines.
func TestSpawnReportsLastLines(t *testing.T) {
	dir := t.TempDir()
	var out, errw bytes.Buffer
	outF, errF := pipeTo(t, &out), pipeTo(t, &errw)
	p, err := Spawn("/bin/sh", []string{"-c", `exec 1>&2; for i in $(seq 1 30); do echo "line $i"; done; echo "fatal: broken build" >&2; exit 3`}, os.Environ(), dir+"/x.sock", outF, errF)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Exited():
	case <-time.After(ioGuard):
		t.Fatal("process did not exit")
	}
	if p.Err() == nil {
		t.Error("exit status 3 reported as success")
	}
	lines := p.LastLines()
	if len(lines) != tailLines || !strings.Contains(strings.Join(lines, "\n"), "fatal: broken build") || lines[0] == "line 1" {
		t.Errorf("last lines = %q", lines)
	}
}

// pipeTo returns a file whose writes land in buf.
func pipeTo(t *testing.T, buf *bytes.Buffer) *os.File {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { io.Copy(buf, r); close(done) }()
	t.Cleanup(func() { w.Close(); <-done; r.Close() })
	return w
}
