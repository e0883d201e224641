package bench

// A hand-written codec for the few frames the bench sends and reads. It
// follows proto/parley.proto field for field (codec_test.go checks it
// against the generated code) but allocates nothing: strings and bodies are
// views into the decrypted read buffer, valid until the next read.

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
)

// Frame field numbers (proto/parley.proto, message Frame).
const (
	fSend    = 1
	fAck     = 2
	fPing    = 4
	fSendAck = 10
	fDeliver = 11
	fOk      = 12
	fError   = 13
	fPong    = 14
	fClose   = 15
)

// Receipt kinds (Receipt.Kind).
const (
	receiptDelivered = 1
	receiptRead      = 2
)

// frame is one decoded server frame: kind says which fields are set.
type frame struct {
	kind protowire.Number

	// SendAck, Ok, Pong, Error: the request id.
	id uint64
	// SendAck
	serverID uint64
	// Error, Close
	code int32
	text []byte
	// Close: reconnect_after_ms, the server's hint (0: none)
	after uint64
	// Deliver
	seq      uint64
	isMsg    bool // the item is a message (else a receipt, or unknown)
	isRcpt   bool
	from     []byte // Message.from
	msgID    uint64 // Message.id
	body     []byte
	rKind    int32    // Receipt.kind
	by       []byte   // Receipt.by
	ids      []uint64 // Receipt.ids, reused between frames
	srvIDs   []uint64 // Receipt.server_ids, reused between frames
	msgSrvID uint64   // Message.server_id
}

var errTruncated = errors.New("truncated protobuf field")

// appendSend appends the plaintext of Frame{Send{id, to, body, resend}}.
func appendSend(b []byte, id uint64, to string, body []byte, resend bool) []byte {
	n := protowire.SizeTag(1) + protowire.SizeVarint(id) +
		protowire.SizeTag(2) + protowire.SizeBytes(len(to)) +
		protowire.SizeTag(3) + protowire.SizeBytes(len(body))
	if resend {
		n += protowire.SizeTag(5) + protowire.SizeVarint(1)
	}
	b = protowire.AppendTag(b, fSend, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(n))
	b = protowire.AppendTag(b, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, id)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendString(b, to)
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	b = protowire.AppendBytes(b, body)
	if resend {
		b = protowire.AppendTag(b, 5, protowire.VarintType)
		b = protowire.AppendVarint(b, 1)
	}
	return b
}

// appendAck appends the plaintext of Frame{Ack{seq}}.
func appendAck(b []byte, seq uint64) []byte {
	b = protowire.AppendTag(b, fAck, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(protowire.SizeTag(1)+protowire.SizeVarint(seq)))
	b = protowire.AppendTag(b, 1, protowire.VarintType)
	return protowire.AppendVarint(b, seq)
}

// appendPing appends the plaintext of Frame{Ping{id}}.
func appendPing(b []byte, id uint64) []byte {
	b = protowire.AppendTag(b, fPing, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(protowire.SizeTag(1)+protowire.SizeVarint(id)))
	b = protowire.AppendTag(b, 1, protowire.VarintType)
	return protowire.AppendVarint(b, id)
}

// fields walks the fields of one message, calling f for each; f returns how
// many bytes of the value it consumed, or -1 to have the value skipped.
func fields(b []byte, f func(num protowire.Number, typ protowire.Type, v []byte) int) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		m := f(num, typ, b)
		if m < 0 {
			m = protowire.ConsumeFieldValue(num, typ, b)
		}
		if m < 0 {
			return protowire.ParseError(m)
		}
		if m > len(b) {
			return errTruncated
		}
		b = b[m:]
	}
	return nil
}

