package client_test

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/parleyhq/parley/internal/nodetest"
	"github.com/parleyhq/parley/node"
)

// A node pacing a reconnect storm (node.Limits.AcceptRate) resets the
// connections past its bucket unread. A client refused this way waits and
// tries again by itself, at Dial (with Reconnect) and after a lost
// connection, for as long as it takes: a reset is not the close after a
// wrong server key, which Dial reports after a few tries.
func TestE2EClientWaitsOutAcceptRate(t *testing.T) {
	t.Parallel()
	nt := nodetest.Start(t, func(cfg *node.Config) {
		cfg.Limits.AcceptRate, cfg.Limits.AcceptBurst = 1, 1 // a token a second
	})
	tn := &testNode{n: nt.Node, gw: nt.Codes, log: nodetest.Log(t, 0), data: nt.DataDir}
	aKey, bKey := newKey(t), newKey(t)
	tn.register(t, alice, aKey)
	tn.register(t, bob, bKey)
	hits := func() float64 { return metric(t, tn.n.AdminURL(), `parley_limit_hits_total{limit="accept_rate"}`) }
	b := dial(t, tn.config(t, bob, bKey)) // takes the bucket's one token

	// Alice finds the bucket empty for up to a second: many rounds of Dial
	// are refused (it used to give up after five).
	cfg := tn.config(t, alice, aKey)
	cfg.Reconnect = true
	cfg.MinBackoff, cfg.MaxBackoff = 10*time.Millisecond, 100*time.Millisecond
	a := dial(t, cfg)
	refused := hits()
	if refused < 1 {
		t.Fatal("alice was admitted at once: the test saw no refusal")
	}
	a.Close()

	// Through a proxy that passes resets on, she logs in again (waiting
	// for a token), loses her connection and reconnects into the same
	// empty bucket: refused again, she is back within the second, and
	// with her resumption ticket, which a reset says nothing against.
	p := newResetProxy(t, tn.n.NativeAddr())
	cfg.Addr = p.addr()
	a = dial(t, cfg)
	resumed := metric(t, tn.n.AdminURL(), `parley_resumptions_total{result="resumed"}`)
	p.cut()
	if _, err := a.Send(testCtx(t), bob, []byte("after the storm")); err != nil {
		t.Fatal(err)
	}
	if got := hits(); got <= refused {
		t.Errorf("alice's reconnection was never refused (accept_rate hits %v, %v before)", got, refused)
	}
	if got := metric(t, tn.n.AdminURL(), `parley_resumptions_total{result="resumed"}`); got <= resumed {
		t.Errorf("alice reconnected without her resumption ticket (resumed %v, %v before)", got, resumed)
	}
	if in := recvN(t, b, 1); string(in[0].Message.GetBody()) != "after the storm" {
		t.Errorf("bob got %v", in[0])
	}
}

// resetProxy forwards TCP connections to target, and ends both sides of
// one with a reset whenever either ends: so a node's reset reaches the
// client as a reset, where a plain proxy would close the client's side
// with a FIN. (Only a reset could be passed on: the kernel reports it to
// the first read or write, and the other direction then sees an end.)
type resetProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
}

func newResetProxy(t *testing.T, target string) *resetProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &resetProxy{ln: ln, target: target}
	t.Cleanup(func() {
		ln.Close()
		p.cut()
	})
	go p.serve()
	return p
}

func (p *resetProxy) addr() string { return p.ln.Addr().String() }

func (p *resetProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			reset(c)
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			io.Copy(dst, src)
			reset(c)
			reset(s)
		}
		go pipe(s, c)
		go pipe(c, s)
	}
}

func reset(c net.Conn) {
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
}

// cut closes every proxied connection, both sides.
func (p *resetProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}
