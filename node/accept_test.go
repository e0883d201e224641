package node_test

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/parleyhq/parley/account"
	"github.com/parleyhq/parley/node"
	"github.com/parleyhq/parley/wire"
)

// A reconnect storm is paced: past AcceptBurst, a new connection is reset
// unread, before any handshake work, and counted as accept_rate, while the
// sessions already in go on; as the bucket refills (AcceptRate a second),
// new connections are admitted again.
func TestAcceptRatePacesNewConnections(t *testing.T) {
	const burst = 3
	gw := &codeGateway{}
	n, err := node.Start(context.Background(), node.Config{
		DataDir: t.TempDir(), Listen: "127.0.0.1:0", HTTP: "127.0.0.1:0", Admin: "127.0.0.1:0",
		SMS: gw, PerNumber: account.RateLimit{Max: 100, Window: time.Minute}, Log: testLogger(t),
		Limits: node.Limits{AcceptRate: 1, AcceptBurst: burst},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	akp, _ := register(t, n.HTTPURL(), alicePhone, gw.code)
	bkp, _ := register(t, n.HTTPURL(), bobPhone, gw.code)
	bob, err := dialLogin(n.NativeAddr(), n.PublicKey(), bobPhone, bkp) // the burst's first
	if err != nil {
		t.Fatal(err)
	}
	defer bob.Close()

	// Alice logs in again and again: at one token a second, 20 logins in
	// a row cannot all be admitted.
	admitted := 1 // bob
	var refused error
	for range 20 {
		rc, err := dialLogin(n.NativeAddr(), n.PublicKey(), alicePhone, akp)
		if err != nil {
			refused = err
			break
		}
		rc.Close()
		admitted++
	}
	switch {
	case refused == nil:
		t.Fatalf("%d logins in a row admitted at AcceptRate 1", admitted)
	case admitted < burst:
		t.Errorf("refused after %d admitted, want the burst (%d) first: %v", admitted, burst, refused)
	case !errors.Is(refused, syscall.ECONNRESET) && !errors.Is(refused, syscall.EPIPE):
		// A reset, not a FIN: the client can tell that its handshake was
		// never read (the SDK keeps its resumption ticket and retries).
		t.Errorf("the connection past the burst: %v, want a reset", refused)
	}
	if m := getText(t, n.AdminURL()+"/metrics"); !strings.Contains(m, `parley_limit_hits_total{limit="accept_rate"} 1`+"\n") {
		t.Errorf("/metrics does not count the refusal:\n%s", grepLines(m, "parley_limit_hits_total"))
	}
	// Bob, logged in before, is not disturbed.
	if err := bob.writePlain(pingFrame(1)); err != nil {
		t.Fatal(err)
	}
	awaitPong(t, bob, 1)

	eventually(t, "a login once the bucket refills", func() bool {
		rc, err := dialLogin(n.NativeAddr(), n.PublicKey(), alicePhone, akp)
		if err != nil {
			return false
		}
		rc.Close()
		return true
	})
}

// A stopping node tells each client when to come back, spread over its
// connections at half the accept rate that will take them (its own, for
// a node alone): here 2 connections at 2 a second, a window of 2 s.
// Without pacing there is no hint (the client's own backoff).
func TestStoppingNodeSpreadsReconnects(t *testing.T) {
	for _, rate := range []int{2, -1} {
		gw := &codeGateway{}
		n, err := node.Start(context.Background(), node.Config{
			DataDir: t.TempDir(), Listen: "127.0.0.1:0", HTTP: "127.0.0.1:0", Admin: "127.0.0.1:0",
			SMS: gw, PerNumber: account.RateLimit{Max: 100, Window: time.Minute}, Log: testLogger(t),
			Limits: node.Limits{AcceptRate: rate, AcceptBurst: 10},
		})
		if err != nil {
			t.Fatal(err)
		}
		var conns []*rawConn
		for _, phone := range []string{alicePhone, bobPhone} {
			kp, _ := register(t, n.HTTPURL(), phone, gw.code)
			rc, err := dialLogin(n.NativeAddr(), n.PublicKey(), phone, kp)
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			// A Pong: the session runs, so the stop finds it to close.
			if err := rc.writeFrame(&wire.Frame{Kind: &wire.Frame_Ping{Ping: &wire.Ping{Id: 7}}}); err != nil {
				t.Fatal(err)
			}
			for {
				f, err := rc.readFrame(10 * time.Second)
				if err != nil {
					t.Fatalf("%s: no Pong: %v", phone, err)
				}
				if f.GetPong() != nil {
					break
				}
			}
			conns = append(conns, rc)
		}
		go n.Close()
		for i, rc := range conns {
			for {
				f, err := rc.readFrame(10 * time.Second)
				if err != nil {
					t.Fatalf("rate %d, client %d: no Close: %v", rate, i, err)
				}
				cl := f.GetClose()
				if cl == nil {
					continue
				}
				ms := cl.GetReconnectAfterMs()
				if cl.GetCode() != wire.Error_SHUTTING_DOWN || rate > 0 && (ms < 1 || ms > 2001) || rate < 0 && ms != 0 {
					t.Errorf("rate %d, client %d: Close %v; want SHUTTING_DOWN with a hint in [1, 2001] ms (none unpaced)", rate, i, cl)
				}
				break
			}
		}
		n.Close()
	}
}
