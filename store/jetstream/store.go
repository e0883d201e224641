package jetstream

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	njs "github.com/nats-io/nats.go/jetstream"

	"github.com/parleyhq/parley/store"
)

// Defaults for zero Options fields.
const (
	defaultName       = "parley"
	defaultPartitions = 3
	defaultReplicas   = 1
	defaultTimeout    = 2 * time.Second
	defaultSweepBatch = 1024

	defaultMaxQueueLen = 100000
	defaultMaxAge      = 30 * 24 * time.Hour
	defaultSweepEvery  = time.Hour
	defaultDedupTTL    = 7 * 24 * time.Hour
)

// ErrConflict reports that another writer (another node) changed a queue
// this batch writes between the store's decision and its write, so the
// batch was not written. Nothing of the refused partition's part is stored;
// the caller may retry the batch (a send retried with its Dedup is safe).
var ErrConflict = errors.New("concurrent write to the same queue: retry")

// ErrUnavailable reports that JetStream did not answer a request in time,
// or answered that it cannot now: no quorum for the stream (this node is
// cut off, or replicas are down), or the NATS system is unreachable. A
// write may or may not have happened; a send retried with its Dedup is
// safe. It clears by itself once a quorum is back. It is a
// store.ErrUnavailable (errors.Is matches either), so the session tells
// the client to send again.
var ErrUnavailable = fmt.Errorf("JetStream unavailable (no quorum or unreachable): %w", store.ErrUnavailable)

// unavailable marks err as ErrUnavailable when it says JetStream did not
// answer in time or cannot answer now.
func unavailable(err error) error {
	var apiErr *njs.APIError
	switch {
	case err == nil || errors.Is(err, ErrUnavailable):
		return err
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled),
		errors.Is(err, nats.ErrTimeout), errors.Is(err, nats.ErrNoResponders),
		errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrConnectionReconnecting),
		errors.Is(err, njs.ErrNoStreamResponse),
		errors.As(err, &apiErr) && apiErr.Code == 503: // a leaderless stream or meta group
		return fmt.Errorf("%w (%w)", ErrUnavailable, err)
	}
	return err
}

// Options configure a JetStream store.
type Options struct {
	// Store holds the limits every store.Store honours. Store.FS is
	// ignored: JetStream owns its files.
	Store store.Options

	// Name prefixes every stream (upper-cased) and subject (lower-cased)
	// of the store, so several stores can share one NATS system. Default
	// "parley". Letters, digits, '-' and '_' only.
	Name string
	// Partitions is the number of queue streams, used when the store is
	// created; later opens use the count recorded then, and a different
	// non-zero value is an error. Default 3: about one per node, so that
	// the streams' leaders spread over the nodes. Not more: each node's
	// commit group writes one atomic batch (one Raft entry) per partition
	// it touches, so more partitions group less (three nodes on one
	// 2-vCPU machine, pairs 200 x 1: 1 partition 1,563 msgs/s, 3 1,287,
	// 6 1,166, 16 786; see BENCHMARKS.md).
	Partitions int
	// Replicas is each stream's replication factor: 1 for a one-node
	// cluster, 3 for three nodes or more. Default 1.
	Replicas int
	// Timeout bounds each JetStream request. Default 2 s.
	Timeout time.Duration
	// SweepBatch bounds the expired items one step of a sweep reads,
	// holds and erases: a backlog (a partition whose items expired by the
	// million) is swept in steps, each erased before the next is read.
	// Default 1,024.
	SweepBatch int
	// Log receives the store's logs; nil means slog.Default().
	Log *slog.Logger

	// DeletePerItem erases acked items with one DeleteMsg each, and keeps
	// the tail in an emptied queue's empty-marker (every write to the
	// queue a compare-and-set on its last message, so a node erasing and
	// one appending conflict): the obvious pattern this store improves
	// on. It exists for the one-node benchmarks that compare the two;
	// leave it off.
	DeletePerItem bool
}