// parseFrame decodes a server frame into f, reusing f.ids.
func parseFrame(b []byte, f *frame) error {
	*f = frame{ids: f.ids[:0], srvIDs: f.srvIDs[:0]}
	var inner []byte
	err := fields(b, func(num protowire.Number, typ protowire.Type, v []byte) int {
		if typ != protowire.BytesType || num < fSendAck || num > fClose {
			return -1
		}
		m, n := protowire.ConsumeBytes(v)
		if n < 0 {
			return n
		}
		f.kind, inner = num, m
		return n
	})
	if err != nil {
		return fmt.Errorf("decode frame: %w", err)
	}
	switch f.kind {
	case fSendAck, fOk, fPong:
		err = fields(inner, func(num protowire.Number, typ protowire.Type, v []byte) int {
			if typ != protowire.VarintType || (num != 1 && num != 2) {
				return -1
			}
			x, n := protowire.ConsumeVarint(v)
			if num == 1 {
				f.id = x
			} else if f.kind == fSendAck {
				f.serverID = x
			}
			return n
		})
	case fError, fClose:
		// Error{id=1, code=2, text=3}; Close{code=1, text=2,
		// reconnect_after_ms=3}.
		codeField, textField := protowire.Number(2), protowire.Number(3)
		if f.kind == fClose {
			codeField, textField = 1, 2
		}
		err = fields(inner, func(num protowire.Number, typ protowire.Type, v []byte) int {
			switch {
			case typ == protowire.VarintType && num == 1 && f.kind == fError:
				x, n := protowire.ConsumeVarint(v)
				f.id = x
				return n
			case typ == protowire.VarintType && num == codeField:
				x, n := protowire.ConsumeVarint(v)
				f.code = int32(x)
				return n
			case typ == protowire.BytesType && num == textField:
				s, n := protowire.ConsumeBytes(v)
				f.text = s
				return n
			case typ == protowire.VarintType && num == 3 && f.kind == fClose:
				x, n := protowire.ConsumeVarint(v)
				f.after = x
				return n
			}
			return -1
		})
	case fDeliver:
		err = parseDeliver(inner, f)
	}
	if err != nil {
		return fmt.Errorf("decode frame %d: %w", f.kind, err)
	}
	return nil
}

func parseDeliver(b []byte, f *frame) error {
	var item []byte
	err := fields(b, func(num protowire.Number, typ protowire.Type, v []byte) int {
		switch {
		case num == 1 && typ == protowire.VarintType:
			x, n := protowire.ConsumeVarint(v)
			f.seq = x
			return n
		case num == 2 && typ == protowire.BytesType:
			m, n := protowire.ConsumeBytes(v)
			item = m
			return n
		}
		return -1
	})
	if err != nil {
		return err
	}
	var msg, rcpt []byte
	err = fields(item, func(num protowire.Number, typ protowire.Type, v []byte) int {
		if typ != protowire.BytesType || (num != 1 && num != 2) {
			return -1
		}
		m, n := protowire.ConsumeBytes(v)
		if num == 1 {
			msg, f.isMsg, f.isRcpt = m, true, false
		} else {
			rcpt, f.isRcpt, f.isMsg = m, true, false
		}
		return n
	})
	if err != nil {
		return err
	}
	switch {
	case f.isMsg:
		// Message{from=1, id=2, server_id=3, ts=4, body=5}
		return fields(msg, func(num protowire.Number, typ protowire.Type, v []byte) int {
			switch {
			case num == 1 && typ == protowire.BytesType:
				s, n := protowire.ConsumeBytes(v)
				f.from = s
				return n
			case num == 2 && typ == protowire.VarintType:
				x, n := protowire.ConsumeVarint(v)
				f.msgID = x
				return n
			case num == 3 && typ == protowire.VarintType:
				x, n := protowire.ConsumeVarint(v)
				f.msgSrvID = x
				return n
			case num == 5 && typ == protowire.BytesType:
				s, n := protowire.ConsumeBytes(v)
				f.body = s
				return n
			}
			return -1
		})
	case f.isRcpt:
		// Receipt{kind=1, by=2, ids=3 (packed or not), server_ids=4, ts=5}
		return fields(rcpt, func(num protowire.Number, typ protowire.Type, v []byte) int {
			switch {
			case num == 1 && typ == protowire.VarintType:
				x, n := protowire.ConsumeVarint(v)
				f.rKind = int32(x)
				return n
			case num == 2 && typ == protowire.BytesType:
				s, n := protowire.ConsumeBytes(v)
				f.by = s
				return n
			case num == 3 && typ == protowire.VarintType:
				x, n := protowire.ConsumeVarint(v)
				f.ids = append(f.ids, x)
				return n
			case num == 3 && typ == protowire.BytesType:
				packed, n := protowire.ConsumeBytes(v)
				if n < 0 {
					return n
				}
				for len(packed) > 0 {
					x, m := protowire.ConsumeVarint(packed)
					if m < 0 {
						return m
					}
					f.ids = append(f.ids, x)
					packed = packed[m:]
				}
				return n
			case num == 4 && typ == protowire.VarintType:
				x, n := protowire.ConsumeVarint(v)
				f.srvIDs = append(f.srvIDs, x)
				return n
			case num == 4 && typ == protowire.BytesType:
				packed, n := protowire.ConsumeBytes(v)
				if n < 0 {
					return n
				}
				for len(packed) > 0 {
					x, m := protowire.ConsumeVarint(packed)
					if m < 0 {
						return m
					}
					f.srvIDs = append(f.srvIDs, x)
					packed = packed[m:]
				}
				return n
			}
			return -1
		})
	}
	return nil
}
