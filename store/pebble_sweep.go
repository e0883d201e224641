package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/cockroachdb/pebble"
)

// sweepChunk bounds how many items or dedup records one sweep request
// carries, so a large backlog of expired data becomes a series of modest
// commits (and a modest amount of memory) instead of one huge one.
const sweepChunk = 1024

// sweepOp is the internal request a sweep sends through the committer.
type sweepOp struct {
	queues   []sweepQueue
	dedup    [][]byte    // dedup keys to delete
	received []sweptRecv // received records to delete, if unchanged
}

// sweepQueue asks the committer to erase user's items up to upTo.
type sweepQueue struct {
	user  string
	upTo  uint64
	items []Item // what the scan saw expired, in seq order (for OnExpire)
	// from and to are set by the committer: it erased seqs [from, to).
	from, to uint64
}

// sweepLoop is the sweeper goroutine.
func (p *Pebble) sweepLoop() {
	defer close(p.swept)
	t := time.NewTicker(p.opts.SweepEvery)
	defer t.Stop()
	for {
		select {
		case <-p.stopSweep:
			return
		case <-t.C:
			n, err := p.sweep(time.Now(), p.stopSweep)
			if err != nil && !errors.Is(err, ErrClosed) {
				p.log.Error("store sweep failed", "err", err, "expired", n)
			} else if n > 0 {
				p.log.Info("store sweep expired items", "expired", n)
			}
		}
	}
}

// Sweep runs one sweeper pass as of now: it erases queue items older than
// Options.MaxAge (calling Options.OnExpire for each, after it is erased),
// dedup records older than Options.DedupTTL and received records older
// than MaxAge, and returns how many items it
// expired. The sweeper goroutine calls it every Options.SweepEvery; tests
// and the server may call it to run a pass at a time of their choosing.
func (p *Pebble) Sweep(now time.Time) (expired int, err error) {
	return p.sweep(now, nil)
}

func (p *Pebble) sweep(now time.Time, stop <-chan struct{}) (int, error) {
	p.sweepMu.Lock()
	defer p.sweepMu.Unlock()
	expired, err := p.sweepQueues(now.Add(-p.opts.MaxAge).UnixNano(), stop)
	if err != nil {
		return expired, fmt.Errorf("sweep queues: %w", err)
	}
	if err := p.sweepDedup(now.Add(-p.opts.DedupTTL).UnixNano(), stop); err != nil {
		return expired, fmt.Errorf("sweep dedup records: %w", err)
	}
	if err := p.sweepReceived(now.Add(-p.opts.MaxAge).UnixNano(), stop); err != nil {
		return expired, fmt.Errorf("sweep received records: %w", err)
	}
	return expired, nil
}

func stopped(stop <-chan struct{}) bool {
	select {
	case <-stop:
		return true
	default:
		return false
	}
}

// sweepQueues expires items with TS < cutoff, a chunk at a time: scan,
// commit the erasure through the committer, report, scan on.
func (p *Pebble) sweepQueues(cutoff int64, stop <-chan struct{}) (int, error) {
	expired := 0
	resume := []byte(prefixQueue)
	for resume != nil && !stopped(stop) {
		var op sweepOp
		var err error
		resume, err = p.scanExpired(&op, resume, cutoff)
		if err != nil {
			return expired, err
		}
		if len(op.queues) == 0 {
			continue
		}
		if err := p.commitSweep(&op); err != nil {
			return expired, err
		}
		for _, q := range op.queues {
			for _, it := range q.items {
				// Only what the committer actually erased: an item acked
				// since the scan was delivered, not expired.
				if it.Seq < q.from || it.Seq >= q.to {
					continue
				}
				expired++
				if p.opts.OnExpire != nil {
					p.opts.OnExpire(q.user, it)
				}
			}
		}
	}
	return expired, nil
}

