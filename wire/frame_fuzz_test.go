package wire

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// seedSendFrame is the encoding of a valid Send frame.
func seedSendFrame(tb testing.TB) []byte {
	tb.Helper()
	b, err := AppendFrame(nil, &Frame{Kind: &Frame_Send{Send: &Send{Id: 7, To: "+14155550101", Body: []byte("hello")}}})
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// unknownFieldFrame is a Frame holding only field 99, which no version of
// the schema defines.
func unknownFieldFrame() []byte {
	b := protowire.AppendTag(nil, 99, protowire.BytesType)
	return protowire.AppendBytes(b, []byte("from the future"))
}

// framed prefixes each message with its length.
func framed(msgs ...[]byte) []byte {
	var out []byte
	for _, m := range msgs {
		out = AppendHeader(out, len(m))
		out = append(out, m...)
	}
	return out
}

// FuzzNext feeds arbitrary stream bytes to Next and splits as a reader
// would: Next must never panic, never return a message over MaxMessage, and
// what it returns must account for the input exactly: framed again, the
// messages are the bytes they came from. ReadMessage, the blocking reader,
// must split the same stream the same way and stop for the same reason.
func FuzzNext(f *testing.F) {
	f.Add(framed(seedSendFrame(f)))
	f.Add([]byte{})
	f.Add([]byte{0x01, 0x00, 0x00, 'x'})                     // oversized prefix (65536)
	f.Add([]byte{0xff, 0xff, 0xff})                          // largest prefix
	f.Add([]byte{0x00, 0xff, 0xff})                          // MaxMessage, body missing
	f.Add(framed(unknownFieldFrame(), seedSendFrame(f))[:9]) // partial second message
	f.Add(framed(nil, nil, []byte("abc")))                   // empty messages
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		in := append([]byte(nil), data...)
		buf := data
		consumed := 0
		var msgs [][]byte
		tooLarge := false
		for {
			msg, rest, ok, err := Next(buf)
			if err != nil {
				if !errors.Is(err, ErrTooLarge) {
					t.Fatalf("Next error %v, want ErrTooLarge", err)
				}
				if ok || msg != nil {
					t.Fatalf("Next returned ok=%v msg of %d bytes with an error", ok, len(msg))
				}
				if len(buf) < HeaderLen {
					t.Fatalf("ErrTooLarge from a %d-byte buffer", len(buf))
				}
				n := int(buf[0])<<16 | int(buf[1])<<8 | int(buf[2])
				if n <= MaxMessage {
					t.Fatalf("ErrTooLarge for prefix %d", n)
				}
				tooLarge = true
				break
			}
			if !ok {
				if msg != nil {
					t.Fatalf("ok=false with a %d-byte message", len(msg))
				}
				if !bytes.Equal(rest, buf) {
					t.Fatalf("ok=false but rest (%d bytes) is not the whole buffer (%d bytes)", len(rest), len(buf))
				}
				if len(buf) >= HeaderLen {
					n := int(buf[0])<<16 | int(buf[1])<<8 | int(buf[2])
					if len(buf) >= HeaderLen+n {
						t.Fatalf("ok=false with a complete %d-byte message buffered", n)
					}
				}
				break
			}
			if len(msg) > MaxMessage {
				t.Fatalf("message of %d bytes, over MaxMessage", len(msg))
			}
			if HeaderLen+len(msg)+len(rest) != len(buf) {
				t.Fatalf("header %d + msg %d + rest %d != buffer %d", HeaderLen, len(msg), len(rest), len(buf))
			}
			n := int(buf[0])<<16 | int(buf[1])<<8 | int(buf[2])
			if n != len(msg) {
				t.Fatalf("prefix says %d, message is %d bytes", n, len(msg))
			}
			if !bytes.Equal(msg, in[consumed+HeaderLen:consumed+HeaderLen+n]) {
				t.Fatal("message is not the bytes after its prefix")
			}
			consumed += HeaderLen + n
			msgs = append(msgs, msg)
			buf = rest
		}
		var again []byte
		for _, m := range msgs {
			again = append(AppendHeader(again, len(m)), m...)
		}
		if !bytes.Equal(again, in[:consumed]) {
			t.Fatalf("the %d messages framed again are not the %d bytes they came from", len(msgs), consumed)
		}

		r := bytes.NewReader(in)
		for i, want := range msgs {
			got, err := ReadMessage(r, nil)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("ReadMessage %d: %d bytes, %v; Next split off %d bytes", i, len(got), err, len(want))
			}
		}
		_, err := ReadMessage(r, nil)
		switch {
		case tooLarge:
			if !errors.Is(err, ErrTooLarge) {
				t.Fatalf("after the last message ReadMessage says %v; Next says %v", err, ErrTooLarge)
			}
		case consumed == len(in):
			if err != io.EOF {
				t.Fatalf("at the end of the stream ReadMessage says %v, want io.EOF", err)
			}
		case err == nil || errors.Is(err, ErrTooLarge) || !(errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)):
			t.Fatalf("on a partial message ReadMessage says %v, want an EOF", err)
		}
		if !bytes.Equal(buf, in[consumed:]) {
			t.Fatal("unconsumed tail is not the end of the input")
		}
		if !bytes.Equal(data, in) {
			t.Fatal("Next modified its input")
		}
	})
}

