package wire

import (
	"bytes"
	"encoding/hex"
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
		if _, err := ReadItemHead(data); err != nil {
			t.Fatalf("item %d: %v", i, err)
		}
		checkHead(t, data)
	}
	// Items no server writes, which a corrupt store could hold. Each is
	// also in testdata/fuzz/FuzzReadItemHead.
	for _, tc := range []struct {
		name string
		item string // hex
	}{
		// Item is a oneof: the receipt, last, is what DecodeItem keeps.
		{"receipt after a message", "0a060a022b311005120412022b32"},
		{"message after a receipt", "120412022b320a060a022b311005"},
		// The second message merges into the first: From from the
		// first, ID from the second.
		{"two messages", "0a060a022b3110050a021007"},
		// A receipt whose field 6 is a fixed64 cut short.
		{"malformed receipt", "120430303130"},
		{"malformed media", "0a04320230ff"},
		{"from as a varint", "0a020801"},
		{"id as bytes", "0a03120100"},
		{"message as a varint", "0801"},
		{"receipt ids packed, cut short", "12031a01ff"},
		{"truncated", "0a050a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data, err := hex.DecodeString(tc.item)
			if err != nil {
				t.Fatal(err)
			}
			checkHead(t, data)
		})
	}
}

// checkHead checks ReadItemHead against the generated decoder: whatever
// ReadItemHead accepts, DecodeItem accepts, with the same head; and
// whatever DecodeItem accepts, once written out again as the server writes
// items (without fields this version does not know), ReadItemHead accepts
// with the same head. ReadItemHead may refuse more than DecodeItem:
// protowire is stricter about varints, field numbers and groups than the
// generated code, and neither is in an item the server wrote.
func checkHead(t *testing.T, data []byte) {
	t.Helper()
	h, err := ReadItemHead(data)
	it, derr := DecodeItem(data)
	switch {
	case err == nil && derr != nil:
		t.Fatalf("ReadItemHead accepted %x as %+v; DecodeItem refuses it: %v", data, h, derr)
	case err == nil:
		sameHead(t, data, h, it)
	}
	if derr != nil {
		return
	}
	dropUnknown(it)
	again, err := EncodeItem(it)
	if err != nil {
		t.Fatalf("re-encode %v: %v", it, err)
	}
	h, err = ReadItemHead(again)
	if err != nil {
		t.Fatalf("ReadItemHead refused %x, the re-encoding of %v: %v", again, it, err)
	}
	sameHead(t, again, h, it)
}

func sameHead(t *testing.T, data []byte, h ItemHead, it *Item) {
	t.Helper()
	m := it.GetMessage()
	if h.Message != (m != nil) {
		t.Fatalf("%x: head says message=%v, DecodeItem gives %T", data, h.Message, it.Kind)
	}
	if m != nil && (string(h.From) != m.From || h.ID != m.Id || h.ServerID != m.ServerId || h.TS != m.Ts) {
		t.Fatalf("%x: head {From:%q ID:%d ServerID:%d TS:%d}, DecodeItem gives %v", data, h.From, h.ID, h.ServerID, h.TS, m)
	}
}

// dropUnknown clears the fields this version does not know, which the
// generated code keeps and writes out again.
func dropUnknown(it *Item) {
	it.unknownFields = nil
	switch k := it.Kind.(type) {
	case *Item_Message:
		k.Message.unknownFields = nil
		if md := k.Message.Media; md != nil {
			md.unknownFields = nil
		}
	case *Item_Receipt:
		k.Receipt.unknownFields = nil
	}
}

// FuzzReadItemHead: items come from the disk, not the network, but a
// corrupt one must be an error, never a crash or a head other than
// DecodeItem's (see checkHead).
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
		checkHead(t, data)
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
