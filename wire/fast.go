package wire

import (
	"errors"
	"fmt"
	"slices"

	"google.golang.org/protobuf/encoding/protowire"
)

// The per-message path writes its two commonest frames, Deliver and
// SendAck, without building them: a delivery carries the queue item as the
// store keeps it (a nested message is encoded as its bytes, so the stored
// encoding is exactly what belongs inside the frame), and the server reads
// only the few fields it needs from an item with ReadItemHead, which walks
// the rest without decoding it. Decoding an item to deliver it and
// encoding it again was a dozen allocations and about a microsecond per
// message. Both writers produce the same bytes as AppendFrame on the
// equivalent Frame (TestFastFramesMatchMarshal, and FuzzDecodeFrame for
// any frame it decodes).

// Field numbers of the frames written here (proto/parley.proto).
const (
	frameSendAck = 10
	frameDeliver = 11

	itemMessage = 1

	messageFrom     = 1
	messageID       = 2
	messageServerID = 3
	messageTS       = 4
)

// AppendDeliver appends the encoding of Frame{Deliver{Seq: seq, Item: it}},
// where item is it as EncodeItem wrote it.
func AppendDeliver(dst []byte, seq uint64, item []byte) []byte {
	n := sizeVarint(1, seq) + protowire.SizeTag(2) + protowire.SizeBytes(len(item))
	dst = protowire.AppendTag(dst, frameDeliver, protowire.BytesType)
	dst = protowire.AppendVarint(dst, uint64(n))
	dst = appendVarint(dst, 1, seq)
	dst = protowire.AppendTag(dst, 2, protowire.BytesType)
	return protowire.AppendBytes(dst, item)
}

// AppendSendAck appends the encoding of
// Frame{SendAck{Id: id, ServerId: serverID, Ts: ts}}.
func AppendSendAck(dst []byte, id, serverID uint64, ts int64) []byte {
	n := sizeVarint(1, id) + sizeVarint(2, serverID) + sizeVarint(3, uint64(ts))
	dst = protowire.AppendTag(dst, frameSendAck, protowire.BytesType)
	dst = protowire.AppendVarint(dst, uint64(n))
	dst = appendVarint(dst, 1, id)
	dst = appendVarint(dst, 2, serverID)
	return appendVarint(dst, 3, uint64(ts))
}

// ItemHead is what the server needs to know of a queue item to deliver it
// and, once it is acked, to send the delivered receipt.
type ItemHead struct {
	Message bool   // a message; else a receipt
	From    []byte // the message's sender: a view into the item
	ID      uint64 // the sender's id
	// ServerID and TS are the server's id and acceptance time.
	ServerID uint64
	TS       int64
}

var errItem = errors.New("queue item is not an encoded Item")

// badItem is errItem with what protowire found (n < 0).
func badItem(n int) error { return fmt.Errorf("%w: %v", errItem, protowire.ParseError(n)) }

// wrongType reports a known field encoded with another wire type, which
// the generated decoder refuses.
func wrongType(num protowire.Number, typ protowire.Type) error {
	return fmt.Errorf("%w: field %d has wire type %d", errItem, num, typ)
}

// ReadItemHead reads an encoded Item's head without decoding the rest or
// allocating. It accepts only what DecodeItem accepts, and reads the head
// as DecodeItem would decode it: the item goes to the client as it is
// stored, and a client whose decoder refuses a delivery can ack neither it
// nor anything behind it, so a corrupt item must be found here. In
// particular Item is a oneof, so the last member on the wire wins (a
// receipt after a message makes the item a receipt), and a message after
// another merges into it.
func ReadItemHead(item []byte) (ItemHead, error) {
	var h ItemHead
	for b := item; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return h, badItem(n)
		}
		b = b[n:]
		if num != itemMessage && num != itemReceipt {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return h, badItem(n)
			}
			b = b[n:]
			continue
		}
		if typ != protowire.BytesType {
			return h, wrongType(num, typ)
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return h, badItem(n)
		}
		b = b[n:]
		if num == itemReceipt {
			h = ItemHead{}
			if err := checkFields(v, receiptField); err != nil {
				return h, err
			}
			continue
		}
		if !h.Message {
			h = ItemHead{Message: true}
		}
		if err := readMessageHead(v, &h); err != nil {
			return h, err
		}
	}
	return h, nil
}