// FuzzDecodeFrame feeds arbitrary bytes to DecodeFrame: it must never panic,
// and a frame it accepts must validate and survive re-encoding: decoded
// again it is the same frame, and encoded again the same bytes. The
// frames the server writes by hand (AppendDeliver, AppendSendAck) must be
// byte for byte what AppendFrame writes for any such frame it decodes.
func FuzzDecodeFrame(f *testing.F) {
	f.Add(seedSendFrame(f))
	f.Add([]byte{})
	f.Add([]byte{0x01, 0x00, 0x00}) // an oversized length prefix, as frame bytes
	f.Add(unknownFieldFrame())
	f.Add(append(unknownFieldFrame(), seedSendFrame(f)...))
	for _, fr := range []*Frame{
		{Kind: &Frame_Ack{Ack: &Ack{Seq: 3}}},
		{Kind: &Frame_Read{Read: &Read{Id: 1, To: "+14155550102", Ids: []uint64{1, 2, 3}}}},
		{Kind: &Frame_Ping{Ping: &Ping{Id: 9}}},
		{Kind: &Frame_Deliver{Deliver: &Deliver{Seq: 1, Item: &Item{Kind: &Item_Message{Message: &Message{From: "+14155550101", Id: 1, Body: []byte("x")}}}}}},
		{Kind: &Frame_Close{Close: &Close{Code: Error_BAD_FRAME, Text: "bye"}}},
		{Kind: &Frame_Send{Send: &Send{Id: 1, To: "+14155550102", Body: make([]byte, MaxBody+1)}}},
		{Kind: &Frame_Send{Send: &Send{Id: 1}}},
		{Kind: &Frame_Ack{}},
		{Kind: &Frame_SendAck{SendAck: &SendAck{Id: 1, ServerId: 2, Ts: 3}}},
		{Kind: &Frame_SendAck{SendAck: &SendAck{Id: 1}}},
		{Kind: &Frame_SendAck{SendAck: &SendAck{}}},
		{Kind: &Frame_Deliver{Deliver: &Deliver{Item: &Item{Kind: &Item_Receipt{Receipt: &Receipt{Kind: Receipt_READ, By: "+14155550101", Ids: []uint64{1, 300}, ServerIds: []uint64{2, 301}}}}}}},
		{Kind: &Frame_Deliver{Deliver: &Deliver{Seq: 300, Item: &Item{}}}},
	} {
		b, err := AppendFrame(nil, fr)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var fr Frame
		err := DecodeFrame(data, &fr)
		// Decoding into a frame that held a Send must give the same
		// answer as decoding into a new one.
		reused := previousSend()
		if rerr := DecodeFrameReusing(data, reused); (rerr == nil) != (err == nil) {
			t.Fatalf("fresh decode: %v; reusing decode: %v", err, rerr)
		} else if err == nil && !proto.Equal(&fr, reused) {
			t.Fatalf("reusing decode differs:\n fresh %v\nreused %v", &fr, reused)
		}
		if err != nil {
			return
		}
		if err := Validate(&fr); err != nil {
			t.Fatalf("DecodeFrame accepted a frame Validate rejects: %v", err)
		}
		enc, err := AppendFrame(nil, &fr)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		var again Frame
		if err := DecodeFrame(enc, &again); err != nil {
			t.Fatalf("decode of re-encoded frame: %v", err)
		}
		if !proto.Equal(&fr, &again) {
			t.Fatalf("round trip changed the frame:\n first %v\nsecond %v", &fr, &again)
		}
		if enc2, err := AppendFrame(nil, &again); err != nil || !bytes.Equal(enc2, enc) {
			t.Fatalf("encoded again: %x, %v; first encoding %x", enc2, err, enc)
		}
		checkFastFrame(t, &fr, enc)
	})
}

