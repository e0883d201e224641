package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/parleyhq/parley/client"
	"github.com/parleyhq/parley/noise"
	"github.com/parleyhq/parley/wire"
)

// guard bounds every wait in these tests: it is a failure guard, never a
// measurement.
const guard = 10 * time.Second

// fakeServer speaks the server's side of the native protocol with a script
// the test writes, so the SDK's dispatch, resend and dedup rules are tested
// frame by frame without a real server.
type fakeServer struct {
	t     *testing.T
	key   noise.Keypair
	ln    net.Listener
	conns chan *fakeConn
	// refuse, when set, makes the login fail with this error.
	refuse atomic.Pointer[wire.Error]
}

type fakeConn struct {
	t      *testing.T
	nc     net.Conn
	tx, rx *noise.Cipher
	login  *wire.Login
	buf    []byte
}

func newFakeServer(t *testing.T) *fakeServer {
	t.Helper()
	key, err := noise.GenerateKeypair(nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeServer{t: t, key: key, ln: ln, conns: make(chan *fakeConn, 16)}
	t.Cleanup(func() { ln.Close() })
	go s.accept()
	return s
}

func (s *fakeServer) accept() {
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			return
		}
		go s.handshake(nc)
	}
}

func (s *fakeServer) handshake(nc net.Conn) {
	nc.SetDeadline(time.Now().Add(guard))
	first, err := wire.ReadMessage(nc, nil)
	if err != nil {
		nc.Close()
		return
	}
	h, err := noise.Accept(s.key, first)
	if err != nil {
		nc.Close() // what the real server does for a wrong server key
		return
	}
	login := new(wire.Login)
	if err := proto.Unmarshal(h.Payload, login); err != nil {
		nc.Close()
		return
	}
	refuse := s.refuse.Load()
	res, _ := proto.Marshal(&wire.LoginResult{Error: refuse, Window: 8})
	reply, tx, rx, err := h.Server.Reply(res)
	if err != nil {
		nc.Close()
		return
	}
	nc.Write(append(wire.AppendHeader(nil, len(reply)), reply...))
	if refuse != nil {
		nc.Close()
		return
	}
	// As the real server, take the login only once the client proves it
	// holds the new keys: its first transport message, empty.
	proof, err := wire.ReadMessage(nc, nil)
	if err != nil {
		nc.Close()
		return
	}
	if pt, err := rx.Open(nil, proof); err != nil || len(pt) != 0 {
		s.t.Errorf("fake server: the client's first message after login is not an empty proof (%d bytes, %v)", len(pt), err)
		nc.Close()
		return
	}
	nc.SetDeadline(time.Time{})
	s.conns <- &fakeConn{t: s.t, nc: nc, tx: tx, rx: rx, login: login}
}

// next waits for the next logged-in connection.
func (s *fakeServer) next() *fakeConn {
	s.t.Helper()
	select {
	case fc := <-s.conns:
		s.t.Cleanup(func() { fc.nc.Close() })
		return fc
	case <-time.After(guard):
		s.t.Fatal("no client connection")
		return nil
	}
}