func (o Options) withDefaults() Options {
	if o.Name == "" {
		o.Name = defaultName
	}
	if o.Replicas <= 0 {
		o.Replicas = defaultReplicas
	}
	if o.Timeout <= 0 {
		o.Timeout = defaultTimeout
	}
	if o.SweepBatch <= 0 {
		o.SweepBatch = defaultSweepBatch
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	so := &o.Store
	if so.MaxQueueLen <= 0 {
		so.MaxQueueLen = defaultMaxQueueLen
	}
	if so.MaxAge <= 0 {
		so.MaxAge = defaultMaxAge
	}
	if so.SweepEvery <= 0 {
		so.SweepEvery = defaultSweepEvery
	}
	if so.DedupTTL <= 0 {
		so.DedupTTL = defaultDedupTTL
	}
	return o
}

// Store is a store.Store kept in NATS JetStream streams (see the package
// doc for the layout and what it promises).
type Store struct {
	nc   *nats.Conn
	js   njs.JetStream
	opts Options
	lay  layout
	log  *slog.Logger

	parts []njs.Stream // queue streams, by partition
	meta  njs.Stream
	recv  njs.Stream // received records (received.go)
	gates gates      // one per stream: see gate.go
	// leaderSub takes JetStream's leader-elected advisories (watchLeaders).
	leaderSub *nats.Subscription

	// ctx is cancelled by Close once the committer and sweeper are done,
	// which ends any request still waiting.
	ctx    context.Context
	cancel context.CancelFunc
	closed atomic.Bool

	q         commitQueue
	committed chan struct{}

	stopSweep chan struct{}
	swept     chan struct{}
	sweepMu   sync.Mutex

	closeOnce sync.Once

	// stMu guards states (the committer's cached view of queues) for the
	// readers that use it as a hint and for QueueDepths, and readAt.
	stMu   sync.Mutex
	states map[string]*userState
	// readAt is, by user, the last item a read of the queue came to, with
	// its stream seq: where the next read starts (see ReadQueue).
	readAt map[string]seqPair
	// ackedAt is, by user, how far another node said it erased the queue
	// (NoteAcked); the committer moves it into the state on use.
	ackedAt map[string]uint64

	acctMu   sync.RWMutex
	accounts map[string]struct{} // phones known to have an account

	idMu sync.Mutex // one ReserveIDs at a time from this store

	// bornExpired lists dedup records written with a TS already past
	// DedupTTL: their Nats-TTL cannot honour TS, so Sweep deletes them.
	beMu        sync.Mutex
	bornExpired []dedupRef

	// n counts the requests this store made, for Counters.
	n struct{ writes, msgs, conflicts, reads, purges atomic.Uint64 }
}

// Counters are the JetStream requests a store made since it was opened.
// Conflicts over Writes is the share of writes refused because another
// node wrote one of their queues first (each costs a read and a retry).
type Counters struct {
	Writes    uint64 // publishes and atomic batches
	Msgs      uint64 // messages in them
	Conflicts uint64 // writes refused by a compare-and-set
	Reads     uint64 // MSG.GET requests
	Purges    uint64 // purge and delete requests
}

// Counters reports the requests made so far.
func (s *Store) Counters() Counters {
	return Counters{Writes: s.n.writes.Load(), Msgs: s.n.msgs.Load(), Conflicts: s.n.conflicts.Load(),
		Reads: s.n.reads.Load(), Purges: s.n.purges.Load()}
}

type dedupRef struct {
	part     int
	seq      uint64
	deadline int64 // TS + DedupTTL
}

// maxCachedStates bounds the committer's cache of queue states; past it the
// cache is dropped and states are reloaded on use.
const maxCachedStates = 1 << 17

// maxBornExpired bounds bornExpired; past it the oldest are left to their
// Nats-TTL.
const maxBornExpired = 1 << 14

var _ store.Store = (*Store)(nil)

// Open opens (creating if needed) the store named opts.Name in the
// JetStream system nc is connected to and starts its committer and
// sweeper. The store does not own nc: close it after Close.
func Open(ctx context.Context, nc *nats.Conn, opts Options) (*Store, error) {
	opts = opts.withDefaults()
	js, err := njs.New(nc)
	if err != nil {
		return nil, fmt.Errorf("open jetstream store: %w", err)
	}
	s := &Store{
		nc:        nc,
		js:        js,
		opts:      opts,
		log:       opts.Log.With("component", "store", "store", "jetstream"),
		committed: make(chan struct{}),
		stopSweep: make(chan struct{}),
		swept:     make(chan struct{}),
		states:    make(map[string]*userState),
		accounts:  make(map[string]struct{}),
	}
	s.lay = newLayout(opts.Name, 1)
	meta, err := EnsureStream(ctx, js, njs.StreamConfig{
		Name:              s.lay.metaStream(),
		Subjects:          s.lay.metaSubjects(),
		Storage:           njs.FileStorage,
		Replicas:          opts.Replicas,
		MaxMsgsPerSubject: 1,
		Discard:           njs.DiscardOld,
		AllowDirect:       false, // reads go to the leader: read-after-write
	}, createTry)
	if err != nil {
		return nil, fmt.Errorf("open jetstream store: meta stream: %w", err)
	}
	s.meta = meta
	parts, err := s.partitionCount(ctx, opts.Partitions)
	if err != nil {
		return nil, err
	}
	s.lay = newLayout(opts.Name, parts)
	for p := 0; p < parts; p++ {
		st, err := EnsureStream(ctx, js, njs.StreamConfig{
			Name:     s.lay.queueStream(p),
			Subjects: s.lay.queueSubjects(p),
			Storage:  njs.FileStorage,
			Replicas: opts.Replicas,
			Discard:  njs.DiscardOld,
			// No MaxAge: the sweeper expires items (and reports each),
			// and a queue's tail record must outlive any age so that
			// its seqs are never reused.
			AllowRollup:        true, // a tail record replaces the one before
			AllowMsgTTL:        true, // dedup records expire on their own
			AllowAtomicPublish: true, // a batch's writes to one partition are one write
			AllowDirect:        false,
			Duplicates:         time.Second, // Nats-Msg-Id is not used
		}, createTry)
		if err != nil {
			return nil, fmt.Errorf("open jetstream store: queue stream %d: %w", p, err)
		}
		s.parts = append(s.parts, st)
	}
	if s.recv, err = s.openReceived(ctx); err != nil {
		return nil, err
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.gates = gates{s: s, list: make([]gate, len(s.parts)+2)}
	for i := range s.gates.list {
		s.gates.newTerm(i)
	}
	if s.leaderSub, err = s.watchLeaders(); err != nil {
		return nil, fmt.Errorf("open jetstream store: watch leader elections: %w", err)
	}
	// A stream just created may not have its leader yet (its writes find
	// no responders): the store is open once every stream answers.
	if err := s.gates.ready(ctx); err != nil {
		s.leaderSub.Unsubscribe()
		s.cancel()
		return nil, fmt.Errorf("open jetstream store: %w", err)
	}
	s.q.init()
	c := &committer{s: s, overlay: make(map[string]dedupSlot), recentRecv: make(map[string]int64)}
	go c.run()
	go s.sweepLoop()
	return s, nil
}

// createTry bounds one try of a stream's creation (see EnsureStream).
const createTry = 2 * time.Second

// EnsureStream creates the stream cfg describes, or updates it to cfg,
// trying again each time a request is not answered within try, until ctx
// ends.
//
// Why: in a cluster, nats-server (v2.15.3) does not answer a create of a
// stream that another node is creating at the same moment, as every node
// of a cluster started at once does with the same streams; each such
// request would wait out its whole deadline. Nodes that started together
// stay in step, so the next try waits a random part of try first: one of
// them then creates the stream alone, and the others find it made.
func EnsureStream(ctx context.Context, js njs.JetStream, cfg njs.StreamConfig, try time.Duration) (njs.Stream, error) {
	for {
		tctx, cancel := context.WithTimeout(ctx, try)
		st, err := js.CreateOrUpdateStream(tctx, cfg)
		cancel()
		if err == nil || ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) {
			return st, err
		}
		select {
		case <-ctx.Done():
		case <-time.After(rand.N(try)):
		}
	}
}

// partitionCount reads the partition count recorded at creation, recording
// want (or the default) if there is none.
func (s *Store) partitionCount(ctx context.Context, want int) (int, error) {
	for changes := 0; changes < 10; {
		// A stream just created may not have elected its leader yet,
		// and a read sent before then is never answered: short tries.
		tctx, cancel := context.WithTimeout(ctx, createTry)
		m, err := s.meta.GetLastMsgForSubject(tctx, s.lay.cfgSubject())
		cancel()
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			continue
		}
		changes++
		if err == nil {
			n, perr := strconv.Atoi(string(m.Data))
			if perr != nil || n <= 0 {
				return 0, fmt.Errorf("open jetstream store: bad partition record %q", m.Data)
			}
			if want > 0 && want != n {
				return 0, fmt.Errorf("open jetstream store: it has %d partitions, not the %d asked for: the count is fixed when the store is created", n, want)
			}
			return n, nil
		}
		if !errors.Is(err, njs.ErrMsgNotFound) {
			return 0, fmt.Errorf("open jetstream store: read partition count: %w", err)
		}
		if want <= 0 {
			want = defaultPartitions
		}
		msg := nats.NewMsg(s.lay.cfgSubject())
		msg.Data = []byte(strconv.Itoa(want))
		msg.Header.Set(njs.ExpectedLastSubjSeqHeader, "0")
		tctx, cancel = context.WithTimeout(ctx, createTry)
		_, err = s.publish(tctx, msg)
		cancel()
		if err != nil && !errors.Is(err, ErrConflict) && !(errors.Is(err, ErrUnavailable) && ctx.Err() == nil) {
			return 0, fmt.Errorf("open jetstream store: record partition count: %w", err)
		}
		if errors.Is(err, ErrUnavailable) {
			// The meta stream just created may have no leader yet (no
			// responders at once): not a change, wait a moment.
			changes--
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
		// Written, or another node wrote it first: read it back.
	}
	return 0, errors.New("open jetstream store: partition count keeps changing")
}

// Commit queues b for the committer and returns at once; done is called
// from the committer goroutine once b is written (acknowledged by
// JetStream, so replicated to a quorum) or refused. After Close, done gets
// ErrClosed from a new goroutine, after every batch queued before.
func (s *Store) Commit(b *store.Batch, done func(store.Result)) {
	if s.q.push(request{b: b, done: done}) {
		return
	}
	if done != nil {
		go func() {
			<-s.committed
			done(store.Result{Err: store.ErrClosed})
		}()
	}
}

// Close lets the committer finish every batch already queued, stops the
// sweeper and ends the store's requests. It waits for them at most
// Options.Timeout: a node cut off from its quorum would otherwise wait out
// every queued batch's requests; past it the requests still waiting end,
// and their batches report ErrUnavailable (not written, or not known to
// be: a send is retried with its Dedup). It does not close the NATS
// connection. Later calls return nil.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		t := time.AfterFunc(s.opts.Timeout, s.cancel)
		defer t.Stop()
		close(s.stopSweep)
		<-s.swept
		s.q.close()
		<-s.committed
		s.closed.Store(true)
		s.cancel()
		_ = s.leaderSub.Unsubscribe()
	})
	return nil
}

