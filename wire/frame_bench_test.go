package wire

import (
	"testing"

	"google.golang.org/protobuf/proto"
)

// Benchmarks of the frame hot path: what every message costs to encode and
// decode on each hop (client Send in, Deliver out, the queue item between),
// and splitting messages off a read buffer.

func benchSend() *Frame {
	return &Frame{Kind: &Frame_Send{Send: &Send{Id: 1 << 62, To: "+15550000001", Body: make([]byte, 64)}}}
}

func benchDeliver() *Frame {
	return &Frame{Kind: &Frame_Deliver{Deliver: &Deliver{Seq: 123456, Item: &Item{Kind: &Item_Message{Message: &Message{
		From: "+15550000000", Id: 1 << 62, ServerId: 1 << 40, Ts: 1_700_000_000_000_000_000, Body: make([]byte, 64),
	}}}}}}
}

func benchEncode(b *testing.B, f *Frame) {
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, err = AppendFrame(buf[:0], f); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(len(buf)))
}

func benchDecode(b *testing.B, f *Frame) {
	enc, err := AppendFrame(nil, f)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(enc)))
	b.ReportAllocs()
	for b.Loop() {
		var out Frame
		if err := DecodeFrame(enc, &out); err != nil {
			b.Fatal(err)
		}
	}
}

func benchRoundTrip(b *testing.B, f *Frame) {
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, err = AppendFrame(buf[:0], f); err != nil {
			b.Fatal(err)
		}
		var out Frame
		if err := DecodeFrame(buf, &out); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(len(buf)))
}

func BenchmarkSendFrame(b *testing.B) {
	b.Run("encode", func(b *testing.B) { benchEncode(b, benchSend()) })
	b.Run("decode", func(b *testing.B) { benchDecode(b, benchSend()) })
	b.Run("roundtrip", func(b *testing.B) { benchRoundTrip(b, benchSend()) })
}

func BenchmarkDeliverFrame(b *testing.B) {
	b.Run("encode", func(b *testing.B) { benchEncode(b, benchDeliver()) })
	b.Run("decode", func(b *testing.B) { benchDecode(b, benchDeliver()) })
	b.Run("roundtrip", func(b *testing.B) { benchRoundTrip(b, benchDeliver()) })
}

// BenchmarkItem: the queue item a Send becomes (encoded by the session,
// decoded again to deliver it).
func BenchmarkItem(b *testing.B) {
	it := benchDeliver().GetDeliver().GetItem()
	b.Run("encode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := EncodeItem(it); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decode", func(b *testing.B) {
		enc, err := proto.Marshal(it)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := DecodeItem(enc); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkNext splits a read buffer holding 64 length-prefixed messages of
// 110 bytes (a sealed 64-byte Send), as the event loop does per read.
func BenchmarkNext(b *testing.B) {
	const n, size = 64, 110
	var stream []byte
	for range n {
		stream = AppendHeader(stream, size)
		stream = append(stream, make([]byte, size)...)
	}
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	for b.Loop() {
		buf, count := stream, 0
		for {
			_, rest, ok, err := Next(buf)
			if err != nil {
				b.Fatal(err)
			}
			if !ok {
				break
			}
			buf = rest
			count++
		}
		if count != n {
			b.Fatalf("split %d messages, want %d", count, n)
		}
	}
}
