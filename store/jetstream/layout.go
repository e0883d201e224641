package jetstream

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
)

// Subjects and streams. With Options.Name "parley" and P partitions:
//
//	stream PARLEY_Q_<p>   parley.q.<p>.<user>             queue items
//	                      parley.t.<p>.<user>             the queue's tail record (Nats-Rollup: sub)
//	                      parley.d.<p>.<sender>.<client>  dedup records (Nats-TTL)
//	stream PARLEY_META    parley.acct.<phone>             accounts (last value per subject)
//	                      parley.ids                      next unreserved id
//	                      parley.cfg                      the partition count, fixed at creation
//
// <user>, <sender> and <phone> are subject tokens made by token.

// token makes s a single subject token: bytes outside [0-9A-Za-z+_-] (the
// E.164 alphabet is inside) become '=' and two hex digits, so distinct
// strings stay distinct and no token contains '.', '*', '>' or spaces.
func token(s string) string {
	if s == "" {
		return "="
	}
	plain := true
	for i := 0; i < len(s); i++ {
		if !tokenByte(s[i]) {
			plain = false
			break
		}
	}
	if plain {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if tokenByte(c) {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "=%02x", c)
	}
	return b.String()
}

func tokenByte(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '+' || c == '_' || c == '-'
}

// layout names the streams and subjects of one store.
type layout struct {
	name   string // stream name prefix, upper case
	prefix string // subject prefix, lower case
	parts  int
}

func newLayout(name string, parts int) layout {
	return layout{name: strings.ToUpper(name), prefix: strings.ToLower(name), parts: parts}
}

func (l layout) partition(user string) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(user))
	return int(h.Sum32() % uint32(l.parts))
}

func (l layout) queueStream(p int) string { return l.name + "_Q_" + strconv.Itoa(p) }
func (l layout) metaStream() string       { return l.name + "_META" }

func (l layout) queueSubjects(p int) []string {
	ps := strconv.Itoa(p)
	return []string{l.prefix + ".q." + ps + ".*", l.prefix + ".d." + ps + ".*.*", l.prefix + ".t." + ps + ".*"}
}

// tailSubject holds user's tail record: the seq of the queue's last item,
// rewritten (rolled up) by every append, never erased by an ack.
func (l layout) tailSubject(p int, user string) string {
	return l.prefix + ".t." + strconv.Itoa(p) + "." + token(user)
}

// queueFilter matches every queue subject of partition p (not dedup records).
func (l layout) queueFilter(p int) string { return l.prefix + ".q." + strconv.Itoa(p) + ".*" }

func (l layout) queueSubject(p int, user string) string {
	return l.prefix + ".q." + strconv.Itoa(p) + "." + token(user)
}

func (l layout) dedupSubject(p int, sender string, clientID uint64) string {
	return l.prefix + ".d." + strconv.Itoa(p) + "." + token(sender) + "." + strconv.FormatUint(clientID, 10)
}

// barrierSubject is partition p's barrier (see gate): in the dedup
// subjects' space, where no record has a client id that is not a number.
func (l layout) barrierSubject(p int) string {
	return l.prefix + ".d." + strconv.Itoa(p) + "._.barrier"
}

func (l layout) metaSubjects() []string {
	return []string{l.prefix + ".acct.*", l.prefix + ".ids", l.prefix + ".cfg"}
}

func (l layout) accountSubject(phone string) string { return l.prefix + ".acct." + token(phone) }
func (l layout) idsSubject() string                 { return l.prefix + ".ids" }
func (l layout) cfgSubject() string                 { return l.prefix + ".cfg" }

// userOfQueueSubject returns the token of a queue subject's user.
func userTokenOf(subject string) string {
	return subject[strings.LastIndexByte(subject, '.')+1:]
}

// untoken reverses token.
func untoken(t string) (string, error) {
	if t == "=" {
		return "", nil
	}
	if !strings.Contains(t, "=") {
		return t, nil
	}
	var b strings.Builder
	for i := 0; i < len(t); i++ {
		if t[i] != '=' {
			b.WriteByte(t[i])
			continue
		}
		if i+3 > len(t) {
			return "", fmt.Errorf("bad token %q", t)
		}
		v, err := strconv.ParseUint(t[i+1:i+3], 16, 8)
		if err != nil {
			return "", fmt.Errorf("bad token %q", t)
		}
		b.WriteByte(byte(v))
		i += 2
	}
	return b.String(), nil
}

// A queue subject holds items; a tail subject, one tail record. Both start
// with a kind byte, the per-user seq and the unix-nanosecond timestamp. An
// item's seq is its own; a tail record's is the queue's last seq given
// out, so that seqs are never reused once the items are gone. (A queue
// subject written before tail records existed, or with DeletePerItem, also
// holds empty-markers: the queue's tail when it was emptied.)
const (
	kindItem   = 0
	kindMarker = 1
	recHeader  = 1 + 8 + 8
)

func appendRecord(dst []byte, kind byte, seq uint64, ts int64, data []byte) []byte {
	dst = append(dst, kind)
	dst = binary.BigEndian.AppendUint64(dst, seq)
	dst = binary.BigEndian.AppendUint64(dst, uint64(ts))
	return append(dst, data...)
}

type record struct {
	kind byte
	seq  uint64
	ts   int64
	data []byte // aliases the message
}

var errBadRecord = errors.New("malformed queue record")

func decodeRecord(b []byte) (record, error) {
	if len(b) < recHeader || b[0] > kindMarker {
		return record{}, errBadRecord
	}
	return record{kind: b[0], seq: binary.BigEndian.Uint64(b[1:]), ts: int64(binary.BigEndian.Uint64(b[9:])), data: b[recHeader:]}, nil
}

// A dedup record is the server id and timestamp of the accepted send.
const dedupLen = 16

func appendDedup(dst []byte, serverID uint64, ts int64) []byte {
	dst = binary.BigEndian.AppendUint64(dst, serverID)
	return binary.BigEndian.AppendUint64(dst, uint64(ts))
}

func decodeDedup(b []byte) (serverID uint64, ts int64, err error) {
	if len(b) != dedupLen {
		return 0, 0, fmt.Errorf("dedup record of %d bytes, want %d", len(b), dedupLen)
	}
	return binary.BigEndian.Uint64(b), int64(binary.BigEndian.Uint64(b[8:])), nil
}