// reqCtx is the budget of one of the store's calls made outside the
// committer: twice a request's Timeout, so that its first request's
// timeout is the request's own (and closes the stream's gate, see
// gates.done), while a call of many requests (ReadQueue) is still bounded.
func (s *Store) reqCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(s.ctx, 2*s.opts.Timeout)
}

// getNext returns the first message of subject (a filter may have
// wildcards) in the stream behind gate gi at or after stream seq from, or
// nil. It waits at most Options.Timeout, even within a longer ctx.
func (s *Store) getNext(ctx context.Context, gi int, subject string, from uint64) (*njs.RawStreamMsg, error) {
	rctx, cancel, err := s.gates.enter(ctx, gi)
	if err != nil {
		return nil, err
	}
	defer cancel()
	m, err := s.gates.stream(gi).GetMsg(rctx, max(from, 1), njs.WithGetMsgSubject(subject))
	return s.gotMsg(ctx, gi, m, err)
}

// getLast is getNext for the last message of subject.
func (s *Store) getLast(ctx context.Context, gi int, subject string) (*njs.RawStreamMsg, error) {
	rctx, cancel, err := s.gates.enter(ctx, gi)
	if err != nil {
		return nil, err
	}
	defer cancel()
	m, err := s.gates.stream(gi).GetLastMsgForSubject(rctx, subject)
	return s.gotMsg(ctx, gi, m, err)
}

