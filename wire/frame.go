// Package wire is Parley's native protocol: the protobuf schema of frames
// (generated from proto/parley.proto) and the framing that carries them.
//
// On the byte stream every message — the two handshake messages and every
// Noise transport message after them — is preceded by a 3-byte big-endian
// length. A length over MaxMessage is a protocol error: Noise messages
// cannot be longer, so such a length can only be garbage or an attack.
//
// After a successful login the client's first transport message is its
// proof: it may be empty (the SDK sends an empty one at once), and the
// server starts the session, replacing an older connection of the same
// account, only when it decrypts. A replayed first handshake message gets
// a reply its sender cannot use, and no session.
package wire

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"unicode/utf8"
)

const (
	// HeaderLen is the size of the length prefix.
	HeaderLen = 3
	// MaxMessage is the largest message the stream may carry: Noise's own
	// limit on one transport message (64 KiB - 1).
	MaxMessage = 65535
	// MaxBody bounds Send.body so that any frame stays under MaxMessage
	// after the server stamps it and Noise adds its tag (with a media
	// attachment, body + thumbnail + caption share the same room).
	MaxBody = 40 << 10
	// MaxPhone bounds phone-number fields: E.164 allows 15 digits and a '+'.
	MaxPhone = 16
	// MaxReadIDs bounds Read.ids.
	MaxReadIDs = 1024
	// MaxThumbnail bounds Media.thumbnail: a preview, not the picture.
	MaxThumbnail = 16 << 10
	// MaxCaption bounds Media.caption.
	MaxCaption = 4 << 10
	// MaxMediaText bounds Media's url, id and mime.
	MaxMediaText = 2048
	// MaxMediaKey bounds Media.key.
	MaxMediaKey = 128
	// MaxItem bounds an encoded queue item: the largest a Deliver frame
	// can carry in one transport message, after the frame's own fields
	// (at most 19 bytes: see AppendDeliver) and the cipher's 16-byte tag.
	// A Send within MaxBody can still make a bigger item once the server
	// stamps it (sender, ids, time), so the server checks this too.
	MaxItem = MaxMessage - 16 - 19
	// MaxReceiptIDs bounds the ids in one receipt item; a receipt for
	// more is split.
	MaxReceiptIDs = 1024
)

// ErrTooLarge reports a length prefix over MaxMessage.
var ErrTooLarge = errors.New("message longer than 65535 bytes")

// AppendHeader appends the length prefix for a message of n bytes.
func AppendHeader(dst []byte, n int) []byte {
	return append(dst, byte(n>>16), byte(n>>8), byte(n))
}

// PutHeader writes the length prefix for n into b[:3].
func PutHeader(b []byte, n int) {
	b[0], b[1], b[2] = byte(n>>16), byte(n>>8), byte(n)
}

// Next splits the first complete message off buf. It returns ok=false when
// buf holds only part of one, and ErrTooLarge when the prefix is over the
// limit (the stream cannot be trusted after that).
func Next(buf []byte) (msg, rest []byte, ok bool, err error) {
	if len(buf) < HeaderLen {
		return nil, buf, false, nil
	}
	n := int(buf[0])<<16 | int(buf[1])<<8 | int(buf[2])
	if n > MaxMessage {
		return nil, buf, false, ErrTooLarge
	}
	if len(buf) < HeaderLen+n {
		return nil, buf, false, nil
	}
	return buf[HeaderLen : HeaderLen+n], buf[HeaderLen+n:], true, nil
}

// ReadMessage reads one length-prefixed message from r into buf (grown as
// needed) and returns it. For blocking readers such as the client SDK.
func ReadMessage(r io.Reader, buf []byte) ([]byte, error) {
	var h [HeaderLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	n := int(h[0])<<16 | int(h[1])<<8 | int(h[2])
	if n > MaxMessage {
		return nil, ErrTooLarge
	}
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, fmt.Errorf("read %d-byte message: %w", n, err)
	}
	return buf, nil
}

// DecodeFrame parses one frame and checks the limits the schema cannot
// express. A frame with no known kind set is an error: it is either from a
// newer protocol or garbage, and either way the server cannot act on it.
//
// Frames are decoded by code that vtprotobuf generates
// (parley_vtproto.pb.go): no reflection, about half the CPU and fewer
// allocations than proto.Unmarshal on the per-message path. Unlike
// proto.Unmarshal it does not check that strings are UTF-8; Validate does,
// for every string a client sends.
func DecodeFrame(b []byte, f *Frame) error {
	f.Reset()
	return decodeFrame(b, f)
}