func (s *fakeServer) config(t *testing.T) client.Config {
	t.Helper()
	dev, err := noise.GenerateKeypair(nil)
	if err != nil {
		t.Fatal(err)
	}
	return client.Config{
		Addr: s.ln.Addr().String(), ServerKey: s.key.Public, Phone: "+14155550101", Key: dev,
		MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond,
		Log: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

func (fc *fakeConn) recv() *wire.Frame {
	fc.t.Helper()
	fc.nc.SetReadDeadline(time.Now().Add(guard))
	msg, err := wire.ReadMessage(fc.nc, fc.buf)
	if err != nil {
		fc.t.Fatalf("fake server: read: %v", err)
	}
	fc.buf = msg
	pt, err := fc.rx.Open(msg[:0], msg)
	if err != nil {
		fc.t.Fatalf("fake server: %v", err)
	}
	f := new(wire.Frame)
	if err := wire.DecodeFrame(pt, f); err != nil {
		fc.t.Fatalf("fake server: %v", err)
	}
	return f
}

func (fc *fakeConn) send(f *wire.Frame) {
	fc.t.Helper()
	pt, err := proto.Marshal(f)
	if err != nil {
		fc.t.Fatal(err)
	}
	ct, err := fc.tx.Seal(nil, pt)
	if err != nil {
		fc.t.Fatal(err)
	}
	if _, err := fc.nc.Write(append(wire.AppendHeader(nil, len(ct)), ct...)); err != nil {
		fc.t.Fatalf("fake server: write: %v", err)
	}
}

func deliverMsg(seq, serverID uint64, body string) *wire.Frame {
	return &wire.Frame{Kind: &wire.Frame_Deliver{Deliver: &wire.Deliver{Seq: seq, Item: &wire.Item{Kind: &wire.Item_Message{
		Message: &wire.Message{From: "+14155550102", Id: serverID + 1000, ServerId: serverID, Body: []byte(body)},
	}}}}}
}

func sendAck(id, serverID uint64) *wire.Frame {
	return &wire.Frame{Kind: &wire.Frame_SendAck{SendAck: &wire.SendAck{Id: id, ServerId: serverID, Ts: 1}}}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s", p)
	return len(p), nil
}

func dial(t *testing.T, cfg client.Config) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	c, err := client.Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	t.Cleanup(cancel)
	return ctx
}

func TestDialSendsLogin(t *testing.T) {
	s := newFakeServer(t)
	cfg := s.config(t)
	cfg.Agent = "test-agent/9"
	dial(t, cfg)
	fc := s.next()
	if fc.login.Phone != cfg.Phone || fc.login.Version != 1 || fc.login.Agent != "test-agent/9" {
		t.Fatalf("login = %v", fc.login)
	}
}

func TestDialWrongServerKey(t *testing.T) {
	s := newFakeServer(t)
	cfg := s.config(t)
	other, _ := noise.GenerateKeypair(nil)
	cfg.ServerKey = other.Public
	_, err := client.Dial(testCtx(t), cfg)
	if !errors.Is(err, client.ErrHandshake) {
		t.Fatalf("err = %v, want ErrHandshake", err)
	}
}

func TestDialLoginRefused(t *testing.T) {
	s := newFakeServer(t)
	s.refuse.Store(&wire.Error{Code: wire.Error_LOGIN_FAILED, Text: "no account has this number: register first"})
	_, err := client.Dial(testCtx(t), s.config(t))
	var le *client.LoginError
	if !errors.As(err, &le) || le.Code != wire.Error_LOGIN_FAILED {
		t.Fatalf("err = %v, want *LoginError LOGIN_FAILED", err)
	}
}

func TestDialNoServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := newFakeServer(t).config(t)
	cfg.Addr = addr
	if _, err := client.Dial(testCtx(t), cfg); err == nil {
		t.Fatal("Dial to a closed port succeeded")
	}
}

// Sends from many goroutines share the connection without waiting for each
// other: all of them reach the server before it answers any.
func TestSendsArePipelined(t *testing.T) {
	s := newFakeServer(t)
	c := dial(t, s.config(t))
	fc := s.next()
	const n = 10
	type res struct {
		body string
		ack  client.SendAck
		err  error
	}
	results := make(chan res, n)
	for i := range n {
		go func() {
			body := fmt.Sprint("m", i)
			a, err := c.Send(testCtx(t), "+14155550102", []byte(body))
			results <- res{body, a, err}
		}()
	}
	sends := map[uint64]string{}
	for range n {
		snd := fc.recv().GetSend()
		if snd == nil || snd.To != "+14155550102" {
			t.Fatalf("want Send frames, got %v", snd)
		}
		if _, dup := sends[snd.Id]; dup {
			t.Fatalf("id %d used twice", snd.Id)
		}
		sends[snd.Id] = string(snd.Body)
	}
	// Answer in reverse id order: each Send must get its own answer.
	ids := slices.Sorted(func(yield func(uint64) bool) {
		for id := range sends {
			if !yield(id) {
				return
			}
		}
	})
	slices.Reverse(ids)
	for _, id := range ids {
		fc.send(sendAck(id, id+1))
	}
	for range n {
		r := <-results
		if r.err != nil {
			t.Fatal(r.err)
		}
		if sends[r.ack.ID] != r.body || r.ack.ServerID != r.ack.ID+1 {
			t.Fatalf("Send(%q) got ack %+v", r.body, r.ack)
		}
	}
}