// gotMsg reads the outcome of a MSG.GET made within parent: not found is
// nil, no answer is ErrUnavailable (and closes the stream's gate, see
// gates.done).
func (s *Store) gotMsg(parent context.Context, gi int, m *njs.RawStreamMsg, err error) (*njs.RawStreamMsg, error) {
	s.n.reads.Add(1)
	switch {
	case err == nil:
		return m, nil
	case errors.Is(err, njs.ErrMsgNotFound):
		return nil, nil
	}
	if err = unavailable(err); errors.Is(err, ErrUnavailable) {
		s.gates.done(parent, gi, err)
	}
	return nil, err
}

// ReadQueue returns up to max items of user's queue with Seq >= from, in
// order. Reads go to each stream's leader (MSG.GET), so a batch whose
// Commit reported success is always seen.
func (s *Store) ReadQueue(user string, from uint64, max int) ([]store.Item, error) {
	if max <= 0 {
		return nil, nil
	}
	if s.closed.Load() {
		return nil, fmt.Errorf("read queue %s: %w", user, store.ErrClosed)
	}
	ctx, cancel := s.reqCtx()
	defer cancel()
	p := s.lay.partition(user)
	subj := s.lay.queueSubject(p, user)
	cur := s.startHint(user, from)
	var items []store.Item
	var at seqPair // the last item come to
	for len(items) < max {
		m, err := s.getNext(ctx, p, subj, cur)
		if err != nil {
			s.noteReadAt(user, at)
			return nil, fmt.Errorf("read queue %s: %w", user, err)
		}
		if m == nil {
			break
		}
		cur = m.Sequence + 1
		r, err := decodeRecord(m.Data)
		if err != nil {
			return nil, fmt.Errorf("read queue %s at stream seq %d: %w", user, m.Sequence, err)
		}
		if r.kind != kindItem {
			continue
		}
		at = seqPair{r.seq, m.Sequence}
		if r.seq < from {
			continue
		}
		items = append(items, store.Item{Seq: r.seq, TS: r.ts, Data: append([]byte(nil), r.data...)})
	}
	s.noteReadAt(user, at)
	return items, nil
}

