//go:build linux

package node

import (
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/parleyhq/parley/noise"
	"github.com/parleyhq/parley/store"
	"github.com/parleyhq/parley/upgrade/upgradepb"
	"github.com/parleyhq/parley/wire"
)

// A connection handed over in a live upgrade carries the account
// generation its login was checked against. If the account was registered
// again meanwhile (while the old process exported it, its kick found no
// one), the new process closes it with REGISTERED_ELSEWHERE; a connection
// whose account did not change goes on.
func TestAdoptedConnOfReRegisteredAccountIsClosed(t *testing.T) {
	const moved, stayed = "+15550000001", "+15550000002"
	dir := t.TempDir()
	cfg := Config{DataDir: dir, Listen: "127.0.0.1:0", HTTP: "127.0.0.1:0", Admin: "127.0.0.1:0", Log: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	key := make([]byte, noise.KeyLen)
	for _, a := range []store.Account{{Phone: moved, Key: key, Generation: 1}, {Phone: stayed, Key: key, Generation: 1}, {Phone: moved, Key: key, Generation: 2}} {
		if err := n.store.PutAccount(a); err != nil {
			t.Fatal(err)
		}
	}
	n.Close()

	// Two established connections, with made-up transport keys, as if
	// logged in with generation 1 before the handover.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type side struct {
		client net.Conn
		tx, rx *noise.Cipher // the client's
	}
	var sides []side
	in := &Inherited{}
	for i, user := range []string{moved, stayed} {
		cl, fd := tcpPairFD(t, ln)
		down, up := [32]byte{byte(i), 1}, [32]byte{byte(i), 2} // server->client, client->server
		in.Conns = append(in.Conns, InheritedConn{FD: fd, State: &upgradepb.Conn{
			Remote: cl.LocalAddr().String(), User: user,
			Tx: &upgradepb.Cipher{Key: down[:]}, Rx: &upgradepb.Cipher{Key: up[:]},
			Session: &upgradepb.Session{Next: 1}, Generation16: uint32(fold16(1)),
		}})
		sides = append(sides, side{client: cl, tx: noise.NewCipher(noise.CipherState{Key: up}), rx: noise.NewCipher(noise.CipherState{Key: down})})
	}
	cfg.Inherit = in
	n2, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer n2.Close()

	read := func(s side) *wire.Frame {
		t.Helper()
		s.client.SetReadDeadline(time.Now().Add(20 * time.Second)) // a bound, not an assertion
		msg, err := wire.ReadMessage(s.client, make([]byte, wire.HeaderLen+wire.MaxMessage))
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		pt, err := s.rx.Open(nil, msg)
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		var f wire.Frame
		if err := wire.DecodeFrame(pt, &f); err != nil {
			t.Fatal(err)
		}
		return &f
	}
	if f := read(sides[0]); f.GetClose().GetCode() != wire.Error_REGISTERED_ELSEWHERE {
		t.Fatalf("the re-registered account's connection got %v, want a Close with REGISTERED_ELSEWHERE", f)
	}
	// The other one still serves: a ping gets its pong.
	pt, err := wire.AppendFrame(nil, &wire.Frame{Kind: &wire.Frame_Ping{Ping: &wire.Ping{Id: 7}}})
	if err != nil {
		t.Fatal(err)
	}
	ct, err := sides[1].tx.Seal(nil, pt)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sides[1].client.Write(append(wire.AppendHeader(nil, len(ct)), ct...)); err != nil {
		t.Fatal(err)
	}
	if f := read(sides[1]); f.GetPong().GetId() != 7 {
		t.Fatalf("the unchanged account's connection answered %v, want its pong", f)
	}
}
