package jetstream

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	njs "github.com/nats-io/nats.go/jetstream"

	"github.com/parleyhq/parley/store"
)

// Received records (store.Batch.Received, store.Store.ReceivedFrom) live in
// their own stream, NAME_RF, one subject per pair,
// name.rf.<reader>.<sender>, with MaxMsgsPerSubject 1 (each ack naming the
// pair replaces the record) and the stream's MaxAge set to the store's, so
// JetStream itself expires a record MaxAge after its last ack and nothing
// of them is kept in this process.
//
// A stream of their own cannot be written in one atomic batch with the
// ack's partition, so the committer publishes a group's records alongside
// its partition writes, once the group's batches are decided: a refused
// batch writes none. A failure of either side fails the batch. What a
// partial failure can leave is a record without its ack (the session
// re-acks; the items, redelivered, are dropped by id) and this is true
// anyway: the records name senders whose messages were delivered. Or an
// ack without its record, whose reader's later read receipts to that
// sender are refused until its next ack from them.
//
// A chat writes the same pair's record on every ack: one replicated write
// of five per message. The committer skips a record it wrote itself less
// than receivedRefresh ago (store.ReceivedRefresh): the record then
// dates from the pair's first ack in that window, so ReceivedFrom may
// answer false up to receivedRefresh before MaxAge after the pair's last
// ack, instead of at MaxAge.

func (l layout) receivedStream() string { return l.name + "_RF" }

// receivedRefresh is how long a record this node wrote stands for the
// pair's acks after it (see above).
func (s *Store) receivedRefresh() time.Duration {
	return store.ReceivedRefresh(s.opts.Store.MaxAge)
}

// maxRecentReceived bounds the committer's memory of the records it wrote;
// past it the memory is dropped (records are written again).
const maxRecentReceived = 1 << 17

func (l layout) receivedSubject(reader, sender string) string {
	return l.prefix + ".rf." + token(reader) + "." + token(sender)
}

// openReceived creates or updates the received stream.
func (s *Store) openReceived(ctx context.Context) (njs.Stream, error) {
	// EnsureStream, as for the other streams: nodes opening together
	// would otherwise wait out their whole deadline on this create.
	st, err := EnsureStream(ctx, s.js, njs.StreamConfig{
		Name:              s.lay.receivedStream(),
		Subjects:          []string{s.lay.prefix + ".rf.*.*"},
		Storage:           njs.FileStorage,
		Replicas:          s.opts.Replicas,
		MaxMsgsPerSubject: 1,
		// JetStream's floor is 100ms; ReceivedFrom checks the age itself.
		MaxAge:             max(s.opts.Store.MaxAge, time.Second),
		Discard:            njs.DiscardOld,
		AllowAtomicPublish: true, // a group's records are one write
		AllowDirect:        false,
		Duplicates:         time.Second, // Nats-Msg-Id is not used
	}, createTry)
	if err != nil {
		return nil, fmt.Errorf("open jetstream store: received stream: %w", err)
	}
	return st, nil
}

// ReceivedFrom reports whether reader acked a message from sender within
// the last MaxAge. It reads from the stream's leader, so a record whose
// ack's Commit succeeded is seen.
func (s *Store) ReceivedFrom(reader, sender string) (bool, error) {
	if s.closed.Load() {
		return false, fmt.Errorf("received from %s by %s: %w", sender, reader, store.ErrClosed)
	}
	var m *njs.RawStreamMsg
	var err error
	for try := 0; ; try++ {
		ctx, cancel := s.reqCtx()
		m, err = s.getLast(ctx, s.gates.recvIndex(), s.lay.receivedSubject(reader, sender))
		cancel()
		// A read is asked again, twice at most, when the stream could
		// not answer: a leader election ends the reads in flight, and
		// takes tens of milliseconds when the leader stepped down (the
		// read receipt waiting on it is refused otherwise).
		if err == nil || !errors.Is(err, ErrUnavailable) || try == 2 || s.closed.Load() {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return false, fmt.Errorf("received from %s by %s: %w", sender, reader, err)
	}
	// The stream expires old records on its own schedule; one it has not
	// got to yet is old all the same.
	return m != nil && time.Since(m.Time) <= s.opts.Store.MaxAge, nil
}

// recvRec is one received record a group writes, for the request that
// asks for it.
type recvRec struct {
	subj string
	req  int
}

// writeReceived starts publishing the received records of group's
// accepted batches (decided, not yet written) and returns a function that
// waits for that and marks the requests whose records failed.
func (c *committer) writeReceived(ctx context.Context, group []request, now int64) (wait func()) {
	var recs []recvRec
	for i := range group {
		r := &group[i]
		if r.b == nil || len(r.b.Received) == 0 || r.res.Err != nil || r.res.Dup != nil {
			continue
		}
		for _, a := range r.b.Acks {
			for _, sender := range r.b.Received {
				subj := c.s.lay.receivedSubject(a.User, sender)
				if at, ok := c.recentRecv[subj]; ok && now-at < int64(c.s.receivedRefresh()) {
					continue // written a moment ago: it stands for this ack too
				}
				recs = append(recs, recvRec{subj: subj, req: i})
			}
		}
	}
	if len(recs) == 0 {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.publishReceived(ctx, recs, now)
	}()
	return func() { <-done }
}

// publishReceived writes recs, one message per distinct subject, in atomic
// batches of up to maxAtomic.
// The records written are remembered in c.recentRecv (this goroutine is
// the committer's only user of it until the group's wait returns).
func (c *committer) publishReceived(ctx context.Context, recs []recvRec, now int64) {
	slices.SortFunc(recs, func(a, b recvRec) int {
		if a.subj < b.subj {
			return -1
		}
		if a.subj > b.subj {
			return 1
		}
		return a.req - b.req
	})
	var msgs []*nats.Msg
	for start := 0; start < len(recs); {
		msgs = msgs[:0]
		end := start
		for end < len(recs) && len(msgs) < maxAtomic {
			if end == start || recs[end].subj != recs[end-1].subj {
				msgs = append(msgs, nats.NewMsg(recs[end].subj))
			}
			end++
		}
		// Whatever follows with the same subject is covered too.
		for end < len(recs) && recs[end].subj == recs[end-1].subj {
			end++
		}
		if _, err := c.s.publishBatch(ctx, c.s.gates.recvIndex(), msgs); err != nil {
			err = fmt.Errorf("write %d received records: %w", len(msgs), err)
			c.s.log.Warn("store received records failed", "err", err)
			c.resMu.Lock()
			for _, r := range recs[start:end] {
				if c.failed[r.req] == nil {
					c.failed[r.req] = err
				}
			}
			c.resMu.Unlock()
		} else {
			if len(c.recentRecv) >= maxRecentReceived {
				clear(c.recentRecv)
			}
			for _, r := range recs[start:end] {
				c.recentRecv[r.subj] = now
			}
		}
		start = end
	}
}