// startHint is a stream seq at or before the item with seq from, from what
// the committer knows and where the last read came to; 1 (the start) when
// neither says anything useful. Any item's (seq, stream seq) will do for
// a from at or past its seq, however old: a queue's items are in the
// stream in the order of their seqs (every append is a compare-and-set on
// the queue's tail record), erased or not.
func (s *Store) startHint(user string, from uint64) uint64 {
	s.stMu.Lock()
	defer s.stMu.Unlock()
	var best uint64 = 1
	if k, ok := s.readAt[user]; ok && k.seq <= from {
		best = k.sseq
	}
	if st := s.states[user]; st != nil {
		for _, k := range st.known {
			if k.seq <= from && k.sseq > best {
				best = k.sseq
			}
		}
	}
	return best
}

// noteReadAt records that a read of user's queue came to item at (none if
// at.sseq is 0), for the next read to start there: every read walks the
// queue one request per message, so one that started at the queue's
// first message each time would take the longer the further the user is
// into a long queue (a recipient reading a backlog a window at a time),
// until it outlasts its timeout and the user gets nothing more. A read
// that failed part way records where it came to as well, so that the next
// try goes on from there.
func (s *Store) noteReadAt(user string, at seqPair) {
	if at.sseq == 0 {
		return
	}
	s.stMu.Lock()
	defer s.stMu.Unlock()
	if k, ok := s.readAt[user]; ok && k.sseq >= at.sseq {
		return
	}
	if s.readAt == nil || len(s.readAt) >= maxCachedStates {
		s.readAt = make(map[string]seqPair)
	}
	s.readAt[user] = at
}

// NoteItem tells the store that item seq of user's queue was put at loc
// (a Result.Locs of another node's commit, brought by the cluster's
// doorbell): the ack that erases it then needs no read to find it, and
// a read starts there. loc 0 says nothing.
func (s *Store) NoteItem(user string, seq, loc uint64) {
	if loc != 0 {
		s.noteReadAt(user, seqPair{seq, loc})
	}
}

