package client_test

// End-to-end tests: the SDK against a real node (real TCP on loopback, a
// real Pebble directory), registering through the HTTP API.

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parleyhq/parley/client"
	"github.com/parleyhq/parley/internal/nodetest"
	"github.com/parleyhq/parley/node"
	"github.com/parleyhq/parley/noise"
	"github.com/parleyhq/parley/wire"
)

const (
	alice = "+14155550101"
	bob   = "+14155550102"
)

type testNode struct {
	n    *node.Node
	gw   *nodetest.Codes
	log  *slog.Logger
	data string // the node's data directory
}

func startNode(t *testing.T) *testNode {
	t.Helper()
	tn := nodetest.Start(t)
	return &testNode{n: tn.Node, gw: tn.Codes, log: nodetest.Log(t, slog.LevelWarn), data: tn.DataDir}
}

// register binds phone to key through the HTTP API. A second code for one
// number must wait out the per-number rate limit, so a 429 is waited out
// (bounded).
func (tn *testNode) register(t *testing.T, phone string, key noise.Keypair) client.Registration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for {
		rr, err := client.RequestCode(ctx, nil, tn.n.HTTPURL(), phone)
		if err == nil {
			if rr.Phone != phone || rr.ExpiresIn <= 0 {
				t.Fatalf("RequestCode = %+v", rr)
			}
			break
		}
		var ae *client.APIError
		if !errors.As(err, &ae) || ae.Status != http.StatusTooManyRequests {
			t.Fatal(err)
		}
		t.Logf("rate limited: waiting %s", ae.RetryAfter)
		select {
		case <-time.After(max(ae.RetryAfter, 100*time.Millisecond)):
		case <-ctx.Done():
			t.Fatalf("still rate limited: %v", err)
		}
	}
	reg, err := client.Verify(ctx, nil, tn.n.HTTPURL(), phone, tn.gw.Code(t, phone), key.Public)
	if err != nil {
		t.Fatal(err)
	}
	if reg.Phone != phone || string(reg.ServerKey) != string(tn.n.PublicKey()) || reg.NativeAddr != tn.n.NativeAddr() {
		t.Fatalf("Verify = %+v", reg)
	}
	return reg
}

