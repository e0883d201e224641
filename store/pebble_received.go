package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"time"

	"github.com/cockroachdb/pebble"
)

// Received records (rf/<reader>\x00<sender>, see pebble_keys.go): the
// committer writes one per Ack user and Received sender of an accepted
// batch, in the batch's own Pebble batch, so the record is durable exactly
// when the ack is. The value is the group's timestamp, and the sweeper
// deletes records older than MaxAge.
//
// A chat acks every message, and rewriting the pair's record each time
// was one memtable insert of six per message. So the committer skips a
// record it stamped less than ReceivedRefresh ago (the record then dates
// from the first ack in that window, as in the cluster store). It
// remembers its stamps in a fixed table (recvStamps), not per user, so an
// idle user costs nothing for it; a pair whose slot another pair took is
// simply stamped again.

// putReceived adds b's received records to wb, stamped now, except those
// stamped less than ReceivedRefresh ago.
func (c *committer) putReceived(wb *pebble.Batch, b *Batch, now int64) {
	if len(b.Received) == 0 {
		return
	}
	refresh := int64(ReceivedRefresh(c.p.opts.MaxAge))
	for _, a := range b.Acks {
		for _, sender := range b.Received {
			slot := c.stamps.slot(a.User, sender)
			if slot.reader == a.User && slot.sender == sender && now-slot.at < refresh {
				continue // stamped a moment ago: it stands for this ack too
			}
			op := wb.SetDeferred(recvKeyLen(a.User, sender), 8)
			putRecvKey(op.Key, a.User, sender)
			binary.BigEndian.PutUint64(op.Value, uint64(now))
			_ = op.Finish() // only fails for indexed batches
			c.recvWritten = true
			// Remembered before the group is on disk: if it fails,
			// commitGroup forgets every stamp.
			*slot = recvStamp{reader: a.User, sender: sender, at: now}
		}
	}
}

// recvStampSlots is the size of the stamp table: 4,096 slots of 40 bytes
// (160 KiB, written as pairs use them). A few hundred pairs chatting at
// once mostly keep their slots; with many more, more of their acks find
// their slot taken and write the record, as every ack did before. Kept
// small because an idle server's memory per connection counts it: 16,384
// slots would be 640 KiB, 34 bytes per connection of 19,000.
const recvStampSlots = 1 << 12

// recvStamps is a direct-mapped table of the received records stamped
// lately: a slot per hash of (reader, sender), the last pair to use it.
type recvStamps struct {
	seed  maphash.Seed
	slots []recvStamp
}

type recvStamp struct {
	reader, sender string
	at             int64 // the stamp, unix nanoseconds
}

// slot returns the slot of (reader, sender), whichever pair it holds.
func (t *recvStamps) slot(reader, sender string) *recvStamp {
	if t.slots == nil {
		t.seed = maphash.MakeSeed()
		t.slots = make([]recvStamp, recvStampSlots)
	}
	var h maphash.Hash
	h.SetSeed(t.seed)
	h.WriteString(reader)
	h.WriteByte(0)
	h.WriteString(sender)
	return &t.slots[h.Sum64()%recvStampSlots]
}

// forget drops every stamp: the records they stand for may not be on disk.
func (t *recvStamps) forget() { clear(t.slots) }

// applyRecvSweep erases the received records the sweeper found expired,
// unless one was rewritten since its scan: an ack of this group (whose
// writes a read cannot see yet) or of an earlier one (which a read sees).
// A record left now is found again by the next pass. A record an ack
// skipped (stamped less than ReceivedRefresh ago) is not expired.
func (c *committer) applyRecvSweep(wb *pebble.Batch, op *sweepOp) error {
	if len(op.received) == 0 || c.recvWritten {
		return nil
	}
	for _, r := range op.received {
		ts, found, err := getRecv(c.p.db, r.key)
		if err != nil {
			return err
		}
		if found && ts == r.ts {
			_ = wb.Delete(r.key, nil)
		}
	}
	return nil
}

// getRecv reads a received record; a malformed one reads as timestamp 0,
// expired.
func getRecv(db *pebble.DB, key []byte) (ts int64, found bool, err error) {
	v, closer, err := db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("look up received record %q: %w", key, err)
	}
	defer closer.Close()
	if len(v) != 8 {
		return 0, true, nil
	}
	return int64(binary.BigEndian.Uint64(v)), true, nil
}

// ReceivedFrom reports whether reader acked a message from sender within
// the last MaxAge (see Store.ReceivedFrom). It reads what the committer
// has decided, durable or not: a read receipt it vouches for is committed
// after the ack that wrote the record, so it cannot outlive the record in
// a crash.
func (p *Pebble) ReceivedFrom(reader, sender string) (bool, error) {
	p.life.RLock()
	defer p.life.RUnlock()
	if p.closed {
		return false, fmt.Errorf("received from %s by %s: %w", sender, reader, ErrClosed)
	}
	key := make([]byte, recvKeyLen(reader, sender))
	putRecvKey(key, reader, sender)
	ts, found, err := getRecv(p.db, key)
	if err != nil {
		return false, err
	}
	return found && ts >= time.Now().Add(-p.opts.MaxAge).UnixNano(), nil
}

// sweptRecv is a received record the sweeper found expired, with the
// timestamp it had then.
type sweptRecv struct {
	key []byte
	ts  int64
}

// sweepReceived deletes received records with a timestamp before cutoff, a
// chunk at a time.
func (p *Pebble) sweepReceived(cutoff int64, stop <-chan struct{}) error {
	resume := []byte(prefixRecv)
	for resume != nil && !stopped(stop) {
		var op sweepOp
		var err error
		resume, err = p.scanOldRecv(&op, resume, cutoff)
		if err != nil {
			return err
		}
		if len(op.received) == 0 {
			continue
		}
		if err := p.commitSweep(&op); err != nil {
			return err
		}
	}
	return nil
}

func (p *Pebble) scanOldRecv(op *sweepOp, start []byte, cutoff int64) (resume []byte, err error) {
	p.life.RLock()
	defer p.life.RUnlock()
	if p.closed {
		return nil, ErrClosed
	}
	it, err := p.db.NewIter(&pebble.IterOptions{LowerBound: start, UpperBound: []byte(recvRangeEnd)})
	if err != nil {
		return nil, err
	}
	for ok := it.First(); ok; ok = it.Next() {
		v := it.Value()
		var ts int64
		if len(v) == 8 {
			ts = int64(binary.BigEndian.Uint64(v))
		} else {
			p.log.Warn("store sweep: deleting malformed received record", "key", fmt.Sprintf("%q", it.Key()))
		}
		if ts >= cutoff {
			continue
		}
		if len(op.received) == sweepChunk {
			resume = append([]byte(nil), it.Key()...)
			break
		}
		op.received = append(op.received, sweptRecv{key: append([]byte(nil), it.Key()...), ts: ts})
	}
	if err := it.Close(); err != nil {
		return nil, err
	}
	return resume, nil
}
