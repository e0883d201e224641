package session_test

import (
	"testing"

	"github.com/parleyhq/parley/session"
	"github.com/parleyhq/parley/store"
	"github.com/parleyhq/parley/wire"
)

// Benchmarks of the session core's hot path, with no socket and no store:
// the protocol logic's own cost (and allocations) per message.

func benchCore(window int) *session.Core {
	var ids uint64
	return session.New("+15550000001", &session.Config{
		Window: window,
		Now:    func() int64 { return 1_700_000_000_000_000_000 },
		NewID:  func() uint64 { ids++; return ids },
	})
}

func benchItem(b *testing.B) []byte {
	data, err := wire.EncodeItem(&wire.Item{Kind: &wire.Item_Message{Message: &wire.Message{
		From: "+15550000000", Id: 1 << 62, ServerId: 1 << 40, Ts: 1_700_000_000_000_000_000, Body: make([]byte, 64),
	}}})
	if err != nil {
		b.Fatal(err)
	}
	return data
}

// started makes c a started, caught-up session that has delivered seq 1.
func started(b *testing.B, c *session.Core, data []byte) {
	c.Step(session.Start{})
	if c.Ready().Load == nil {
		b.Fatal("Start did not ask for a queue read")
	}
	c.Advance()
	c.Step(session.Loaded{Items: []store.Item{{Seq: 1, Data: data}}})
	if len(c.Ready().Frames) != 1 {
		b.Fatal("the loaded item was not delivered")
	}
	c.Advance()
}

// BenchmarkSendCommitted: a Send frame in (one store batch out), then its
// commit result in (the SendAck out).
func BenchmarkSendCommitted(b *testing.B) {
	c := benchCore(256)
	send := &wire.Frame{Kind: &wire.Frame_Send{Send: &wire.Send{Id: 1, To: "+15550000002", Body: make([]byte, 64)}}}
	res := store.Result{Seqs: []uint64{1}}
	b.ReportAllocs()
	for b.Loop() {
		send.GetSend().Id++
		c.StepReceived(send)
		if len(c.Ready().Writes) != 1 {
			b.Fatal("no store write for a Send")
		}
		c.Advance()
		c.StepCommitted(res)
		if len(c.Ready().Frames) != 1 {
			b.Fatal("no SendAck")
		}
		c.Advance()
	}
}

// BenchmarkPushed: a committed item pushed to a live, caught-up session,
// delivered at once (the window never fills here).
func BenchmarkPushed(b *testing.B) {
	data := benchItem(b)
	c := benchCore(1 << 30)
	started(b, c, data)
	seq := uint64(1)
	b.ReportAllocs()
	for b.Loop() {
		seq++
		c.StepPushed(seq, data)
		if len(c.Ready().Frames) != 1 {
			b.Fatal("push not delivered")
		}
		c.Advance()
	}
}

// BenchmarkPushedAck: the receiver's steady state at window 1: an item
// pushed and delivered, the client's Ack in (the erase and the delivered
// receipt out as one batch), and that batch's commit result.
func BenchmarkPushedAck(b *testing.B) {
	data := benchItem(b)
	c := benchCore(256)
	started(b, c, data)
	ack := &wire.Frame{Kind: &wire.Frame_Ack{Ack: &wire.Ack{Seq: 1}}}
	res := store.Result{Seqs: []uint64{1}}
	seq := uint64(1)
	b.ReportAllocs()
	for b.Loop() {
		ack.GetAck().Seq = seq
		c.StepReceived(ack)
		if rd := c.Ready(); len(rd.Writes) != 1 || len(rd.Writes[0].Appends) != 1 {
			b.Fatal("the ack did not make one batch with one receipt")
		}
		c.Advance()
		c.StepCommitted(res)
		c.Advance()
		seq++
		c.StepPushed(seq, data)
		if len(c.Ready().Frames) != 1 {
			b.Fatal("push not delivered")
		}
		c.Advance()
	}
}

// BenchmarkAck: the client's cumulative Ack of one delivered message (the
// erase and the delivered receipt out as one batch) and that batch's commit
// result; the items are delivered before the timer starts.
func BenchmarkAck(b *testing.B) {
	data := benchItem(b)
	c := benchCore(b.N + 1)
	started(b, c, data)
	for seq := uint64(2); seq <= uint64(b.N)+1; seq++ {
		c.StepPushed(seq, data)
		c.Advance()
	}
	ack := &wire.Frame{Kind: &wire.Frame_Ack{Ack: &wire.Ack{}}}
	res := store.Result{Seqs: []uint64{1}}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ack.GetAck().Seq = uint64(i) + 1
		c.StepReceived(ack)
		if rd := c.Ready(); len(rd.Writes) != 1 {
			b.Fatal("the ack made no batch")
		}
		c.Advance()
		c.StepCommitted(res)
		c.Advance()
	}
}