func newKey(t *testing.T) noise.Keypair {
	t.Helper()
	kp, err := noise.GenerateKeypair(nil)
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

func (tn *testNode) config(t *testing.T, phone string, key noise.Keypair) client.Config {
	return client.Config{
		Addr: tn.n.NativeAddr(), ServerKey: tn.n.PublicKey(), Phone: phone, Key: key,
		MinBackoff: time.Millisecond, MaxBackoff: 50 * time.Millisecond,
		Log: tn.log.With("client", phone),
	}
}

// recvN receives n items.
func recvN(t *testing.T, c *client.Client, n int) []client.Incoming {
	t.Helper()
	var out []client.Incoming
	for len(out) < n {
		in, err := c.Recv(testCtx(t))
		if err != nil {
			t.Fatalf("Recv after %d of %d items: %v", len(out), n, err)
		}
		out = append(out, in)
	}
	return out
}

// receiptIDs receives receipts of kind until they have named every id in
// want, and acks them.
func receiptIDs(t *testing.T, c *client.Client, kind wire.Receipt_Kind, by string, want []uint64) {
	t.Helper()
	var got []uint64
	for len(got) < len(want) {
		in := recvN(t, c, 1)[0]
		r := in.Receipt
		if r == nil || r.Kind != kind || r.By != by {
			t.Fatalf("got %+v, want a %s receipt by %s", in, kind, by)
		}
		got = append(got, r.Ids...)
		if err := c.Ack(in.Seq); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("%s receipts name %v, want %v", kind, got, want)
	}
}

// Alice writes to Bob while he is offline; he connects, receives in order,
// acks; Alice gets delivered, then read, receipts naming her ids.
func TestE2EMessageLifecycle(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	aKey, bKey := newKey(t), newKey(t)
	if reg := tn.register(t, alice, aKey); reg.Generation != 1 {
		t.Fatalf("first registration has generation %d", reg.Generation)
	}
	tn.register(t, bob, bKey)
	a := dial(t, tn.config(t, alice, aKey))

	texts := []string{"one", "two", "three"}
	var acks []client.SendAck
	for _, s := range texts {
		ack, err := a.Send(testCtx(t), bob, []byte(s))
		if err != nil {
			t.Fatal(err)
		}
		acks = append(acks, ack)
	}

	b := dial(t, tn.config(t, bob, bKey))
	got := recvN(t, b, len(texts))
	var ids []uint64
	for i, in := range got {
		m := in.Message
		if m == nil || m.From != alice || string(m.Body) != texts[i] || m.Id != acks[i].ID || m.ServerId != acks[i].ServerID {
			t.Fatalf("item %d = %+v, want %q from %s with ack %+v", i, in, texts[i], alice, acks[i])
		}
		if i > 0 && in.Seq <= got[i-1].Seq {
			t.Fatalf("seqs not increasing: %d after %d", in.Seq, got[i-1].Seq)
		}
		ids = append(ids, m.Id)
	}
	if err := b.Ack(got[len(got)-1].Seq); err != nil {
		t.Fatal(err)
	}
	receiptIDs(t, a, wire.Receipt_DELIVERED, bob, ids)

	if err := b.MarkRead(testCtx(t), alice, ids); err != nil {
		t.Fatal(err)
	}
	receiptIDs(t, a, wire.Receipt_READ, bob, ids)
	if err := a.Ping(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}

// A resend with the same id gets the same server id, and Bob receives the
// message once.
func TestE2EResendSameID(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	aKey, bKey := newKey(t), newKey(t)
	tn.register(t, alice, aKey)
	tn.register(t, bob, bKey)
	a := dial(t, tn.config(t, alice, aKey))
	b := dial(t, tn.config(t, bob, bKey))

	id := a.NewID()
	first, err := a.SendWithID(testCtx(t), id, bob, []byte("once"))
	if err != nil {
		t.Fatal(err)
	}
	again, err := a.SendWithID(testCtx(t), id, bob, []byte("once"))
	if err != nil {
		t.Fatal(err)
	}
	if again.ServerID != first.ServerID || again.ID != id {
		t.Fatalf("resend got %+v, first send %+v", again, first)
	}
	if _, err := a.Send(testCtx(t), bob, []byte("marker")); err != nil {
		t.Fatal(err)
	}
	got := recvN(t, b, 2)
	if string(got[0].Message.GetBody()) != "once" || got[0].Message.GetServerId() != first.ServerID {
		t.Fatalf("first item = %+v", got[0])
	}
	if string(got[1].Message.GetBody()) != "marker" {
		t.Fatalf("second item = %+v, want the marker (the resend must not be stored again)", got[1])
	}
}

// proxy forwards TCP connections to a target and can cut them all, which
// is how a test loses a connection without any hook in the SDK.
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
	// refuse closes new connections at once while set.
	refuse atomic.Bool
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	t.Cleanup(func() {
		ln.Close()
		p.cut()
	})
	go p.serve()
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if p.refuse.Load() {
			c.Close()
			continue
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		go func() { io.Copy(s, c); s.Close(); c.Close() }()
		go func() { io.Copy(c, s); s.Close(); c.Close() }()
	}
}

// active is the number of connections proxied now (both sides counted).
func (p *proxy) active() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// cut closes every proxied connection, both sides.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// After a lost connection the client reconnects by itself: an unacked
// delivery comes again and the SDK drops it; a Send made while the
// connection is down goes through once it is back; Bob's ack then covers
// both messages.
func TestE2EReconnect(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	aKey, bKey := newKey(t), newKey(t)
	tn.register(t, alice, aKey)
	tn.register(t, bob, bKey)

	ap, bp := newProxy(t, tn.n.NativeAddr()), newProxy(t, tn.n.NativeAddr())
	acfg, bcfg := tn.config(t, alice, aKey), tn.config(t, bob, bKey)
	acfg.Addr, acfg.Reconnect = ap.addr(), true
	bcfg.Addr, bcfg.Reconnect = bp.addr(), true
	a, b := dial(t, acfg), dial(t, bcfg)

	m1, err := a.Send(testCtx(t), bob, []byte("before the cut"))
	if err != nil {
		t.Fatal(err)
	}
	first := recvN(t, b, 1)[0]
	if first.Message.GetServerId() != m1.ServerID {
		t.Fatalf("got %+v, want server id %d", first, m1.ServerID)
	}

	bp.cut() // bob has not acked: the server will deliver it again
	ap.cut()
	m2, err := a.Send(testCtx(t), bob, []byte("after the cut"))
	if err != nil {
		t.Fatal(err)
	}
	next := recvN(t, b, 1)[0]
	if next.Message.GetServerId() != m2.ServerID {
		t.Fatalf("after reconnecting Recv returned %+v, want the new message (server id %d), not the redelivery", next, m2.ServerID)
	}
	if next.Seq <= first.Seq {
		t.Fatalf("seq %d after %d", next.Seq, first.Seq)
	}
	if err := b.Ack(next.Seq); err != nil {
		t.Fatal(err)
	}
	receiptIDs(t, a, wire.Receipt_DELIVERED, bob, []uint64{m1.ID, m2.ID})

	// Both came back with the ticket of their first login, not a full
	// handshake.
	if got := metric(t, tn.n.AdminURL(), `parley_resumptions_total{result="resumed"}`); got < 2 {
		t.Errorf("%v resumed logins after two reconnects, want 2", got)
	}
}

// An item the application acked, whose ack was lost with the connection,
// comes again after the reconnect: the client drops it (the application
// has it) and acks it again, or the server would keep it unacked for ever
// in a quiet conversation, and its sender would never get the receipt.
func TestE2EAckLostWithTheConnectionIsSentAgain(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	aKey, bKey := newKey(t), newKey(t)
	tn.register(t, alice, aKey)
	tn.register(t, bob, bKey)
	bp := newProxy(t, tn.n.NativeAddr())
	bcfg := tn.config(t, bob, bKey)
	bcfg.Addr, bcfg.Reconnect = bp.addr(), true
	a, b := dial(t, tn.config(t, alice, aKey)), dial(t, bcfg)

	m, err := a.Send(testCtx(t), bob, []byte("once"))
	if err != nil {
		t.Fatal(err)
	}
	in := recvN(t, b, 1)[0]
	bp.refuse.Store(true) // no new connection until the ack is made
	bp.cut()              // the ack below goes out on a dead connection, or none
	if err := b.Ack(in.Seq); err != nil {
		t.Fatal(err)
	}
	bp.refuse.Store(false)
	// The server delivers it again on the new connection; only the
	// client's ack of the dropped redelivery makes the receipt.
	receiptIDs(t, a, wire.Receipt_DELIVERED, bob, []uint64{m.ID})
}

// metric reads one sample from the node's /metrics.
func metric(t *testing.T, adminURL, series string) float64 {
	t.Helper()
	resp, err := http.Get(adminURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("no %s in /metrics", series)
	return 0
}

// Registering Bob's number on a new device closes his live client with
// REGISTERED_ELSEWHERE (no reconnect), and his old key can no longer log in.
func TestE2EReRegistration(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	oldKey, newerKey := newKey(t), newKey(t)
	tn.register(t, bob, oldKey)
	cfg := tn.config(t, bob, oldKey)
	cfg.Reconnect = true
	b := dial(t, cfg)

	if reg := tn.register(t, bob, newerKey); reg.Generation != 2 {
		t.Fatalf("re-registration has generation %d, want 2", reg.Generation)
	}
	_, err := b.Recv(testCtx(t))
	var ce *client.CloseError
	if !errors.As(err, &ce) || ce.Code != wire.Error_REGISTERED_ELSEWHERE {
		t.Fatalf("old client's Recv err = %v, want CloseError REGISTERED_ELSEWHERE", err)
	}
	if _, err := b.Send(testCtx(t), alice, []byte("x")); !errors.As(err, &ce) {
		t.Fatalf("old client's Send err = %v, want the CloseError", err)
	}

	_, err = client.Dial(testCtx(t), cfg)
	var le *client.LoginError
	if !errors.As(err, &le) || le.Code != wire.Error_LOGIN_FAILED {
		t.Fatalf("Dial with the old key: err = %v, want LoginError LOGIN_FAILED", err)
	}
	nb := dial(t, tn.config(t, bob, newerKey))
	if err := nb.Ping(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}

// A wrong pinned server key fails the handshake with ErrHandshake.
func TestE2EWrongServerKey(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	key := newKey(t)
	tn.register(t, alice, key)
	cfg := tn.config(t, alice, key)
	cfg.ServerKey = newKey(t).Public
	_, err := client.Dial(testCtx(t), cfg)
	if !errors.Is(err, client.ErrHandshake) {
		t.Fatalf("err = %v, want ErrHandshake", err)
	}
	if _, err := client.Dial(testCtx(t), tn.config(t, "+14155550109", key)); err == nil {
		t.Fatal("an unregistered number logged in")
	} else if le := (*client.LoginError)(nil); !errors.As(err, &le) {
		t.Fatalf("unregistered number: err = %v, want *LoginError", err)
	}
}
