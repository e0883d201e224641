package cluster_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/parleyhq/parley/client"
	"github.com/parleyhq/parley/internal/nodetest"
	"github.com/parleyhq/parley/wire"
)

// TestThreeProcessAccountsAcrossNodes is the account's story across three
// `parley serve` processes: a message and both its receipts (delivered
// and read) cross nodes; logins of one account racing on two nodes leave
// exactly one session; a re-registration on one node cuts off the old
// device on another at once, and its key stops working on every node.
func TestThreeProcessAccountsAcrossNodes(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: builds the server and runs three of it")
	}
	ps := startCluster(t, buildParley(t))
	akp, reg := register(t, ps[0], alicePhone)
	bkp, _ := register(t, ps[0], bobPhone)
	ckp, _ := register(t, ps[0], carolPhone)
	ctx, cancel := context.WithTimeout(context.Background(), flowGuard)
	defer cancel()

	t.Run("ReadReceiptCrossesNodes", func(t *testing.T) {
		alice := dialClient(t, ps[1].native, alicePhone, akp, reg.ServerKey)
		bob := dialClient(t, ps[2].native, bobPhone, bkp, reg.ServerKey)
		defer alice.Close()
		defer bob.Close()
		ack, err := alice.Send(ctx, bobPhone, []byte("read me"))
		if err != nil {
			t.Fatal(err)
		}
		in, err := bob.Recv(ctx)
		if err != nil || in.Message == nil || string(in.Message.Body) != "read me" {
			t.Fatalf("bob got %+v, %v; want the message", in, err)
		}
		if err := bob.Ack(in.Seq); err != nil {
			t.Fatal(err)
		}
		if err := bob.MarkRead(ctx, alicePhone, []uint64{in.Message.Id}); err != nil {
			t.Fatal(err)
		}
		var kinds []wire.Receipt_Kind
		for !slices.Contains(kinds, wire.Receipt_DELIVERED) || !slices.Contains(kinds, wire.Receipt_READ) {
			r, err := alice.Recv(ctx)
			if err != nil {
				t.Fatalf("alice, receipts so far %v: %v", kinds, err)
			}
			_ = alice.Ack(r.Seq)
			if r.Receipt == nil || r.Receipt.By != bobPhone || !slices.Contains(r.Receipt.Ids, ack.ID) {
				t.Fatalf("alice got %+v, want receipts by %s for message %d", r, bobPhone, ack.ID)
			}
			kinds = append(kinds, r.Receipt.Kind)
		}
	})

	t.Run("RacingLoginsLeaveOne", func(t *testing.T) {
		for round := range 3 {
			cs := make([]*client.Client, 2)
			done := make(chan struct{}, len(cs))
			for i := range cs {
				go func() {
					defer func() { done <- struct{}{} }()
					c, err := client.Dial(ctx, client.Config{Addr: ps[i].native, ServerKey: reg.ServerKey, Phone: carolPhone, Key: ckp})
					if err == nil {
						cs[i] = c
					}
				}()
			}
			<-done
			<-done
			live := nodetest.LiveClients(cs)
			for deadline := time.Now().Add(time.Minute); live > 1 && time.Now().Before(deadline); live = nodetest.LiveClients(cs) {
				time.Sleep(20 * time.Millisecond)
			}
			if live != 1 {
				t.Fatalf("round %d: %d of carol's sessions live, want exactly 1", round, live)
			}
			for _, c := range cs {
				if c == nil {
					continue
				}
				select {
				case <-c.Done():
					var ce *client.CloseError
					if err := c.Err(); !errors.As(err, &ce) || ce.Code != wire.Error_REPLACED {
						t.Fatalf("round %d: the losing session ended with %v, want REPLACED", round, err)
					}
				default:
				}
				c.Close()
			}
		}
	})

	t.Run("ReRegistrationCutsOffEveryNode", func(t *testing.T) {
		old, err := client.Dial(ctx, client.Config{Addr: ps[1].native, ServerKey: reg.ServerKey, Phone: alicePhone, Key: akp})
		if err != nil {
			t.Fatal(err)
		}
		defer old.Close()
		register(t, ps[2], alicePhone) // a new device, through another node
		select {
		case <-old.Done():
		case <-ctx.Done():
			t.Fatal("the old device is still connected after the re-registration")
		}
		var ce *client.CloseError
		if err := old.Err(); !errors.As(err, &ce) || ce.Code != wire.Error_REGISTERED_ELSEWHERE {
			t.Fatalf("the old device's session ended with %v, want REGISTERED_ELSEWHERE", err)
		}
		for _, p := range ps {
			c, err := client.Dial(ctx, client.Config{Addr: p.native, ServerKey: reg.ServerKey, Phone: alicePhone, Key: akp})
			var le *client.LoginError
			if !errors.As(err, &le) {
				if c != nil {
					c.Close()
				}
				t.Fatalf("the old key on %s: %v, want a refused login", p.name, err)
			}
		}
	})
}
