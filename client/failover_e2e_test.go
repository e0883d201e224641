package client_test

import (
	"net"
	"testing"
)

// closedAddr is a loopback address where nothing listens: a dial there is
// refused.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// A client given several addresses logs in through one that answers,
// whichever it tries first.
func TestE2EDialMovesPastRefusedAddr(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	key := newKey(t)
	tn.register(t, alice, key)
	cfg := tn.config(t, alice, key)
	cfg.Addr, cfg.Addrs = closedAddr(t), []string{tn.n.NativeAddr()}
	// The first address tried is random: a few dials start from each
	// (all of them must log in either way).
	for range 4 {
		c := dial(t, cfg)
		if err := c.Ping(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
}

// A client whose node goes away reconnects through another of its
// addresses: here two proxies to one node, the one in use closed.
func TestE2EReconnectMovesToNextAddr(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	aKey, bKey := newKey(t), newKey(t)
	tn.register(t, alice, aKey)
	tn.register(t, bob, bKey)
	p1, p2 := newProxy(t, tn.n.NativeAddr()), newProxy(t, tn.n.NativeAddr())
	cfg := tn.config(t, alice, aKey)
	cfg.Addr, cfg.Addrs, cfg.Reconnect = p1.addr(), []string{p2.addr()}, true
	a := dial(t, cfg)

	used, other := p1, p2
	if p2.active() > 0 {
		used, other = p2, p1
	}
	used.ln.Close() // refuses from now on
	used.cut()
	if _, err := a.Send(testCtx(t), bob, []byte("after the node went away")); err != nil {
		t.Fatal(err)
	}
	if other.active() == 0 {
		t.Fatalf("sent, but not through %s, the address left", other.addr())
	}
}
