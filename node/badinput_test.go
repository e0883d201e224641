package node_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/parleyhq/parley/account"
	"github.com/parleyhq/parley/node"
	"github.com/parleyhq/parley/noise"
	"github.com/parleyhq/parley/wire"
)

// ioGuard bounds every blocking read and write in these tests. It is a
// failure guard, never a timing assertion: a healthy server answers in
// milliseconds.
const ioGuard = 15 * time.Second

// slowPeerTimeout is TestSlowPeers' handshake and frame timeout: long
// enough for an honest login on a loaded machine, well within ioGuard.
const slowPeerTimeout = 2 * time.Second

// ---------------------------------------------------------------------------
// Registration over the HTTP API.

// codeGateway is an in-test SMS gateway: it keeps the last code per phone.
type codeGateway struct {
	mu    sync.Mutex
	codes map[string]string
}

func (g *codeGateway) Send(_ context.Context, phone, code string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.codes == nil {
		g.codes = make(map[string]string)
	}
	g.codes[phone] = code
	return nil
}

func (g *codeGateway) code(phone string) (string, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	c, ok := g.codes[phone]
	if !ok {
		return "", fmt.Errorf("no code was sent to %s", phone)
	}
	return c, nil
}

// apiError is a non-2xx answer of the registration API.
type apiError struct {
	Status     int
	Code       string
	Message    string
	RetryAfter time.Duration
}

func (e *apiError) Error() string {
	return fmt.Sprintf("HTTP %d %s: %s", e.Status, e.Code, e.Message)
}

