// Package store keeps Parley's durable state: accounts, per-user message
// queues and the dedup records that make sends idempotent.
//
// The contract is the Store interface; Pebble (the single-node default) and,
// later, NATS JetStream implement it, and both must pass the conformance
// suite in store/storetest.
//
// Writes go through Commit, which is asynchronous: a session never blocks a
// pool goroutine on fsync. Implementations group concurrent batches into one
// durable write (group commit) and call each batch's done callback once the
// batch is on disk.
//
// The durability promise: no done callback runs before its batch is on
// disk, lazy batches included. A lazy batch (Batch.Lazy) only waits longer,
// up to Options.LazyDelay, for a batch that is not lazy to share its fsync;
// a crash in that wait loses it whole, as a crash before Commit would.
// Parley makes lazy only the batches nobody waits for: an ack's erase with
// the delivered receipts it makes. Losing one loses no receipt: the acked
// items come back with it, are delivered again (the client drops them by
// server id and acks them) and that ack makes the receipts again. A group
// commit also starts no sooner than Options.MinSyncGap after the one
// before, which delays a batch by at most that much, at light load and
// under a load whose groups take less than the gap.
package store

import (
	"errors"
	"time"

	"github.com/cockroachdb/pebble/vfs"
)

// Errors a Commit or read can report. Callers match them with errors.Is.
var (
	// ErrNotFound: no such account.
	ErrNotFound = errors.New("not found")
	// ErrUnknownUser: a batch appends to a queue of a phone number that has
	// no account.
	ErrUnknownUser = errors.New("unknown user")
	// ErrQueueFull: a batch appends to a queue already holding
	// Options.MaxQueueLen items.
	ErrQueueFull = errors.New("queue full")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("store closed")
	// ErrUnavailable: the store cannot answer now (a cluster store whose
	// node has no quorum, or cannot reach its cluster). A write it reports
	// may or may not have happened: a send retried with its Dedup is safe.
	// It passes by itself once the cluster is reachable again. Pebble
	// never reports it.
	ErrUnavailable = errors.New("store unavailable: retry later")
)

// Account is a registered phone number and the device key bound to it.
type Account struct {
	Phone      string    // E.164, e.g. "+14155550100"
	Key        []byte    // the current device's 32-byte Curve25519 public key
	Generation uint64    // 1 at first registration, +1 on each re-registration
	Created    time.Time // first registration
	Updated    time.Time // last registration
}

// Item is one entry of a user's queue.
type Item struct {
	Seq  uint64 // position in the queue: strictly increasing, never reused (a restart may skip some)
	TS   int64  // unix nanoseconds when it was queued (for the age limit)
	Data []byte // the encoded item; opaque to the store
}

// Append adds one item to the tail of To's queue.
type Append struct {
	To   string
	Data []byte
}

// Ack erases User's queue items with Seq <= UpTo.
type Ack struct {
	User string
	UpTo uint64
}

// Dedup records that Sender's message ClientID was accepted as ServerID at
// TS. A batch carrying a Dedup is conditional: if a record for the same
// (Sender, ClientID) exists already, nothing in the batch is written and the
// Result carries the earlier record in Dup.
//
// Fresh skips the check: the sender vouches that ClientID is new (the
// protocol's unmarked Send), so the record is written without reading the
// disk for an earlier one, and a record for the same key is replaced.
type Dedup struct {
	Sender   string
	ClientID uint64
	ServerID uint64
	TS       int64
	Fresh    bool
}

// Batch is one atomic, durable unit of writes.
type Batch struct {
	Dedup   *Dedup
	Appends []Append
	Acks    []Ack
	// Received names the senders of the messages the batch's Acks cover:
	// for the User of each Ack and each sender, the store records that the
	// user has received from the sender (see Store.ReceivedFrom), with the
	// batch. A batch without an Ack records nothing.
	Received []string
	// Lazy says that nobody is waiting for this batch soon: the store may
	// hold it back, up to Options.LazyDelay, so that it shares the fsync of
	// a later batch that is not lazy instead of paying for its own. It is
	// still written atomically and durably before done is called, and in
	// order with the caller's other batches; only its done comes later.
	Lazy bool
}

// Result is what a committed (or refused) batch reports.
type Result struct {
	// Err is nil when the batch is durable. ErrUnknownUser and ErrQueueFull
	// refuse the whole batch; nothing of it is written.
	Err error
	// Seqs holds the sequence number given to each Append, in order.
	Seqs []uint64
	// Locs, when the store keeps them, say where each Append was put, in
	// the store's own terms (a cluster store's stream seq), for another
	// node to tell its store (the cluster's doorbell carries them), so
	// that erasing the item there needs no search. Nil otherwise.
	Locs []uint64
	// Dup is the earlier record when Dedup matched one; then nothing was
	// written and Seqs is empty.
	Dup *Dedup
}

