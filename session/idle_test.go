package session

import (
	"testing"
	"unsafe"

	"github.com/parleyhq/parley/store"
	"github.com/parleyhq/parley/wire"
)

// A server keeps a Core per logged-in connection, nearly all of them idle:
// once nothing is in flight or pending, a Core holds no buffers and stays
// within its budget.
func TestIdleCoreHoldsNothing(t *testing.T) {
	if size := unsafe.Sizeof(Core{}); size > 48 {
		t.Errorf("Core is %d bytes, over its budget of 48 (every idle connection pays it)", size)
	}
	var clock, ids int64
	c := New("bob", &Config{
		Now:   func() int64 { clock++; return clock },
		NewID: func() uint64 { ids++; return uint64(ids) },
	})
	step := func(ev any) Ready {
		c.Step(ev)
		rd := c.Ready()
		c.Advance()
		return rd
	}
	idle := func(when string) {
		t.Helper()
		if c.work != nil {
			t.Errorf("%s: the idle core still holds its work struct (%d in flight, %d pending)", when, len(c.work.inflight), len(c.work.pending))
		}
	}
	// A read asked for is work in progress (the caller performs it at
	// once); once it is answered, the caught-up session is idle.
	step(Start{})
	step(Loaded{})
	idle("after the first read found the queue empty")
	c = New("bob", c.cfg)
	step(Start{})
	data, err := wire.EncodeItem(&wire.Item{Kind: &wire.Item_Message{Message: &wire.Message{From: "alice", Id: 1, ServerId: 101}}})
	if err != nil {
		t.Fatal(err)
	}
	if rd := step(Loaded{Items: []store.Item{{Seq: 1, Data: data}}}); len(rd.Frames) != 1 {
		t.Fatalf("the loaded item was not delivered: %+v", rd)
	}
	if c.work == nil {
		t.Fatal("a delivery awaiting its ack was forgotten")
	}
	if rd := step(Received{Frame: &wire.Frame{Kind: &wire.Frame_Ack{Ack: &wire.Ack{Seq: 1}}}}); len(rd.Writes) != 1 {
		t.Fatalf("the ack made no write: %+v", rd)
	}
	step(Committed{})
	idle("after the ack was committed")
	step(Received{Frame: &wire.Frame{Kind: &wire.Frame_Send{Send: &wire.Send{Id: 1, To: "alice"}}}})
	if rd := step(Committed{}); len(rd.Frames) != 1 || rd.Frames[0].Proto().GetSendAck() == nil {
		t.Fatalf("no SendAck: %+v", rd)
	}
	idle("after a send was acknowledged")
}