func postJSON(url string, req, resp any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	hc := &http.Client{Timeout: ioGuard}
	r, err := hc.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer r.Body.Close()
	b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return err
	}
	if r.StatusCode/100 != 2 {
		var eb struct {
			Error struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		_ = json.Unmarshal(b, &eb)
		e := &apiError{Status: r.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
		if s, err := strconv.Atoi(r.Header.Get("Retry-After")); err == nil {
			e.RetryAfter = time.Duration(s) * time.Second
		}
		if e.Message == "" {
			e.Message = strings.TrimSpace(string(b))
		}
		return e
	}
	if resp == nil {
		return nil
	}
	if err := json.Unmarshal(b, resp); err != nil {
		return fmt.Errorf("decode %s answer %q: %w", url, b, err)
	}
	return nil
}

type verifyAnswer struct {
	Phone      string `json:"phone"`
	Generation uint64 `json:"generation"`
	ServerKey  string `json:"server_key"`
	NativeAddr string `json:"native_addr"`
}

func requestCode(httpURL, phone string) error {
	return postJSON(httpURL+"/v1/register/request", map[string]string{"phone": phone}, nil)
}

func verifyCode(httpURL, phone, code string, pub []byte) (verifyAnswer, error) {
	var a verifyAnswer
	err := postJSON(httpURL+"/v1/register/verify", map[string]string{
		"phone": phone, "code": code, "key": base64.StdEncoding.EncodeToString(pub),
	}, &a)
	return a, err
}

func newKeypair(t testing.TB) noise.Keypair {
	t.Helper()
	kp, err := noise.GenerateKeypair(nil)
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

// register registers phone with a new device key through the HTTP API and
// returns the key. codeOf finds the code the server sent.
func register(t testing.TB, httpURL, phone string, codeOf func(string) (string, error)) (noise.Keypair, verifyAnswer) {
	t.Helper()
	kp := newKeypair(t)
	if err := requestCode(httpURL, phone); err != nil {
		t.Fatalf("request a code for %s: %v", phone, err)
	}
	code, err := codeOf(phone)
	if err != nil {
		t.Fatal(err)
	}
	a, err := verifyCode(httpURL, phone, code, kp.Public)
	if err != nil {
		t.Fatalf("verify %s: %v", phone, err)
	}
	if a.Phone != phone {
		t.Fatalf("verify %s answered phone %q", phone, a.Phone)
	}
	return kp, a
}

// ---------------------------------------------------------------------------
// A raw protocol client: enough of the protocol to speak it well or badly.

// writeMsg writes one length-prefixed message.
func writeMsg(nc net.Conn, msg []byte) error {
	out := wire.AppendHeader(make([]byte, 0, wire.HeaderLen+len(msg)), len(msg))
	out = append(out, msg...)
	nc.SetWriteDeadline(time.Now().Add(ioGuard))
	_, err := nc.Write(out)
	return err
}

func loginPayload(phone string, version uint32) []byte {
	b, err := proto.Marshal(&wire.Login{Phone: phone, Version: version, Agent: "parley-node-test"})
	if err != nil {
		panic(err)
	}
	return b
}

// rawConn is a connection after a completed handshake. Writes may come from
// several goroutines; reads from one.
type rawConn struct {
	nc   net.Conn
	wmu  sync.Mutex
	tx   *noise.Cipher
	rx   *noise.Cipher
	rbuf []byte
}

// handshake runs the Noise IK handshake over nc with payload as the login
// and returns the server's LoginResult, whatever it says, with the
// connection (usable only if the result has no error).
func handshake(nc net.Conn, kp noise.Keypair, serverKey, payload []byte) (*rawConn, *wire.LoginResult, error) {
	hs, first, err := noise.NewClient(kp, serverKey, payload)
	if err != nil {
		return nil, nil, err
	}
	if err := writeMsg(nc, first); err != nil {
		return nil, nil, fmt.Errorf("write handshake: %w", err)
	}
	nc.SetReadDeadline(time.Now().Add(ioGuard))
	reply, err := wire.ReadMessage(nc, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", errNoReply, err)
	}
	pl, tx, rx, err := hs.Finish(reply)
	if err != nil {
		return nil, nil, err
	}
	res := new(wire.LoginResult)
	if err := proto.Unmarshal(pl, res); err != nil {
		return nil, nil, fmt.Errorf("decode LoginResult: %w", err)
	}
	return provenConn(nc, tx, rx, res)
}

// provenConn is the connection of a login that the server answered with
// res; if the login succeeded, it sends the proof that starts the session
// (an empty sealed message, see wire's doc), as every client does.
func provenConn(nc net.Conn, tx, rx *noise.Cipher, res *wire.LoginResult) (*rawConn, *wire.LoginResult, error) {
	rc := &rawConn{nc: nc, tx: tx, rx: rx}
	if res.Error == nil {
		if err := rc.writePlain(nil); err != nil {
			return nil, nil, fmt.Errorf("send login proof: %w", err)
		}
	}
	return rc, res, nil
}

// dialLogin connects and logs in; any failure is an error.
func dialLogin(addr string, serverKey []byte, phone string, kp noise.Keypair) (*rawConn, error) {
	nc, err := net.DialTimeout("tcp", addr, ioGuard)
	if err != nil {
		return nil, err
	}
	rc, res, err := handshake(nc, kp, serverKey, loginPayload(phone, 1))
	if err == nil && res.Error != nil {
		err = fmt.Errorf("login refused: %s: %s", res.Error.Code, res.Error.Text)
	}
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("log in as %s: %w", phone, err)
	}
	return rc, nil
}

func (c *rawConn) Close() error { return c.nc.Close() }

// sealed returns plaintext encrypted and length-prefixed; the caller holds
// wmu (the cipher's nonce advances).
func (c *rawConn) sealed(pt []byte) ([]byte, error) {
	ct, err := c.tx.Seal(nil, pt)
	if err != nil {
		return nil, err
	}
	return append(wire.AppendHeader(nil, len(ct)), ct...), nil
}

// writePlain encrypts and writes one transport message carrying pt.
func (c *rawConn) writePlain(pt []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	msg, err := c.sealed(pt)
	if err != nil {
		return err
	}
	c.nc.SetWriteDeadline(time.Now().Add(ioGuard))
	_, err = c.nc.Write(msg)
	return err
}

// writeRaw writes bytes as they are.
func (c *rawConn) writeRaw(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.nc.SetWriteDeadline(time.Now().Add(ioGuard))
	_, err := c.nc.Write(b)
	return err
}

func encodeFrame(f *wire.Frame) []byte {
	b, err := wire.AppendFrame(nil, f)
	if err != nil {
		panic(err)
	}
	return b
}

func (c *rawConn) writeFrame(f *wire.Frame) error { return c.writePlain(encodeFrame(f)) }

func (c *rawConn) send(id uint64, to string, body []byte) error {
	return c.writeFrame(&wire.Frame{Kind: &wire.Frame_Send{Send: &wire.Send{Id: id, To: to, Body: body}}})
}

// resend is send marked as a resend (wire.Send.Resend), so the server looks
// for an earlier copy.
func (c *rawConn) resend(id uint64, to string, body []byte) error {
	return c.writeFrame(&wire.Frame{Kind: &wire.Frame_Send{Send: &wire.Send{Id: id, To: to, Body: body, Resend: true}}})
}

func (c *rawConn) ack(seq uint64) error {
	return c.writeFrame(&wire.Frame{Kind: &wire.Frame_Ack{Ack: &wire.Ack{Seq: seq}}})
}

// readFrame reads, decrypts and decodes one frame, waiting at most d.
func (c *rawConn) readFrame(d time.Duration) (*wire.Frame, error) {
	c.nc.SetReadDeadline(time.Now().Add(d))
	msg, err := wire.ReadMessage(c.nc, c.rbuf)
	if err != nil {
		return nil, err
	}
	c.rbuf = msg[:0]
	pt, err := c.rx.Open(nil, msg)
	if err != nil {
		return nil, err
	}
	f := new(wire.Frame)
	if err := proto.Unmarshal(pt, f); err != nil {
		return nil, fmt.Errorf("decode server frame: %w", err)
	}
	return f, nil
}

// errNoReply: the server closed the connection (or stayed silent) instead
// of answering the handshake.
var errNoReply = errors.New("no handshake reply")

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// ---------------------------------------------------------------------------
// Expectations.

// expectHangup reads nc until the server closes it; with silent set, the
// server must close without writing a byte.
func expectHangup(t *testing.T, nc net.Conn, silent bool) {
	t.Helper()
	nc.SetReadDeadline(time.Now().Add(ioGuard))
	got, err := io.ReadAll(nc)
	if isTimeout(err) {
		t.Fatalf("the server did not close the connection within %v (read %d bytes)", ioGuard, len(got))
	}
	// io.ReadAll turns EOF into nil; a reset is a close too.
	if silent && len(got) > 0 {
		t.Fatalf("the server wrote %d bytes before closing, want none: %q", len(got), got)
	}
}

// expectClose reads frames until a Close, which must carry code, and then
// the end of the stream. Deliveries on the way are ignored.
func expectClose(t *testing.T, c *rawConn, code wire.Error_Code) {
	t.Helper()
	for {
		f, err := c.readFrame(ioGuard)
		if err != nil {
			t.Fatalf("want a Close %s frame, got read error %v", code, err)
		}
		cl := f.GetClose()
		if cl == nil {
			continue
		}
		if cl.Code != code {
			t.Fatalf("Close %s (%q), want %s", cl.Code, cl.Text, code)
		}
		break
	}
	f, err := c.readFrame(ioGuard)
	switch {
	case err == nil:
		t.Fatalf("a frame after Close: %v", f)
	case isTimeout(err):
		t.Fatal("the server sent Close but did not close the connection")
	}
}

// expectClosedMaybeClose waits for the connection to end; frames on the
// way are allowed (a Close the server could still seal, say).
func expectClosedMaybeClose(t *testing.T, c *rawConn) {
	t.Helper()
	for {
		f, err := c.readFrame(ioGuard)
		if err == nil {
			t.Logf("frame before the close: %v", f)
			continue
		}
		if isTimeout(err) {
			t.Fatal("the server did not close the connection")
		}
		return
	}
}

// expectLoginError runs a handshake that must complete with a LoginResult
// carrying code, after which the server closes.
func expectLoginError(t *testing.T, addr string, kp noise.Keypair, serverKey, payload []byte, code wire.Error_Code) {
	t.Helper()
	nc := dialTest(t, addr)
	_, res, err := handshake(nc, kp, serverKey, payload)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	if res.Error.GetCode() != code {
		t.Fatalf("LoginResult error %v, want %s", res.Error, code)
	}
	expectHangup(t, nc, false)
}

func dialTest(t *testing.T, addr string) net.Conn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, ioGuard)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return nc
}

