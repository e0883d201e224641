package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble"
	"github.com/cockroachdb/pebble/bloom"
)

// Defaults for zero Options fields (see Options).
const (
	defaultMaxQueueLen = 100000
	defaultMaxAge      = 30 * 24 * time.Hour
	defaultSweepEvery  = time.Hour
	defaultDedupTTL    = 7 * 24 * time.Hour
	// defaultMemTableSize suits a small deployment (see
	// Options.MemTableSize for bigger servers).
	defaultMemTableSize = 16 << 20
)

// Pebble settings. A message server's data is small records written once and
// deleted soon after (when the recipient acks), plus point lookups (accounts,
// dedup) that almost always miss.
const (
	// pebbleCacheSize: the hot set is the tail of each online user's queue,
	// which mostly still sits in the memtable; a modest block cache covers
	// accounts and the queues of users who come back after a while.
	pebbleCacheSize = 64 << 20
	// pebbleL0CompactionThreshold, pebbleL0StopWrites, pebbleLBaseMaxBytes:
	// what reaches the sstables is mostly dedup records that the sweeper
	// deletes days later. Letting L0 and the base level hold more before
	// compacting rewrites them fewer times (the defaults are 4, 12 and
	// 64 MB); compaction was the second biggest slice of server CPU under
	// saturation load.
	pebbleL0CompactionThreshold = 8
	pebbleL0StopWrites          = 40
	pebbleLBaseMaxBytes         = 256 << 20
	// pebbleBloomBits: dedup and account lookups for keys that do not exist
	// are the common case; a 10-bit bloom filter (~1% false positives)
	// answers them without reading data blocks.
	pebbleBloomBits = 10
	// pebbleLevels is Pebble's number of LSM levels.
	pebbleLevels = 7
)

// Pebble is the single-node Store, kept in a Pebble (LSM) database.
//
// Writes go through one committer goroutine (see pebble_commit.go) that groups
// whatever batches are pending into one Pebble batch and one fsync. The
// committer is the only writer of queues and dedup records, which lets it
// keep each queue's head and tail in memory and decide every batch without
// locks around Pebble.
type Pebble struct {
	db   *pebble.DB
	dir  string
	opts Options
	log  *slog.Logger

	// life guards db against use after Close: every direct read or write
	// holds it shared and checks closed; Close takes it exclusively before
	// closing db. The committer and sweeper do not take it: Close stops
	// them first.
	life   sync.RWMutex
	closed bool

	q         commitQueue
	committed chan struct{} // closed when the committer goroutine returns

	stopSweep chan struct{} // closed by Close to stop the sweeper
	swept     chan struct{} // closed when the sweeper goroutine returns
	sweepMu   sync.Mutex    // one sweep pass at a time

	closeOnce *sync.Once // new at each open (see Reopen)
	closeErr  error

	// qmu guards the head and tail fields of the queueState values in
	// queues and the map itself. The committer is their only writer;
	// QueueLen reads them.
	qmu    sync.Mutex
	queues map[string]*queueState

	// acctMu guards accounts, phones known to have an account (accounts
	// are never deleted), so a hit needs no Pebble read. It is bounded by
	// Options.AccountCache (see accountSet); a has() may move a phone
	// between generations, so lookups take the lock exclusively.
	acctMu   sync.Mutex
	accounts accountSet

	idMu   sync.Mutex
	nextID uint64 // first id not yet reserved; guarded by idMu

	// Counters for tests and benchmarks; written by the committer only.
	groups, batches, prunes atomic.Uint64
}

var _ Store = (*Pebble)(nil)

// OpenPebble opens (creating if needed) the Pebble store in dir and starts
// its committer and sweeper goroutines. A nil log means slog.Default().
func OpenPebble(dir string, opts Options, log *slog.Logger) (*Pebble, error) {
	if log == nil {
		log = slog.Default()
	}
	p := &Pebble{dir: dir, opts: opts.withDefaults(), log: log.With("component", "store")}
	if err := p.open(); err != nil {
		return nil, err
	}
	return p, nil
}

// Reopen opens a closed store again, from what is on disk now: a live
// upgrade's new process may have written to it meanwhile, so every cached
// state (queue heads and tails, known accounts, the next id) is read
// afresh. The old process of a failed upgrade takes its store back this
// way. It must not be called while anything else uses the store.
func (p *Pebble) Reopen() error {
	p.life.Lock()
	defer p.life.Unlock()
	if !p.closed {
		return errors.New("reopen pebble store: it is open")
	}
	return p.open()
}

