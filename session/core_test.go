package session_test

import (
	"errors"
	"fmt"
	"math"
	"testing"

	"github.com/parleyhq/parley/session"
	"github.com/parleyhq/parley/store"
	"github.com/parleyhq/parley/wire"
)

func newCore(window, maxPending int) *session.Core {
	var clock, ids int64
	return session.New("bob", &session.Config{
		Window: window, MaxPending: maxPending,
		Now:   func() int64 { clock++; return clock },
		NewID: func() uint64 { ids++; return uint64(ids) },
	})
}

func item(t *testing.T, seq uint64, from string) store.Item {
	t.Helper()
	data, err := wire.EncodeItem(&wire.Item{Kind: &wire.Item_Message{Message: &wire.Message{From: from, Id: seq, ServerId: 100 + seq}}})
	if err != nil {
		t.Fatal(err)
	}
	return store.Item{Seq: seq, Data: data}
}

// step applies ev and returns the Ready it produced, advanced.
func step(c *session.Core, ev any) session.Ready {
	c.Step(ev)
	rd := c.Ready()
	out := session.Ready{Frames: append([]session.Out(nil), rd.Frames...), Writes: append([]*store.Batch(nil), rd.Writes...), Load: rd.Load, Close: rd.Close, WakeIn: rd.WakeIn}
	c.Advance()
	return out
}

// A push that arrives while a read is outstanding may be missing from that
// read's snapshot: the core must read again rather than believe it has
// caught up (else the item waits until the next push or login).
func TestPushDuringOutstandingReadIsNotLost(t *testing.T) {
	c := newCore(4, 0)
	if rd := step(c, session.Start{}); rd.Load == nil {
		t.Fatal("Start did not ask for a read")
	}
	it := item(t, 1, "alice")
	step(c, session.Pushed{Seq: it.Seq, Data: it.Data}) // while the read is out
	rd := step(c, session.Loaded{})                     // the snapshot predates item 1
	if rd.Load == nil || rd.Load.From > 1 {
		t.Fatalf("after an empty read that raced a push: Load = %+v, want a new read from <= 1", rd.Load)
	}
}

// When an ack's receipts are refused (the sender's queue is full), the
// retry erases the same range without them, and a closed store is not
// retried. Any other failure to write the ack (it may be written in part)
// writes the whole ack again, receipts and all, once the session is woken
// after Ready.WakeIn, as often as it takes.
func TestAckRetryKeepsItsRange(t *testing.T) {
	var clock int64
	ack := func() *session.Core {
		var ids int64
		c := session.New("bob", &session.Config{
			Window: 4,
			Now:    func() int64 { return clock },
			NewID:  func() uint64 { ids++; return uint64(ids) },
		})
		step(c, session.Start{})
		step(c, session.Loaded{Items: []store.Item{item(t, 1, "alice"), item(t, 2, "alice")}})
		rd := step(c, session.Received{Frame: &wire.Frame{Kind: &wire.Frame_Ack{Ack: &wire.Ack{Seq: 2}}}})
		if len(rd.Writes) != 1 || rd.Writes[0].Acks[0].UpTo != 2 || len(rd.Writes[0].Appends) != 1 {
			t.Fatalf("ack wrote %+v, want an ack up to 2 with alice's receipt", rd.Writes)
		}
		return c
	}
	c := ack()
	rd := step(c, session.Committed{Result: store.Result{Err: fmt.Errorf("append to alice: %w", store.ErrQueueFull)}})
	if len(rd.Writes) != 1 || len(rd.Writes[0].Acks) != 1 || rd.Writes[0].Acks[0].UpTo != 2 || len(rd.Writes[0].Appends) != 0 {
		t.Fatalf("after a refused receipt wrote %+v, want an ack up to 2 alone", rd.Writes)
	}
	if rd = step(c, session.Committed{Result: store.Result{Err: store.ErrClosed}}); len(rd.Writes) != 0 || rd.Close != nil {
		t.Fatalf("against a closed store: writes %+v, close %v; want neither", rd.Writes, rd.Close)
	}

	c = ack()
	for try := 1; try <= 2; try++ {
		rd = step(c, session.Committed{Result: store.Result{Err: errors.New("disk on fire")}})
		if len(rd.Writes) != 0 || rd.Close != nil || rd.WakeIn <= 0 {
			t.Fatalf("failed ack %d: writes %+v, close %v, wake in %s; want no write yet and a wake-up", try, rd.Writes, rd.Close, rd.WakeIn)
		}
		if rd = step(c, session.Pushed{Seq: math.MaxUint64}); len(rd.Writes) != 0 {
			t.Fatalf("woken early after failed ack %d: wrote %+v", try, rd.Writes)
		}
		clock += int64(rd.WakeIn)
		rd = step(c, session.Pushed{Seq: math.MaxUint64})
		if len(rd.Writes) != 1 || rd.Writes[0].Acks[0].UpTo != 2 || len(rd.Writes[0].Appends) != 1 {
			t.Fatalf("woken after failed ack %d: wrote %+v, want the ack up to 2 with alice's receipt again", try, rd.Writes)
		}
	}
	if rd = step(c, session.Committed{}); len(rd.Writes) != 0 || rd.WakeIn != 0 {
		t.Fatalf("after the ack was written: writes %+v, wake in %s; want nothing more", rd.Writes, rd.WakeIn)
	}
}

