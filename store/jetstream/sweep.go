package jetstream

import (
	"context"
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
// number of items expired.
//
// Each partition is scanned from its start up to its first young item.
// Items are in stream order, which is time order, so a pass reads the
// expired items, the empty-markers of the last minute (they expire) and
// one more message per partition. (Tail records are in subjects of their
// own, which it does not read.)
func (s *Store) Sweep(now time.Time) (int, error) {
	s.sweepMu.Lock()
	defer s.sweepMu.Unlock()
	if s.closed.Load() {
		return 0, fmt.Errorf("sweep: %w", store.ErrClosed)
	}
	if err := s.sweepDedup(now); err != nil {
		return 0, err
	}
	cutoff := now.Add(-s.opts.Store.MaxAge).UnixNano()
	type found struct {
		upTo  uint64
		items []store.Item
	}
	expired := make(map[string]*found)
	for p := range s.parts {
		if err := s.scanExpired(p, cutoff, func(user string, it store.Item) {
			f := expired[user]
			if f == nil {
				f = &found{}
				expired[user] = f
			}
			f.upTo = max(f.upTo, it.Seq)
			f.items = append(f.items, it)
		}); err != nil {
			return 0, err
		}
	}
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

// scanExpired calls fn for each item of partition p older than cutoff,
// from the partition's start to its first younger item.
func (s *Store) scanExpired(p int, cutoff int64, fn func(user string, it store.Item)) error {
	ctx, cancel := context.WithTimeout(s.ctx, s.opts.Timeout)
	defer cancel()
	filter := s.lay.queueFilter(p)
	var cur uint64 = 1
	for {
		m, err := s.getNext(ctx, p, filter, cur)
		if err != nil {
			return fmt.Errorf("sweep partition %d: %w", p, err)
		}
		if m == nil {
			return nil
		}
		cur = m.Sequence + 1
		r, err := decodeRecord(m.Data)
		if err != nil {
			return fmt.Errorf("sweep partition %d at %d: %w", p, m.Sequence, err)
		}
		if r.kind != kindItem {
			continue
		}
		if r.ts >= cutoff {
			return nil
		}
		user, err := untoken(userTokenOf(m.Subject))
		if err != nil {
			return fmt.Errorf("sweep partition %d: %w", p, err)
		}
		fn(user, store.Item{Seq: r.seq, TS: r.ts, Data: append([]byte(nil), r.data...)})
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
	ctx, cancel := context.WithTimeout(s.ctx, s.opts.Timeout)
	defer cancel()
	for _, r := range due {
		if err := s.parts[r.part].DeleteMsg(ctx, r.seq); err != nil && !isNotFound(err) {
			return fmt.Errorf("sweep dedup record %d/%d: %w", r.part, r.seq, err)
		}
	}
	return nil
}