// open opens the database in p.dir and starts the committer and the
// sweeper, every cached state empty. The caller holds p.life or has the
// only reference to p.
func (p *Pebble) open() error {
	opts, log := p.opts, p.log
	cache := pebble.NewCache(pebbleCacheSize)
	// Pebble takes its own reference; dropping ours means closing the DB
	// frees the cache.
	defer cache.Unref()
	po := &pebble.Options{
		Cache:        cache,
		MemTableSize: uint64(opts.MemTableSize),
		// A store created by this code has no older binary to stay readable
		// by, and the newer formats handle deletion tombstones better, which
		// matters when every item written is later deleted.
		FormatMajorVersion: pebble.FormatNewest,
		// Pebble's own chatter goes to debug; problems an operator must see
		// are raised to warn by the event listener below.
		Logger:        pebbleLogger{log: log},
		EventListener: eventListener(log),
		Levels:        make([]pebble.LevelOptions, pebbleLevels),
		FS:            opts.FS,
	}
	for i := range po.Levels {
		po.Levels[i].FilterPolicy = bloom.FilterPolicy(pebbleBloomBits)
		// Dedup records and message bodies (often end-to-end encrypted)
		// barely compress; Snappy would cost CPU on every flush,
		// compaction and cache miss for little disk.
		po.Levels[i].Compression = pebble.NoCompression
	}
	po.L0CompactionThreshold = pebbleL0CompactionThreshold
	po.L0StopWritesThreshold = pebbleL0StopWrites
	po.LBaseMaxBytes = pebbleLBaseMaxBytes
	db, err := pebble.Open(p.dir, po)
	if err != nil {
		return fmt.Errorf("open pebble store in %s: %w", p.dir, err)
	}
	next, err := loadNextID(db)
	if err != nil {
		_ = db.Close()
		return err
	}
	p.db, p.closed = db, false
	p.committed = make(chan struct{})
	p.stopSweep = make(chan struct{})
	p.swept = make(chan struct{})
	p.closeOnce, p.closeErr = new(sync.Once), nil
	p.qmu.Lock()
	p.queues = make(map[string]*queueState)
	p.qmu.Unlock()
	p.acctMu.Lock()
	p.accounts = newAccountSet(opts.AccountCache)
	p.acctMu.Unlock()
	p.idMu.Lock()
	p.nextID = next
	p.idMu.Unlock()
	p.q.init(opts.LazyDelay, opts.MinSyncGap)
	c := newCommitter(p)
	go c.run()
	go p.sweepLoop()
	return nil
}

func (o Options) withDefaults() Options {
	if o.MaxQueueLen <= 0 {
		o.MaxQueueLen = defaultMaxQueueLen
	}
	if o.MaxAge <= 0 {
		o.MaxAge = defaultMaxAge
	}
	if o.SweepEvery <= 0 {
		o.SweepEvery = defaultSweepEvery
	}
	if o.DedupTTL <= 0 {
		o.DedupTTL = defaultDedupTTL
	}
	if o.MemTableSize <= 0 {
		o.MemTableSize = defaultMemTableSize
	}
	if o.MaxQueueStates <= 0 {
		o.MaxQueueStates = defaultMaxQueueStates
	}
	if o.AccountCache <= 0 {
		o.AccountCache = defaultAccountCache
	}
	if o.LazyDelay == 0 {
		o.LazyDelay = defaultLazyDelay
	}
	if o.MinSyncGap == 0 {
		o.MinSyncGap = defaultMinSyncGap
	}
	return o
}

