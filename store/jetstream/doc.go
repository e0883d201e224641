// Package jetstream is Parley's cluster store: a store.Store kept in NATS
// JetStream, so that every node of a cluster sees the same accounts,
// queues and dedup records, and losing a node loses none of them.
//
// (The package is named for the engine it stores in, like its directory;
// inside it nats.go's jetstream package is imported as njs.)
//
// # Layout
//
// Queues live in P partition streams NAME_Q_<p> (P fixed when the store is
// created, recorded in the meta stream), one subject per user,
// name.q.<p>.<user>, with p = fnv32a(user) mod P. No consumers: reads are
// MSG.GET requests (next_by_subj, last_by_subj), answered by the stream's
// leader, so a read always sees every batch whose Commit succeeded (a
// direct get may be answered by a lagging replica; see ADR-31).
//
// Each message of a queue subject is an item (per-user seq, timestamp,
// data). Item.Seq is per queue: 1, 2, 3... assigned by the committer and
// stored in the item, not the stream sequence (which is shared by the
// partition). Beside it, each queue has a tail subject,
// name.t.<p>.<user>, holding one tail record: the last seq given out,
// rewritten (Nats-Rollup: sub) in the same atomic write as every append.
// Every append is a compare-and-set on the tail record's stream seq
// (Nats-Expected-Last-Subject-Sequence), so two nodes appending to one
// queue can never give out the same seq: the second write is refused,
// nothing of its partition's share is written, the node drops its cached
// queue states, and the refused batches that wrote nothing are decided
// again, ahead of every newer one (up to 8 times; then ErrConflict).
//
// Erasing on ack: a queue acked to its last item (the common case: the
// client acks everything it got) is emptied by an empty-marker written
// with Nats-Rollup: sub and a compare-and-set on that item being the
// subject's last message: the rollup erases every earlier message of the
// subject as part of the write, and all of a partition's markers of a
// commit group are one atomic write. An item appended meanwhile fails the
// compare-and-set (it is never rolled up), and that queue is purged
// instead: one PurgeEx below the stream seq just past the last acked
// item, as is a queue acked only in part. Neither touches the tail
// subject, so the node erasing a queue (the recipient's) never makes the
// nodes appending to it (the senders') lose their compare-and-set, and a
// queue whose items are all erased still says how far its seqs went:
// they are never reused. The acking node needs the acked item's stream seq: the
// node that appended it sends it with its doorbell (Result.Locs, NoteItem),
// else the node reads the queue to find it (one MSG.GET per item from
// where it last knew the queue). An ack past the node's cached tail
// raises the tail to the acked item once it is known to be there, and is
// cut down to the tail otherwise. A node appending to a queue sees others
// erase it only when told (NoteAcked, sent with a delivered receipt's
// doorbell) or, when its view says the queue is full, by reading the
// queue's head before it answers ErrQueueFull. A user's tail record stays
// for good: about 150-190 bytes of JetStream index memory per user ever
// written to, per replica (the figure measured for a marker, a message
// of the same size). An empty-marker holds nothing once its rollup is
// done, and expires after a minute (Nats-TTL).
//
// An ack's erasure is made after every publish of its group, and only if
// all of its request's publishes succeeded (nor does a later ack of the
// same queue in the group erase past it): an ack's delivered receipts are
// in the queues of other users, often other partitions, and an item
// erased whose receipt was not written would take its receipt with it if
// the session ended before a retry. An erasure not made leaves the item
// to be delivered again (the client drops it by server id) and acked
// again, which makes its receipt again.
//
// Dedup records live in the partition of the batch's first append,
// name.d.<p>.<sender>.<client id>, with a per-message TTL (Nats-TTL) of
// what is left of DedupTTL after the record's TS. Accounts, the id counter
// and the partition count live in NAME_META (one message per subject).
// ReserveIDs is a compare-and-set loop on the counter: ids are unique
// cluster-wide.
//
// # Atomicity
//
// A group of batches is written per partition, each partition's share as
// one atomic batch publish (JetStream 2.12+, within one stream): all of it
// or none. So a batch whose writes all fall in one partition is atomic.
// That is every batch the session makes except an ack with receipts to
// other users: a send (its item and its dedup record are in the
// recipient's partition), a read receipt. (An ack's erasure is written
// after the publishes, see above.)
//
// A batch spanning partitions (an ack whose receipts go to other
// partitions) is written as several atomic parts, in parallel. A part
// refused by a compare-and-set (another node wrote one of its queues),
// with nothing of it written, is decided again on its own, up to 8 times,
// when the batch has no Dedup; otherwise the batch is reported failed if
// any part fails, and the parts that succeeded stay. The session tolerates
// that: receipts are idempotent (a repeated receipt
// marks what is already marked) and a lost erase only redelivers items
// the client drops by id. A Dedup batch appending to several partitions
// (not made by the session today) could, on a retry after such a partial
// failure, append again to the partitions whose part succeeded.
//
// Dedup across failover: a send's dedup record and its item are one
// atomic write, so a resend of (sender, client id) to any node finds the
// record if and only if the item was stored, and gets the earlier ack.
// Two sends of one key racing on two nodes: the record is written with a
// compare-and-set on "no record yet", so exactly one is stored.
// A checked resend whose Dup names a record still being written in the
// same group is decided again if that write fails.
//
// MaxQueueLen is checked against the node's view: its tail is checked by
// the compare-and-set (a write decided on a stale tail is refused), and
// its head only ever moves to where items were really erased, so the view
// never understates the queue and the limit holds; a view that says full
// is read again from the stream before ErrQueueFull is answered.
//
// # Errors
//
// ErrUnavailable (a store.ErrUnavailable): a request JetStream did not
// answer in time, each bounded by Options.Timeout (2 s), or answered that
// it cannot now (no quorum for the stream, or NATS unreachable). A write
// may or may not have happened, so a send is retried with its Dedup. A
// leader cut off from its quorum keeps such a write pending and refuses
// the next compare-and-sets against it: until a write to that partition is
// acknowledged again, such a refusal is ErrUnavailable too, not decided
// again. ErrConflict: a batch kept losing compare-and-sets to other
// nodes. Both are retryable. The node forgets the cached state of the
// queues a failed write touched and recovers by itself.
//
// A stream that did not answer (its leader died: JetStream elects another
// in 4-9 s; or it has no quorum) has its gate shut (gate.go): its requests
// fail at once with ErrUnavailable, so that one leaderless partition does
// not hold up the committer's groups and every other partition's users,
// until a probe gets through. A queue partition's probe is a barrier write
// through the (new) leader, which acknowledges it only after applying
// every earlier entry: a write the dead leader proposed and its successor
// commits late is in the stream before any resend of it is decided, so
// the resend finds its dedup record. Resync shuts every partition's gate
// the same way; the node calls it when a member of the cluster stops
// beating.
//
// # Costs
//
// One committer goroutine groups pending batches (up to 1,024) and
// writes each partition's share as one atomic batch, all partitions in
// parallel. A pipelined committer (writers per partition, not waiting
// for each other) measured slower on a 2-vCPU box and was reverted.
// Replicas 1 is much slower than 3 per message: the server stages an R1
// file stream's atomic batch in a new file store, an R3 one in memory.
// Reads are one MSG.GET per message (leader-routed), starting where the
// last read of the queue came to (or a doorbell said an item is), or at
// the head the committer knows. A group's acks cost one more atomic
// write per partition (their markers, after the group's publishes); an
// ack that cannot use a marker, one PurgeEx (its own request and Raft
// entry). Each node's group writes one atomic batch per partition it
// touches, so fewer partitions group more (Options.Partitions). Both
// rollups (the tail record's and the marker's) make the server purge the
// subject's earlier messages, which it finds by scanning its blocks:
// about an eighth of a node's CPU in a profile of pairs 200 x 1. Sweep
// reads each partition's items from its start to the first young one.
//
// # Durability: what R3 promises and what it does not
//
// A Commit succeeds when JetStream acknowledges the write: the stream's
// leader and a majority of its replicas have it. With Replicas 3, losing
// any one node (or its disk) loses nothing acknowledged. JetStream does
// not fsync each write (it syncs on its own schedule, every two minutes by
// default), so replication is the durability: a correlated power loss of
// every replica at once can lose the writes of the last seconds. That is
// outside the promise, as is a single-node store (Replicas 1): use Pebble
// there.
package jetstream