func TestSendRefused(t *testing.T) {
	s := newFakeServer(t)
	c := dial(t, s.config(t))
	fc := s.next()
	go func() {
		id := fc.recv().GetSend().GetId()
		fc.send(&wire.Frame{Kind: &wire.Frame_Error{Error: &wire.Error{Id: id, Code: wire.Error_UNKNOWN_RECIPIENT, Text: "no account has this number"}}})
	}()
	_, err := c.Send(testCtx(t), "+14155550109", []byte("hi"))
	var se *client.ServerError
	if !errors.As(err, &se) || se.Code != wire.Error_UNKNOWN_RECIPIENT {
		t.Fatalf("err = %v, want *ServerError UNKNOWN_RECIPIENT", err)
	}
}

func TestSendChecksLocally(t *testing.T) {
	s := newFakeServer(t)
	c := dial(t, s.config(t))
	for _, tc := range []struct {
		to   string
		body []byte
	}{
		{"14155550102", nil},
		{"+1415555010x", nil},
		{"+14155550102", make([]byte, wire.MaxBody+1)},
	} {
		if _, err := c.Send(testCtx(t), tc.to, tc.body); err == nil {
			t.Errorf("Send(%q, %d bytes) succeeded", tc.to, len(tc.body))
		}
	}
}

// A Send whose connection drops before the answer goes out again, with the
// same id, on the next connection.
func TestSendResentAfterReconnect(t *testing.T) {
	s := newFakeServer(t)
	cfg := s.config(t)
	cfg.Reconnect = true
	c := dial(t, cfg)
	fc := s.next()
	done := make(chan error, 1)
	var ack client.SendAck
	go func() {
		var err error
		ack, err = c.Send(testCtx(t), "+14155550102", []byte("survives"))
		done <- err
	}()
	first := fc.recv().GetSend()
	fc.nc.Close()

	fc2 := s.next()
	again := fc2.recv().GetSend()
	if again.GetId() != first.GetId() || string(again.GetBody()) != "survives" {
		t.Fatalf("after reconnect got %v, want the same Send %v", again, first)
	}
	// Only the resend asks the server to look for an earlier copy.
	if first.GetResend() || !again.GetResend() {
		t.Fatalf("resend marks: first %v, after reconnect %v; want false, true", first.GetResend(), again.GetResend())
	}
	fc2.send(sendAck(again.Id, 77))
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if ack.ID != first.Id || ack.ServerID != 77 {
		t.Fatalf("ack = %+v", ack)
	}
}

func TestSendWithoutReconnectFails(t *testing.T) {
	s := newFakeServer(t)
	c := dial(t, s.config(t))
	fc := s.next()
	go func() {
		fc.recv()
		fc.nc.Close()
	}()
	if _, err := c.Send(testCtx(t), "+14155550102", []byte("x")); err == nil {
		t.Fatal("Send succeeded on a dropped connection")
	}
	<-c.Done()
	if _, err := c.Recv(testCtx(t)); err == nil {
		t.Fatal("Recv succeeded after the client ended")
	}
}

