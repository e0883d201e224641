package wire

import (
	"bytes"
	"math"
	"testing"
)

func fastItems() []*Item {
	return []*Item{
		{Kind: &Item_Message{Message: &Message{From: "+14155550101", Id: 7, ServerId: 1001, Ts: 1_800_000_000_000_000_000, Body: []byte("hello")}}},
		{Kind: &Item_Message{Message: &Message{From: "+14155550101", Id: math.MaxUint64, ServerId: math.MaxUint64, Ts: -1, Body: make([]byte, 40<<10)}}},
		{Kind: &Item_Message{Message: &Message{From: "+1", Media: &Media{Url: "http://x/m/1", Size: 5, Sha256: make([]byte, 32), Thumbnail: []byte{1, 2, 3}, Caption: "c"}}}},
		{Kind: &Item_Message{Message: &Message{}}},
		{Kind: &Item_Receipt{Receipt: &Receipt{Kind: Receipt_DELIVERED, By: "+14155550102", Ids: []uint64{1, 2, 3}, ServerIds: []uint64{4, 5, 6}, Ts: 9}}},
		{Kind: &Item_Receipt{Receipt: &Receipt{Kind: Receipt_READ, By: "+14155550102"}}},
	}
}

// The hand-written frames are byte for byte what the generated marshaller
// writes, so clients cannot tell them apart.
func TestFastFramesMatchMarshal(t *testing.T) {
	for i, it := range fastItems() {
		data, err := EncodeItem(it)
		if err != nil {
			t.Fatal(err)
		}
		for _, seq := range []uint64{0, 1, 300, math.MaxUint64} {
			want, err := AppendFrame(nil, &Frame{Kind: &Frame_Deliver{Deliver: &Deliver{Seq: seq, Item: it}}})
			if err != nil {
				t.Fatal(err)
			}
			if got := AppendDeliver([]byte("prefix"), seq, data); !bytes.Equal(got[6:], want) {
				t.Errorf("item %d seq %d: AppendDeliver\n got %x\nwant %x", i, seq, got[6:], want)
			}
		}
	}
	for _, a := range []*SendAck{{}, {Id: 1}, {ServerId: 2}, {Ts: 3}, {Id: math.MaxUint64, ServerId: math.MaxUint64, Ts: math.MinInt64}, {Id: 5, ServerId: 6, Ts: 1_800_000_000_000_000_000}} {
		want, err := AppendFrame(nil, &Frame{Kind: &Frame_SendAck{SendAck: a}})
		if err != nil {
			t.Fatal(err)
		}
		if got := AppendSendAck(nil, a.Id, a.ServerId, a.Ts); !bytes.Equal(got, want) {
			t.Errorf("%+v: AppendSendAck\n got %x\nwant %x", a, got, want)
		}
	}
}

func TestReadItemHeadAgreesWithDecode(t *testing.T) {
	for i, it := range fastItems() {
		data, err := EncodeItem(it)
		if err != nil {
			t.Fatal(err)
		}
		checkHead(t, i, data)
	}
	if _, err := ReadItemHead([]byte{0x0a, 0x05, 0x0a}); err == nil {
		t.Error("a truncated item read without error")
	}
}

func checkHead(t *testing.T, name any, data []byte) {
	t.Helper()
	h, err := ReadItemHead(data)
	it, derr := DecodeItem(data)
	if derr != nil || err != nil {
		// Not an item (ReadItemHead is the stricter: it refuses field
		// numbers protobuf does not allow, which the generated decoder
		// truncates): it must only not crash.
		if _, ok := name.(int); ok && err != nil {
			t.Fatalf("item %v: %v", name, err)
		}
		return
	}
	m := it.GetMessage()
	if h.Message != (m != nil) {
		t.Fatalf("%v: head says message=%v, item is %T", name, h.Message, it.Kind)
	}
	if m != nil && (string(h.From) != m.From || h.ID != m.Id || h.ServerID != m.ServerId || h.TS != m.Ts) {
		t.Fatalf("%v: head %+v, message %+v", name, h, m)
	}
}

// FuzzReadItemHead: items come from the disk, not the network, but a
// corrupt one must be an error, never a crash or a wrong head.
func FuzzReadItemHead(f *testing.F) {
	for _, it := range fastItems() {
		data, err := EncodeItem(it)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, data []byte) {
		checkHead(t, "fuzz", data)
	})
}

func BenchmarkDeliverFast(b *testing.B) {
	data, err := EncodeItem(fastItems()[0])
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		h, err := ReadItemHead(data)
		if err != nil || !h.Message {
			b.Fatal(err)
		}
		buf = AppendDeliver(buf[:0], 42, data)
	}
}

func TestFastItemsMatchMarshal(t *testing.T) {
	for i, it := range fastItems() {
		want, err := EncodeItem(it)
		if err != nil {
			t.Fatal(err)
		}
		var got []byte
		switch k := it.Kind.(type) {
		case *Item_Message:
			m := k.Message
			got = AppendMessageItem([]byte("x"), m.From, m.Id, m.ServerId, m.Ts, m.Body, m.Media)[1:]
		case *Item_Receipt:
			r := k.Receipt
			got = AppendReceiptItem([]byte("x"), r.Kind, r.By, len(r.Ids), func(i int) (uint64, uint64) { return r.Ids[i], r.ServerIds[i] }, r.Ts)[1:]
		}
		if !bytes.Equal(got, want) {
			t.Errorf("item %d:\n got %x\nwant %x", i, got, want)
		}
	}
}

func BenchmarkMessageItem(b *testing.B) {
	body := make([]byte, 64)
	b.ReportAllocs()
	for b.Loop() {
		_ = AppendMessageItem(nil, "+14155550101", 7, 1001, 1_800_000_000_000_000_000, body, nil)
	}
}