func readMessageHead(m []byte, h *ItemHead) error {
	for len(m) > 0 {
		num, typ, n := protowire.ConsumeTag(m)
		if n < 0 {
			return badItem(n)
		}
		m = m[n:]
		switch num {
		case messageFrom, messageBody, messageMedia:
			if typ != protowire.BytesType {
				return wrongType(num, typ)
			}
			v, n := protowire.ConsumeBytes(m)
			if n < 0 {
				return badItem(n)
			}
			m = m[n:]
			switch num {
			case messageFrom:
				h.From = v
			case messageMedia:
				if err := checkFields(v, mediaField); err != nil {
					return err
				}
			}
		case messageID, messageServerID, messageTS:
			if typ != protowire.VarintType {
				return wrongType(num, typ)
			}
			v, n := protowire.ConsumeVarint(m)
			if n < 0 {
				return badItem(n)
			}
			m = m[n:]
			switch num {
			case messageID:
				h.ID = v
			case messageServerID:
				h.ServerID = v
			default:
				h.TS = int64(v)
			}
		default:
			n = protowire.ConsumeFieldValue(num, typ, m)
			if n < 0 {
				return badItem(n)
			}
			m = m[n:]
		}
	}
	return nil
}

// fieldKind is how a known field of a message is encoded, for checkFields.
type fieldKind uint8

const (
	unknownField fieldKind = iota
	varintField
	bytesField      // a string or bytes
	repeatedVarints // repeated uint64: varints one by one, or packed
)

func receiptField(num protowire.Number) fieldKind {
	switch num {
	case receiptKind, receiptTS:
		return varintField
	case receiptBy:
		return bytesField
	case receiptIDs, receiptServerIDs:
		return repeatedVarints
	}
	return unknownField
}

func mediaField(num protowire.Number) fieldKind {
	switch num {
	case mediaSize:
		return varintField
	case mediaURL, mediaID, mediaMime, mediaSHA256, mediaThumbnail, mediaCaption, mediaKey:
		return bytesField
	}
	return unknownField
}

// checkFields checks that m is a message whose known fields (kind tells
// which) have the wire types the generated decoder wants.
func checkFields(m []byte, kind func(protowire.Number) fieldKind) error {
	for len(m) > 0 {
		num, typ, n := protowire.ConsumeTag(m)
		if n < 0 {
			return badItem(n)
		}
		m = m[n:]
		switch k := kind(num); {
		case k == unknownField:
			n = protowire.ConsumeFieldValue(num, typ, m)
		case typ == protowire.VarintType && (k == varintField || k == repeatedVarints):
			_, n = protowire.ConsumeVarint(m)
		case typ == protowire.BytesType && k == bytesField:
			_, n = protowire.ConsumeBytes(m)
		case typ == protowire.BytesType && k == repeatedVarints:
			var packed []byte
			packed, n = protowire.ConsumeBytes(m)
			for len(packed) > 0 && n >= 0 {
				_, vn := protowire.ConsumeVarint(packed)
				if vn < 0 {
					return badItem(vn)
				}
				packed = packed[vn:]
			}
		default:
			return wrongType(num, typ)
		}
		if n < 0 {
			return badItem(n)
		}
		m = m[n:]
	}
	return nil
}

// Field numbers of the items written and checked here.
const (
	itemReceipt = 2

	messageBody  = 5
	messageMedia = 6

	receiptKind      = 1
	receiptBy        = 2
	receiptIDs       = 3
	receiptServerIDs = 4
	receiptTS        = 5

	mediaURL       = 1
	mediaID        = 2
	mediaSize      = 3
	mediaMime      = 4
	mediaSHA256    = 5
	mediaThumbnail = 6
	mediaCaption   = 7
	mediaKey       = 8
)

