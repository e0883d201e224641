package adversary

import (
	"context"
	"errors"
	"testing"

	"github.com/parleyhq/parley/client"
	"github.com/parleyhq/parley/node"
	"github.com/parleyhq/parley/wire"
)

// Forged read receipts: a user reports as read messages it was never
// delivered, to push receipts into someone's queue. The server refuses
// with an error code, counts it
// (parley_limit_hits_total{limit="forged_read"}), and nothing reaches the
// named sender; a read of a message that was delivered still sends its
// receipt.
func TestForgedReadReceipts(t *testing.T) {
	e := start(t, node.Limits{})
	mallory, bob := e.newUser(t), e.newUser(t)
	ctx, cancel := context.WithTimeout(t.Context(), liveness)
	defer cancel()
	before := e.metric(t, limitHits("forged_read"))

	for _, ids := range [][]uint64{{1, 2, 3}, {1 << 40}} {
		err := mallory.MarkRead(ctx, bob.phone, ids)
		var se *client.ServerError
		if !errors.As(err, &se) {
			t.Errorf("a read of %v, never delivered: %v, want the server's error", ids, err)
		}
	}
	if got := e.metric(t, limitHits("forged_read")) - before; got != 2 {
		t.Errorf("forged_read hits: %v, want 2", got)
	}
	// Bob's queue holds, in order, whatever the forged reads stored, then
	// this message: the first thing he receives must be the message.
	ack, err := mallory.Send(ctx, bob.phone, []byte("marker"))
	if err != nil {
		t.Fatal(err)
	}
	in, err := bob.Recv(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if in.Receipt != nil {
		t.Fatalf("bob received a forged receipt: %v", in.Receipt)
	}
	if in.Message.GetServerId() != ack.ServerID {
		t.Fatalf("bob received %v, want the marker message", in)
	}
	bob.Ack(in.Seq)

	// A real read: bob reads mallory's message; mallory gets the receipt.
	if err := bob.MarkRead(ctx, mallory.phone, []uint64{in.Message.Id}); err != nil {
		t.Fatalf("a read of a delivered message: %v", err)
	}
	for {
		got, err := mallory.Recv(ctx)
		if err != nil {
			t.Fatalf("waiting for the read receipt: %v", err)
		}
		mallory.Ack(got.Seq)
		if r := got.Receipt; r != nil && r.Kind == wire.Receipt_READ {
			if r.By != bob.phone || len(r.Ids) != 1 || r.Ids[0] != in.Message.Id {
				t.Errorf("read receipt %v, want bob's for id %d", r, in.Message.Id)
			}
			break
		}
	}
	e.checkServes(t)
}