func loadNextID(db *pebble.DB) (uint64, error) {
	v, closer, err := db.Get([]byte(keyNextID))
	if errors.Is(err, pebble.ErrNotFound) {
		return 1, nil // ids start at 1 so that 0 can mean "none"
	}
	if err != nil {
		return 0, fmt.Errorf("load next id: %w", err)
	}
	defer closer.Close()
	if len(v) != 8 {
		return 0, fmt.Errorf("load next id: %d-byte record, want 8", len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

// Commit queues b for the committer and returns at once; done is called
// from the committer goroutine once b is durable or refused. b must not be
// modified until done is called. After Close, done gets ErrClosed from a
// new goroutine (the committer is gone and the caller may hold locks that
// done needs) — but only once the committer has reported every batch
// queued before, so a caller still sees its results in commit order.
func (p *Pebble) Commit(b *Batch, done func(Result)) {
	if p.q.push(request{b: b, done: done}) {
		return
	}
	if done != nil {
		go func() {
			<-p.committed
			done(Result{Err: ErrClosed})
		}()
	}
}

// Close stops accepting commits, lets the committer finish every batch
// already queued, stops the sweeper and closes Pebble. Later calls return
// the first call's result.
func (p *Pebble) Close() error {
	p.closeOnce.Do(func() {
		// The sweeper first: its deletes go through the committer, which
		// must still be running to answer them.
		close(p.stopSweep)
		<-p.swept
		p.q.close()
		<-p.committed

		p.life.Lock()
		p.closed = true
		err := p.db.Close()
		p.life.Unlock()
		if err != nil {
			p.closeErr = fmt.Errorf("close pebble store: %w", err)
		}
	})
	return p.closeErr
}

// ReadQueue returns up to max items of user's queue with Seq >= from, in
// order; max <= 0 returns none. It reads durable data only.
func (p *Pebble) ReadQueue(user string, from uint64, max int) ([]Item, error) {
	if max <= 0 {
		return nil, nil
	}
	p.life.RLock()
	defer p.life.RUnlock()
	if p.closed {
		return nil, fmt.Errorf("read queue %s: %w", user, ErrClosed)
	}
	// Items are read up to the last durable one (see queueState.durable):
	// Pebble shows a group's writes before its WAL is synced. Every login
	// reads its queue, which is usually empty: when the committer's state
	// says nothing durable is at or after from, skip the iterator.
	p.qmu.Lock()
	st := p.queues[user]
	if st != nil && from > st.durable {
		p.qmu.Unlock()
		return nil, nil
	}
	// With no state, the committer has decided nothing for this queue, so
	// all of it that Pebble shows is durable; the iterator, a point-in-time
	// view, is then made under qmu, so that it cannot see a group the
	// committer decides after loading the state.
	upper := queueUpperBound(user)
	if st != nil {
		upper = appendQueueKey(nil, user, st.durable+1)
		p.qmu.Unlock()
	}
	it, err := p.db.NewIter(&pebble.IterOptions{LowerBound: appendQueueKey(nil, user, from), UpperBound: upper})
	if st == nil {
		p.qmu.Unlock()
	}
	if err != nil {
		return nil, fmt.Errorf("read queue %s: %w", user, err)
	}
	var (
		items []Item
		// Items' data share buffers (a few allocations instead of one per
		// item). Each Data is capped so appending to it cannot overwrite
		// its neighbour.
		buf []byte
	)
	for ok := it.First(); ok && len(items) < max; ok = it.Next() {
		_, seq, okKey := splitQueueKey(it.Key())
		v := it.Value()
		if !okKey || len(v) < itemHeaderLen {
			_ = it.Close()
			return nil, fmt.Errorf("read queue %s: malformed item %q", user, it.Key())
		}
		start := len(buf)
		buf = append(buf, v[itemHeaderLen:]...)
		items = append(items, Item{
			Seq:  seq,
			TS:   int64(binary.BigEndian.Uint64(v)),
			Data: buf[start:len(buf):len(buf)],
		})
	}
	if err := it.Close(); err != nil {
		return nil, fmt.Errorf("read queue %s: %w", user, err)
	}
	return items, nil
}

// QueueLen is the number of items in user's queue, including those of
// batches the committer has decided but not yet made durable.
func (p *Pebble) QueueLen(user string) (int, error) {
	p.life.RLock()
	if p.closed {
		p.life.RUnlock()
		return 0, fmt.Errorf("queue length %s: %w", user, ErrClosed)
	}
	if n, ok := p.cachedQueueLen(user); ok {
		p.life.RUnlock()
		return n, nil
	}
	head, tail, _, err := loadQueueBounds(p.db, user)
	p.life.RUnlock()
	if err != nil {
		return 0, err
	}
	// The committer may have loaded this queue meanwhile; its view is
	// newer than what we read. We do not insert ours: QueueLen for users
	// that never get a commit should not grow the map.
	if n, ok := p.cachedQueueLen(user); ok {
		return n, nil
	}
	return int(tail + 1 - head), nil
}

func (p *Pebble) cachedQueueLen(user string) (int, bool) {
	p.qmu.Lock()
	defer p.qmu.Unlock()
	st := p.queues[user]
	if st == nil {
		return 0, false
	}
	return int(st.tail + 1 - st.head), true
}

// loadQueueBounds reads user's queue head (lowest seq present), tail (last
// seq assigned) and lease (the qt/<user> record: no seq above it was
// assigned) from one consistent view of db. An empty queue has head ==
// tail+1, and its tail is the lease: the seqs between the last item ever
// assigned and the lease are skipped.
func loadQueueBounds(db *pebble.DB, user string) (head, tail, lease uint64, err error) {
	// One iterator rather than a Get and an iterator: an iterator is a
	// point-in-time view, so head and tail agree even while the committer
	// writes. Bounded to the keys it looks for, then to the user's queue:
	// an unbounded seek in an empty queue would step over every tombstone
	// of erased items up to the next live key, another user's (a node
	// started on a store of many such queues loads them all at first).
	tk := tailKey(user)
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: tk, UpperBound: append(tk[:len(tk):len(tk)], 0)})
	if err != nil {
		return 0, 0, 0, fmt.Errorf("load queue %s: %w", user, err)
	}
	if it.SeekGE(tk) && string(it.Key()) == string(tk) {
		if v := it.Value(); len(v) == seqLen {
			lease = binary.BigEndian.Uint64(v)
		} else {
			_ = it.Close()
			return 0, 0, 0, fmt.Errorf("load queue %s: %d-byte tail record, want %d", user, len(v), seqLen)
		}
	}
	tail = lease
	head = tail + 1
	prefix := appendQueuePrefix(nil, user)
	it.SetBounds(prefix, queueUpperBound(user))
	if it.SeekGE(prefix) && strings.HasPrefix(string(it.Key()), string(prefix)) {
		if _, seq, ok := splitQueueKey(it.Key()); ok {
			head = seq
		}
		// A queue with items ends at its last item: items leave from the
		// head only, so nothing after it was ever handed out (an append
		// whose batch was lost in a crash was never delivered).
		if it.SeekLT(queueUpperBound(user)) {
			if _, seq, ok := splitQueueKey(it.Key()); ok {
				tail = seq
			}
		}
	}
	if err := it.Close(); err != nil {
		return 0, 0, 0, fmt.Errorf("load queue %s: %w", user, err)
	}
	// Items past the lease cannot happen (it is written in the batch that
	// crosses it) but if they did, the lease must cover them.
	return head, tail, max(lease, tail), nil
}

// Account returns a copy of phone's account, or ErrNotFound.
func (p *Pebble) Account(phone string) (Account, error) {
	p.life.RLock()
	defer p.life.RUnlock()
	if p.closed {
		return Account{}, fmt.Errorf("account %s: %w", phone, ErrClosed)
	}
	v, closer, err := p.db.Get(accountKey(phone))
	if errors.Is(err, pebble.ErrNotFound) {
		return Account{}, fmt.Errorf("account %s: %w", phone, ErrNotFound)
	}
	if err != nil {
		return Account{}, fmt.Errorf("account %s: %w", phone, err)
	}
	defer closer.Close()
	a, err := decodeAccount(phone, v) // copies v
	if err != nil {
		return Account{}, fmt.Errorf("account %s: %w", phone, err)
	}
	return a, nil
}

// PutAccount creates or replaces a's account and syncs it to disk.
func (p *Pebble) PutAccount(a Account) error {
	if a.Phone == "" || strings.IndexByte(a.Phone, 0) >= 0 {
		// NUL ends the user name in queue and dedup keys (see pebble_keys.go).
		return fmt.Errorf("put account %q: phone must be non-empty and contain no NUL byte", a.Phone)
	}
	p.life.RLock()
	defer p.life.RUnlock()
	if p.closed {
		return fmt.Errorf("put account %s: %w", a.Phone, ErrClosed)
	}
	if err := p.db.Set(accountKey(a.Phone), encodeAccount(a), pebble.Sync); err != nil {
		return fmt.Errorf("put account %s: %w", a.Phone, err)
	}
	p.acctMu.Lock()
	p.accounts.add(a.Phone)
	p.acctMu.Unlock()
	return nil
}

// accountExists reports whether phone has an account, from memory when it
// can. Only hits are cached: a miss is rare (a client addressing a stranger)
// and caching misses would let such clients grow the set without bound.
func (p *Pebble) accountExists(phone string) (bool, error) {
	p.acctMu.Lock()
	ok := p.accounts.has(phone)
	p.acctMu.Unlock()
	if ok {
		return true, nil
	}
	_, closer, err := p.db.Get(accountKey(phone))
	if errors.Is(err, pebble.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up account %s: %w", phone, err)
	}
	_ = closer.Close()
	p.acctMu.Lock()
	p.accounts.add(phone)
	p.acctMu.Unlock()
	return true, nil
}

// ReserveIDs durably reserves n ids and returns the first. Reservations are
// serialised by a mutex and each is synced before it is handed out, so no
// id is given twice, across restarts included.
func (p *Pebble) ReserveIDs(n uint64) (uint64, error) {
	p.idMu.Lock()
	defer p.idMu.Unlock()
	p.life.RLock()
	defer p.life.RUnlock()
	if p.closed {
		return 0, fmt.Errorf("reserve %d ids: %w", n, ErrClosed)
	}
	first := p.nextID
	if n == 0 {
		return first, nil
	}
	next := first + n
	if next < first {
		return 0, fmt.Errorf("reserve %d ids: id space exhausted", n)
	}
	if err := p.db.Set([]byte(keyNextID), binary.BigEndian.AppendUint64(nil, next), pebble.Sync); err != nil {
		return 0, fmt.Errorf("reserve %d ids: %w", n, err)
	}
	p.nextID = next
	return first, nil
}

// groupStats returns how many groups the committer has written and how many
// batches they held.
func (p *Pebble) groupStats() (groups, batches uint64) {
	return p.groups.Load(), p.batches.Load()
}

// pebbleLogger routes Pebble's log lines to slog at debug level: they are
// routine (flushes, compactions) and would drown the server's own logs.
type pebbleLogger struct{ log *slog.Logger }

func (l pebbleLogger) Infof(format string, args ...any) {
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		l.log.Debug(fmt.Sprintf(format, args...), "source", "pebble")
	}
}