// checkFastFrame checks that the hand-written writer of fr's kind, if it
// has one, writes enc, AppendFrame's encoding of fr. They write only the
// fields this version knows, so a frame with others is not compared.
func checkFastFrame(t *testing.T, fr *Frame, enc []byte) {
	t.Helper()
	if len(fr.unknownFields) > 0 {
		return
	}
	var got []byte
	switch k := fr.Kind.(type) {
	case *Frame_SendAck:
		a := k.SendAck
		if len(a.unknownFields) > 0 {
			return
		}
		got = AppendSendAck(nil, a.Id, a.ServerId, a.Ts)
	case *Frame_Deliver:
		d := k.Deliver
		if len(d.unknownFields) > 0 || d.Item == nil {
			return // AppendDeliver always writes an item
		}
		item, err := EncodeItem(d.Item)
		if err != nil {
			t.Fatal(err)
		}
		got = AppendDeliver(nil, d.Seq, item)
	default:
		return
	}
	if !bytes.Equal(got, enc) {
		t.Fatalf("hand-written %T:\n got %x\nwant %x", fr.Kind, got, enc)
	}
}

// previousSend is a frame after a Send with every field set.
func previousSend() *Frame {
	return &Frame{Kind: &Frame_Send{Send: &Send{Id: 99, To: "+19999999999", Body: []byte("an earlier, longer body"), Media: &Media{Url: "http://x/m"}, Resend: true}}}
}

// A connection decodes its frames into one Frame: nothing of an earlier
// frame may show through in a later one.
func TestDecodeFrameReusingLeavesNothingBehind(t *testing.T) {
	fr := previousSend()
	for _, want := range []*Frame{
		{Kind: &Frame_Send{Send: &Send{Id: 1, To: "+14155550102"}}},
		{Kind: &Frame_Send{Send: &Send{Id: 2, To: "+14155550103", Body: []byte("hi")}}},
		{Kind: &Frame_Ack{Ack: &Ack{Seq: 4}}},
		{Kind: &Frame_Send{Send: &Send{Id: 3, To: "+14155550104", Body: []byte("a third, much longer body than before"), Resend: true}}},
		{Kind: &Frame_Send{Send: &Send{Id: 4, To: "+14155550104", Media: &Media{Url: "http://x/2", Size: 3}}}},
		{Kind: &Frame_Send{Send: &Send{Id: 5, To: "+14155550104", Body: []byte("x")}}},
	} {
		b, err := AppendFrame(nil, want)
		if err != nil {
			t.Fatal(err)
		}
		if err := DecodeFrameReusing(b, fr); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(fr, want) {
			t.Fatalf("decoded %v, want %v", fr, want)
		}
	}
}

