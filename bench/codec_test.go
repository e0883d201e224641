package bench

import (
	"slices"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/parleyhq/parley/wire"
)

// The hand-written codec must agree with the generated one.

func TestCodecEncodesLikeProto(t *testing.T) {
	for _, tc := range []struct {
		name string
		got  []byte
		want *wire.Frame
	}{
		{"send", appendSend(nil, 1<<40+7, "+15550000001", []byte("hello"), false),
			&wire.Frame{Kind: &wire.Frame_Send{Send: &wire.Send{Id: 1<<40 + 7, To: "+15550000001", Body: []byte("hello")}}}},
		{"send empty body", appendSend(nil, 1, "+15550000001", nil, false),
			&wire.Frame{Kind: &wire.Frame_Send{Send: &wire.Send{Id: 1, To: "+15550000001"}}}},
		{"resend", appendSend(nil, 12, "+15550000001", []byte("again"), true),
			&wire.Frame{Kind: &wire.Frame_Send{Send: &wire.Send{Id: 12, To: "+15550000001", Body: []byte("again"), Resend: true}}}},
		{"ack", appendAck(nil, 300), &wire.Frame{Kind: &wire.Frame_Ack{Ack: &wire.Ack{Seq: 300}}}},
		{"ping", appendPing(nil, 9), &wire.Frame{Kind: &wire.Frame_Ping{Ping: &wire.Ping{Id: 9}}}},
	} {
		var f wire.Frame
		if err := wire.DecodeFrame(tc.got, &f); err != nil {
			t.Errorf("%s: does not decode: %v", tc.name, err)
			continue
		}
		if !proto.Equal(&f, tc.want) {
			t.Errorf("%s: decodes to %v, want %v", tc.name, &f, tc.want)
		}
	}
}

