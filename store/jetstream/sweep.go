package jetstream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/parleyhq/parley/store"
)

// sweepOp is a sweep's erasure, decided by the committer like an ack.
type sweepOp struct {
	queues []sweepQueue
}

type sweepQueue struct {
	user     string
	upTo     uint64 // erase up to here, if still there
	from, to uint64 // what was erased: [from, to), set by the committer
}

// decideSweep plans the erasure of what the sweeper found expired. Between
// its scan and now the queues may have moved (acks), so each is erased
// only up to what is still there, and op records exactly what was.
func (c *committer) decideSweep(ctx context.Context, i int, op *sweepOp) store.Result {
	for k := range op.queues {
		st, err := c.state(ctx, op.queues[k].user)
		if err != nil {
			return store.Result{Err: err}
		}
		if q := op.queues[k]; q.upTo > st.tail && !c.s.opts.DeletePerItem {
			// Appended by another node (see decide's acks).
			if err := c.raiseTail(ctx, st, q.upTo); err != nil {
				return store.Result{Err: err}
			}
		}
	}
	now := time.Now().UnixNano()
	for k := range op.queues {
		q := &op.queues[k]
		st, _ := c.state(ctx, q.user)
		from, to := st.head, min(q.upTo, st.tail)+1
		q.from, q.to = from, from
		if to <= from {
			continue
		}
		c.erase(i, st, to, now)
		q.to = to
		c.s.stMu.Lock()
		st.head = to
		c.s.stMu.Unlock()
	}
	return store.Result{}
}

func (s *Store) sweepLoop() {
	defer close(s.swept)
	t := time.NewTicker(s.opts.Store.SweepEvery)
	defer t.Stop()
	for {
		select {
		case <-s.stopSweep:
			return
		case now := <-t.C:
			if _, err := s.Sweep(now); err != nil {
				s.log.Warn("store sweep failed", "err", err)
			}
		}
	}
}

// Sweep runs one expiry pass as of now: it erases queue items older than
// MaxAge (reporting each to OnExpire after the erasure) and deletes the
// dedup records this store wrote with a TS already past DedupTTL (every
// other dedup record expires on its own, by its Nats-TTL). It returns the
// number of items expired, and what failed: a partition that fails is
// left for the next pass, and the others are swept.
//
// Each partition is scanned from its start up to its first young item.
// Items are in stream order, which is time order, so a pass reads the
// expired items, the empty-markers of the last minute (they expire) and
// one more message per partition. (Tail records are in subjects of their
// own, which it does not read.) It goes in steps of at most SweepBatch
// expired items, each erased before the next is read, so that what a pass
// holds is bounded however large the backlog; each read has its own
// Timeout, so a long pass is never taken for a stream that does not
// answer.
func (s *Store) Sweep(now time.Time) (int, error) {
	s.sweepMu.Lock()
	defer s.sweepMu.Unlock()
	if s.closed.Load() {
		return 0, fmt.Errorf("sweep: %w", store.ErrClosed)
	}
	// A part that fails (a partition between leaders, a dedup record
	// that would not go) is left for the next pass; the rest goes on.
	var errs []error
	if err := s.sweepDedup(now); err != nil {
		errs = append(errs, err)
	}
	cutoff := now.Add(-s.opts.Store.MaxAge).UnixNano()
	n := 0
	for p := range s.parts {
		for from := uint64(1); from != 0; {
			select {
			case <-s.stopSweep:
				// Closing: the rest is for the next pass (Close waits for
				// this one).
				return n, fmt.Errorf("sweep: %w", store.ErrClosed)
			default:
			}
			expired, next, err := s.scanExpired(p, from, cutoff, s.opts.SweepBatch)
			if err == nil {
				var k int
				k, err = s.eraseExpired(expired)
				n += k
			}
			if err != nil {
				errs = append(errs, err)
				break
			}
			from = next
		}
	}
	return n, errors.Join(errs...)
}

// expiredItems are one queue's expired items a sweep's step found.
type expiredItems struct {
	upTo  uint64
	items []store.Item
}

