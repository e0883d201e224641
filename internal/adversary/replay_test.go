package adversary

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/parleyhq/parley/client"
	"github.com/parleyhq/parley/node"
	"github.com/parleyhq/parley/wire"
)

// tap is a man in the middle on loopback: it forwards the one connection
// it accepts to target and hands over a copy of the client's first
// message (length prefix included), as an attacker on the path would
// capture it.
func tap(t *testing.T, target string) (addr string, first <-chan []byte) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan []byte, 1)
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	wg.Go(func() {
		cl, err := ln.Accept()
		ln.Close()
		if err != nil {
			return
		}
		defer cl.Close()
		sv, err := net.DialTimeout("tcp", target, ioGuard)
		if err != nil {
			return
		}
		defer sv.Close()
		cl.SetReadDeadline(time.Now().Add(ioGuard))
		msg, err := wire.ReadMessage(cl, nil)
		cl.SetReadDeadline(time.Time{})
		if err != nil {
			return
		}
		ch <- frameMsg(msg)
		if _, err := sv.Write(frameMsg(msg)); err != nil {
			return
		}
		done := make(chan struct{})
		go func() {
			io.Copy(cl, sv)
			cl.Close()
			close(done)
		}()
		io.Copy(sv, cl)
		sv.Close()
		<-done
	})
	return ln.Addr().String(), ch
}

// A captured first handshake message, replayed many times from the
// device's own address: each replay is closed unanswered before any
// cryptography (parley_handshake_failures_total{reason="replayed"}), is
// not charged as a failed login to the address, and never replaces the
// real device, which goes on sending and receiving.
func TestReplayedFirstMessage(t *testing.T) {
	const replays = 200
	// A small failed-login budget: were replays charged to the address,
	// the normal users on it would be throttled.
	e := start(t, node.Limits{FailedLoginsPerAddr: 5})
	ctx, cancel := context.WithTimeout(t.Context(), liveness)
	defer cancel()
	phone, kp, err := e.register(ctx, t)
	if err != nil {
		t.Fatal(err)
	}
	addr, captured := tap(t, e.NativeAddr())
	device, err := client.Dial(ctx, client.Config{Addr: addr, ServerKey: e.PublicKey(), Phone: phone, Key: kp})
	if err != nil {
		t.Fatal(err)
	}
	defer device.Close()
	first := <-captured
	other := e.newUser(t)
	if err := roundTrip(t.Context(), other.Client, device, phone); err != nil {
		t.Fatal(err)
	}
	before := e.metric(t, handshakeFailures("replayed"))

	var wg sync.WaitGroup
	answered := make(chan int, 4)
	for w := range 4 {
		wg.Go(func() {
			n := 0
			for range replays / 4 {
				nc, err := net.DialTimeout("tcp", e.NativeAddr(), ioGuard)
				if err != nil {
					t.Errorf("replayer %d: %v", w, err)
					return
				}
				nc.SetDeadline(time.Now().Add(ioGuard))
				if _, err := nc.Write(first); err == nil {
					if b, _ := io.ReadAll(nc); len(b) > 0 {
						n++
					}
				}
				nc.Close()
			}
			answered <- n
		})
	}
	e.checkServes(t) // meanwhile
	wg.Wait()
	close(answered)
	for n := range answered {
		if n > 0 {
			t.Errorf("%d replays were answered", n)
		}
	}
	if got := e.metric(t, handshakeFailures("replayed")) - before; got != replays {
		t.Errorf("replayed handshakes counted: %v, want %d", got, replays)
	}
	select {
	case <-device.Done():
		t.Fatalf("the real device was thrown out: %v", device.Err())
	default:
	}
	if err := roundTrip(t.Context(), device, other.Client, other.phone); err != nil {
		t.Errorf("the real device after %d replays: %v", replays, err)
	}
	if err := roundTrip(t.Context(), other.Client, device, phone); err != nil {
		t.Errorf("the real device after %d replays: %v", replays, err)
	}
	e.checkServes(t)
}