func TestCodecDecodesLikeProto(t *testing.T) {
	enc := func(f *wire.Frame) []byte {
		b, err := proto.Marshal(f)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var f frame
	check := func(name string, b []byte, want frame) {
		t.Helper()
		if err := parseFrame(b, &f); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if f.kind != want.kind || f.id != want.id || f.serverID != want.serverID || f.code != want.code ||
			string(f.text) != string(want.text) || f.after != want.after || f.seq != want.seq || f.isMsg != want.isMsg || f.isRcpt != want.isRcpt ||
			string(f.from) != string(want.from) || f.msgID != want.msgID || f.msgSrvID != want.msgSrvID ||
			string(f.body) != string(want.body) || f.rKind != want.rKind || string(f.by) != string(want.by) || !slices.Equal(f.ids, want.ids) {
			t.Errorf("%s: parsed %+v, want %+v", name, f, want)
		}
	}
	check("sendack", enc(&wire.Frame{Kind: &wire.Frame_SendAck{SendAck: &wire.SendAck{Id: 5, ServerId: 77, Ts: 123}}}),
		frame{kind: fSendAck, id: 5, serverID: 77})
	check("error", enc(&wire.Frame{Kind: &wire.Frame_Error{Error: &wire.Error{Id: 5, Code: wire.Error_QUEUE_FULL, Text: "full"}}}),
		frame{kind: fError, id: 5, code: int32(wire.Error_QUEUE_FULL), text: []byte("full")})
	check("close", enc(&wire.Frame{Kind: &wire.Frame_Close{Close: &wire.Close{Code: wire.Error_REPLACED, Text: "newer"}}}),
		frame{kind: fClose, code: int32(wire.Error_REPLACED), text: []byte("newer")})
	check("close with a hint", enc(&wire.Frame{Kind: &wire.Frame_Close{Close: &wire.Close{Code: wire.Error_SHUTTING_DOWN, Text: "stopping", ReconnectAfterMs: 340}}}),
		frame{kind: fClose, code: int32(wire.Error_SHUTTING_DOWN), text: []byte("stopping"), after: 340})
	check("pong", enc(&wire.Frame{Kind: &wire.Frame_Pong{Pong: &wire.Pong{Id: 3}}}), frame{kind: fPong, id: 3})
	check("deliver message", enc(&wire.Frame{Kind: &wire.Frame_Deliver{Deliver: &wire.Deliver{Seq: 42, Item: &wire.Item{Kind: &wire.Item_Message{
		Message: &wire.Message{From: "+15550000002", Id: 1 << 62, ServerId: 9, Ts: 1, Body: []byte("hi")}}}}}}),
		frame{kind: fDeliver, seq: 42, isMsg: true, from: []byte("+15550000002"), msgID: 1 << 62, msgSrvID: 9, body: []byte("hi")})
	check("deliver receipt", enc(&wire.Frame{Kind: &wire.Frame_Deliver{Deliver: &wire.Deliver{Seq: 43, Item: &wire.Item{Kind: &wire.Item_Receipt{
		Receipt: &wire.Receipt{Kind: wire.Receipt_DELIVERED, By: "+15550000003", Ids: []uint64{1, 2, 1 << 60}, ServerIds: []uint64{4, 5, 6}, Ts: 2}}}}}}),
		frame{kind: fDeliver, seq: 43, isRcpt: true, rKind: receiptDelivered, by: []byte("+15550000003"), ids: []uint64{1, 2, 1 << 60}})

	// Unpacked repeated ids are valid protobuf too.
	r := protowire.AppendTag(nil, 1, protowire.VarintType)
	r = protowire.AppendVarint(r, receiptRead)
	for _, id := range []uint64{7, 8} {
		r = protowire.AppendTag(r, 3, protowire.VarintType)
		r = protowire.AppendVarint(r, id)
	}
	it := protowire.AppendTag(nil, 2, protowire.BytesType)
	it = protowire.AppendBytes(it, r)
	d := protowire.AppendTag(nil, 1, protowire.VarintType)
	d = protowire.AppendVarint(d, 44)
	d = protowire.AppendTag(d, 2, protowire.BytesType)
	d = protowire.AppendBytes(d, it)
	fr := protowire.AppendTag(nil, fDeliver, protowire.BytesType)
	fr = protowire.AppendBytes(fr, d)
	check("unpacked ids", fr, frame{kind: fDeliver, seq: 44, isRcpt: true, rKind: receiptRead, ids: []uint64{7, 8}})

	for _, bad := range [][]byte{{0x5a, 0x05, 0x08}, {0xff}} {
		if err := parseFrame(bad, &f); err == nil {
			t.Errorf("parseFrame(%x) accepted a truncated frame", bad)
		}
	}
}

func BenchmarkParseDeliver(b *testing.B) {
	buf, _ := proto.Marshal(&wire.Frame{Kind: &wire.Frame_Deliver{Deliver: &wire.Deliver{Seq: 42, Item: &wire.Item{Kind: &wire.Item_Message{
		Message: &wire.Message{From: "+15550000002", Id: 1 << 62, ServerId: 9, Ts: 1, Body: make([]byte, 64)}}}}}})
	var f frame
	b.ReportAllocs()
	for b.Loop() {
		if err := parseFrame(buf, &f); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendSend(b *testing.B) {
	body := make([]byte, 64)
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		buf = appendSend(buf[:0], 1<<62, "+15550000001", body, false)
	}
}

// One read can bring the handshake reply and the first deliveries together:
// a reader must handle what is buffered before blocking for more (it used
// to block, and a drain waited for deliveries it already held).
func TestWaitUsesBufferedMessages(t *testing.T) {
	msg := wire.AppendHeader(nil, 5)
	msg = append(msg, "hello"...)
	// A message, then part of a header; no socket, so reading would panic.
	c := &conn{rbuf: append(msg, 0, 0), w: len(msg) + 2}
	if err := c.wait(); err != nil {
		t.Fatal(err)
	}
	got, ok, err := c.split()
	if err != nil || !ok || string(got) != "hello" {
		t.Fatalf("split = %q, %v, %v", got, ok, err)
	}
}

// A receiver's jump past sends the server refused (retryable refusals are
// not sent again outside a failover run) keeps the order and loses
// nothing: only a jump past an accepted message counts as lost. A cluster
// refusing sends while it formed made the loss check report 33 lost.
func TestJumpsPastRefusedSendsAreNoLoss(t *testing.T) {
	v := &receiver{gaps: [][2]uint64{{3, 3}, {7, 8}, {10, 11}}}
	refused := map[uint64]bool{3: true, 7: true, 8: true, 10: true}
	if got := v.jumpsOverAccepted(refused); got != 1 {
		t.Fatalf("jumps past an accepted message: %d, want 1 (the one past 11)", got)
	}
	if got := v.jumpsOverAccepted(nil); got != 3 {
		t.Fatalf("with no sends refused: %d, want all 3", got)
	}
}