// decodeFrame decodes b into a frame cleared for it.
func decodeFrame(b []byte, f *Frame) error {
	if err := f.UnmarshalVT(b); err != nil {
		return fmt.Errorf("decode frame: %w", err)
	}
	return Validate(f)
}

// DecodeFrameReusing is DecodeFrame into a frame that held an earlier one:
// if that was a Send, its structs and its body's room are reused (the
// generated decoder keeps a oneof member of the same kind and appends bytes
// into the room it finds), so a connection's steady stream of Sends costs
// one allocation each, for the recipient's name, rather than five. Nothing
// may hold on to the earlier frame's parts.
func DecodeFrameReusing(b []byte, f *Frame) error {
	if k, ok := f.Kind.(*Frame_Send); ok && k.Send != nil {
		s := k.Send
		body := s.Body[:0]
		s.Reset()
		s.Body = body
		f.unknownFields = nil
	} else {
		f.Reset()
	}
	return decodeFrame(b, f)
}

// Validate checks the limits of a decoded frame.
func Validate(f *Frame) error {
	switch k := f.Kind.(type) {
	case nil:
		return errors.New("frame has no known kind")
	case *Frame_Send:
		s := k.Send
		if s == nil {
			return errors.New("empty send")
		}
		if len(s.To) == 0 || len(s.To) > MaxPhone || !utf8.ValidString(s.To) {
			return fmt.Errorf("send.to must be an E.164 number (1..%d bytes)", MaxPhone)
		}
		if len(s.Body) > MaxBody {
			return fmt.Errorf("send.body is %d bytes, over the %d-byte limit", len(s.Body), MaxBody)
		}
		if m := s.Media; m != nil {
			if err := validateMedia(m); err != nil {
				return err
			}
		}
	case *Frame_Read:
		r := k.Read
		if r == nil || len(r.To) == 0 || len(r.To) > MaxPhone || !utf8.ValidString(r.To) {
			return fmt.Errorf("read.to must be an E.164 number (1..%d bytes)", MaxPhone)
		}
		if len(r.Ids) == 0 || len(r.Ids) > MaxReadIDs {
			return fmt.Errorf("read.ids must hold 1..%d ids", MaxReadIDs)
		}
	case *Frame_Ack:
		if k.Ack == nil {
			return errors.New("empty ack")
		}
	}
	return nil
}

func validateMedia(m *Media) error {
	switch {
	case len(m.Url) == 0 || len(m.Url) > MaxMediaText:
		return fmt.Errorf("send.media.url must be 1..%d bytes", MaxMediaText)
	case len(m.Id) > MaxMediaText || len(m.Mime) > MaxMediaText:
		return fmt.Errorf("send.media id and mime must be at most %d bytes", MaxMediaText)
	case len(m.Sha256) != 0 && len(m.Sha256) != 32:
		return errors.New("send.media.sha256 must be 32 bytes")
	case len(m.Thumbnail) > MaxThumbnail:
		return fmt.Errorf("send.media.thumbnail is %d bytes, over the %d-byte limit", len(m.Thumbnail), MaxThumbnail)
	case len(m.Caption) > MaxCaption:
		return fmt.Errorf("send.media.caption is over the %d-byte limit", MaxCaption)
	case len(m.Key) > MaxMediaKey:
		return fmt.Errorf("send.media.key is over the %d-byte limit", MaxMediaKey)
	case !utf8.ValidString(m.Url) || !utf8.ValidString(m.Id) || !utf8.ValidString(m.Mime) || !utf8.ValidString(m.Caption):
		return errors.New("send.media: url, id, mime and caption must be UTF-8")
	}
	// The media is stored and forwarded as sent: fields this version does
	// not know are dropped rather than carried to the recipient.
	m.unknownFields = nil
	return nil
}

// AppendFrame appends the encoding of f to dst (generated code, like
// DecodeFrame).
func AppendFrame(dst []byte, f *Frame) ([]byte, error) {
	n := f.SizeVT()
	dst = slices.Grow(dst, n)
	if _, err := f.MarshalToSizedBufferVT(dst[len(dst) : len(dst)+n]); err != nil {
		return dst, fmt.Errorf("encode frame: %w", err)
	}
	return dst[:len(dst)+n], nil
}

// EncodeItem encodes a queue item for the store.
func EncodeItem(it *Item) ([]byte, error) {
	return it.MarshalVT()
}

// DecodeItem decodes a queue item read from the store.
func DecodeItem(b []byte) (*Item, error) {
	it := new(Item)
	if err := it.UnmarshalVT(b); err != nil {
		return nil, fmt.Errorf("decode queue item: %w", err)
	}
	return it, nil
}