// A client may not pile up requests without waiting for their answers.
func TestTooManyPendingRequestsCloseTheSession(t *testing.T) {
	c := newCore(4, 2)
	send := func(id uint64) session.Ready {
		return step(c, session.Received{Frame: &wire.Frame{Kind: &wire.Frame_Send{Send: &wire.Send{Id: id, To: "alice"}}}})
	}
	for id := uint64(1); id <= 2; id++ {
		if rd := send(id); rd.Close != nil {
			t.Fatalf("send %d closed the session: %v", id, rd.Close)
		}
	}
	rd := send(3)
	if rd.Close == nil || rd.Close.Code != wire.Error_BAD_REQUEST {
		t.Fatalf("third unanswered send: Close = %v, want BAD_REQUEST", rd.Close)
	}
}

// A Send within the frame limits can still make an item too large to
// deliver once the server stamps it: it is refused, not stored, or its
// recipient would be cut off at every login.
func TestSendTooLargeToDeliverIsRefused(t *testing.T) {
	c := newCore(4, 0)
	step(c, session.Start{})
	for _, size := range []int{wire.MaxItem, wire.MaxMessage} {
		send := &wire.Frame{Kind: &wire.Frame_Send{Send: &wire.Send{Id: uint64(size), To: "+14155550102", Body: make([]byte, size)}}}
		rd := step(c, session.Received{Frame: send})
		if len(rd.Writes) != 0 {
			t.Fatalf("a %d-byte body was stored", size)
		}
		if len(rd.Frames) != 1 || rd.Frames[0].Proto().GetError().GetCode() != wire.Error_TOO_LARGE || rd.Frames[0].Proto().GetError().GetId() != uint64(size) {
			t.Fatalf("a %d-byte body got %v, want TOO_LARGE for its id", size, rd.Frames)
		}
	}
	// Just under the limit is taken.
	send := &wire.Frame{Kind: &wire.Frame_Send{Send: &wire.Send{Id: 1, To: "+14155550102", Body: make([]byte, wire.MaxItem-100)}}}
	if rd := step(c, session.Received{Frame: send}); len(rd.Writes) != 1 {
		t.Fatalf("a message under the limit was refused: %+v", rd.Frames)
	}
}

// An ack covering more deliveries from one sender than a receipt may hold
// sends that sender several receipts, together naming every message.
func TestAckOfManySplitsReceipts(t *testing.T) {
	n := wire.MaxReceiptIDs + 5
	c := newCore(n, 0)
	step(c, session.Start{})
	items := make([]store.Item, n)
	for i := range items {
		items[i] = item(t, uint64(i+1), "alice")
	}
	if rd := step(c, session.Loaded{Items: items}); len(rd.Frames) != n {
		t.Fatalf("%d deliveries, want %d", len(rd.Frames), n)
	}
	rd := step(c, session.Received{Frame: &wire.Frame{Kind: &wire.Frame_Ack{Ack: &wire.Ack{Seq: uint64(n)}}}})
	if len(rd.Writes) != 1 {
		t.Fatalf("%d writes, want one batch", len(rd.Writes))
	}
	apps := rd.Writes[0].Appends
	if len(apps) != 2 {
		t.Fatalf("%d receipts, want 2", len(apps))
	}
	var ids []uint64
	for _, a := range apps {
		if a.To != "alice" {
			t.Fatalf("receipt to %q", a.To)
		}
		it, err := wire.DecodeItem(a.Data)
		if err != nil {
			t.Fatal(err)
		}
		r := it.GetReceipt()
		if len(r.Ids) > wire.MaxReceiptIDs || len(r.Ids) != len(r.ServerIds) {
			t.Fatalf("a receipt with %d ids and %d server ids", len(r.Ids), len(r.ServerIds))
		}
		ids = append(ids, r.Ids...)
	}
	for i, id := range ids {
		if id != uint64(i+1) {
			t.Fatalf("receipts name ids %v..., want 1..%d in order", ids[:min(len(ids), 5)], n)
		}
	}
	if len(ids) != n {
		t.Fatalf("receipts name %d messages, want %d", len(ids), n)
	}
}