// NoteAcked tells the store that another node erased user's queue up to
// upTo (an ack made there, brought by a doorbell for the receipts it
// made): this node, which appended those items, sees its view of the
// queue's length come down; it would otherwise never see it, since
// erasing writes nothing a node appending to the queue reads. Until then
// its view only overstates the queue (the gauges, and QUEUE_FULL checked
// again against the stream before it is answered).
func (s *Store) NoteAcked(user string, upTo uint64) {
	s.stMu.Lock()
	defer s.stMu.Unlock()
	if s.ackedAt == nil || len(s.ackedAt) >= maxCachedStates {
		s.ackedAt = make(map[string]uint64)
	}
	s.ackedAt[user] = max(s.ackedAt[user], upTo)
}

// headOf is st's head with what NoteAcked said of it. Under stMu.
func (s *Store) headOf(st *userState) uint64 {
	if a, ok := s.ackedAt[st.user]; ok && a >= st.head {
		return min(a+1, st.tail+1)
	}
	return st.head
}

// QueueLen is the number of items in user's queue, read from the stream's
// leader.
func (s *Store) QueueLen(user string) (int, error) {
	if s.closed.Load() {
		return 0, fmt.Errorf("queue length %s: %w", user, store.ErrClosed)
	}
	ctx, cancel := s.reqCtx()
	defer cancel()
	b, err := s.loadBounds(ctx, user)
	if err != nil {
		return 0, fmt.Errorf("queue length %s: %w", user, err)
	}
	return int(b.tail + 1 - b.head), nil
}

// QueueLenCached is user's queue length as the committer last saw it,
// without a request: ok is false when it has no view of the queue. Another
// node's writes since are not in it. It is for the monitor, which reads
// every session's queue length every second: one request per session per
// second would cost the cluster more than the messages.
func (s *Store) QueueLenCached(user string) (n int, ok bool) {
	s.stMu.Lock()
	defer s.stMu.Unlock()
	st := s.states[user]
	if st == nil {
		return 0, false
	}
	return int(st.tail + 1 - s.headOf(st)), true
}

// bounds is what the stream says of one queue.
type bounds struct {
	head, tail uint64 // head = tail+1 when empty
	last       uint64 // stream seq of the subject's last message; 0 if none
	headSeq    uint64 // stream seq of the head item; 0 if empty
}

// lastRecord is the record of subj's last message and its stream seq;
// sseq 0 (and a zero record) when the subject has none.
func (s *Store) lastRecord(ctx context.Context, p int, subj string) (r record, sseq uint64, err error) {
	m, err := s.getLast(ctx, p, subj)
	if err != nil || m == nil {
		return record{}, 0, err
	}
	if r, err = decodeRecord(m.Data); err != nil {
		return record{}, 0, fmt.Errorf("stream seq %d: %w", m.Sequence, err)
	}
	return r, m.Sequence, nil
}

func (s *Store) loadBounds(ctx context.Context, user string) (bounds, error) {
	p := s.lay.partition(user)
	subj := s.lay.queueSubject(p, user)
	var b bounds
	if !s.opts.DeletePerItem {
		r, sseq, err := s.lastRecord(ctx, p, s.lay.tailSubject(p, user))
		if err != nil {
			return bounds{}, err
		}
		b = bounds{tail: r.seq, last: sseq}
	}
	if b.last == 0 {
		// No tail record: the queue was never appended to, or only
		// before there were tail records (its last message says the
		// tail), or with DeletePerItem (where it is the compare-and-set's
		// base too).
		r, sseq, err := s.lastRecord(ctx, p, subj)
		if err != nil {
			return bounds{}, err
		}
		b.tail = r.seq
		if s.opts.DeletePerItem {
			b.last = sseq
		}
	}
	b.head = b.tail + 1
	// The head is the first item left, if any (an empty-marker comes
	// before every item of the queue).
	for cur := uint64(1); b.tail > 0; {
		m, err := s.getNext(ctx, p, subj, cur)
		if err != nil {
			return bounds{}, err
		}
		if m == nil {
			break
		}
		fr, err := decodeRecord(m.Data)
		if err != nil {
			return bounds{}, fmt.Errorf("stream seq %d: %w", m.Sequence, err)
		}
		if fr.kind == kindItem {
			b.head, b.headSeq = fr.seq, m.Sequence
			break
		}
		cur = m.Sequence + 1
	}
	return b, nil
}

