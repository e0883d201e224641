package client_test

import (
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parleyhq/parley/client"
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

// With Reconnect, Dial keeps trying while every address fails for a
// reason that may pass: here the only address refuses the first three
// connections (as the nodes of a cluster refuse logins for some seconds
// after one of them died), then leads to the node.
func TestE2EDialWithReconnectWaitsOutRefusals(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	key := newKey(t)
	tn.register(t, alice, key)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted atomic.Int32
	go func() {
		for {
			src, err := ln.Accept()
			if err != nil {
				return
			}
			if accepted.Add(1) <= 3 {
				src.Close() // refused: the handshake gets no answer
				continue
			}
			dst, err := net.Dial("tcp", tn.n.NativeAddr())
			if err != nil {
				src.Close()
				continue
			}
			go func() { io.Copy(dst, src); dst.Close() }()
			go func() { io.Copy(src, dst); src.Close() }()
		}
	}()
	cfg := tn.config(t, alice, key)
	cfg.Addr, cfg.Addrs = ln.Addr().String(), nil
	cfg.Reconnect, cfg.MinBackoff, cfg.MaxBackoff = true, 10*time.Millisecond, 50*time.Millisecond
	c := dial(t, cfg)
	defer c.Close()
	if err := c.Ping(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if n := accepted.Load(); n < 4 {
		t.Fatalf("logged in after %d connections, want the fourth", n)
	}
	// Without Reconnect the first refusal is the answer.
	cfg.Reconnect = false
	accepted.Store(0)
	if _, err := client.Dial(testCtx(t), cfg); err == nil {
		t.Fatal("Dial without Reconnect logged in through a refusing address")
	}
}