func TestNext(t *testing.T) {
	send := seedSendFrame(t)
	one := framed(send)
	two := framed(send, []byte("second"))
	big := make([]byte, MaxMessage)
	for _, tc := range []struct {
		name     string
		in       []byte
		wantMsgs [][]byte
		wantRest []byte
		wantErr  error
	}{
		{name: "empty", in: nil, wantRest: nil},
		{name: "partial header", in: one[:2], wantRest: one[:2]},
		{name: "header only", in: one[:HeaderLen], wantRest: one[:HeaderLen]},
		{name: "partial body", in: one[:len(one)-1], wantRest: one[:len(one)-1]},
		{name: "exact", in: one, wantMsgs: [][]byte{send}},
		{name: "empty message", in: []byte{0, 0, 0}, wantMsgs: [][]byte{{}}},
		{name: "two back to back", in: two, wantMsgs: [][]byte{send, []byte("second")}},
		{name: "one and a partial", in: two[:len(one)+4], wantMsgs: [][]byte{send}, wantRest: two[len(one) : len(one)+4]},
		{name: "largest allowed", in: framed(big), wantMsgs: [][]byte{big}},
		{name: "oversized", in: []byte{0x01, 0x00, 0x00, 'x'}, wantRest: []byte{0x01, 0x00, 0x00, 'x'}, wantErr: ErrTooLarge},
		{name: "oversized header alone", in: []byte{0xff, 0xff, 0xff}, wantRest: []byte{0xff, 0xff, 0xff}, wantErr: ErrTooLarge},
		{name: "oversized after a good one", in: append(framed(send), 0x01, 0x00, 0x00), wantMsgs: [][]byte{send}, wantRest: []byte{0x01, 0x00, 0x00}, wantErr: ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			buf := tc.in
			var got [][]byte
			var err error
			for {
				var msg []byte
				var ok bool
				msg, buf, ok, err = Next(buf)
				if err != nil || !ok {
					break
				}
				got = append(got, msg)
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("error %v, want %v", err, tc.wantErr)
			}
			if len(got) != len(tc.wantMsgs) {
				t.Fatalf("got %d messages, want %d", len(got), len(tc.wantMsgs))
			}
			for i := range got {
				if !bytes.Equal(got[i], tc.wantMsgs[i]) {
					t.Fatalf("message %d is %q, want %q", i, got[i], tc.wantMsgs[i])
				}
			}
			if !bytes.Equal(buf, tc.wantRest) {
				t.Fatalf("rest is %q, want %q", buf, tc.wantRest)
			}
		})
	}
}

// Strings a client sends must be UTF-8: they are stored and forwarded, and
// a recipient's protobuf decoder would refuse the item, wedging its queue.
func TestDecodeFrameRefusesInvalidUTF8(t *testing.T) {
	bad := string([]byte{0xff, 0xfe})
	for name, fr := range map[string]*Frame{
		"send.to":       {Kind: &Frame_Send{Send: &Send{Id: 1, To: "+1" + bad}}},
		"read.to":       {Kind: &Frame_Read{Read: &Read{Id: 1, To: "+1" + bad, Ids: []uint64{1}}}},
		"media.caption": {Kind: &Frame_Send{Send: &Send{Id: 1, To: "+14155550102", Media: &Media{Url: "https://x/m/1", Caption: bad}}}},
		"media.mime":    {Kind: &Frame_Send{Send: &Send{Id: 1, To: "+14155550102", Media: &Media{Url: "https://x/m/1", Mime: bad}}}},
	} {
		b, err := AppendFrame(nil, fr)
		if err != nil {
			t.Fatalf("%s: encode: %v", name, err)
		}
		var got Frame
		if err := DecodeFrame(b, &got); err == nil {
			t.Errorf("%s: invalid UTF-8 was accepted", name)
		}
	}
}

// Fields this version does not know are not forwarded inside media.
func TestDecodeFrameDropsUnknownMediaFields(t *testing.T) {
	fr := &Frame{Kind: &Frame_Send{Send: &Send{Id: 1, To: "+14155550102", Media: &Media{Url: "https://x/m/1"}}}}
	b, err := AppendFrame(nil, fr)
	if err != nil {
		t.Fatal(err)
	}
	// Re-encode by hand with field 99 appended inside the media message.
	media, _ := fr.GetSend().GetMedia().MarshalVT()
	media = protowire.AppendBytes(protowire.AppendTag(media, 99, protowire.BytesType), []byte("smuggled"))
	send := protowire.AppendTag(nil, 1, protowire.VarintType)
	send = protowire.AppendVarint(send, 1)
	send = protowire.AppendBytes(protowire.AppendTag(send, 2, protowire.BytesType), []byte("+14155550102"))
	send = protowire.AppendBytes(protowire.AppendTag(send, 4, protowire.BytesType), media)
	b = protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), send)
	var got Frame
	if err := DecodeFrame(b, &got); err != nil {
		t.Fatal(err)
	}
	item, err := EncodeItem(&Item{Kind: &Item_Message{Message: &Message{Media: got.GetSend().GetMedia()}}})
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(item, []byte("smuggled")) {
		t.Fatal("an unknown media field was carried into the stored item")
	}
}
