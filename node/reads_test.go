package node_test

import (
	"slices"
	"testing"

	"github.com/parleyhq/parley/wire"
)

// A read receipt goes only to someone the reader received messages from
// (issue 10 item 6): Mallory, who never got a message from Alice, cannot
// push read receipts into Alice's queue; Bob, who got one and acked it,
// still can after he reconnects, when the message itself is long erased.
func TestReadReceiptsOnlyToSendersReceivedFrom(t *testing.T) {
	tn := startTestNode(t, 0, alicePhone, bobPhone, malloryPhone)
	alice := tn.login(t, alicePhone)
	if err := alice.send(1, bobPhone, []byte("hi bob")); err != nil {
		t.Fatal(err)
	}
	awaitSendAck(t, alice, 1)
	bob := tn.login(t, bobPhone)
	awaitMessage(t, bob, alicePhone, 1, []byte("hi bob")) // and acks it
	// The delivered receipt is written with Bob's ack, and so is the
	// record that he received from Alice.
	awaitReceipt(t, alice, wire.Receipt_DELIVERED, bobPhone)

	mallory := tn.login(t, malloryPhone)
	if err := mallory.writeFrame(readFrame(1, alicePhone, 1, 2, 3)); err != nil {
		t.Fatal(err)
	}
	if e := awaitAnswer(t, mallory, 1).GetError(); e.GetCode() != wire.Error_BAD_REQUEST {
		t.Fatalf("Mallory's forged read receipt: answered %v, want a BAD_REQUEST error", e)
	}

	bob.Close()
	bob = tn.login(t, bobPhone)
	if err := bob.writeFrame(readFrame(2, alicePhone, 1)); err != nil {
		t.Fatal(err)
	}
	if f := awaitAnswer(t, bob, 2); f.GetOk() == nil {
		t.Fatalf("Bob's read receipt after a reconnect: answered %v, want Ok", f)
	}
	// Alice's queue is first in, first out: had Mallory's receipt been
	// stored, it would come before Bob's.
	r := awaitReceipt(t, alice, wire.Receipt_READ, "")
	if r.By != bobPhone || !slices.Equal(r.Ids, []uint64{1}) {
		t.Fatalf("Alice's first read receipt is by %s for %v, want by %s for [1]", r.By, r.Ids, bobPhone)
	}
}

func readFrame(id uint64, to string, ids ...uint64) *wire.Frame {
	return &wire.Frame{Kind: &wire.Frame_Read{Read: &wire.Read{Id: id, To: to, Ids: ids}}}
}

// awaitAnswer reads c's frames until an Ok or Error for request id,
// acking deliveries on the way.
func awaitAnswer(t *testing.T, c *rawConn, id uint64) *wire.Frame {
	t.Helper()
	for {
		f, err := c.readFrame(ioGuard)
		if err != nil {
			t.Fatalf("waiting for the answer to %d: %v", id, err)
		}
		switch k := f.Kind.(type) {
		case *wire.Frame_Ok:
			if k.Ok.Id == id {
				return f
			}
		case *wire.Frame_Error:
			if k.Error.Id == id {
				return f
			}
		case *wire.Frame_Close:
			t.Fatalf("waiting for the answer to %d: Close %v", id, k.Close)
		case *wire.Frame_Deliver:
			if err := c.ack(k.Deliver.Seq); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// awaitReceipt reads c's frames until a receipt of kind (by by, unless
// empty), acking every delivery.
func awaitReceipt(t *testing.T, c *rawConn, kind wire.Receipt_Kind, by string) *wire.Receipt {
	t.Helper()
	for {
		f, err := c.readFrame(ioGuard)
		if err != nil {
			t.Fatalf("waiting for a %s receipt: %v", kind, err)
		}
		switch k := f.Kind.(type) {
		case *wire.Frame_Close:
			t.Fatalf("waiting for a %s receipt: Close %v", kind, k.Close)
		case *wire.Frame_Deliver:
			if err := c.ack(k.Deliver.Seq); err != nil {
				t.Fatal(err)
			}
			if r := k.Deliver.Item.GetReceipt(); r != nil && r.Kind == kind && (by == "" || r.By == by) {
				return r
			}
		}
	}
}