// Fatalf is called on invariant violations that Pebble cannot recover from;
// it must not return. Panicking rather than os.Exit lets deferred handlers
// and crash reporting run.
func (l pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	l.log.Error(msg, "source", "pebble")
	panic("pebble: " + msg)
}

// eventListener raises the Pebble events an operator must see (errors, slow
// disks, write stalls) above debug.
func eventListener(log *slog.Logger) *pebble.EventListener {
	return &pebble.EventListener{
		BackgroundError: func(err error) {
			log.Error("pebble background error", "err", err)
		},
		DiskSlow: func(info pebble.DiskSlowInfo) {
			log.Warn("pebble disk slow", "info", info.String())
		},
		WriteStallBegin: func(info pebble.WriteStallBeginInfo) {
			log.Warn("pebble write stall", "reason", info.Reason)
		},
		WriteStallEnd: func() {
			log.Info("pebble write stall ended")
		},
	}
}

// MemoryStats is the memory Pebble holds outside the Go heap (it allocates
// with C malloc): the memtables' arenas and the block cache's contents.
// Both are bounded by configuration, not by the number of users or
// connections.
func (p *Pebble) MemoryStats() (memtables, blockCache int64) {
	p.life.RLock()
	defer p.life.RUnlock()
	if p.closed {
		return 0, 0
	}
	m := p.db.Metrics()
	return int64(m.MemTable.Size + m.MemTable.ZombieSize), m.BlockCache.Size
}

// QueueDepths sums the queues the store has in memory: every queue written
// to or acked since the store was opened (a queue untouched since a
// restart is counted once it is next written or acked), unless more than
// Options.MaxQueueStates were, when settled ones are forgotten until next
// used (see pruneStates). It is for monitoring: one pass over the map
// under its lock.
func (p *Pebble) QueueDepths() (total int64, maxUser string, maxLen int) {
	p.qmu.Lock()
	defer p.qmu.Unlock()
	for user, st := range p.queues {
		if st.tail < st.head {
			continue
		}
		n := int(st.tail + 1 - st.head)
		total += int64(n)
		if n > maxLen {
			maxUser, maxLen = user, n
		}
	}
	return total, maxUser, maxLen
}