// Account returns a copy of phone's account, or store.ErrNotFound.
func (s *Store) Account(phone string) (store.Account, error) {
	if s.closed.Load() {
		return store.Account{}, fmt.Errorf("account %s: %w", phone, store.ErrClosed)
	}
	ctx, cancel := s.reqCtx()
	defer cancel()
	m, err := s.getLast(ctx, s.gates.metaIndex(), s.lay.accountSubject(phone))
	if err != nil {
		return store.Account{}, fmt.Errorf("account %s: %w", phone, err)
	}
	if m == nil {
		return store.Account{}, fmt.Errorf("account %s: %w", phone, store.ErrNotFound)
	}
	a, err := decodeAccount(phone, m.Data)
	if err != nil {
		return store.Account{}, fmt.Errorf("account %s: %w", phone, err)
	}
	return a, nil
}

// PutAccount creates or replaces a's account; it returns once JetStream
// has acknowledged it.
func (s *Store) PutAccount(a store.Account) error {
	if a.Phone == "" {
		return errors.New("put account: empty phone")
	}
	if s.closed.Load() {
		return fmt.Errorf("put account %s: %w", a.Phone, store.ErrClosed)
	}
	ctx, cancel := s.reqCtx()
	defer cancel()
	msg := nats.NewMsg(s.lay.accountSubject(a.Phone))
	msg.Data = encodeAccount(a)
	if _, err := s.publish(ctx, msg); err != nil {
		return fmt.Errorf("put account %s: %w", a.Phone, err)
	}
	s.acctMu.Lock()
	if len(s.accounts) >= maxCachedStates {
		clear(s.accounts)
	}
	s.accounts[a.Phone] = struct{}{}
	s.acctMu.Unlock()
	return nil
}

// accountExists reports whether phone has an account; hits are cached
// (accounts are never deleted).
func (s *Store) accountExists(ctx context.Context, phone string) (bool, error) {
	s.acctMu.RLock()
	_, ok := s.accounts[phone]
	s.acctMu.RUnlock()
	if ok {
		return true, nil
	}
	m, err := s.getLast(ctx, s.gates.metaIndex(), s.lay.accountSubject(phone))
	if err != nil {
		return false, fmt.Errorf("look up account %s: %w", phone, err)
	}
	if m == nil {
		return false, nil
	}
	s.acctMu.Lock()
	if len(s.accounts) >= maxCachedStates {
		clear(s.accounts)
	}
	s.accounts[phone] = struct{}{}
	s.acctMu.Unlock()
	return true, nil
}

// ReserveIDs reserves n ids cluster-wide and returns the first: the next
// free id is one record, advanced with a compare-and-set on its stream
// sequence, so two nodes never get the same range.
func (s *Store) ReserveIDs(n uint64) (uint64, error) {
	if n == 0 {
		return 0, errors.New("reserve 0 ids")
	}
	if s.closed.Load() {
		return 0, fmt.Errorf("reserve %d ids: %w", n, store.ErrClosed)
	}
	s.idMu.Lock()
	defer s.idMu.Unlock()
	ctx, cancel := s.reqCtx()
	defer cancel()
	for {
		m, err := s.getLast(ctx, s.gates.metaIndex(), s.lay.idsSubject())
		if err != nil {
			return 0, fmt.Errorf("reserve %d ids: %w", n, err)
		}
		next, lastSeq := uint64(1), uint64(0) // ids start at 1: 0 means none
		if m != nil {
			if len(m.Data) != 8 {
				return 0, fmt.Errorf("reserve %d ids: %d-byte record, want 8", n, len(m.Data))
			}
			next, lastSeq = binary.BigEndian.Uint64(m.Data), m.Sequence
		}
		msg := nats.NewMsg(s.lay.idsSubject())
		msg.Data = binary.BigEndian.AppendUint64(nil, next+n)
		msg.Header.Set(njs.ExpectedLastSubjSeqHeader, strconv.FormatUint(lastSeq, 10))
		_, err = s.publish(ctx, msg)
		if errors.Is(err, ErrConflict) {
			continue // another node reserved meanwhile
		}
		if err != nil {
			return 0, fmt.Errorf("reserve %d ids: %w", n, err)
		}
		return next, nil
	}
}