// Options bound what a store holds. Zero values mean the defaults.
type Options struct {
	// MaxQueueLen bounds one user's queue; appends past it get ErrQueueFull.
	// Default 100000.
	MaxQueueLen int
	// MaxAge bounds how long an item waits; older items are expired by the
	// sweeper. Default 30 days.
	MaxAge time.Duration
	// SweepEvery is how often the sweeper looks for expired items.
	// Default 1 hour.
	SweepEvery time.Duration
	// DedupTTL is how long a Dedup record is kept. Default 7 days.
	DedupTTL time.Duration
	// LazyDelay is the longest a lazy batch (Batch.Lazy) waits for a batch
	// that is not lazy to share its fsync. Default 2 ms; negative: lazy
	// batches are committed as soon as any other batch.
	LazyDelay time.Duration
	// MinSyncGap is the least time between the starts of two durable
	// writes (group commits): at light load it bounds the fsyncs a second,
	// each carrying what arrived meanwhile, for at most this much more
	// before a batch is durable. Default 2 ms; negative: none.
	MinSyncGap time.Duration
	// OnExpire, if set, is called for every item the sweeper expires (after
	// it is erased), so the loss is logged and counted, never silent.
	OnExpire func(user string, it Item)
	// OnGroup, if set, is called by the committer after each durable write
	// with the number of batches it carried (the group-commit factor).
	// It must not block.
	OnGroup func(batches int)

	// MemTableSize is the size of Pebble's memtable, which sets the
	// store's disk footprint beside what is queued: the write-ahead log is
	// preallocated to about 1.1x it, and under load Pebble kept four logs
	// of about 0.75x it each. The rest is the queued items and the dedup
	// records (about 60 bytes per message sent in the last DedupTTL). Items
	// appended and acked while still in the memtable never reach an
	// sstable, so a bigger one saves CPU under heavy load. Measured here:
	// a five-message demo took 18 MB of disk with 16 MiB and 71 MB with
	// 64 MiB; at saturation 64 MiB cost 11.1-11.7 us of server CPU per
	// message against 12.1-13.7 us for 16 MiB (bench pairs --pairs 10
	// --window 512, two runs each on a busy 2-core machine). Default
	// 16 MiB, for a small deployment; 64 MiB for 100,000+ msgs/s.
	MemTableSize int
	// MaxQueueStates bounds the queues whose head and tail the store keeps
	// in memory (about 100 bytes each); past it, settled ones are dropped
	// and reloaded from disk when next used. Default 1,048,576.
	MaxQueueStates int
	// AccountCache bounds the phones the store remembers as registered
	// (about 80 bytes each), which spares a disk read per message to a
	// known user. Default 1,048,576.
	AccountCache int

	// FS replaces the file system under Pebble; nil means the disk. Tests
	// use it for a disk whose syncs can be held back, or one that forgets
	// everything not synced when the power goes (vfs.NewStrictMem).
	FS vfs.FS
}

// ReceivedRefresh is how long a received record stands for the pair's
// later acks before a store writes it again: MaxAge/64, at most an hour.
// A chat acks every message; rewriting the record each time would be one
// durable write of five or six per message, for a date that only matters
// to the day.
func ReceivedRefresh(maxAge time.Duration) time.Duration {
	return min(maxAge/64, time.Hour)
}

// Store is Parley's durable state.
type Store interface {
	// Commit writes b atomically and durably, then calls done exactly once
	// from the store's own goroutine. done must not block. Batches committed
	// one after another by the same caller are applied in that order.
	// An empty batch writes nothing, and its done comes only once every
	// batch committed before it, by any caller, is applied (lazy ones
	// included: an empty batch is not lazy, so it takes them along): the
	// node uses one as a barrier before a login's first delivery.
	Commit(b *Batch, done func(Result))

	// ReadQueue returns up to max items of user's queue with Seq >= from,
	// in order.
	ReadQueue(user string, from uint64, max int) ([]Item, error)

	// QueueLen is the number of items waiting in user's queue.
	QueueLen(user string) (int, error)

	// Account returns the account for phone, or ErrNotFound.
	Account(phone string) (Account, error)

	// PutAccount creates or replaces an account, durably.
	PutAccount(a Account) error

	// ReceivedFrom reports whether reader has acked a message from sender
	// (a Batch's Received) within the last Options.MaxAge: the server's
	// evidence that a read receipt from reader to sender is not forged,
	// kept after the messages themselves are erased. A record is
	// refreshed by the pair's acks, at most once per ReceivedRefresh, and
	// expires MaxAge after it was last refreshed: between MaxAge less
	// ReceivedRefresh and MaxAge after the pair's last ack.
	ReceivedFrom(reader, sender string) (bool, error)

	// ReserveIDs durably reserves n ids and returns the first; ids are never
	// handed out twice, across restarts included.
	ReserveIDs(n uint64) (first uint64, err error)

	// Close finishes in-flight commits, stops the sweeper and closes the
	// store. Commit after Close reports ErrClosed.
	Close() error
}