// AppendMessageItem appends the encoding of Item{Message{From: from, Id:
// id, ServerId: serverID, Ts: ts, Body: body, Media: media}}, as
// EncodeItem would, without building the structs.
func AppendMessageItem(dst []byte, from string, id, serverID uint64, ts int64, body []byte, media *Media) []byte {
	n := sizeString(messageFrom, from) + sizeVarint(messageID, id) + sizeVarint(messageServerID, serverID) +
		sizeVarint(messageTS, uint64(ts)) + sizeBytes(messageBody, len(body))
	mediaLen := 0
	if media != nil {
		mediaLen = media.SizeVT()
		n += protowire.SizeTag(messageMedia) + protowire.SizeBytes(mediaLen)
	}
	dst = slices.Grow(dst, protowire.SizeTag(itemMessage)+protowire.SizeBytes(n))
	dst = protowire.AppendTag(dst, itemMessage, protowire.BytesType)
	dst = protowire.AppendVarint(dst, uint64(n))
	dst = appendString(dst, messageFrom, from)
	dst = appendVarint(dst, messageID, id)
	dst = appendVarint(dst, messageServerID, serverID)
	dst = appendVarint(dst, messageTS, uint64(ts))
	dst = appendBytes(dst, messageBody, body)
	if media != nil {
		dst = protowire.AppendTag(dst, messageMedia, protowire.BytesType)
		dst = protowire.AppendVarint(dst, uint64(mediaLen))
		off := len(dst)
		dst = slices.Grow(dst, mediaLen)[:off+mediaLen]
		if _, err := media.MarshalToSizedBufferVT(dst[off:]); err != nil {
			panic(err) // sized by SizeVT: cannot fail
		}
	}
	return dst
}

// AppendReceiptItem appends the encoding of Item{Receipt{Kind: kind, By:
// by, Ids: ids, ServerIds: serverIDs, Ts: ts}}, as EncodeItem would, for
// a receipt whose ids are given by count and a function (the session has
// them in its deliveries awaiting the ack, not in slices of their own).
func AppendReceiptItem(dst []byte, kind Receipt_Kind, by string, count int, ids func(i int) (id, serverID uint64), ts int64) []byte {
	idsLen, sidsLen := 0, 0
	for i := range count {
		id, sid := ids(i)
		idsLen += protowire.SizeVarint(id)
		sidsLen += protowire.SizeVarint(sid)
	}
	n := sizeVarint(receiptKind, uint64(kind)) + sizeString(receiptBy, by) + sizeVarint(receiptTS, uint64(ts))
	if count > 0 {
		n += protowire.SizeTag(receiptIDs) + protowire.SizeBytes(idsLen) + protowire.SizeTag(receiptServerIDs) + protowire.SizeBytes(sidsLen)
	}
	dst = slices.Grow(dst, protowire.SizeTag(itemReceipt)+protowire.SizeBytes(n))
	dst = protowire.AppendTag(dst, itemReceipt, protowire.BytesType)
	dst = protowire.AppendVarint(dst, uint64(n))
	dst = appendVarint(dst, receiptKind, uint64(kind))
	dst = appendString(dst, receiptBy, by)
	if count > 0 {
		dst = protowire.AppendTag(dst, receiptIDs, protowire.BytesType)
		dst = protowire.AppendVarint(dst, uint64(idsLen))
		for i := range count {
			id, _ := ids(i)
			dst = protowire.AppendVarint(dst, id)
		}
		dst = protowire.AppendTag(dst, receiptServerIDs, protowire.BytesType)
		dst = protowire.AppendVarint(dst, uint64(sidsLen))
		for i := range count {
			_, sid := ids(i)
			dst = protowire.AppendVarint(dst, sid)
		}
	}
	return appendVarint(dst, receiptTS, uint64(ts))
}

// Proto3 leaves zero values out; these write a field only when it is set.

func sizeVarint(num protowire.Number, v uint64) int {
	if v == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeVarint(v)
}

func sizeString(num protowire.Number, s string) int { return sizeBytes(num, len(s)) }

func sizeBytes(num protowire.Number, n int) int {
	if n == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeBytes(n)
}

func appendVarint(dst []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return dst
	}
	return protowire.AppendVarint(protowire.AppendTag(dst, num, protowire.VarintType), v)
}

func appendString(dst []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return dst
	}
	return protowire.AppendString(protowire.AppendTag(dst, num, protowire.BytesType), s)
}

func appendBytes(dst []byte, num protowire.Number, b []byte) []byte {
	if len(b) == 0 {
		return dst
	}
	return protowire.AppendBytes(protowire.AppendTag(dst, num, protowire.BytesType), b)
}