// scanExpired adds to op the expired items found from key start on, up to
// sweepChunk of them, and returns where the next scan should start (nil
// when the scan reached the end). The iterator is closed before the
// erasure is committed, so it never pins memtables for long and Close never
// waits on a sweep blocked in a callback.
func (p *Pebble) scanExpired(op *sweepOp, start []byte, cutoff int64) (resume []byte, err error) {
	p.life.RLock()
	defer p.life.RUnlock()
	if p.closed {
		return nil, ErrClosed
	}
	it, err := p.db.NewIter(&pebble.IterOptions{LowerBound: start, UpperBound: []byte(queueRangeEnd)})
	if err != nil {
		return nil, err
	}
	n := 0
	ok := it.First()
	for ok {
		user, seq, okKey := splitQueueKey(it.Key())
		v := it.Value()
		if !okKey || len(v) < itemHeaderLen {
			p.log.Warn("store sweep: skipping malformed queue key", "key", fmt.Sprintf("%q", it.Key()))
			ok = it.Next()
			continue
		}
		if int64(binary.BigEndian.Uint64(v)) >= cutoff {
			// Items are in time order within a queue: the rest of this
			// one is young too. Skip to the next user's queue.
			ok = it.SeekGE(queueUpperBound(string(user)))
			continue
		}
		if n == sweepChunk {
			resume = append([]byte(nil), it.Key()...)
			break
		}
		if len(op.queues) == 0 || op.queues[len(op.queues)-1].user != string(user) {
			op.queues = append(op.queues, sweepQueue{user: string(user)})
		}
		q := &op.queues[len(op.queues)-1]
		q.upTo = seq
		item := Item{Seq: seq, TS: int64(binary.BigEndian.Uint64(v))}
		if p.opts.OnExpire != nil {
			item.Data = append([]byte(nil), v[itemHeaderLen:]...)
		}
		q.items = append(q.items, item)
		n++
		ok = it.Next()
	}
	if err := it.Close(); err != nil {
		return nil, err
	}
	return resume, nil
}

// sweepDedup deletes dedup records with TS < cutoff, a chunk at a time.
func (p *Pebble) sweepDedup(cutoff int64, stop <-chan struct{}) error {
	resume := []byte(prefixDedup)
	for resume != nil && !stopped(stop) {
		var op sweepOp
		var err error
		resume, err = p.scanOldDedup(&op, resume, cutoff)
		if err != nil {
			return err
		}
		if len(op.dedup) == 0 {
			continue
		}
		if err := p.commitSweep(&op); err != nil {
			return err
		}
	}
	return nil
}

func (p *Pebble) scanOldDedup(op *sweepOp, start []byte, cutoff int64) (resume []byte, err error) {
	p.life.RLock()
	defer p.life.RUnlock()
	if p.closed {
		return nil, ErrClosed
	}
	it, err := p.db.NewIter(&pebble.IterOptions{LowerBound: start, UpperBound: []byte(dedupRangeEnd)})
	if err != nil {
		return nil, err
	}
	for ok := it.First(); ok; ok = it.Next() {
		rec, err := decodeDedupValue(it.Value())
		if err != nil {
			p.log.Warn("store sweep: deleting malformed dedup record", "key", fmt.Sprintf("%q", it.Key()), "err", err)
		} else if rec.ts >= cutoff {
			continue
		}
		if len(op.dedup) == sweepChunk {
			resume = append([]byte(nil), it.Key()...)
			break
		}
		op.dedup = append(op.dedup, append([]byte(nil), it.Key()...))
	}
	if err := it.Close(); err != nil {
		return nil, err
	}
	return resume, nil
}

// commitSweep runs op through the committer and waits for it.
func (p *Pebble) commitSweep(op *sweepOp) error {
	ch := make(chan Result, 1)
	if !p.q.push(request{sweep: op, done: func(r Result) { ch <- r }}) {
		return ErrClosed
	}
	return (<-ch).Err
}