// After a reconnect the server delivers unacked items again: Recv does not
// return them twice, and acks never name a seq the new connection has not
// delivered (the server would close the session for that).
func TestRedeliveryAfterReconnect(t *testing.T) {
	s := newFakeServer(t)
	cfg := s.config(t)
	cfg.Reconnect = true
	c := dial(t, cfg)
	ctx := testCtx(t)
	fc := s.next()
	fc.send(deliverMsg(1, 101, "one"))
	fc.send(deliverMsg(2, 102, "two"))
	for _, want := range []uint64{1, 2} {
		in, err := c.Recv(ctx)
		if err != nil || in.Seq != want {
			t.Fatalf("Recv = %+v, %v; want seq %d", in, err, want)
		}
	}
	fc.nc.Close()
	fc2 := s.next()
	// Acked while the new connection has delivered nothing.
	if err := c.Ack(2); err != nil {
		t.Fatal(err)
	}
	fc2.send(deliverMsg(1, 101, "one"))
	if got := fc2.recv().GetAck(); got.GetSeq() != 1 {
		t.Fatalf("first ack on the new connection = %v, want seq 1 (only 1 was delivered on it)", got)
	}
	fc2.send(deliverMsg(2, 102, "two"))
	if got := fc2.recv().GetAck(); got.GetSeq() != 2 {
		t.Fatalf("ack = %v, want seq 2", got)
	}
	fc2.send(deliverMsg(3, 101, "one again")) // same message, new seq: dropped and acked
	if got := fc2.recv().GetAck(); got.GetSeq() != 3 {
		t.Fatalf("ack = %v, want seq 3", got)
	}
	fc2.send(deliverMsg(4, 104, "four"))
	in, err := c.Recv(ctx)
	if err != nil || in.Seq != 4 || string(in.Message.GetBody()) != "four" {
		t.Fatalf("Recv = %+v, %v; want seq 4", in, err)
	}
}