// eraseExpired erases what a sweep's step found, as far as it is still
// there, and reports each item erased to OnExpire.
func (s *Store) eraseExpired(expired map[string]*expiredItems) (int, error) {
	if len(expired) == 0 {
		return 0, nil
	}
	op := &sweepOp{}
	for user, f := range expired {
		op.queues = append(op.queues, sweepQueue{user: user, upTo: f.upTo})
	}
	res := make(chan store.Result, 1)
	if !s.q.push(request{sweep: op, done: func(r store.Result) { res <- r }}) {
		return 0, fmt.Errorf("sweep: %w", store.ErrClosed)
	}
	if r := <-res; r.Err != nil {
		return 0, fmt.Errorf("sweep: %w", r.Err)
	}
	n := 0
	for _, q := range op.queues {
		for _, it := range expired[q.user].items {
			if it.Seq >= q.from && it.Seq < q.to {
				n++
				if f := s.opts.Store.OnExpire; f != nil {
					f(q.user, it)
				}
			}
		}
	}
	return n, nil
}

// scanExpired reads partition p from stream seq from and returns its items
// older than cutoff, up to limit of them, by user, and where to go on: the
// stream seq after the last item returned, or 0 when the partition has no
// more expired items (a younger item, or its end, was come to).
func (s *Store) scanExpired(p int, from uint64, cutoff int64, limit int) (map[string]*expiredItems, uint64, error) {
	filter := s.lay.queueFilter(p)
	found := make(map[string]*expiredItems)
	for cur, n := from, 0; ; {
		if n == limit {
			return found, cur, nil
		}
		m, err := s.getNext(s.ctx, p, filter, cur)
		if err != nil {
			return nil, 0, fmt.Errorf("sweep partition %d: %w", p, err)
		}
		if m == nil {
			return found, 0, nil
		}
		cur = m.Sequence + 1
		r, err := decodeRecord(m.Data)
		if err != nil {
			return nil, 0, fmt.Errorf("sweep partition %d at %d: %w", p, m.Sequence, err)
		}
		if r.kind != kindItem {
			continue
		}
		if r.ts >= cutoff {
			return found, 0, nil
		}
		user, err := untoken(userTokenOf(m.Subject))
		if err != nil {
			return nil, 0, fmt.Errorf("sweep partition %d: %w", p, err)
		}
		f := found[user]
		if f == nil {
			f = &expiredItems{}
			found[user] = f
		}
		f.upTo = max(f.upTo, r.seq)
		f.items = append(f.items, store.Item{Seq: r.seq, TS: r.ts, Data: append([]byte(nil), r.data...)})
		n++
	}
}

// sweepDedup deletes the born-expired dedup records whose deadline passed.
func (s *Store) sweepDedup(now time.Time) error {
	s.beMu.Lock()
	var due, keep []dedupRef
	for _, r := range s.bornExpired {
		if r.deadline <= now.UnixNano() {
			due = append(due, r)
		} else {
			keep = append(keep, r)
		}
	}
	s.bornExpired = keep
	s.beMu.Unlock()
	for k, r := range due {
		if err := s.deleteDedup(r); err != nil {
			// The rest are deleted by a later pass.
			s.beMu.Lock()
			s.bornExpired = append(s.bornExpired, due[k:]...)
			if extra := len(s.bornExpired) - maxBornExpired; extra > 0 {
				s.bornExpired = s.bornExpired[extra:] // as the committer does
			}
			s.beMu.Unlock()
			return fmt.Errorf("sweep dedup record %d/%d: %w", r.part, r.seq, err)
		}
	}
	return nil
}

// deleteDedup deletes one born-expired dedup record, in a request of its
// own (each with its own Timeout: see Sweep).
func (s *Store) deleteDedup(r dedupRef) error {
	ctx, cancel := context.WithTimeout(s.ctx, s.opts.Timeout)
	defer cancel()
	if err := s.parts[r.part].DeleteMsg(ctx, r.seq); err != nil && !isNotFound(err) {
		return err
	}
	return nil
}
