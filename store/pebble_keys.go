package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Key layout. Keys are grouped by purpose under short prefixes so that every
// kind of record is one contiguous range, and numbers are big-endian so that
// byte order is numeric order: a user's queue is a single range scan in seq
// order.
//
//	acct/<phone>                       -> account record
//	q/<user>\x00<seq 8B BE>            -> item: ts 8B BE + data
//	qt/<user>                          -> last seq ever assigned in the queue
//	dd/<sender>\x00<clientID 8B BE>    -> dedup record: serverID 8B BE + ts 8B BE
//	rf/<reader>\x00<sender>            -> reader acked a message from sender at ts 8B BE
//	meta/ids                           -> next unreserved id, 8B BE
//
// The NUL after a user name ends it, so "q/+1415\x00" can never be a prefix
// of another user's keys. Phone numbers never contain NUL; PutAccount
// refuses one that does, and appends need an account, so no queue key can be
// built from such a name.
const (
	prefixAccount = "acct/"
	prefixQueue   = "q/"
	prefixTail    = "qt/"
	prefixDedup   = "dd/"
	prefixRecv    = "rf/"
	keyNextID     = "meta/ids"

	seqLen = 8
	// itemHeaderLen is the TS stored in front of an item's data.
	itemHeaderLen = 8
	dedupValueLen = 16
)

// queueRangeEnd is the first key after every q/ key ('/'+1 == '0').
const queueRangeEnd = "q0"

// dedupRangeEnd is the first key after every dd/ key.
const dedupRangeEnd = "dd0"

// recvRangeEnd is the first key after every rf/ key.
const recvRangeEnd = "rf0"

func recvKeyLen(reader, sender string) int { return len(prefixRecv) + len(reader) + 1 + len(sender) }

// putRecvKey writes the rf/ key of (reader, sender) into dst, which must be
// recvKeyLen long.
func putRecvKey(dst []byte, reader, sender string) {
	n := copy(dst, prefixRecv)
	n += copy(dst[n:], reader)
	dst[n] = 0
	copy(dst[n+1:], sender)
}

func accountKey(phone string) []byte {
	k := make([]byte, 0, len(prefixAccount)+len(phone))
	return append(append(k, prefixAccount...), phone...)
}

// appendQueuePrefix appends "q/<user>\x00", the prefix all of user's items
// share.
func appendQueuePrefix(dst []byte, user string) []byte {
	dst = append(dst, prefixQueue...)
	dst = append(dst, user...)
	return append(dst, 0)
}

func appendQueueKey(dst []byte, user string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(appendQueuePrefix(dst, user), seq)
}

func queueKeyLen(user string) int { return len(prefixQueue) + len(user) + 1 + seqLen }

// putQueueKey writes user's key for seq into dst, which must be
// queueKeyLen(user) long (a pebble deferred op's key, for instance).
func putQueueKey(dst []byte, user string, seq uint64) {
	n := copy(dst, prefixQueue)
	n += copy(dst[n:], user)
	dst[n] = 0
	binary.BigEndian.PutUint64(dst[n+1:], seq)
}

// queueUpperBound is the first key after all of user's items: the same
// prefix with the terminating NUL replaced by 0x01.
func queueUpperBound(user string) []byte {
	k := appendQueuePrefix(make([]byte, 0, len(prefixQueue)+len(user)+1), user)
	k[len(k)-1] = 1
	return k
}

// splitQueueKey returns the user and seq of a q/ key; ok is false for a key
// that does not have that shape.
func splitQueueKey(k []byte) (user []byte, seq uint64, ok bool) {
	if len(k) < len(prefixQueue)+1+seqLen || k[len(k)-seqLen-1] != 0 {
		return nil, 0, false
	}
	return k[len(prefixQueue) : len(k)-seqLen-1], binary.BigEndian.Uint64(k[len(k)-seqLen:]), true
}

func tailKey(user string) []byte {
	k := make([]byte, 0, len(prefixTail)+len(user))
	return append(append(k, prefixTail...), user...)
}

func appendDedupKey(dst []byte, sender string, clientID uint64) []byte {
	dst = append(dst, prefixDedup...)
	dst = append(dst, sender...)
	dst = append(dst, 0)
	return binary.BigEndian.AppendUint64(dst, clientID)
}

// dedupRecord is the stored half of a Dedup; sender and client id are in
// the key.
type dedupRecord struct {
	serverID uint64
	ts       int64
}

func putDedupValue(dst []byte, r dedupRecord) {
	binary.BigEndian.PutUint64(dst, r.serverID)
	binary.BigEndian.PutUint64(dst[8:], uint64(r.ts))
}

func decodeDedupValue(v []byte) (dedupRecord, error) {
	if len(v) != dedupValueLen {
		return dedupRecord{}, fmt.Errorf("dedup record: %d bytes, want %d", len(v), dedupValueLen)
	}
	return dedupRecord{
		serverID: binary.BigEndian.Uint64(v),
		ts:       int64(binary.BigEndian.Uint64(v[8:])),
	}, nil
}

// Account records: a version byte so the layout can evolve without a
// migration, then fixed-width fields, then the key (whatever is left).
//
//	v1: 0x01 | generation 8B | created sec 8B, nsec 4B | updated sec 8B, nsec 4B | key
//
// Times are stored as seconds and nanoseconds rather than UnixNano because
// UnixNano cannot represent the zero time.Time.
const (
	accountV1       = 1
	accountV1Header = 1 + 8 + 12 + 12
)

func encodeAccount(a Account) []byte {
	b := make([]byte, accountV1Header, accountV1Header+len(a.Key))
	b[0] = accountV1
	binary.BigEndian.PutUint64(b[1:], a.Generation)
	putTime(b[9:], a.Created)
	putTime(b[21:], a.Updated)
	return append(b, a.Key...)
}

func decodeAccount(phone string, v []byte) (Account, error) {
	if len(v) < 1 {
		return Account{}, errors.New("empty account record")
	}
	switch v[0] {
	case accountV1:
		if len(v) < accountV1Header {
			return Account{}, fmt.Errorf("account record v1: %d bytes, want at least %d", len(v), accountV1Header)
		}
		return Account{
			Phone:      phone,
			Generation: binary.BigEndian.Uint64(v[1:]),
			Created:    getTime(v[9:]),
			Updated:    getTime(v[21:]),
			Key:        append([]byte(nil), v[accountV1Header:]...),
		}, nil
	default:
		return Account{}, fmt.Errorf("account record: unknown version %d", v[0])
	}
}

func putTime(dst []byte, t time.Time) {
	binary.BigEndian.PutUint64(dst, uint64(t.Unix()))
	binary.BigEndian.PutUint32(dst[8:], uint32(t.Nanosecond()))
}

// getTime returns UTC so that a zero time round-trips to time.Time{}.
func getTime(src []byte) time.Time {
	return time.Unix(int64(binary.BigEndian.Uint64(src)), int64(binary.BigEndian.Uint32(src[8:]))).UTC()
}
