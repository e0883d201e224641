//go:build unix

package node

import (
	"net"
	"testing"

	"github.com/lesismal/nbio"
)

func TestAdoptedConnKeepsNoAddresses(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lim := DefaultLimits()
	n := &Node{nativeLn: ln, addrs: findNbioAddrs(), admission: newAdmission(&lim)}
	if !n.addrs.ok {
		t.Fatal("nbio.Conn has no lAddr and rAddr net.Addr fields any more: update nbioAddrs for this nbio version")
	}
	cc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	want := sc.RemoteAddr().String()
	got, err := n.adopt(sc)
	if err != nil {
		t.Fatal(err)
	}
	nc := got.(*nbio.Conn)
	defer nc.Close()
	c, ok := nc.Session().(*conn)
	if !ok || c.nc != nc {
		t.Fatalf("adopted connection has session %#v, want its conn", nc.Session())
	}
	if nc.RemoteAddr() != net.Addr(&c.peer) {
		t.Errorf("nbio keeps remote address %T, want the conn's own", nc.RemoteAddr())
	}
	if nc.RemoteAddr().String() != want || c.id() != want {
		t.Errorf("remote address %s (id %s), want %s", nc.RemoteAddr(), c.id(), want)
	}
	if nc.LocalAddr() != ln.Addr() {
		t.Errorf("nbio keeps local address %v (%p), want the listener's shared one", nc.LocalAddr(), nc.LocalAddr())
	}
}
