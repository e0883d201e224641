package node_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/vfs"

	"github.com/parleyhq/parley/account"
	"github.com/parleyhq/parley/node"
	"github.com/parleyhq/parley/noise"
	"github.com/parleyhq/parley/wire"
)

// slowSyncFS is the disk with every sync slowed down, so that a commit
// stays in flight long enough for a race with it to show.
type slowSyncFS struct{ vfs.FS }

type slowSyncFile struct{ vfs.File }

const slowSync = 20 * time.Millisecond

func (fs slowSyncFS) Create(name string) (vfs.File, error) {
	f, err := fs.FS.Create(name)
	return slowSyncFile{f}, err
}

func (fs slowSyncFS) ReuseForWrite(old, new string) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(old, new)
	return slowSyncFile{f}, err
}

func (f slowSyncFile) Sync() error     { time.Sleep(slowSync); return f.File.Sync() }
func (f slowSyncFile) SyncData() error { time.Sleep(slowSync); return f.File.SyncData() }

// While two connections of one user overlap, what the older acked before
// the newer logged in is not delivered again to the newer: the newer one
// delivers only once the older has stopped and its acks are applied.
// (Without that hand-over the newer read the queue while the older's ack
// still waited in its mailbox or its commit, and got the acked items
// again.)
func TestOverlappingLoginsDoNotRedeliverAcked(t *testing.T) {
	const msgs, pings = 20, 2000
	tn, alice := overlapNode(t, node.Config{StoreFS: slowSyncFS{vfs.Default}}, msgs)

	// Bob's first device takes every message.
	bob1 := tn.login(t, bobPhone)
	last := receiveAll(t, bob1, msgs)
	// He then sends a burst of pings that keeps his session busy, and the
	// ack behind them, in one write: the server has them all in his
	// mailbox before his second connection can log in.
	var burst []byte
	for id := uint64(1); id <= pings; id++ {
		m, err := bob1.sealed(pingFrame(100 + id))
		if err != nil {
			t.Fatal(err)
		}
		burst = append(burst, m...)
	}
	m, err := bob1.sealed(encodeFrame(&wire.Frame{Kind: &wire.Frame_Ack{Ack: &wire.Ack{Seq: last}}}))
	if err != nil {
		t.Fatal(err)
	}
	if err := bob1.writeRaw(append(burst, m...)); err != nil {
		t.Fatal(err)
	}
	go func() { // bob1 reads his pongs, as a live client would
		for {
			if _, err := bob1.readFrame(ioGuard); err != nil {
				return
			}
		}
	}()

	// His second connection logs in while that ack still waits behind the
	// pings: it must get none of the acked messages, only what comes next.
	bob2 := tn.login(t, bobPhone)
	firstMessageIs(t, alice, bob2, msgs+1)
}

// An app that acks and reconnects at once is not given again what it
// acked, though the ack's batch, being lazy, may still wait in the store
// for company: the new login's first read comes after a barrier that
// commits it. (Without the barrier, TestChat in cmd/parley saw a chat
// re-show and re-read messages its user had just received.)
func TestReconnectAfterAckDoesNotRedeliver(t *testing.T) {
	const msgs = 5
	// The lazy delay is long enough that the ack still waits when bob
	// logs in again.
	tn, alice := overlapNode(t, node.Config{StoreLazyDelay: time.Minute}, msgs)
	bob1 := tn.login(t, bobPhone)
	last := receiveAll(t, bob1, msgs)
	if err := bob1.ack(last); err != nil {
		t.Fatal(err)
	}
	if err := bob1.writePlain(pingFrame(9)); err != nil {
		t.Fatal(err)
	}
	awaitPong(t, bob1, 9) // the server has handled the ack
	bob1.Close()
	tn.waitSessions(t, 1)

	bob2 := tn.login(t, bobPhone)
	firstMessageIs(t, alice, bob2, msgs+1)
}

// overlapNode starts a node with cfg's store settings, registers Alice and
// Bob, and has Alice send msgs messages to Bob, each acknowledged.
func overlapNode(t *testing.T, cfg node.Config, msgs uint64) (*testNode, *rawConn) {
	t.Helper()
	gw := &codeGateway{}
	cfg.DataDir, cfg.Listen, cfg.HTTP, cfg.Admin = t.TempDir(), "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.SMS, cfg.PerNumber, cfg.Log = gw, account.RateLimit{Max: 100, Window: time.Minute}, testLogger(t)
	n, err := node.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	tn := &testNode{n: n, gw: gw, keys: map[string]noise.Keypair{}, handshakeTimeout: 10 * time.Second}
	for _, p := range []string{alicePhone, bobPhone} {
		tn.keys[p], _ = register(t, n.HTTPURL(), p, gw.code)
	}
	alice := tn.login(t, alicePhone)
	for id := uint64(1); id <= msgs; id++ {
		if err := alice.send(id, bobPhone, []byte(fmt.Sprintf("m%d", id))); err != nil {
			t.Fatal(err)
		}
		awaitSendAck(t, alice, id)
	}
	return tn, alice
}

// receiveAll reads msgs messages on c and returns the seq of the last.
func receiveAll(t *testing.T, c *rawConn, msgs uint64) (last uint64) {
	t.Helper()
	for got := uint64(0); got < msgs; {
		f, err := c.readFrame(ioGuard)
		if err != nil {
			t.Fatalf("after %d messages: %v", got, err)
		}
		if d := f.GetDeliver(); d != nil && d.Item.GetMessage() != nil {
			got++
			last = d.Seq
		}
	}
	return last
}

// firstMessageIs has Alice send message id to Bob and checks it is the
// first message Bob's connection c gets: nothing acked before comes again.
func firstMessageIs(t *testing.T, alice, c *rawConn, id uint64) {
	t.Helper()
	if err := alice.send(id, bobPhone, []byte("after")); err != nil {
		t.Fatal(err)
	}
	for {
		f, err := c.readFrame(ioGuard)
		if err != nil {
			t.Fatalf("waiting for the message sent after the login: %v", err)
		}
		if m := f.GetDeliver().GetItem().GetMessage(); m != nil {
			if m.Id != id {
				t.Fatalf("bob's new connection got message %d, which was acked before it logged in", m.Id)
			}
			return
		}
	}
}