// pubAck is JetStream's answer to a publish or a batch commit.
type pubAck struct {
	Error *njs.APIError `json:"error,omitempty"`
	Seq   uint64        `json:"seq"`
	Batch string        `json:"batch,omitempty"`
	Count uint64        `json:"count,omitempty"`
}

// publish sends msg and waits for its PubAck, at most Options.Timeout; a
// failed compare-and-set is reported as ErrConflict.
func (s *Store) publish(ctx context.Context, msg *nats.Msg) (pubAck, error) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	s.n.writes.Add(1)
	s.n.msgs.Add(1)
	resp, err := s.nc.RequestMsgWithContext(ctx, msg)
	if err != nil {
		return pubAck{}, fmt.Errorf("publish to %s: %w", msg.Subject, unavailable(err))
	}
	var pa pubAck
	if err := json.Unmarshal(resp.Data, &pa); err != nil {
		return pubAck{}, fmt.Errorf("publish to %s: bad answer %q: %w", msg.Subject, resp.Data, err)
	}
	if pa.Error != nil {
		if pa.Error.ErrorCode == njs.JSErrCodeStreamWrongLastSequence || pa.Error.ErrorCode == njs.JSErrCodeStreamWrongLastSequenceConstant {
			s.n.conflicts.Add(1)
			return pa, fmt.Errorf("publish to %s: %s: %w", msg.Subject, pa.Error.Description, ErrConflict)
		}
		if pa.Error.Code == 503 {
			return pa, fmt.Errorf("publish to %s: %w (%w)", msg.Subject, ErrUnavailable, pa.Error)
		}
		return pa, fmt.Errorf("publish to %s: %w", msg.Subject, pa.Error)
	}
	return pa, nil
}

// MemoryStats reports the store's own memory outside JetStream: the cached
// queue states (as a count times their approximate size) in memtables, and
// zero block cache. JetStream's memory is the NATS server's (see /jsz).
func (s *Store) MemoryStats() (memtables, blockCache int64) {
	s.stMu.Lock()
	n := len(s.states)
	s.stMu.Unlock()
	return int64(n) * 160, 0
}

// QueueDepths sums the queues whose state this store has cached (those
// it wrote or acked since it was opened, up to a bound); queues written
// only by other nodes are not counted. It is for monitoring.
func (s *Store) QueueDepths() (total int64, maxUser string, maxLen int) {
	s.stMu.Lock()
	defer s.stMu.Unlock()
	for user, st := range s.states {
		head := s.headOf(st)
		if st.tail < head {
			continue
		}
		n := int(st.tail + 1 - head)
		total += int64(n)
		if n > maxLen {
			maxUser, maxLen = user, n
		}
	}
	return total, maxUser, maxLen
}

// Accounts are encoded as generation, created and updated (unix ns), key.
func encodeAccount(a store.Account) []byte {
	b := make([]byte, 0, 24+len(a.Key))
	b = binary.BigEndian.AppendUint64(b, a.Generation)
	b = binary.BigEndian.AppendUint64(b, unixNano(a.Created))
	b = binary.BigEndian.AppendUint64(b, unixNano(a.Updated))
	return append(b, a.Key...)
}

// unixNano is t in unix nanoseconds, 0 for the zero time.
func unixNano(t time.Time) uint64 {
	if t.IsZero() {
		return 0
	}
	return uint64(t.UnixNano())
}

func fromUnixNano(v uint64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.Unix(0, int64(v)).UTC()
}

func decodeAccount(phone string, b []byte) (store.Account, error) {
	if len(b) < 24 {
		return store.Account{}, fmt.Errorf("account record of %d bytes, want at least 24", len(b))
	}
	return store.Account{
		Phone:      phone,
		Generation: binary.BigEndian.Uint64(b),
		Created:    fromUnixNano(binary.BigEndian.Uint64(b[8:])),
		Updated:    fromUnixNano(binary.BigEndian.Uint64(b[16:])),
		Key:        append([]byte(nil), b[24:]...),
	}, nil
}

func isNotFound(err error) bool {
	var apiErr *njs.APIError
	return errors.Is(err, njs.ErrMsgNotFound) || errors.As(err, &apiErr) && apiErr.Code == 404
}