func TestMarkReadAndPing(t *testing.T) {
	s := newFakeServer(t)
	c := dial(t, s.config(t))
	fc := s.next()
	go func() {
		r := fc.recv().GetRead()
		if r.GetTo() != "+14155550102" || !slices.Equal(r.GetIds(), []uint64{5, 6}) {
			t.Errorf("Read = %v", r)
		}
		fc.send(&wire.Frame{Kind: &wire.Frame_Ok{Ok: &wire.Ok{Id: r.GetId()}}})
		p := fc.recv().GetPing()
		fc.send(&wire.Frame{Kind: &wire.Frame_Pong{Pong: &wire.Pong{Id: p.GetId()}}})
	}()
	if err := c.MarkRead(testCtx(t), "+14155550102", []uint64{5, 6}); err != nil {
		t.Fatal(err)
	}
	if err := c.Ping(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}

// REGISTERED_ELSEWHERE ends the client even with Reconnect on: Recv returns
// what was delivered, then the reason.
func TestRegisteredElsewhereEndsClient(t *testing.T) {
	s := newFakeServer(t)
	cfg := s.config(t)
	cfg.Reconnect = true
	c := dial(t, cfg)
	fc := s.next()
	fc.send(deliverMsg(1, 101, "last"))
	fc.send(&wire.Frame{Kind: &wire.Frame_Close{Close: &wire.Close{Code: wire.Error_REGISTERED_ELSEWHERE, Text: "this number was registered on another device"}}})
	fc.nc.Close()
	ctx := testCtx(t)
	if in, err := c.Recv(ctx); err != nil || in.Seq != 1 {
		t.Fatalf("Recv = %+v, %v; want the delivered item first", in, err)
	}
	_, err := c.Recv(ctx)
	var ce *client.CloseError
	if !errors.As(err, &ce) || ce.Code != wire.Error_REGISTERED_ELSEWHERE {
		t.Fatalf("Recv err = %v, want CloseError REGISTERED_ELSEWHERE", err)
	}
	if _, err := c.Send(ctx, "+14155550102", nil); !errors.As(err, &ce) {
		t.Fatalf("Send err = %v, want the CloseError", err)
	}
	if err := c.Ack(1); !errors.As(err, &ce) {
		t.Fatalf("Ack err = %v, want the CloseError", err)
	}
}

func TestShuttingDownReconnects(t *testing.T) {
	s := newFakeServer(t)
	cfg := s.config(t)
	cfg.Reconnect = true
	c := dial(t, cfg)
	fc := s.next()
	fc.send(&wire.Frame{Kind: &wire.Frame_Close{Close: &wire.Close{Code: wire.Error_SHUTTING_DOWN}}})
	fc.nc.Close()
	fc2 := s.next()
	fc2.send(deliverMsg(1, 101, "after restart"))
	if in, err := c.Recv(testCtx(t)); err != nil || in.Seq != 1 {
		t.Fatalf("Recv = %+v, %v", in, err)
	}
}

// A stopping server's reconnect hint replaces the first backoff: with a
// backoff far longer than the test's guard, the client is back only if
// it waited the hint instead.
func TestShuttingDownHintReplacesTheBackoff(t *testing.T) {
	s := newFakeServer(t)
	cfg := s.config(t)
	cfg.Reconnect = true
	cfg.MinBackoff, cfg.MaxBackoff = time.Hour, 2*time.Hour
	c := dial(t, cfg)
	fc := s.next()
	fc.send(&wire.Frame{Kind: &wire.Frame_Close{Close: &wire.Close{Code: wire.Error_SHUTTING_DOWN, ReconnectAfterMs: 20}}})
	fc.nc.Close()
	fc2 := s.next()
	fc2.send(deliverMsg(1, 101, "after the hint"))
	if in, err := c.Recv(testCtx(t)); err != nil || in.Seq != 1 {
		t.Fatalf("Recv = %+v, %v", in, err)
	}
}

// A reconnect refused with LOGIN_FAILED ends the client with the LoginError.
func TestReconnectLoginRefused(t *testing.T) {
	s := newFakeServer(t)
	cfg := s.config(t)
	cfg.Reconnect = true
	c := dial(t, cfg)
	fc := s.next()
	s.refuse.Store(&wire.Error{Code: wire.Error_LOGIN_FAILED, Text: "not this device's key"})
	fc.nc.Close()
	_, err := c.Recv(testCtx(t))
	var le *client.LoginError
	if !errors.As(err, &le) {
		t.Fatalf("Recv err = %v, want *LoginError", err)
	}
}

func TestCloseFailsWaitingCalls(t *testing.T) {
	s := newFakeServer(t)
	c := dial(t, s.config(t))
	fc := s.next()
	done := make(chan error, 1)
	go func() {
		_, err := c.Send(testCtx(t), "+14155550102", []byte("never answered"))
		done <- err
	}()
	fc.recv()
	c.Close()
	if err := <-done; !errors.Is(err, client.ErrClosed) {
		t.Fatalf("Send err = %v, want ErrClosed", err)
	}
	if _, err := c.Recv(testCtx(t)); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("Recv err = %v, want ErrClosed", err)
	}
	// The server sees the connection end (EOF or a reset, not the guard).
	fc.nc.SetReadDeadline(time.Now().Add(guard))
	if _, err := io.ReadAll(fc.nc); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("client did not close its connection")
		}
	}
}

func TestCancelledSendLeavesClientUsable(t *testing.T) {
	s := newFakeServer(t)
	c := dial(t, s.config(t))
	fc := s.next()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if _, err := c.Send(ctx, "+14155550102", []byte("x")); !errors.Is(err, context.Canceled) {
			t.Errorf("Send err = %v, want context.Canceled", err)
		}
	})
	first := fc.recv().GetSend()
	cancel()
	wg.Wait()
	fc.send(sendAck(first.Id, 1)) // a late answer nobody waits for
	go func() {
		p := fc.recv().GetPing()
		fc.send(&wire.Frame{Kind: &wire.Frame_Pong{Pong: &wire.Pong{Id: p.GetId()}}})
	}()
	if err := c.Ping(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}
