package node_test

import (
	"context"
	"net"
	"strings"
	"testing"

	"github.com/parleyhq/parley/node"
)

// A node that cannot start says why, and cleans up what it had started
// (it used to panic while cleaning up).
func TestStartFailsCleanlyWhenTheAddressIsTaken(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	for _, cfg := range []node.Config{
		{Listen: taken.Addr().String(), HTTP: "127.0.0.1:0", Admin: "127.0.0.1:0"},
		{Listen: "127.0.0.1:0", HTTP: taken.Addr().String(), Admin: "127.0.0.1:0"},
		{Listen: "127.0.0.1:0", HTTP: "127.0.0.1:0", Admin: taken.Addr().String()},
	} {
		cfg.DataDir, cfg.Log = t.TempDir(), testLogger(t)
		n, err := node.Start(context.Background(), cfg)
		if err == nil {
			n.Close()
			t.Fatalf("Start with a taken address succeeded: %+v", cfg)
		}
		if !strings.Contains(err.Error(), "address already in use") {
			t.Errorf("error does not say what is wrong: %v", err)
		}
	}
}

func TestAdminOffLoopbackNeedsAToken(t *testing.T) {
	_, err := node.Start(context.Background(), node.Config{
		DataDir: t.TempDir(), Listen: "127.0.0.1:0", HTTP: "127.0.0.1:0", Admin: "0.0.0.0:0", Log: testLogger(t),
	})
	if err == nil || !strings.Contains(err.Error(), "--admin-token") {
		t.Fatalf("Start with a public admin listener and no token: err = %v", err)
	}
}

const maxWriteBufferForTest = 64 << 10

// A client that keeps asking but never reads cannot make the server hold
// its replies without bound: past MaxWriteBuffer it is disconnected.
func TestClientThatNeverReadsIsCutOff(t *testing.T) {
	t.Parallel()
	gw := &codeGateway{}
	n, err := node.Start(context.Background(), node.Config{
		DataDir: t.TempDir(), Listen: "127.0.0.1:0", HTTP: "127.0.0.1:0", Admin: "127.0.0.1:0",
		SMS: gw, Limits: node.Limits{MaxWriteBuffer: maxWriteBufferForTest}, Log: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	kp, _ := register(t, n.HTTPURL(), alicePhone, gw.code)
	c, err := dialLogin(n.NativeAddr(), n.PublicKey(), alicePhone, kp)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Pings in batches of 1,000 per write, never reading a pong. Bounded:
	// at most 500 batches (about 25 MB of pongs, far past every buffer).
	for i := 0; i < 500; i++ {
		var batch []byte
		for j := 0; j < 1000; j++ {
			msg, err := c.sealed(pingFrame(uint64(i*1000 + j)))
			if err != nil {
				t.Fatal(err)
			}
			batch = append(batch, msg...)
		}
		err := c.writeRaw(batch)
		switch {
		case isTimeout(err):
			// The test's own write deadline: the server stopped reading
			// this client, but did not cut it off.
			t.Fatalf("batch %d: the server neither read nor closed the connection for %v", i, ioGuard)
		case err != nil:
			// Cut off, as it should be: the write failed because the
			// server closed. The connection must end for reading too
			// (the pongs in flight, then the close), not only refuse
			// writes.
			expectHangup(t, c.nc, false)
			return
		}
	}
	t.Fatal("the server kept answering a client that never reads")
}