// awaitSendAck reads c's frames until the SendAck for id, acking any
// deliveries (receipts) on the way.
func awaitSendAck(t *testing.T, c *rawConn, id uint64) *wire.SendAck {
	t.Helper()
	for {
		f, err := c.readFrame(ioGuard)
		if err != nil {
			t.Fatalf("waiting for the SendAck of %d: %v", id, err)
		}
		switch k := f.Kind.(type) {
		case *wire.Frame_SendAck:
			if k.SendAck.Id == id {
				return k.SendAck
			}
		case *wire.Frame_Error:
			t.Fatalf("waiting for the SendAck of %d: error %v", id, k.Error)
		case *wire.Frame_Close:
			t.Fatalf("waiting for the SendAck of %d: Close %v", id, k.Close)
		case *wire.Frame_Deliver:
			if err := c.ack(k.Deliver.Seq); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// awaitMessage reads c's frames until the delivery of (from, id), acking
// every delivery.
func awaitMessage(t *testing.T, c *rawConn, from string, id uint64, body []byte) *wire.Message {
	t.Helper()
	for {
		f, err := c.readFrame(ioGuard)
		if err != nil {
			t.Fatalf("waiting for message %d from %s: %v", id, from, err)
		}
		switch k := f.Kind.(type) {
		case *wire.Frame_Close:
			t.Fatalf("waiting for message %d from %s: Close %v", id, from, k.Close)
		case *wire.Frame_Deliver:
			if err := c.ack(k.Deliver.Seq); err != nil {
				t.Fatal(err)
			}
			m := k.Deliver.Item.GetMessage()
			if m != nil && m.From == from && m.Id == id {
				if !bytes.Equal(m.Body, body) {
					t.Fatalf("message %d from %s has body %q, want %q", id, from, m.Body, body)
				}
				return m
			}
		}
	}
}

// awaitPong reads until the Pong for id.
func awaitPong(t *testing.T, c *rawConn, id uint64) {
	t.Helper()
	for {
		f, err := c.readFrame(ioGuard)
		if err != nil {
			t.Fatalf("waiting for Pong %d: %v", id, err)
		}
		if p := f.GetPong(); p != nil {
			if p.Id != id {
				t.Fatalf("Pong %d, want %d", p.Id, id)
			}
			return
		}
		if cl := f.GetClose(); cl != nil {
			t.Fatalf("waiting for Pong %d: Close %v", id, cl)
		}
	}
}

func pingFrame(id uint64) []byte {
	return encodeFrame(&wire.Frame{Kind: &wire.Frame_Ping{Ping: &wire.Ping{Id: id}}})
}

// ---------------------------------------------------------------------------
// The node under test.

// testLogger discards the node's log unless PARLEY_TEST_LOG is set.
func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("PARLEY_TEST_LOG") == "" {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
}

// testNode is an in-process node with registered accounts.
type testNode struct {
	n                *node.Node
	gw               *codeGateway
	keys             map[string]noise.Keypair
	handshakeTimeout time.Duration
}

func startTestNode(t *testing.T, handshakeTimeout time.Duration, phones ...string) *testNode {
	t.Helper()
	gw := &codeGateway{}
	n, err := node.Start(context.Background(), node.Config{
		DataDir: t.TempDir(),
		Listen:  "127.0.0.1:0",
		HTTP:    "127.0.0.1:0",
		Admin:   "127.0.0.1:0",
		SMS:     gw,
		Limits:  node.Limits{HandshakeTimeout: handshakeTimeout, FrameTimeout: handshakeTimeout},
		// Tests register numbers more than once: no gap between requests.
		PerNumber: account.RateLimit{Max: 100, Window: time.Minute},
		Log:       testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("close node: %v", err)
		}
	})
	tn := &testNode{n: n, gw: gw, keys: make(map[string]noise.Keypair), handshakeTimeout: handshakeTimeout}
	if tn.handshakeTimeout <= 0 {
		tn.handshakeTimeout = 10 * time.Second // node.Config's default
	}
	for _, p := range phones {
		kp, a := register(t, n.HTTPURL(), p, gw.code)
		if a.Generation != 1 {
			t.Fatalf("first registration of %s has generation %d", p, a.Generation)
		}
		if a.ServerKey != base64.StdEncoding.EncodeToString(n.PublicKey()) || a.NativeAddr != n.NativeAddr() {
			t.Fatalf("verify answered server key %s at %s, want %x at %s", a.ServerKey, a.NativeAddr, n.PublicKey(), n.NativeAddr())
		}
		tn.keys[p] = kp
	}
	return tn
}

// login logs phone in on a new connection. A login that got no reply only
// after the node's handshake timeout had passed is retried (twice at most):
// on a loaded machine the server may legitimately time a slow handshake
// out, and that is not what these tests are about.
func (tn *testNode) login(t *testing.T, phone string) *rawConn {
	t.Helper()
	for attempt := 1; ; attempt++ {
		start := time.Now()
		c, err := dialLogin(tn.n.NativeAddr(), tn.n.PublicKey(), phone, tn.keys[phone])
		if err == nil {
			t.Cleanup(func() { c.Close() })
			return c
		}
		if attempt < 3 && errors.Is(err, errNoReply) && time.Since(start) >= tn.handshakeTimeout {
			t.Logf("%v after %v, past the %v handshake timeout: retrying", err, time.Since(start).Round(time.Millisecond), tn.handshakeTimeout)
			continue
		}
		t.Fatal(err)
	}
}

// waitSessions waits (with a guard) until the node has want sessions.
func (tn *testNode) waitSessions(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(ioGuard)
	for tn.n.SessionCount() != want {
		if time.Now().After(deadline) {
			t.Fatalf("the node has %d sessions, want %d", tn.n.SessionCount(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

const (
	alicePhone   = "+14155550101"
	bobPhone     = "+14155550102"
	carolPhone   = "+14155550103"
	malloryPhone = "+14155550104"
	nobodyPhone  = "+14155550119" // never registered
)

// badInputHarness keeps alice and bob logged in for the whole test, so
// each case can show that the server still serves them.
type badInputHarness struct {
	*testNode
	alice, bob *rawConn
	nextID     uint64
}

// checkServing proves the server still serves well-behaved clients: alice,
// logged in since the start, sends to bob, also logged in since the start,
// and gets her SendAck while bob gets the message; then carol logs in on a
// new connection and does the same.
func (h *badInputHarness) checkServing(t *testing.T) {
	t.Helper()
	h.nextID++
	id := h.nextID
	body := []byte(fmt.Sprintf("still there? %d", id))
	if err := h.alice.send(id, bobPhone, body); err != nil {
		t.Fatalf("alice sends: %v", err)
	}
	ack := awaitSendAck(t, h.alice, id)
	m := awaitMessage(t, h.bob, alicePhone, id, body)
	if m.ServerId != ack.ServerId {
		t.Fatalf("bob got server id %d, alice's SendAck said %d", m.ServerId, ack.ServerId)
	}

	carol := h.login(t, carolPhone)
	defer carol.Close()
	h.nextID++
	id = h.nextID
	body = []byte(fmt.Sprintf("me too %d", id))
	if err := carol.send(id, bobPhone, body); err != nil {
		t.Fatalf("carol sends: %v", err)
	}
	awaitSendAck(t, carol, id)
	awaitMessage(t, h.bob, carolPhone, id, body)
}

func newBadInputHarness(t *testing.T, handshakeTimeout time.Duration) *badInputHarness {
	tn := startTestNode(t, handshakeTimeout, alicePhone, bobPhone, carolPhone, malloryPhone)
	h := &badInputHarness{testNode: tn}
	h.alice = tn.login(t, alicePhone)
	h.bob = tn.login(t, bobPhone)
	h.checkServing(t)
	return h
}

type badInputCase struct {
	name string
	run  func(t *testing.T)
}

// runCases runs each case as a subtest, then shows that the server still
// serves alice, bob and a fresh login, and that the misbehaving
// connections left no session behind.
func (h *badInputHarness) runCases(t *testing.T, cases []badInputCase) {
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(t)
			h.checkServing(t)
			// Only alice and bob remain logged in (carol's check
			// connection is closed too).
			h.waitSessions(t, 2)
		})
	}
}

// TestBadInput feeds the native listener one kind of bad input per case and
// checks the server's answer to it, and that everyone else is still served
// afterwards.
func TestBadInput(t *testing.T) {
	t.Parallel()
	h := newBadInputHarness(t, 0)
	tn := h.testNode
	addr, skey := tn.n.NativeAddr(), tn.n.PublicKey()
	mkey := tn.keys[malloryPhone]

	// mallory logs in properly and then misbehaves.
	mallory := func(t *testing.T) *rawConn { return tn.login(t, malloryPhone) }
	writeFrameBytes := func(t *testing.T, pt []byte) *rawConn {
		c := mallory(t)
		if err := c.writePlain(pt); err != nil {
			t.Fatal(err)
		}
		return c
	}
	frameWithUnknownField := func() []byte {
		b := protowire.AppendTag(nil, 99, protowire.BytesType)
		return protowire.AppendBytes(b, []byte("from a newer protocol"))
	}

	h.runCases(t, []badInputCase{
		// Before the handshake.
		{"http request instead of a handshake", func(t *testing.T) {
			nc := dialTest(t, addr)
			if _, err := nc.Write([]byte("GET / HTTP/1.1\r\nHost: parley\r\n\r\n")); err != nil {
				t.Fatal(err)
			}
			expectHangup(t, nc, true)
		}},
		{"tls client hello instead of a handshake", func(t *testing.T) {
			nc := dialTest(t, addr)
			hello := append([]byte{0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03}, make([]byte, 32)...)
			if _, err := nc.Write(hello); err != nil {
				t.Fatal(err)
			}
			expectHangup(t, nc, true)
		}},
		{"oversized length prefix before login", func(t *testing.T) {
			nc := dialTest(t, addr)
			if _, err := nc.Write([]byte{0x01, 0x00, 0x00, 'x', 'y'}); err != nil {
				t.Fatal(err)
			}
			expectHangup(t, nc, true)
		}},
		{"empty handshake message", func(t *testing.T) {
			nc := dialTest(t, addr)
			if err := writeMsg(nc, nil); err != nil {
				t.Fatal(err)
			}
			expectHangup(t, nc, true)
		}},
		{"largest possible handshake message of garbage", func(t *testing.T) {
			nc := dialTest(t, addr)
			garbage := bytes.Repeat([]byte{0xa5}, wire.MaxMessage)
			if err := writeMsg(nc, garbage); err != nil {
				t.Fatal(err)
			}
			expectHangup(t, nc, true)
		}},
		{"handshake with the wrong server key", func(t *testing.T) {
			nc := dialTest(t, addr)
			wrong := newKeypair(t).Public
			_, first, err := noise.NewClient(mkey, wrong, loginPayload(malloryPhone, 1))
			if err != nil {
				t.Fatal(err)
			}
			if err := writeMsg(nc, first); err != nil {
				t.Fatal(err)
			}
			expectHangup(t, nc, true) // no reply at all: no login
		}},
		{"device key not registered for the number", func(t *testing.T) {
			expectLoginError(t, addr, newKeypair(t), skey, loginPayload(malloryPhone, 1), wire.Error_LOGIN_FAILED)
		}},
		{"number not registered", func(t *testing.T) {
			expectLoginError(t, addr, mkey, skey, loginPayload(nobodyPhone, 1), wire.Error_LOGIN_FAILED)
		}},
		{"protocol version 2", func(t *testing.T) {
			expectLoginError(t, addr, mkey, skey, loginPayload(malloryPhone, 2), wire.Error_UNSUPPORTED_VERSION)
		}},
		{"no protocol version", func(t *testing.T) {
			expectLoginError(t, addr, mkey, skey, loginPayload(malloryPhone, 0), wire.Error_UNSUPPORTED_VERSION)
		}},
		{"login payload that does not decode", func(t *testing.T) {
			expectLoginError(t, addr, mkey, skey, []byte{0x0a, 0xff, 0x01}, wire.Error_BAD_FRAME)
		}},
		{"handshake split into single bytes", func(t *testing.T) {
			// Not bad input, but the slowest legal way to send a handshake:
			// the server must reassemble it.
			nc := dialTest(t, addr)
			hs, first, err := noise.NewClient(mkey, skey, loginPayload(malloryPhone, 1))
			if err != nil {
				t.Fatal(err)
			}
			msg := append(wire.AppendHeader(nil, len(first)), first...)
			for i := range msg {
				if _, err := nc.Write(msg[i : i+1]); err != nil {
					t.Fatal(err)
				}
			}
			nc.SetReadDeadline(time.Now().Add(ioGuard))
			reply, err := wire.ReadMessage(nc, nil)
			if err != nil {
				t.Fatal(err)
			}
			pl, tx, rx, err := hs.Finish(reply)
			if err != nil {
				t.Fatal(err)
			}
			var res wire.LoginResult
			if err := proto.Unmarshal(pl, &res); err != nil || res.Error != nil {
				t.Fatalf("login: %v %v", err, res.Error)
			}
			c := &rawConn{nc: nc, tx: tx, rx: rx}
			if err := c.writePlain(pingFrame(5)); err != nil {
				t.Fatal(err)
			}
			awaitPong(t, c, 5)
			c.Close()
		}},

		// After login.
		{"oversized length prefix after login", func(t *testing.T) {
			c := mallory(t)
			if err := c.writeRaw([]byte{0x01, 0x00, 0x00}); err != nil {
				t.Fatal(err)
			}
			expectClose(t, c, wire.Error_BAD_FRAME)
		}},
		{"good frame then oversized prefix in one write", func(t *testing.T) {
			c := mallory(t)
			c.wmu.Lock()
			msg, err := c.sealed(pingFrame(7))
			c.wmu.Unlock()
			if err != nil {
				t.Fatal(err)
			}
			if err := c.writeRaw(append(msg, 0xff, 0xff, 0xff)); err != nil {
				t.Fatal(err)
			}
			awaitPong(t, c, 7) // what came before the garbage is served
			expectClose(t, c, wire.Error_BAD_FRAME)
		}},
		{"transport message that does not decrypt", func(t *testing.T) {
			c := mallory(t)
			c.wmu.Lock()
			msg, err := c.sealed(pingFrame(8))
			c.wmu.Unlock()
			if err != nil {
				t.Fatal(err)
			}
			msg[wire.HeaderLen+1] ^= 0x40
			if err := c.writeRaw(msg); err != nil {
				t.Fatal(err)
			}
			expectClosedMaybeClose(t, c)
		}},
		{"replayed transport message", func(t *testing.T) {
			c := mallory(t)
			c.wmu.Lock()
			msg, err := c.sealed(pingFrame(9))
			c.wmu.Unlock()
			if err != nil {
				t.Fatal(err)
			}
			if err := c.writeRaw(msg); err != nil {
				t.Fatal(err)
			}
			awaitPong(t, c, 9)
			if err := c.writeRaw(msg); err != nil { // same nonce again
				t.Fatal(err)
			}
			expectClosedMaybeClose(t, c)
		}},
		{"empty frame", func(t *testing.T) {
			expectClose(t, writeFrameBytes(t, nil), wire.Error_BAD_FRAME)
		}},
		{"frame with only an unknown field", func(t *testing.T) {
			expectClose(t, writeFrameBytes(t, frameWithUnknownField()), wire.Error_BAD_FRAME)
		}},
		{"frame that is not protobuf", func(t *testing.T) {
			expectClose(t, writeFrameBytes(t, []byte{0xff, 0xff, 0xff, 0xff}), wire.Error_BAD_FRAME)
		}},
		{"send with a body over MaxBody", func(t *testing.T) {
			f := encodeFrame(&wire.Frame{Kind: &wire.Frame_Send{Send: &wire.Send{Id: 1, To: bobPhone, Body: make([]byte, wire.MaxBody+1)}}})
			expectClose(t, writeFrameBytes(t, f), wire.Error_BAD_FRAME)
		}},
		{"send to an over-long number", func(t *testing.T) {
			f := encodeFrame(&wire.Frame{Kind: &wire.Frame_Send{Send: &wire.Send{Id: 1, To: "+1415555010200000", Body: []byte("x")}}})
			expectClose(t, writeFrameBytes(t, f), wire.Error_BAD_FRAME)
		}},
		{"read receipt with no ids", func(t *testing.T) {
			f := encodeFrame(&wire.Frame{Kind: &wire.Frame_Read{Read: &wire.Read{Id: 1, To: bobPhone}}})
			expectClose(t, writeFrameBytes(t, f), wire.Error_BAD_FRAME)
		}},
		{"client sends a Deliver", func(t *testing.T) {
			f := encodeFrame(&wire.Frame{Kind: &wire.Frame_Deliver{Deliver: &wire.Deliver{Seq: 1, Item: &wire.Item{Kind: &wire.Item_Message{Message: &wire.Message{From: alicePhone, Id: 1, Body: []byte("forged")}}}}}})
			expectClose(t, writeFrameBytes(t, f), wire.Error_BAD_FRAME)
		}},
		{"client sends a Close", func(t *testing.T) {
			f := encodeFrame(&wire.Frame{Kind: &wire.Frame_Close{Close: &wire.Close{Code: wire.Error_SHUTTING_DOWN}}})
			expectClose(t, writeFrameBytes(t, f), wire.Error_BAD_FRAME)
		}},
		{"ack of a seq never delivered", func(t *testing.T) {
			f := encodeFrame(&wire.Frame{Kind: &wire.Frame_Ack{Ack: &wire.Ack{Seq: 1_000_000}}})
			expectClose(t, writeFrameBytes(t, f), wire.Error_BAD_REQUEST)
		}},
		{"send to an unregistered number", func(t *testing.T) {
			// A refused request, not bad input: the connection stays up.
			c := mallory(t)
			if err := c.send(77, nobodyPhone, []byte("hello?")); err != nil {
				t.Fatal(err)
			}
			for {
				f, err := c.readFrame(ioGuard)
				if err != nil {
					t.Fatal(err)
				}
				if e := f.GetError(); e != nil {
					if e.Id != 77 || e.Code != wire.Error_UNKNOWN_RECIPIENT {
						t.Fatalf("error %v, want UNKNOWN_RECIPIENT for id 77", e)
					}
					break
				}
				if f.GetSendAck() != nil || f.GetClose() != nil {
					t.Fatalf("want an UNKNOWN_RECIPIENT error, got %v", f)
				}
			}
			if err := c.writePlain(pingFrame(78)); err != nil {
				t.Fatal(err)
			}
			awaitPong(t, c, 78)
			c.Close()
		}},

		{"half a frame after login then a stall", func(t *testing.T) {
			c := mallory(t)
			c.wmu.Lock()
			msg, err := c.sealed(pingFrame(10))
			c.wmu.Unlock()
			if err != nil {
				t.Fatal(err)
			}
			if err := c.writeRaw(msg[:len(msg)/2]); err != nil {
				t.Fatal(err)
			}
			h.checkServing(t) // while mallory's frame hangs half-sent
			if err := c.writeRaw(msg[len(msg)/2:]); err != nil {
				t.Fatal(err)
			}
			awaitPong(t, c, 10)
			c.Close()
		}},
	})
}

// TestSlowPeers: connections that never finish their handshake are closed
// by the handshake timeout, and do not hold anyone else up meanwhile.
//
// The timeouts (handshake and frame) are 2 s, not the shortest that would
// do: they also bound the honest logins of checkServing, which share the
// machine with the CPU-heavy tests running in parallel (300 ms timed them
// out under -race). Each case costs one timeout.
func TestSlowPeers(t *testing.T) {
	t.Parallel()
	h := newBadInputHarness(t, slowPeerTimeout)
	addr, skey, mkey := h.n.NativeAddr(), h.n.PublicKey(), h.keys[malloryPhone]
	h.runCases(t, []badInputCase{
		{"connection that sends nothing", func(t *testing.T) {
			nc := dialTest(t, addr)
			expectHangup(t, nc, true) // closed by the handshake timeout
		}},
		{"half a handshake then a stall", func(t *testing.T) {
			nc := dialTest(t, addr)
			_, first, err := noise.NewClient(mkey, skey, loginPayload(malloryPhone, 1))
			if err != nil {
				t.Fatal(err)
			}
			msg := append(wire.AppendHeader(nil, len(first)), first...)
			if _, err := nc.Write(msg[:len(msg)/2]); err != nil {
				t.Fatal(err)
			}
			h.checkServing(t) // while the stalled handshake is pending
			expectHangup(t, nc, true)
		}},
		{"logged in, half a frame then a stall", func(t *testing.T) {
			c, err := dialLogin(addr, skey, malloryPhone, mkey)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			msg, err := c.sealed(pingFrame(7))
			if err != nil {
				t.Fatal(err)
			}
			if err := c.writeRaw(msg[:len(msg)-3]); err != nil {
				t.Fatal(err)
			}
			h.checkServing(t)           // while the stalled frame is pending
			expectHangup(t, c.nc, true) // closed by the frame timeout
		}},
		{"fifty silent connections", func(t *testing.T) {
			ncs := make([]net.Conn, 50)
			for i := range ncs {
				ncs[i] = dialTest(t, addr)
			}
			h.checkServing(t) // while they are all pending
			for _, nc := range ncs {
				expectHangup(t, nc, true)
			}
		}},
	})
}

// TestReRegistration: bob is logged in when his number is registered on a
// new device. His live connection is closed with REGISTERED_ELSEWHERE, his
// old key can no longer log in, and the new one can.
func TestReRegistration(t *testing.T) {
	t.Parallel()
	tn := startTestNode(t, 0, alicePhone, bobPhone)
	addr, skey := tn.n.NativeAddr(), tn.n.PublicKey()
	alice := tn.login(t, alicePhone)
	bob := tn.login(t, bobPhone)
	if err := alice.send(1, bobPhone, []byte("before")); err != nil {
		t.Fatal(err)
	}
	awaitSendAck(t, alice, 1)
	awaitMessage(t, bob, alicePhone, 1, []byte("before"))

	if err := requestCode(tn.n.HTTPURL(), bobPhone); err != nil {
		t.Fatalf("request a second code for bob: %v", err)
	}
	code, err := tn.gw.code(bobPhone)
	if err != nil {
		t.Fatal(err)
	}
	newKey := newKeypair(t)
	a, err := verifyCode(tn.n.HTTPURL(), bobPhone, code, newKey.Public)
	if err != nil {
		t.Fatal(err)
	}
	if a.Generation != 2 {
		t.Fatalf("re-registration has generation %d, want 2", a.Generation)
	}

	expectClose(t, bob, wire.Error_REGISTERED_ELSEWHERE)
	expectLoginError(t, addr, tn.keys[bobPhone], skey, loginPayload(bobPhone, 1), wire.Error_LOGIN_FAILED)

	// The new device logs in and is served; alice was never disturbed.
	tn.keys[bobPhone] = newKey
	bob2 := tn.login(t, bobPhone)
	if err := alice.send(2, bobPhone, []byte("after")); err != nil {
		t.Fatal(err)
	}
	awaitSendAck(t, alice, 2)
	awaitMessage(t, bob2, alicePhone, 2, []byte("after"))
}

// TestChildProcessDoesNotHoldConnections: a process that embeds a node may
// start child processes (os/exec: a test harness, a helper, a live
// upgrade). The node's connections must not leak into them: when the
// server closes a connection the client must see the end of the stream,
// and a hangup on a connection the server already closed must not reach
// whichever connection now has its descriptor number.
//
// Not parallel: its child process would inherit the connections of other
// tests' nodes as long as the bug it pins is there.
func TestChildProcessDoesNotHoldConnections(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("pins Linux (epoll) behaviour")
	}
	sleepBin, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary to run as a child process")
	}
	others := []string{"+14155550105", "+14155550106", "+14155550107", "+14155550108", "+14155550109"}
	tn := startTestNode(t, 0, append([]string{malloryPhone}, others...)...)
	a := tn.login(t, malloryPhone)

	// A child started now inherits every descriptor not marked
	// close-on-exec.
	child := exec.Command(sleepBin, "60")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		child.Process.Kill()
		child.Wait()
	})

	// Bad input: the server sends Close and closes a's connection.
	if err := a.writePlain(nil); err != nil {
		t.Fatal(err)
	}
	f, err := a.readFrame(ioGuard)
	if err != nil || f.GetClose() == nil {
		t.Fatalf("want a Close frame, got %v, %v", f, err)
	}
	const guard = 5 * time.Second // failure guard: the end of stream follows Close at once
	if _, err := a.readFrame(guard); err == nil || isTimeout(err) {
		t.Errorf("the server sent Close but the client saw no end of stream within %v while a child process ran (read: %v): "+
			"the server's socket was inherited by the child, so closing it sent no FIN", guard, err)
	}

	// New connections may get the descriptor number a had; a's client now
	// hangs up, and with a's socket still alive in the child, the hangup
	// is reported under that number.
	var conns []*rawConn
	for _, p := range others {
		conns = append(conns, tn.login(t, p))
	}
	a.Close()
	for i, c := range conns {
		if err := c.writePlain(pingFrame(uint64(i + 1))); err != nil {
			t.Fatal(err)
		}
		for {
			f, err := c.readFrame(guard)
			if err != nil {
				t.Errorf("%s: connection lost after another client hung up: %v", others[i], err)
				break
			}
			if f.GetPong() != nil {
				break
			}
		}
	}
}
